"""Seeds: a native provider's primary key is pushed to every host, and so is its removal.

The push waits for the backup gate (backed up, or the risk acknowledged), as the
provider cannot be used before; deleting the provider withdraws the key from the hosts.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.control.api.conftest import auth
from tests.control.api.test_vms import API, Hosts, _scan
from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import Database
from vmcrypt.providers import KekRef


@pytest.fixture
def hosts(tmp_path: Path) -> Hosts:
    (tmp_path / "ds").mkdir()
    connector = Hosts(tmp_path / "ds")
    for name in ("esx-a", "esx-b", "esx-c"):
        connector.start(name)
    return connector


@pytest.fixture
async def control(database: Database, master_key: bytes,
                  hosts: Hosts) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(database, master_key=master_key, hosts=hosts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://control") as c:
        yield c


def _native_ids(hosts: Hosts, name: str) -> list[str]:
    return hosts.states[name].cache.native_provider_ids()


@pytest.mark.anyio
async def test_primary_key_reaches_every_host_once_usable_and_leaves_on_delete(
    control: httpx.AsyncClient, tokens: dict[str, str], hosts: Hosts
) -> None:
    admin = auth(tokens["admin"])
    cluster = (await control.post(f"{API}/clusters", json={"name": "c1"},
                                  headers=admin)).json()["id"]
    for name in ("esx-a", "esx-b", "esx-c"):
        made = await control.post(f"{API}/hosts", headers=admin, json={
            "name": name, "hardware_uuid": str(uuid.uuid4()), "cluster_id": cluster,
            "api_url": f"https://{name}:8443"})
        assert made.status_code == 201, made.text

    created = await control.post(f"{API}/key-providers/native", json={"name": "nkp"},
                                 headers=admin)
    assert created.status_code == 201, created.text
    provider = created.json()["id"]
    # Not yet usable (never backed up, risk not acknowledged): nothing is pushed.
    assert all(_native_ids(hosts, n) == [] for n in ("esx-a", "esx-b", "esx-c"))

    acked = await control.post(f"{API}/key-providers/{provider}/acknowledge-no-backup",
                               headers=admin)
    assert acked.status_code == 200, acked.text
    assert all(_native_ids(hosts, n) == ["nkp"] for n in ("esx-a", "esx-b", "esx-c"))

    # A host that restarted lost it; a backup (the provider is usable) pushes again.
    hosts.start("esx-b")
    assert _native_ids(hosts, "esx-b") == []
    backup = await control.post(f"{API}/key-providers/{provider}/backup",
                                json={"password": "correct horse battery"}, headers=admin)
    assert backup.status_code == 200, backup.text
    assert _native_ids(hosts, "esx-b") == ["nkp"]

    deleted = await control.delete(f"{API}/key-providers/{provider}", headers=admin)
    assert deleted.status_code == 204, deleted.text
    assert all(_native_ids(hosts, n) == [] for n in ("esx-a", "esx-b", "esx-c"))


@pytest.mark.anyio
async def test_native_vm_is_made_by_the_host_and_opens_without_the_control_plane(
    control: httpx.AsyncClient, tokens: dict[str, str], hosts: Hosts, tmp_path: Path,
    db_path: Path,
) -> None:
    """Seeds (native): hosts create the keys themselves and open them with the pushed
    primary key; the control plane records only the wrapped KEK."""
    admin = auth(tokens["admin"])

    async def post(path: str, body: object) -> dict[str, object]:
        response = await control.post(API + path, json=body, headers=admin)
        assert response.status_code in (200, 201), response.text
        result: dict[str, object] = response.json()
        return result

    cluster = (await post("/clusters", {"name": "c1"}))["id"]
    host_ids = {name: (await post("/hosts", {
        "name": name, "hardware_uuid": str(uuid.uuid4()), "cluster_id": cluster,
        "api_url": f"https://{name}:8443"}))["id"] for name in ("esx-a", "esx-b", "esx-c")}
    datastore = (await post("/datastores", {"name": "ds", "path": str(hosts.datastore),
                                            "cluster_id": cluster}))["id"]
    provider = (await post("/key-providers/native", {"name": "nkp"}))["id"]
    await post(f"/key-providers/{provider}/acknowledge-no-backup", {})
    policy = (await post("/storage-policies", {"name": "enc-native", "encryption": True,
                                               "key_provider_id": provider}))["id"]
    vm = await post("/vms", {"name": "vm-n", "datastore_id": datastore,
                             "host_id": host_ids["esx-a"], "disks": [1 << 20],
                             "storage_policy_id": policy})
    assert vm["encrypted"]

    # The control plane holds the wrapped KEK (ciphertext) and never the KEK itself.
    host_view = TestClient(hosts.apps["esx-a"], base_url="http://h").get(
        f"{API}/vms/{vm['instance_uuid']}").json()
    wrapped = base64.b64decode(host_view["home"]["wrapped_kek"])
    native = hosts.states["esx-a"].cache.native_provider("nkp")
    kek = native.get_kek(KekRef(wrapped_kek=wrapped))
    control_files = [p for p in tmp_path.iterdir() if p.name.startswith(db_path.name)]
    assert _scan(control_files, wrapped) > 0
    assert _scan(control_files, kek) == 0
    assert _scan([hosts.datastore], kek) == 0
    # Another host of the cluster opens the VM with its own copy of the primary key,
    # writing and reading through the host API alone — no control plane involved.
    other = TestClient(hosts.apps["esx-b"], base_url="http://h")
    payload = b"native" * 500
    wrote = other.put(f"{API}/vms/{vm['instance_uuid']}/disks/0/data?offset=0",
                      content=payload)
    assert wrote.status_code == 200, wrote.text
    read = other.get(f"{API}/vms/{vm['instance_uuid']}/disks/0/data?offset=0"
                     f"&length={len(payload)}")
    assert read.content == payload
    info = other.get(f"{API}/vms/{vm['instance_uuid']}").json()
    assert info["home"]["native"] and info["home"]["key_on_host"]
