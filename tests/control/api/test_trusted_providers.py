"""The control plane's trusted key provider flow, in-process, against a real KMS.

The control plane app, the host agent and the Trust Authority run in this process (the
Trust Authority of :mod:`tests.host.test_trusted`: provider ``tp1``, baseline ``b1``,
host ``esx-1``); the control plane's Trust Authority client goes through Starlette's
TestClient with CN ``vcenter`` instead of TLS (the TLS path is
``tests/integration/test_trusted_flow.py``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from tests.control.api.conftest import InProcessHosts
from tests.host.test_trusted import GOOD, HOST, HW, Authority, kms, kms_pki  # noqa: F401
from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import EncryptionRecord, Event
from vmcrypt.control.services import trusted as service
from vmcrypt.host.api.app import create_app as create_host_app
from vmcrypt.host.api.state import HostState
from vmcrypt.host.datastore import Datastore
from vmcrypt.host.trust import cache_key_id
from vmcrypt.kms.server import KmsServer
from vmcrypt.pki.layout import PkiLayout
from vmcrypt.trust.client import TrustClient

SIZE = 64 * 1024


class TrustedHosts(InProcessHosts):
    """In-process hosts that attest to ``authority`` (one host: ``esx-1``)."""

    def __init__(self, datastore: Path, authority: Authority) -> None:
        super().__init__(datastore)
        self.authority = authority

    def start(self, name: str) -> HostState:
        state = HostState(name=name, hardware_uuid=HW, datastore=Datastore(self.datastore),
                          trust=self.authority.link())
        self.states[name] = state
        self._apps[name] = create_host_app(state)
        return state


@pytest.fixture
def authority(tmp_path: Path, kms: KmsServer, kms_pki: PkiLayout,  # noqa: F811
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Authority]:
    (tmp_path / "trust").mkdir()
    made = Authority(tmp_path / "trust", kms, kms_pki)

    def client(url: str, **_files: Any) -> TrustClient:
        return TrustClient.over(made.peer("vcenter", "https://trust/api/v1"), url)

    monkeypatch.setattr(service, "TrustClient", client)
    yield made
    made.close()


@pytest.fixture
def ta_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("ca_file", "cert_file", "key_file"):
        path = tmp_path / f"ta-{name}.pem"
        path.write_text("placeholder: the in-process client does not read it\n")
        files[name] = str(path)
    return {"url": "https://trust.local:8443", **files}


@pytest.fixture
def world(database: Database, master_key: bytes, tokens: dict[str, str], tmp_path: Path,
          authority: Authority, ta_files: dict[str, str]) -> Iterator[dict[str, Any]]:
    (tmp_path / "ds").mkdir()
    hosts = TrustedHosts(tmp_path / "ds", authority)
    app = create_app(database, master_key=master_key, hosts=hosts)
    with TestClient(app, base_url="http://control") as http:
        http.headers["Authorization"] = f"Bearer {tokens['admin']}"

        def ok(method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
            answer = http.request(method, f"/api/v1{path}", **kwargs)
            assert answer.status_code == status, answer.text
            return answer.json() if answer.content else None

        cluster = ok("POST", "/clusters", 201, json={"name": "trusted"})["id"]
        host = ok("POST", "/hosts", 201, json={"name": HOST, "hardware_uuid": HW,
                                               "cluster_id": cluster,
                                               "api_url": "https://esx-1:8443"})["id"]
        datastore = ok("POST", "/datastores", 201, json={
            "name": "ds", "path": str(tmp_path / "ds"), "cluster_id": cluster})["id"]
        policy = ok("POST", "/storage-policies", 201, json={"name": "enc", "encryption": True})
        yield {"http": http, "ok": ok, "cluster": cluster, "host": host, "hosts": hosts,
               "datastore": datastore, "policy": policy["id"], "database": database,
               "authority": authority, "ta": ta_files}


def _events(database: Database, kind: str) -> list[Event]:
    with database.transaction() as session:
        rows = list(session.scalars(select(Event).where(Event.type == kind)))
        session.expunge_all()
        return rows


def _register(world: dict[str, Any]) -> int:
    ok = world["ok"]
    published = ok("GET", "/key-providers/trusted/published", params=world["ta"])
    assert [(p["name"], p["registered"]) for p in published] == [("tp1", False)]
    row = ok("POST", "/key-providers/trusted", 201, json={"name": "tp1", **world["ta"]})
    assert row["kind"] == "trusted" and row["kms_servers"][0]["address"] == "trust.local"
    assert ok("GET", "/key-providers/trusted/published")[0]["registered"] is True
    ok("PUT", f"/clusters/{world['cluster']}/default-key-provider",
       json={"key_provider_id": row["id"]})
    return int(row["id"])


def _create(world: dict[str, Any], name: str, status: int = 201) -> Any:
    return world["ok"]("POST", "/vms", status, json={
        "name": name, "datastore_id": world["datastore"], "host_id": world["host"],
        "disks": [SIZE], "storage_policy_id": world["policy"]})


def test_register_and_cluster_default(world: dict[str, Any]) -> None:
    ok, http = world["ok"], world["http"]
    missing = http.post("/api/v1/key-providers/trusted", json={"name": "nope", **world["ta"]})
    assert missing.status_code == 404, missing.text
    provider = _register(world)
    listed = ok("GET", "/key-providers/trusted")
    assert listed == [{"id": provider, "name": "tp1", "url": "https://trust.local:8443",
                       "is_default": False, "default_for_clusters": [world["cluster"]],
                       "created_at": listed[0]["created_at"]}]
    again = http.post("/api/v1/key-providers/trusted", json={"name": "tp1", **world["ta"]})
    assert again.status_code == 409
    assert len(_events(world["database"], "trust.provider.added")) == 1


def test_create_pushes_no_key_and_records_the_ciphertext(world: dict[str, Any],
                                                         db_path: Path) -> None:
    ok = world["ok"]
    _register(world)
    vm = _create(world, "vm-t")
    assert vm["encrypted"] and not vm["locked"]
    assert vm["key_ids"] == {"home": None, "disk-0": None}  # no key ID: the keySafe has it
    state: HostState = world["hosts"].states[HOST]
    with world["database"].transaction() as session:
        records = list(session.scalars(select(EncryptionRecord)))
        assert len(records) == 2 and all(r.key_id is None for r in records)
        ciphertext = records[0].wrapped_kek
        assert ciphertext is not None and len(ciphertext) == 61
    kek = state.cache.get_kek("tp1", cache_key_id(ciphertext))
    # The KEK went host ← Key Provider Service only: not in the control plane's database.
    db_bytes = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    for form in (kek, kek.hex().encode(), base64.b64encode(kek)):
        assert form not in db_bytes
    attestation = ok("GET", f"/hosts/{world['host']}/attestation")
    assert attestation["state"] == "attested" and attestation["baseline"] == "b1"
    assert len(_events(world["database"], "trust.attestation.passed")) == 1
    ok("GET", f"/hosts/{world['host']}/attestation")  # no change: no new event
    assert len(_events(world["database"], "trust.attestation.passed")) == 1
    # Unregistering drops the VM's trusted KEK from the host's cache (files stay).
    other = _create(world, "vm-u")
    cached = len(state.cache.key_ids())
    ok("POST", f"/vms/{other['id']}/unregister")
    assert len(state.cache.key_ids()) == cached - 1
    ok("DELETE", f"/vms/{vm['id']}", 204)
    assert state.cache.key_ids() == []


def test_untrusted_host_locks_its_vms_until_restored(world: dict[str, Any]) -> None:
    ok, authority, hosts = world["ok"], world["authority"], world["hosts"]
    _register(world)
    vm = _create(world, "vm-t")
    authority.measurements["vmcrypt"] = "c" * 64  # a changed file
    hosts.start(HOST)  # the host restarts with the changed file: no token, no KEK
    refused = _create(world, "vm-2", 409)
    assert "'vmcrypt' does not match any approved baseline" in refused["message"]
    failed = _events(world["database"], "trust.attestation.failed")
    assert len(failed) == 1 and "'vmcrypt'" in failed[0].details["reason"]
    status = ok("POST", f"/hosts/{world['host']}/attestation")
    assert status["state"] == "failed" and status["code"] == "host_not_attested"
    locked = ok("GET", f"/vms/{vm['id']}")
    assert locked["locked"] and locked["lock_reason"] == "host_not_attested"
    lock = _events(world["database"], "vm.locked")[-1]
    assert "'vmcrypt' does not match" in lock.message
    # A reconnect pushes standard KEKs; it must not clear an attestation lock.
    ok("POST", f"/hosts/{world['host']}/reconnect")
    assert ok("GET", f"/vms/{vm['id']}")["lock_reason"] == "host_not_attested"
    authority.measurements.update(GOOD)  # restored
    assert ok("POST", f"/hosts/{world['host']}/attestation")["state"] == "attested"
    assert not ok("GET", f"/vms/{vm['id']}")["locked"]
    assert _create(world, "vm-3")["encrypted"]


def test_provider_unavailable_to_the_host(world: dict[str, Any], kms: KmsServer) -> None:  # noqa: F811
    _register(world)
    vm = _create(world, "vm-t")
    world["hosts"].start(HOST)  # restarted: it must have the KEK ciphertext unwrapped
    kms.shutdown()  # the provider's key server is down
    refused = _create(world, "vm-2", 409)
    assert "unavailable" in refused["message"]
    events = _events(world["database"], "trust.provider.unavailable")
    assert len(events) == 1 and events[0].details["provider"] == "tp1"
    data = world["http"].get(f"/api/v1/vms/{vm['id']}/disks/0/data",
                             params={"offset": 0, "length": 16})
    assert data.status_code >= 400 and "unavailable" in data.text


def test_key_provider_service_down_locks_and_its_return_unlocks(world: dict[str, Any]) -> None:
    """The Trust Authority stops while a restarted host has a trusted VM to open: the VM is
    locked ``trusted_provider_unavailable`` with an event; when the service is back, the
    host attests again, the VM unlocks and its data reads back."""
    ok, authority, hosts = world["ok"], world["authority"], world["hosts"]
    _register(world)
    vm = _create(world, "vm-t")
    data = b"kept across the outage" * 50
    put = world["http"].put(f"/api/v1/vms/{vm['id']}/disks/0/data", params={"offset": 0},
                            content=data)
    assert put.status_code == 200, put.text
    authority.down = True
    hosts.start(HOST)  # restarted: no token, no KEK, and the service does not answer
    status = ok("POST", f"/hosts/{world['host']}/attestation")
    assert status["state"] == "failed" and status["code"] == "trusted_provider_unavailable"
    locked = ok("GET", f"/vms/{vm['id']}")
    assert locked["locked"] and locked["lock_reason"] == "trusted_provider_unavailable"
    assert _events(world["database"], "trust.provider.unavailable")
    authority.down = False
    assert ok("POST", f"/hosts/{world['host']}/attestation")["state"] == "attested"
    assert not ok("GET", f"/vms/{vm['id']}")["locked"]
    got = world["http"].get(f"/api/v1/vms/{vm['id']}/disks/0/data",
                            params={"offset": 0, "length": len(data)})
    assert got.status_code == 200 and got.content == data
