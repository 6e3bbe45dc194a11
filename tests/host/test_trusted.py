"""The host side of the trusted key provider flow, in-process against a real KMS.

The host API and the Trust Authority API both run in-process (Starlette's TestClient);
the Trust Authority's provider pool talks KMIP over TLS to an in-process KMS. A host
"restart" is a new :class:`HostState` (empty key cache, new token) over the same
datastore; "tampering" changes the measurements the host signs.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from vmcrypt.host import Datastore
from vmcrypt.host.api import HostState, create_app
from vmcrypt.host.trust import TrustLink, cache_key_id
from vmcrypt.kms.server import KmsConfig, KmsServer
from vmcrypt.pki.layout import PkiLayout, init_pki
from vmcrypt.trust.api import create_app as create_trust_app
from vmcrypt.trust.attestation import NonceStore, TokenIssuer
from vmcrypt.trust.client import TrustClient
from vmcrypt.trust.config import ConfigStore
from vmcrypt.trust.config import KmsServer as KmsServerEntry
from vmcrypt.trust.events import EventLog
from vmcrypt.trust.measure import build_evidence, public_key_pem
from vmcrypt.trust.providers import ProviderPool
from vmcrypt.trust.service import TrustService

GOOD = {"vmcrypt": "a" * 64, "config": "b" * 64}
HOST = "esx-1"
HW = str(uuid.UUID(int=7))
SIZE = 64 * 1024


@pytest.fixture(scope="module")
def kms_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    return init_pki(tmp_path_factory.mktemp("kms-pki"), key_type="ec", clients=("trust",))


@pytest.fixture
def kms(kms_pki: PkiLayout, tmp_path: Path) -> Iterator[KmsServer]:
    config = KmsConfig(database=tmp_path / "kms.db", cert_file=kms_pki.server.cert,
                       key_file=kms_pki.server.key, ca_file=kms_pki.ca.cert, port=0)
    server = KmsServer(config, master_key=os.urandom(32))
    server.start()
    yield server
    server.shutdown()


class Authority:
    """An in-process Trust Authority with provider ``tp1``, baseline GOOD and host esx-1."""

    def __init__(self, tmp: Path, kms: KmsServer, kms_pki: PkiLayout) -> None:
        self.service = TrustService(
            config=ConfigStore(tmp / "trust.json"), events=EventLog(tmp / "events.jsonl"),
            issuer=TokenIssuer(ec.generate_private_key(ec.SECP256R1()), ttl=600),
            nonces=NonceStore(ttl=60), providers=ProviderPool(timeout=2), admins=("admin",))
        self.app = create_trust_app(self.service)
        self.identity = ec.generate_private_key(ec.SECP256R1())
        self.measurements = dict(GOOD)
        self.down = False  # True: the service does not answer (a stopped process)
        self.clients: list[TestClient] = []
        admin = self.peer("admin", "https://trust")
        client = kms_pki.clients["trust"]
        entry = KmsServerEntry(host="127.0.0.1", port=kms.address[1],
                               ca_file=str(kms_pki.ca.cert), cert_file=str(client.cert),
                               key_file=str(client.key))
        for path, body in (
                ("/api/v1/baselines", {"name": "b1", "measurements": GOOD}),
                ("/api/v1/key-providers", {"name": "tp1", "servers": [vars(entry)]}),
                ("/api/v1/hosts", {"name": HOST, "hardware_uuid": HW,
                                   "public_key_pem": public_key_pem(self.identity)})):
            answer = admin.post(path, json=body)
            assert answer.status_code == 201, answer.text

    def peer(self, cn: str, base_url: str) -> TestClient:
        app = self.app

        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            if self.down and scope["type"] == "http":
                raise httpx.ConnectError("connection refused (the Trust Authority is down)")
            if scope["type"] == "http":  # where the TLS server puts the verified CN
                scope.setdefault("extensions", {})["tls"] = {"client_cert_cn": cn}
            await app(scope, receive, send)

        client = TestClient(wrapped, base_url=base_url)
        self.clients.append(client)
        return client

    def link(self) -> TrustLink:
        """A fresh link, as a (re)started host process has."""
        def evidence(nonce: str) -> dict[str, str]:
            return build_evidence(key=self.identity, host_name=HOST, hardware_uuid=HW,
                                  nonce=nonce, measurements=dict(self.measurements))

        api = TrustClient.over(self.peer(HOST, "https://trust/api/v1"))
        return TrustLink(api, evidence=evidence, url="https://trust")

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.service.providers.close()


@pytest.fixture
def authority(tmp_path: Path, kms: KmsServer, kms_pki: PkiLayout) -> Iterator[Authority]:
    made = Authority(tmp_path, kms, kms_pki)
    yield made
    made.close()


@pytest.fixture
def boot(tmp_path: Path, authority: Authority) -> Iterator[Callable[..., TestClient]]:
    """Start (or restart) the host: same datastore, empty cache, new Trust Authority link."""
    clients: list[TestClient] = []

    def start(*, trusted: bool = True) -> TestClient:
        state = HostState(name=HOST, hardware_uuid=HW, datastore=Datastore(tmp_path / "ds"),
                          trust=authority.link() if trusted else None)
        client = TestClient(create_app(state), base_url="https://esx-1/api/v1")
        client.state = state
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()


def _create(host: TestClient, name: str = "vm-t") -> dict[str, Any]:
    answer = host.post("/vms", json={"name": name, "disks": [{"size": SIZE}],
                                     "encryption": {"provider_id": "tp1", "trusted": True}})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def _write(host: TestClient, vm_id: str, data: bytes) -> None:
    answer = host.put(f"/vms/{vm_id}/disks/0/data", params={"offset": 0}, content=data)
    assert answer.status_code == 200, answer.text


def _read(host: TestClient, vm_id: str, length: int) -> Any:
    return host.get(f"/vms/{vm_id}/disks/0/data", params={"offset": 0, "length": length})


def test_create_stores_the_kek_ciphertext_and_caches_the_kek(
        boot: Callable[..., TestClient], authority: Authority, tmp_path: Path) -> None:
    host = boot()
    assert host.get("/health").json()["attestation"]["state"] == "unset"
    vm = _create(host)
    home = vm["home"]
    assert not home["native"] and home["key_on_host"]
    assert home["key_id"] is None
    ciphertext = base64.b64decode(home["wrapped_kek"])
    assert len(ciphertext) == 61 and ciphertext[0] == 1  # the service's KEK ciphertext
    assert vm["disks"][0]["encryption"]["wrapped_kek"] == home["wrapped_kek"]
    state: HostState = host.state
    kek = state.cache.get_kek("tp1", cache_key_id(ciphertext))
    health = host.get("/health").json()
    assert health["attestation"]["state"] == "attested"
    assert health["attestation"]["baseline"] == "b1" and health["keks"] == 1
    _write(host, vm["id"], b"trusted data" * 100)
    # The KEK is nowhere on the datastore: only its ciphertext and wrapped DEKs are.
    for path in (tmp_path / "ds").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert kek not in blob and kek.hex().encode() not in blob
            assert base64.b64encode(kek) not in blob


def test_restart_reattests_and_unwraps(boot: Callable[..., TestClient]) -> None:
    host = boot()
    vm = _create(host)
    _write(host, vm["id"], b"x" * 4096)
    again = boot()  # a restart: empty cache, no token
    assert again.get("/health").json()["keks"] == 0
    answer = _read(again, vm["id"], 4096)
    assert answer.status_code == 200 and answer.content == b"x" * 4096
    health = again.get("/health").json()
    assert health["attestation"]["state"] == "attested" and health["keks"] == 1


def test_tampered_host_gets_no_key_until_restored(
        boot: Callable[..., TestClient], authority: Authority) -> None:
    host = boot()
    vm = _create(host)
    _write(host, vm["id"], b"y" * 4096)
    authority.measurements["vmcrypt"] = "c" * 64  # a changed file changes the measurement
    tampered = boot()
    answer = _read(tampered, vm["id"], 4096)
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert body["error"] == "host_not_attested"
    assert "'vmcrypt' does not match any approved baseline" in body["reason"]
    status = tampered.get("/health").json()["attestation"]
    assert status["state"] == "failed" and "'vmcrypt'" in status["reason"]
    assert status["code"] == "host_not_attested"
    refused = tampered.post("/vms", json={"name": "vm-2", "encryption": {
        "provider_id": "tp1", "trusted": True}})
    assert refused.status_code == 409 and refused.json()["error"] == "host_not_attested"
    assert tampered.get("/trusted-providers/tp1").status_code == 409
    authority.measurements.update(GOOD)  # restored
    assert tampered.post("/attestation").json()["state"] == "attested"
    assert _read(tampered, vm["id"], 4096).content == b"y" * 4096


def test_provider_check_and_unavailable_reasons(
        boot: Callable[..., TestClient], kms: KmsServer) -> None:
    host = boot()
    answer = host.get("/trusted-providers/tp1")
    assert answer.status_code == 200, answer.text
    assert answer.json()["reachable"] and answer.json()["attestation"]["state"] == "attested"
    missing = host.get("/trusted-providers/nope")
    assert missing.status_code == 503
    assert missing.json()["error"] == "trusted_provider_unavailable"
    assert "does not publish" in missing.json()["reason"]
    vm = _create(host)
    restarted = boot()
    kms.shutdown()  # the key server is down: the service cannot unwrap
    answer = _read(restarted, vm["id"], 16)
    assert answer.status_code == 503 and answer.json()["error"] == "trusted_provider_unavailable"
    assert "unavailable" in answer.json()["reason"]


def test_without_a_trust_authority(boot: Callable[..., TestClient]) -> None:
    host = boot(trusted=False)
    answer = host.post("/vms", json={"name": "vm-n", "encryption": {
        "provider_id": "tp1", "trusted": True}})
    assert answer.status_code == 503 and "no Trust Authority" in answer.json()["reason"]
    assert host.get("/health").json()["attestation"] == {
        "state": "unset", "reason": None, "at": None, "baseline": None, "expires_at": None,
        "url": None, "code": None}
    bad = host.post("/vms", json={"name": "vm-n", "encryption": {
        "provider_id": "tp1", "key_id": "k", "trusted": True}})
    assert bad.status_code == 422


def test_delete_and_unregister_drop_the_kek(boot: Callable[..., TestClient]) -> None:
    host = boot()
    one, two = _create(host, "vm-1"), _create(host, "vm-2")
    assert host.get("/health").json()["keks"] == 2
    removed = host.post(f"/vms/{one['id']}/unregister").json()["removed_keys"]
    assert [k["provider_id"] for k in removed] == ["tp1"]
    assert host.delete(f"/vms/{two['id']}").status_code == 204
    assert host.get("/health").json()["keks"] == 0
    assert host.get("/keys").json()["keks"] == []


def test_token_kept_until_it_expires_then_attests_again(authority: Authority) -> None:
    now = [time.time()]
    base = authority.link()
    link = TrustLink(base._api, evidence=base._evidence, clock=lambda: now[0])
    kek, ciphertext = link.new_kek("tp1")
    first = link.status()
    assert first.state == "attested" and first.expires_at is not None
    now[0] += 60
    assert link.unwrap("tp1", ciphertext) == kek
    assert link.status() == first  # the same token: no new attestation
    now[0] = first.expires_at + 1  # expired (the service would refuse it too)
    assert link.unwrap("tp1", ciphertext) == kek
    assert link.status().at == now[0]  # attested again
