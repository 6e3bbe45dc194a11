"""The KMIP client against vmcrypt's own key server, over real TLS sockets."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from vmcrypt.kmip.attributes import Attribute, attribute
from vmcrypt.kmip.client import ItemFailed, KmipClient, ServerInfo
from vmcrypt.kmip.exceptions import KmipConnectionError, OperationFailed
from vmcrypt.kmip.items import enum, structure
from vmcrypt.kmip.messages import ProtocolVersion, RequestBatchItem
from vmcrypt.kmip.tags import (
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
    Tag,
)
from vmcrypt.kms.server import KmsConfig, KmsServer
from vmcrypt.pki import PkiLayout, client_context, init_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    return init_pki(tmp_path_factory.mktemp("pki"), key_type="ec")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    """An unrelated CA: a client trusting it must refuse the server."""
    return init_pki(tmp_path_factory.mktemp("other-pki"), key_type="ec")


def _config(pki: PkiLayout, database: Path, *, port: int = 0,
            idle_timeout: float = 300.0) -> KmsConfig:
    return KmsConfig(database=database, cert_file=pki.server.cert, key_file=pki.server.key,
                     ca_file=pki.ca.cert, port=port, idle_timeout=idle_timeout)


def start_server(config: KmsConfig, master_key: bytes) -> KmsServer:
    """Start a key server; its ``shutdown()`` drops open connections, as a kill would."""
    kms = KmsServer(config, master_key=master_key)
    kms.start()
    return kms


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def server(pki: PkiLayout, tmp_path: Path, master_key: bytes) -> Iterator[KmsServer]:
    kms = start_server(_config(pki, tmp_path / "kms.db"), master_key)
    yield kms
    kms.shutdown()


def _client(pki: PkiLayout, port: int, *, ca: Path | None = None, timeout: float = 5.0,
            **kwargs: object) -> KmipClient:
    admin = pki.clients["admin"]
    context = client_context(ca_file=ca or pki.ca.cert, cert_file=admin.cert,
                             key_file=admin.key)
    return KmipClient("127.0.0.1", port, ssl_context=context, timeout=timeout,
                      **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def client(pki: PkiLayout, server: KmsServer) -> Iterator[KmipClient]:
    with _client(pki, server.address[1]) as kmip:
        yield kmip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- discovery and keys -----------------------------------------------------------------


def test_discover_versions_and_query(client: KmipClient) -> None:
    versions = client.discover_versions()
    assert versions[0] == ProtocolVersion(1, 4)
    assert ProtocolVersion(1, 2) in versions
    info = client.query()
    assert isinstance(info, ServerInfo)
    assert Operation.GET in info.operations and Operation.LOCATE in info.operations
    assert info.object_types == [ObjectType.SYMMETRIC_KEY]
    assert info.vendor is not None and info.vendor.startswith("vmcrypt")


def test_create_get_register(client: KmipClient) -> None:
    uid = client.create_symmetric_key(name="kek-1")
    key = client.get_key(uid)
    assert len(key) == 32
    assert client.get_key(uid) == key
    assert len(client.get_key(client.create_symmetric_key(length=128))) == 16
    material = os.urandom(32)
    registered = client.register_symmetric_key(material, name="imported")
    assert registered != uid
    assert client.get_key(registered) == material
    assert client.locate(name="imported") == [registered]


def test_get_of_unknown_uid_is_item_not_found(client: KmipClient) -> None:
    with pytest.raises(OperationFailed) as caught:
        client.get_key("no-such-key")
    assert caught.value.reason is ResultReason.ITEM_NOT_FOUND
    assert caught.value.status is ResultStatus.OPERATION_FAILED
    assert caught.value.operation == "Get"
    assert isinstance(caught.value, ItemFailed) and caught.value.uid == "no-such-key"
    assert "no-such-key" in str(caught.value)


def test_life_cycle(client: KmipClient) -> None:
    uid = client.create_symmetric_key()
    state = client.get_attributes(uid, ["State"])
    assert [a.python for a in state] == [State.PRE_ACTIVE]
    client.activate(uid)
    assert client.get_attributes(uid, ["State"])[0].python == State.ACTIVE
    with pytest.raises(OperationFailed) as active:
        client.destroy(uid)  # an Active key must be revoked first
    assert active.value.reason is ResultReason.PERMISSION_DENIED
    client.revoke(uid, message="retired")
    assert client.get_attributes(uid, ["State"])[0].python == State.DEACTIVATED
    client.destroy(uid)
    with pytest.raises(OperationFailed) as gone:
        client.get_key(uid)
    assert gone.value.reason is ResultReason.ITEM_NOT_FOUND
    compromised = client.create_symmetric_key()
    client.revoke(compromised, reason=RevocationReasonCode.KEY_COMPROMISE)
    assert client.get_attributes(compromised, ["State"])[0].python == State.COMPROMISED


# -- attributes -------------------------------------------------------------------------


def test_custom_attributes_round_trip(client: KmipClient) -> None:
    uid = client.create_symmetric_key(attributes={
        "x-Vendor": "vmcrypt project", "x-Product": "vmcrypt", "x-Product_Version": "0.1.0",
    })
    got = {a.name: a.python for a in client.get_attributes(uid, ["x-Vendor", "x-Product"])}
    assert got == {"x-Vendor": "vmcrypt project", "x-Product": "vmcrypt"}
    client.add_attributes(uid, {"x-Component": "Virtual Machine", "x-Name": "vm-1",
                                "x-Identifier": "4210c8a0-0000-0000-0000-000000000001"})
    names = client.get_attribute_list(uid)
    assert {"x-Vendor", "x-Product_Version", "x-Component", "x-Name", "x-Identifier",
            "Cryptographic Length", "State"} <= set(names)
    client.modify_attribute(uid, "x-Name", "vm-1-renamed")
    assert client.get_attributes(uid, ["x-Name"])[0].python == "vm-1-renamed"
    assert client.add_attribute(uid, "x-Tag", "first") == 0
    assert client.add_attribute(uid, "x-Tag", "second") == 1
    tags = client.get_attributes(uid, ["x-Tag"])
    assert [(a.index, a.python) for a in tags] == [(0, "first"), (1, "second")]
    client.modify_attribute(uid, "x-Tag", "second, changed", index=1)
    client.delete_attribute(uid, "x-Tag", index=0)
    assert [a.python for a in client.get_attributes(uid, ["x-Tag"])] == ["second, changed"]
    client.delete_attribute(uid, "x-Name")
    assert "x-Name" not in client.get_attribute_list(uid)
    # Typed values survive too; an absent name is simply not returned.
    client.add_attribute(uid, "x-Count", 7)
    assert [a.python for a in client.get_attributes(uid, ["x-Count", "x-Absent"])] == [7]


def test_attribute_failures_raise(client: KmipClient) -> None:
    uid = client.create_symmetric_key()
    with pytest.raises(OperationFailed) as missing:
        client.modify_attribute(uid, "x-Never-Set", "v")
    assert missing.value.reason is ResultReason.ITEM_NOT_FOUND
    with pytest.raises(OperationFailed) as server_only:
        client.add_attributes(uid, {"x-Fine": "a", "y-Server-Only": "b"})
    assert server_only.value.reason is ResultReason.PERMISSION_DENIED
    assert server_only.value.operation == "AddAttribute"


def test_locate_by_custom_attribute(client: KmipClient) -> None:
    mine = [client.create_symmetric_key(attributes={"x-Owner": "team-a"}) for _ in range(5)]
    client.create_symmetric_key(attributes={"x-Owner": "team-b"})
    assert client.locate(attributes={"x-Owner": "team-a"}) == mine
    assert client.locate(attributes={"x-Owner": "team-a"}, maximum_items=2) == mine[:2]
    assert client.locate(attributes=[attribute("x-Owner", "team-a")], maximum_items=2,
                         offset_items=3) == mine[3:]
    assert client.locate(attributes={"x-Owner": "nobody"}) == []


def test_send_returns_raw_results(client: KmipClient) -> None:
    create = RequestBatchItem(Operation.CREATE, structure(
        Tag.REQUEST_PAYLOAD, enum(Tag.OBJECT_TYPE, ObjectType.CERTIFICATE)))
    [result] = client.send([create])
    assert result.status is ResultStatus.OPERATION_FAILED
    assert result.reason is ResultReason.INVALID_FIELD


# -- batches ----------------------------------------------------------------------------


def test_get_keys_in_several_messages(client: KmipClient,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    material = [os.urandom(32) for _ in range(1200)]
    uids = [client.register_symmetric_key(key) for key in material]
    messages: list[int] = []
    send = client.send

    def counting_send(items: Sequence[RequestBatchItem], **kwargs: Any) -> Any:
        messages.append(len(items))
        return send(items, **kwargs)

    monkeypatch.setattr(client, "send", counting_send)
    assert client.get_keys(uids, batch_size=500) == material
    assert messages == [500, 500, 200]
    monkeypatch.undo()
    assert client.get_keys(list(reversed(uids[:10]))) == list(reversed(material[:10]))
    assert client.get_keys([]) == []
    with pytest.raises(OperationFailed) as caught:
        client.get_keys([uids[0], "missing-in-the-middle", uids[1]])
    assert isinstance(caught.value, ItemFailed)
    assert caught.value.uid == "missing-in-the-middle"
    assert caught.value.reason is ResultReason.ITEM_NOT_FOUND


def test_one_client_many_threads(client: KmipClient) -> None:
    uids = [client.create_symmetric_key() for _ in range(4)]
    expected = {uid: client.get_key(uid) for uid in uids}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                for uid in uids:
                    assert client.get_key(uid) == expected[uid]
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- connections ------------------------------------------------------------------------


def test_reconnects_after_server_restart(pki: PkiLayout, tmp_path: Path,
                                         master_key: bytes) -> None:
    port = _free_port()
    first = start_server(_config(pki, tmp_path / "kms.db", port=port), master_key)
    with _client(pki, port) as kmip:
        uid = kmip.create_symmetric_key()
        key = kmip.get_key(uid)
        first.shutdown()
        second = start_server(_config(pki, tmp_path / "kms.db", port=port), master_key)
        try:
            assert kmip.get_key(uid) == key
        finally:
            second.shutdown()
        with pytest.raises(KmipConnectionError, match="refused"):
            kmip.get_key(uid)


def test_reconnects_after_idle_close(pki: PkiLayout, tmp_path: Path, master_key: bytes) -> None:
    kms = start_server(_config(pki, tmp_path / "kms.db", idle_timeout=0.2), master_key)
    try:
        with _client(pki, kms.address[1]) as kmip:
            uid = kmip.create_symmetric_key()
            time.sleep(0.5)
            assert len(kmip.get_key(uid)) == 32
    finally:
        kms.shutdown()


def test_wrong_ca_is_a_connection_error(pki: PkiLayout, other_pki: PkiLayout,
                                        server: KmsServer) -> None:
    with _client(pki, server.address[1], ca=other_pki.ca.cert) as kmip, pytest.raises(
            KmipConnectionError, match=r"127\.0\.0\.1:\d+.*certificate was not accepted"):
        kmip.discover_versions()


def test_hostname_mismatch_is_a_connection_error(pki: PkiLayout, server: KmsServer) -> None:
    with _client(pki, server.address[1], server_hostname="kms.example.org") as kmip, \
            pytest.raises(KmipConnectionError, match=r"kms\.example\.org"):
        kmip.connect()


def test_client_without_certificate_is_refused(pki: PkiLayout, server: KmsServer) -> None:
    context = client_context(ca_file=pki.ca.cert)
    with KmipClient("127.0.0.1", server.address[1], ssl_context=context, timeout=2) as kmip, \
            pytest.raises(KmipConnectionError, match=r"127\.0\.0\.1:\d+ closed the connection "
                          r"right after the TLS handshake"):
        kmip.query()


def test_server_not_listening_fails_fast(pki: PkiLayout) -> None:
    started = time.monotonic()
    with _client(pki, _free_port()) as kmip, pytest.raises(
            KmipConnectionError, match="refused the connection; check that the key server"):
        kmip.get_key("k")
    assert time.monotonic() - started < 2


def test_unresolvable_host(pki: PkiLayout) -> None:
    context = client_context(ca_file=pki.ca.cert)
    with KmipClient("kms.invalid", ssl_context=context, timeout=2) as kmip, pytest.raises(
            KmipConnectionError, match=r"cannot resolve the KMIP server host 'kms\.invalid'"):
        kmip.connect()


def test_silent_server_times_out(pki: PkiLayout) -> None:
    """A port that accepts TCP but never speaks TLS: the handshake is bounded by timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        started = time.monotonic()
        with _client(pki, listener.getsockname()[1], timeout=0.3) as kmip, pytest.raises(
                KmipConnectionError, match=r"timed out after 0\.3 s"):
            kmip.connect()
        assert time.monotonic() - started < 2


