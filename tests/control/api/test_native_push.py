"""Seeds: a native provider's primary key is pushed to every host, and so is its removal.

The push waits for the backup gate (backed up, or the risk acknowledged), as the
provider cannot be used before; deleting the provider withdraws the key from the hosts.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.control.api.conftest import auth
from tests.control.api.test_vms import API, Hosts
from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import Database


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
