"""The KMIP client against PyKMIP's server (``pykmip-server``), a peer we did not write.

PyKMIP's server is started as a real subprocess with a configuration written here:
TLS 1.2 auth suite, client certificates required, its own SQLite database. It speaks
KMIP 1.0-2.0 and answers our 1.2 messages; the operations checked are those vCenter
uses against a standard key provider.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmcrypt.kmip.client import KmipClient
from vmcrypt.kmip.exceptions import OperationFailed
from vmcrypt.kmip.messages import ProtocolVersion
from vmcrypt.kmip.tags import ResultReason, State
from vmcrypt.pki import PkiLayout, client_context, init_pki

PYKMIP_SERVER = Path(sys.executable).parent / "pykmip-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"pykmip-server exited with {process.returncode}: "
                        f"{log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"pykmip-server did not listen on {port} within 20 s")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    # RSA: PyKMIP's TLS1.2 auth suite lists RSA and ECDSA suites, but RSA is its tested path.
    return init_pki(tmp_path_factory.mktemp("pki"), key_type="rsa")


@pytest.fixture(scope="module")
def pykmip_port(pki: PkiLayout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not PYKMIP_SERVER.exists():
        pytest.fail(f"{PYKMIP_SERVER} is missing: PyKMIP is a dev dependency")
    work = tmp_path_factory.mktemp("pykmip")
    (work / "policies").mkdir()
    port = _free_port()
    config = work / "server.conf"
    config.write_text(
        "[server]\n"
        "hostname=127.0.0.1\n"
        f"port={port}\n"
        f"certificate_path={pki.server.cert}\n"
        f"key_path={pki.server.key}\n"
        f"ca_path={pki.ca.cert}\n"
        "auth_suite=TLS1.2\n"
        f"policy_path={work / 'policies'}\n"
        "enable_tls_client_auth=True\n"
        "logging_level=INFO\n"
        f"database_path={work / 'pykmip.db'}\n"
    )
    log = work / "server.log"
    process = subprocess.Popen(
        [str(PYKMIP_SERVER), "-f", str(config), "-l", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        start_new_session=True,  # its policy monitor is a child process: kill the group
    )
    try:
        _wait_listening(port, process, log)
        yield port
    finally:
        # SIGKILL to the whole group: its database is a throw-away file, on SIGTERM PyKMIP
        # waits for its connection threads for up to ten seconds, and killing only the
        # server left its policy-monitor process running after the tests.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def client(pki: PkiLayout, pykmip_port: int) -> Iterator[KmipClient]:
    admin = pki.clients["admin"]
    context = client_context(ca_file=pki.ca.cert, cert_file=admin.cert, key_file=admin.key)
    with KmipClient("127.0.0.1", pykmip_port, ssl_context=context, timeout=10) as kmip:
        yield kmip


def _state(client: KmipClient, uid: str) -> object:
    [state] = client.get_attributes(uid, ["State"])
    return state.python


def test_discover_versions(client: KmipClient) -> None:
    assert ProtocolVersion(1, 2) in client.discover_versions()
    assert client.query().vendor is not None


def test_create_get_and_attributes(client: KmipClient) -> None:
    uid = client.create_symmetric_key(name="vmcrypt-interop-create")
    key = client.get_key(uid)
    assert len(key) == 32
    assert client.get_key(uid) == key
    attributes = {a.name: a.python for a in client.get_attributes(uid)}
    assert attributes["Cryptographic Length"] == 256
    assert attributes["Name"] == "vmcrypt-interop-create"
    assert attributes["State"] == State.PRE_ACTIVE
    named = client.get_attributes(uid, ["Cryptographic Algorithm", "Name"])
    assert sorted(a.name for a in named) == ["Cryptographic Algorithm", "Name"]
    assert "Cryptographic Usage Mask" in client.get_attribute_list(uid)


def test_locate_by_name(client: KmipClient) -> None:
    uid = client.create_symmetric_key(name="vmcrypt-interop-locate")
    assert client.locate(name="vmcrypt-interop-locate") == [uid]
    assert client.locate(name="vmcrypt-interop-nothing") == []


def test_life_cycle(client: KmipClient) -> None:
    uid = client.create_symmetric_key()
    client.activate(uid)
    assert _state(client, uid) == State.ACTIVE
    client.revoke(uid, message="interop")
    assert _state(client, uid) == State.DEACTIVATED
    client.destroy(uid)
    with pytest.raises(OperationFailed) as caught:
        client.get_key(uid)
    assert caught.value.reason is ResultReason.ITEM_NOT_FOUND


def test_unknown_uid(client: KmipClient) -> None:
    with pytest.raises(OperationFailed) as caught:
        client.get_key("999999")
    assert caught.value.reason is ResultReason.ITEM_NOT_FOUND
    assert "'999999'" in str(caught.value)


def test_register_and_batched_get(client: KmipClient) -> None:
    material = [os.urandom(32) for _ in range(3)]
    uids = [client.register_symmetric_key(key) for key in material]
    assert client.get_keys(uids) == material
