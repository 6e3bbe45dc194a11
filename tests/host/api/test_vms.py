"""VM routes in-process: create, read, disk data, order rules, re-key, remove."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.host.api.conftest import KMS, NATIVE, SIZE, b64, create, push, wait_job
from vmcrypt.crypto import generate_kek
from vmcrypt.host.api import HostState

pytestmark = pytest.mark.anyio


async def test_create_encrypted_vm_with_pushed_kek(client: httpx.AsyncClient, state: HostState,
                                                   kek: bytes) -> None:
    await push(client, kek)
    vm = await create(client, disks=2)
    assert vm["home_encrypted"] is True
    assert vm["home"] == {"provider_id": KMS, "key_id": "key-1", "native": False,
                          "key_on_host": True, "wrapped_kek": None}
    assert [d["encrypted"] for d in vm["disks"]] == [True, True]
    assert (await client.get(f"/vms/{vm['id']}")).json() == vm
    assert [v["id"] for v in (await client.get("/vms")).json()] == [vm["id"]]
    assert state.cache.vm_ids() == [vm["id"]]


async def test_create_without_the_key_is_409_and_leaves_nothing(
    client: httpx.AsyncClient, state: HostState
) -> None:
    r = await client.post("/vms", json={"name": "x", "disks": [{"size": SIZE}],
                                        "encryption": {"provider_id": KMS, "key_id": "nope"}})
    assert r.status_code == 409
    assert r.json()["error"] == "key_not_on_host"
    assert "push" in r.json()["message"]
    assert state.datastore.vm_ids() == []


async def test_create_native_vm(client: httpx.AsyncClient, kek: bytes) -> None:
    await client.put(f"/native-providers/{NATIVE}", json={"primary_key": b64(kek)})
    vm = await create(client, key_id=None)
    assert vm["home"]["native"] is True
    assert vm["home"]["key_on_host"] is True


@pytest.mark.parametrize("body", [
    {"name": "x", "disks": [{"size": 1000}]},
    {"name": "x", "disks": [{"size": -4096}]},
    {"name": "", "disks": []},
    {"name": "x", "id": "not-a-uuid"},
])
async def test_bad_create_is_422(client: httpx.AsyncClient, state: HostState,
                                 body: dict[str, object]) -> None:
    r = await client.post("/vms", json=body)
    assert r.status_code == 422, r.text
    assert state.datastore.vm_ids() == []


async def test_disk_data_round_trip(client: httpx.AsyncClient, kek: bytes) -> None:
    await push(client, kek)
    vm = await create(client)
    data = os.urandom(10_000)
    url = f"/vms/{vm['id']}/disks/0/data"
    r = await client.put(url, params={"offset": 1234}, content=data)
    assert r.status_code == 200, r.text
    assert r.json() == {"written": len(data)}
    r = await client.get(url, params={"offset": 1234, "length": len(data)})
    assert r.status_code == 200
    assert r.content == data
    whole = await client.get(url)
    assert len(whole.content) == SIZE
    r = await client.get(url, params={"offset": SIZE - 10, "length": 11})
    assert r.status_code == 422
    r = await client.put(url, params={"offset": SIZE - 10}, content=b"x" * 11)
    assert r.status_code == 422


async def test_unknown_vm_disk_and_job_are_404(client: httpx.AsyncClient, kek: bytes) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert (await client.get(f"/vms/{missing}")).json()["error"] == "vm_not_found"
    assert (await client.get("/vms/../etc")).status_code == 404
    await push(client, kek)
    vm = await create(client)
    r = await client.get(f"/vms/{vm['id']}/disks/7/data")
    assert (r.status_code, r.json()["error"]) == (404, "no_such_disk")
    r = await client.post(f"/vms/{vm['id']}/encrypt", json={"disk": 7})
    assert r.status_code == 404
    r = await client.get("/jobs/nope")
    assert (r.status_code, r.json()["error"]) == (404, "job_not_found")


async def test_order_rules_and_jobs(client: httpx.AsyncClient, kek: bytes) -> None:
    await push(client, kek)
    vm = await create(client, encrypted=False)
    vm_id, url = vm["id"], f"/vms/{vm['id']}"
    data = os.urandom(SIZE)
    await client.put(f"{url}/disks/0/data", content=data)

    r = await client.post(f"{url}/encrypt", json={"disk": 0})
    assert (r.status_code, r.json()["error"]) == (409, "home_not_encrypted")
    r = await client.post(f"{url}/vtpm", json={})
    assert (r.status_code, r.json()["error"]) == (409, "home_not_encrypted")
    r = await client.post(f"{url}/encrypt", json={})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")

    job = await wait_job(client, await client.post(
        f"{url}/encrypt", json={"key": {"provider_id": KMS, "key_id": "key-1"}}))
    assert job["state"] == "succeeded", job
    job = await wait_job(client, await client.post(f"{url}/encrypt", json={"disk": 0}))
    assert job["state"] == "succeeded", job
    assert (job["percent"], job["bytes_total"], job["vm_id"]) == (100.0, SIZE, vm_id)
    assert (await client.get(url)).json()["disks"][0]["encrypted"] is True
    assert (await client.get(f"{url}/disks/0/data")).content == data

    r = await client.post(f"{url}/decrypt", json={})
    assert (r.status_code, r.json()["error"]) == (409, "disks_still_encrypted")
    r = await client.post(f"{url}/encrypt", json={"disk": 0})
    assert (r.status_code, r.json()["error"]) == (409, "already_encrypted")
    assert (await client.post(f"{url}/vtpm", json={"state": b64(b"tpm")})).status_code == 201
    job = await wait_job(client, await client.post(f"{url}/decrypt", json={"disk": 0}))
    assert job["state"] == "succeeded"
    r = await client.post(f"{url}/decrypt", json={})
    assert (r.status_code, r.json()["error"]) == (409, "vtpm_present")
    assert (await client.delete(f"{url}/vtpm")).status_code == 200
    job = await wait_job(client, await client.post(f"{url}/decrypt", json={}))
    assert job["state"] == "succeeded"
    assert (await client.get(url)).json()["home_encrypted"] is False
    assert (await client.get(f"{url}/disks/0/data")).content == data


async def test_job_fails_with_the_error_table(client: httpx.AsyncClient, state: HostState,
                                              kek: bytes) -> None:
    await push(client, kek)
    vm = await create(client, encrypted=False)
    # Key present when accepted, gone before the job uses it: the job records why.
    with state.datastore.lock(vm["id"]):
        accepted = await client.post(
            f"/vms/{vm['id']}/encrypt", json={"key": {"provider_id": KMS, "key_id": "key-1"}})
        job = await wait_job(client, accepted)
    assert job["state"] == "failed"
    assert job["error"]["error"] == "vm_busy"


async def test_rekey_shallow_and_deep(client: httpx.AsyncClient, state: HostState,
                                      kek: bytes) -> None:
    await push(client, kek)
    await push(client, generate_kek(), "key-2")
    vm = await create(client)
    url = f"/vms/{vm['id']}"
    data = os.urandom(4096)
    await client.put(f"{url}/disks/0/data", content=data)
    r = await client.post(f"{url}/rekey", json={"mode": "shallow"})
    assert r.status_code == 422
    r = await client.post(f"{url}/rekey", json={
        "mode": "shallow", "key": {"provider_id": KMS, "key_id": "key-2"}})
    assert r.status_code == 200, r.text
    assert r.json()["home"]["key_id"] == "key-2"
    assert r.json()["disks"][0]["encryption"]["key_id"] == "key-2"
    job = await wait_job(client, await client.post(f"{url}/rekey", json={"mode": "deep"}))
    assert job["state"] == "succeeded", job
    assert (await client.get(f"{url}/disks/0/data", params={"length": 4096})).content == data


async def test_add_disk_unregister_delete(client: httpx.AsyncClient, state: HostState,
                                          kek: bytes) -> None:
    await push(client, kek)
    vm = await create(client)
    url = f"/vms/{vm['id']}"
    r = await client.post(f"{url}/disks", json={"size": SIZE})
    assert (r.status_code, r.json()) == (201, {"index": 1})
    assert (await client.get(url)).json()["disks"][1]["encrypted"] is True
    r = await client.post(f"{url}/unregister")
    assert r.json()["removed_keys"] == [{"provider_id": KMS, "key_id": "key-1"}]
    assert not state.cache.has(KMS, "key-1")
    r = await client.get(f"{url}/disks/0/data")
    assert (r.status_code, r.json()["error"]) == (409, "key_not_on_host")
    assert (await client.get(url)).json()["home"]["key_on_host"] is False
    assert (await client.delete(url)).status_code == 204
    assert state.datastore.vm_ids() == []
    assert (await client.delete(url)).status_code == 404


async def test_deep_rekey_without_the_current_kek_is_409(client: httpx.AsyncClient,
                                                         state: HostState, kek: bytes) -> None:
    await push(client, kek)
    vm = await create(client)
    state.cache.remove_kek(KMS, "key-1")
    r = await client.post(f"/vms/{vm['id']}/rekey", json={"mode": "deep"})
    assert (r.status_code, r.json()["error"]) == (409, "key_not_on_host")
    assert state.jobs.all() == []
