"""The seeds' standard flow end to end, in process: control API, two hosts, a real KMS.

The control app is called through ``httpx.ASGITransport``; it reaches the two host
agents of one cluster (sharing one datastore folder) through Starlette's TestClient,
and a real ``vmcrypt kms`` server over mutual TLS on a local port.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from tests.control.api.conftest import auth
from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import Host
from vmcrypt.control.hostclient import HostClient
from vmcrypt.host.api.app import create_app as create_host_app
from vmcrypt.host.api.state import HostState
from vmcrypt.host.datastore import Datastore
from vmcrypt.kms.server import KmsConfig, KmsServer
from vmcrypt.pki import PkiLayout, init_pki
from vmcrypt.providers import KekRef, KmsServerConfig, StandardKeyProvider

API = "/api/v1"
DISK = 1 << 20
KMS_MASTER_KEY = os.urandom(32)


class Hosts:
    """The connector: host name → an in-process host app (replaceable: a restart)."""

    def __init__(self, datastore: Path) -> None:
        self.datastore = datastore
        self.apps: dict[str, FastAPI] = {}
        self.states: dict[str, HostState] = {}

    def start(self, name: str) -> None:
        """A host with an empty key cache on the shared datastore (a fresh process)."""
        state = HostState(name=name, hardware_uuid=str(uuid.uuid4()),
                          datastore=Datastore(self.datastore))
        self.states[name] = state
        self.apps[name] = create_host_app(state)

    def client(self, host: Host) -> HostClient:
        return HostClient(host.name, TestClient(self.apps[host.name], base_url="http://h"))

    def kek_ids(self, name: str) -> list[str]:
        return sorted(k for _p, k in self.states[name].cache.key_ids())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    return init_pki(tmp_path_factory.mktemp("pki"), key_type="ec")


@pytest.fixture
def kms(pki: PkiLayout, tmp_path: Path) -> Iterator[KmsServer]:
    config = KmsConfig(database=tmp_path / "kms.db", cert_file=pki.server.cert,
                       key_file=pki.server.key, ca_file=pki.ca.cert, port=0)
    server = KmsServer(config, master_key=KMS_MASTER_KEY)
    server.start()
    yield server
    server.shutdown()


@pytest.fixture
def hosts(tmp_path: Path) -> Hosts:
    (tmp_path / "ds").mkdir()
    connector = Hosts(tmp_path / "ds")
    connector.start("esx-a")
    connector.start("esx-b")
    return connector


@pytest.fixture
async def control(database: Database, master_key: bytes,
                  hosts: Hosts) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(database, master_key=master_key, hosts=hosts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://control") as c:
        yield c


async def _setup(control: httpx.AsyncClient, token: str, pki: PkiLayout,
                 port: int, datastore: Path) -> dict[str, int]:
    admin = auth(token)

    async def post(path: str, body: object) -> int:
        response = await control.post(API + path, json=body, headers=admin)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    ids = {"cluster": await post("/clusters", {"name": "c1"})}
    for name in ("esx-a", "esx-b"):
        ids[name] = await post("/hosts", {"name": name, "hardware_uuid": str(uuid.uuid4()),
                                          "cluster_id": ids["cluster"],
                                          "api_url": f"https://{name}:8443"})
    ids["datastore"] = await post("/datastores", {"name": "ds", "path": str(datastore),
                                                  "cluster_id": ids["cluster"]})
    client = pki.clients["admin"]
    ids["provider"] = await post("/key-providers/standard", {
        "name": "kmip", "is_default": True, "kms_servers": [{
            "name": "kms1", "address": "127.0.0.1", "port": port,
            "ca_pem": pki.ca.cert.read_text(), "client_cert_pem": client.cert.read_text(),
            "client_key_path": str(client.key)}]})
    ids["policy"] = await post("/storage-policies", {"name": "enc", "encryption": True})
    return ids


def _scan(paths: list[Path], secret: bytes) -> int:
    needles = (secret, secret.hex().encode(), base64.b64encode(secret))
    hits = 0
    for root in paths:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                hits += sum(data.count(n) for n in needles)
    return hits


@pytest.mark.anyio
async def test_standard_flow_restart_lock(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout, kms: KmsServer,
    hosts: Hosts, tmp_path: Path, db_path: Path,
) -> None:
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    created = await control.post(f"{API}/vms", headers=admin, json={
        "name": "vm-01", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK], "storage_policy_id": ids["policy"]})
    assert created.status_code == 201, created.text
    vm = created.json()
    key_id = vm["key_ids"]["home"]
    assert vm["encrypted"] and vm["key_ids"]["disk-0"] == key_id

    # Both cluster hosts hold the KEK; the control DB holds its ID and no key bytes.
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == [key_id]
    admin_cert = pki.clients["admin"]
    reader = StandardKeyProvider("kmip", [KmsServerConfig(
        "127.0.0.1", kms.address[1], ca_file=pki.ca.cert, cert_file=admin_cert.cert,
        key_file=admin_cert.key)], product_version="test")
    kek = reader.get_kek(KekRef(key_id=key_id))
    reader.close()
    control_files = [p for p in tmp_path.iterdir() if p.name.startswith(db_path.name)]
    assert _scan(control_files, key_id.encode()) > 0
    assert _scan(control_files, kek) == 0
    assert _scan([hosts.datastore], kek) == 0

    # Data written through one host reads back through the other (shared datastore).
    payload = b"seeds" * 1000
    put = await control.put(f"{API}/vms/{vm['id']}/disks/0/data?offset=4096",
                            content=payload, headers=admin)
    assert put.json() == {"written": len(payload)}
    assert _scan([hosts.datastore], payload[:64]) == 0  # ciphertext only at rest

    # Host restart: empty cache; reconnect re-pushes by ID and the VM reads again.
    hosts.start("esx-a")
    assert hosts.kek_ids("esx-a") == []
    back = await control.post(f"{API}/hosts/{ids['esx-a']}/reconnect", headers=admin)
    assert back.json()["pushed"] == 1 and back.json()["locked"] == {}
    got = await control.get(f"{API}/vms/{vm['id']}/disks/0/data?offset=4096&length={len(payload)}",
                            headers=admin)
    assert got.content == payload

    # Restart with the KMS down: the VM is locked, with the reason and the event.
    hosts.start("esx-a")
    kms_port = kms.address[1]
    kms.shutdown()
    down = await control.post(f"{API}/hosts/{ids['esx-a']}/reconnect", headers=admin)
    assert down.json()["locked"] == {str(vm["id"]): "kms_unreachable"}
    state = (await control.get(f"{API}/vms/{vm['id']}", headers=admin)).json()
    assert state["locked"] and state["lock_reason"] == "kms_unreachable"
    events = (await control.get(f"{API}/events?type=kms.connection.failed",
                                headers=admin)).json()
    assert events

    # The KMS returns (same port, database and master key): vm unlock retries and succeeds.
    back_kms = KmsServer(dataclasses.replace(kms.config, port=kms_port), master_key=KMS_MASTER_KEY)
    back_kms.start()
    try:
        unlocked = await control.post(f"{API}/vms/{vm['id']}/unlock", headers=admin)
        assert unlocked.status_code == 200, unlocked.text
        assert unlocked.json()["locked"] is False
        got = await control.get(
            f"{API}/vms/{vm['id']}/disks/0/data?offset=4096&length={len(payload)}",
            headers=admin)
        assert got.content == payload
    finally:
        back_kms.shutdown()

    # Unregister removes the KEK from both hosts' caches.
    gone = await control.post(f"{API}/vms/{vm['id']}/unregister", headers=admin)
    assert gone.status_code == 200, gone.text
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == []
