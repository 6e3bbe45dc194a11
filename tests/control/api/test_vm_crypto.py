"""Encrypt, decrypt and re-key an existing VM through the control API, in process.

The harness of ``test_vms.py``: the control app over ``httpx.ASGITransport``, two host
agents of one cluster on a shared datastore (Starlette TestClient) and a real KMS.
Data written before each job must read back identical after it.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control.api.conftest import auth
from tests.control.api.test_vms import (  # noqa: F401  (fixtures used by name)
    API,
    DISK,
    Hosts,
    _scan,
    _setup,
    control,
    hosts,
    kms,
    pki,
)
from vmcrypt.kms.server import KmsServer
from vmcrypt.pki import PkiLayout
from vmcrypt.providers import KekRef, KmsServerConfig, StandardKeyProvider

PAYLOAD = random.Random(4).randbytes(6000)  # no repeats: a scan counts copies


async def _wait(api: httpx.AsyncClient, admin: dict[str, str],
                started: httpx.Response) -> dict[str, Any]:
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    for _ in range(400):
        job: dict[str, Any] = (await api.get(f"{API}/jobs/{job_id}", headers=admin)).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            assert job["state"] == "succeeded", job
            assert job["progress_percent"] == 100.0
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


async def _read(api: httpx.AsyncClient, admin: dict[str, str], vm_id: int,
                disk: int) -> bytes:
    got = await api.get(f"{API}/vms/{vm_id}/disks/{disk}/data?offset=8192"
                            f"&length={len(PAYLOAD)}", headers=admin)
    assert got.status_code == 200, got.text
    return got.content


async def _vm(api: httpx.AsyncClient, admin: dict[str, str], vm_id: int) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"{API}/vms/{vm_id}", headers=admin)).json()
    return body


@pytest.mark.anyio
async def test_encrypt_rekey_decrypt_keep_the_data(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts, tmp_path: Path, db_path: Path,  # noqa: F811
) -> None:
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    created = await control.post(f"{API}/vms", headers=admin, json={
        "name": "plain", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK, DISK]})
    assert created.status_code == 201, created.text
    vm_id = created.json()["id"]
    for disk in (0, 1):
        put = await control.put(f"{API}/vms/{vm_id}/disks/{disk}/data?offset=8192",
                                content=PAYLOAD, headers=admin)
        assert put.status_code == 200, put.text

    async def post(path: str, body: object) -> httpx.Response:
        return await control.post(f"{API}/vms/{vm_id}/{path}", json=body, headers=admin)

    # Order rules: a disk before VM home, or decrypting what is clear, is a 409; no job.
    for path, body in (("encrypt", {"component": 0}), ("decrypt", {"component": "home"}),
                       ("decrypt", {"component": 1}), ("rekey", {"deep": False})):
        refused = await post(path, body)
        assert refused.status_code == 409, (path, refused.text)
    assert (await control.get(f"{API}/jobs", headers=admin)).json() == []
    assert (await _vm(control, admin, vm_id))["key_ids"] == {}

    # Encrypt VM home, then disk 0: both hosts hold the KEK; the data is unchanged.
    await _wait(control, admin, await post("encrypt", {"component": "home"}))
    key_id = (await _vm(control, admin, vm_id))["key_ids"]["home"]
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == [key_id]
    assert (await post("encrypt", {"component": "home"})).status_code == 409
    job = await _wait(control, admin, await post("encrypt", {"component": 0}))
    assert job["bytes_total"] == DISK
    assert (job["type"], job["component"], job["host_id"]) == ("vm.encrypt", "disk-0",
                                                               ids["esx-a"])
    assert (await _vm(control, admin, vm_id))["key_ids"] == {"home": key_id, "disk-0": key_id}
    assert await _read(control, admin, vm_id, 0) == PAYLOAD
    assert await _read(control, admin, vm_id, 1) == PAYLOAD
    assert _scan([hosts.datastore], PAYLOAD[:64]) == 1  # disk 1 only is still clear

    # Decrypting VM home while disk 0 is encrypted is refused, and changes nothing.
    assert (await post("decrypt", {"component": "home"})).status_code == 409
    assert (await _vm(control, admin, vm_id))["key_ids"] == {"home": key_id, "disk-0": key_id}

    # Shallow re-key: a new key ID recorded, on both hosts; the old KEK dropped.
    shallow = await post("rekey", {"deep": False})
    assert shallow.status_code == 200, shallow.text
    new_id = shallow.json()["key_id"]
    assert new_id != key_id
    assert shallow.json()["key_ids"] == {"home": new_id, "disk-0": new_id}
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == [new_id]
    assert await _read(control, admin, vm_id, 0) == PAYLOAD

    # Deep re-key: a job; the key ID stays, the data survives.
    await _wait(control, admin, await post("rekey", {"deep": True}))
    assert (await _vm(control, admin, vm_id))["key_ids"] == {"home": new_id, "disk-0": new_id}
    assert await _read(control, admin, vm_id, 0) == PAYLOAD

    # The control DB holds key IDs, never the KEK.
    admin_cert = pki.clients["admin"]
    reader = StandardKeyProvider("kmip", [KmsServerConfig(
        "127.0.0.1", kms.address[1], ca_file=pki.ca.cert, cert_file=admin_cert.cert,
        key_file=admin_cert.key)], product_version="test")
    kek = reader.get_kek(KekRef(key_id=new_id))
    reader.close()
    control_files = [p for p in tmp_path.iterdir() if p.name.startswith(db_path.name)]
    assert _scan(control_files, new_id.encode()) > 0
    assert _scan(control_files, kek) == 0

    # Decrypt disk 0, then VM home: no records left, the data reads back in clear.
    await _wait(control, admin, await post("decrypt", {"component": 0}))
    await _wait(control, admin, await post("decrypt", {"component": "home"}))
    vm = await _vm(control, admin, vm_id)
    assert vm["key_ids"] == {} and not vm["encrypted"]
    assert await _read(control, admin, vm_id, 0) == PAYLOAD
    assert _scan([hosts.datastore], PAYLOAD[:64]) == 2
    jobs = (await control.get(f"{API}/jobs?vm_id={vm_id}", headers=admin)).json()
    assert [j["state"] for j in jobs] == ["succeeded"] * 5


@pytest.mark.anyio
async def test_crypto_routes_need_their_privileges(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts,  # noqa: F811
) -> None:
    admin, nocrypto = auth(tokens["admin"]), auth(tokens["nocrypto"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    created = await control.post(f"{API}/vms", headers=admin, json={
        "name": "p", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK]})
    vm_id = created.json()["id"]
    for path, body in (("encrypt", {"component": "home"}), ("decrypt", {"component": 0}),
                       ("rekey", {"deep": True})):
        denied = await control.post(f"{API}/vms/{vm_id}/{path}", json=body, headers=nocrypto)
        assert denied.status_code == 403, (path, denied.text)
    bad = await control.post(f"{API}/vms/{vm_id}/encrypt", json={"component": "disk"},
                             headers=admin)
    assert bad.status_code == 422