def test_attributes_from_sequence(client: KmipClient) -> None:
    given = [attribute("x-Vendor", "v"), Attribute("x-Product", attribute("x-Product", "p").value)]
    uid = client.create_symmetric_key(attributes=given)
    assert sorted(a.name for a in client.get_attributes(uid, ["x-Vendor", "x-Product"])) == [
        "x-Product", "x-Vendor"]


def test_cached_request_encodings_match_the_built_ones() -> None:
    """The Create and Get fast paths send exactly the bytes the item builders encode."""
    from vmcrypt.kmip import client as client_module
    from vmcrypt.kmip.items import structure as build
    from vmcrypt.kmip.messages import ProtocolVersion as Version
    from vmcrypt.kmip.messages import RequestBatchItem as Batch
    from vmcrypt.kmip.messages import build_request as request
    from vmcrypt.kmip.tags import Operation as Op
    from vmcrypt.kmip.tags import Tag as T
    from vmcrypt.kmip.ttlv import encode as enc

    for version in (Version(1, 0), Version(1, 2), Version(1, 4)):
        for uid in ("1", "01a2105f-0e7c-7e43-8a0f-8f1d2f5c3e11", "x" * 100, "ключ-7", "y" * 300):
            assert client_module._get_request(version, uid) == client_module._encoded_get(
                version, uid)
        built = enc(request(version, [Batch(Op.CREATE, build(
            T.REQUEST_PAYLOAD, client_module._SYMMETRIC_KEY,
            client_module._plain_aes_template(128, 4)))]))
        assert client_module._plain_create_request(version, 128, 4) == built
