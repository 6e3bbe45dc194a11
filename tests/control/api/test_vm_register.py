"""Register VMs again (and VMs found on a datastore) through the control API, in process.

The harness of ``test_vms.py`` (two hosts of cluster ``c1`` sharing datastore ``ds``, a
real KMS), plus ``esx-c`` of cluster ``c2`` with its own folder. Unregistering drops the
KEK from both hosts; registering fetches it **by key ID** and pushes it to both again;
a key that cannot be had leaves the VM registered but locked until ``vm unlock``.
"""

from __future__ import annotations

import dataclasses
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.control.api.conftest import auth
from tests.control.api.test_vm_moves import (  # noqa: F401  (fixtures used by name)
    PAYLOAD,
    Fleet,
    _second_cluster,
    hosts,
)
from tests.control.api.test_vms import (  # noqa: F401  (fixtures used by name)
    API,
    DISK,
    KMS_MASTER_KEY,
    _setup,
    control,
    kms,
    pki,
)
from vmcrypt.kms.server import KmsServer
from vmcrypt.pki import PkiLayout
from vmcrypt.providers import COMPONENT_VM, KeyOwner, KmsServerConfig, StandardKeyProvider


def _reader(layout: PkiLayout, port: int) -> StandardKeyProvider:
    cert = layout.clients["admin"]
    return StandardKeyProvider("kmip", [KmsServerConfig(
        "127.0.0.1", port, ca_file=layout.ca.cert, cert_file=cert.cert, key_file=cert.key)],
        product_version="test")


async def _read(api: httpx.AsyncClient, admin: dict[str, str], vm_id: int) -> bytes:
    got = await api.get(f"{API}/vms/{vm_id}/disks/0/data?offset=8192&length={len(PAYLOAD)}",
                        headers=admin)
    assert got.status_code == 200, got.text
    return got.content


async def _vms(api: httpx.AsyncClient, admin: dict[str, str]) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (await api.get(f"{API}/vms", headers=admin)).json()
    return listed


@pytest.mark.anyio
async def test_register_again_pushes_keys_and_locks_without_kms(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Fleet,  # noqa: F811
) -> None:
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    ids.update(await _second_cluster(control, admin, hosts))
    created = await control.post(f"{API}/vms", headers=admin, json={
        "name": "vm-01", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK], "storage_policy_id": ids["policy"]})
    assert created.status_code == 201, created.text
    vm = created.json()
    key_id = vm["key_ids"]["home"]
    put = await control.put(f"{API}/vms/{vm['id']}/disks/0/data?offset=8192",
                            content=PAYLOAD, headers=admin)
    assert put.status_code == 200, put.text

    # Registered: refused (409), nothing changed.
    again = await control.post(f"{API}/vms/{vm['id']}/register",
                               json={"host_id": ids["esx-b"]}, headers=admin)
    assert again.status_code == 409 and "already registered" in again.json()["message"]

    gone = await control.post(f"{API}/vms/{vm['id']}/unregister", headers=admin)
    assert gone.status_code == 200, gone.text
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == []

    # Bad input: unknown VM (404), a host that does not reach the datastore (409), a
    # body without a host (422); the VM stays unregistered and no host gets a key.
    for target, body, status in ((9999, {"host_id": ids["esx-b"]}, 404),
                                 (vm["id"], {"host_id": ids["esx-c"]}, 409),
                                 (vm["id"], {"host_id": 9999}, 404),
                                 (vm["id"], {}, 422)):
        refused = await control.post(f"{API}/vms/{target}/register", json=body,
                                     headers=admin)
        assert refused.status_code == status, (body, refused.text)
    state = (await control.get(f"{API}/vms/{vm['id']}", headers=admin)).json()
    assert not state["registered"] and state["host_id"] is None
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == hosts.kek_ids("esx-c") == []

    # Register with esx-b: the KEK, fetched by ID, is on both hosts of the cluster again.
    back = await control.post(f"{API}/vms/{vm['id']}/register",
                              json={"host_id": ids["esx-b"]}, headers=admin)
    assert back.status_code == 200, back.text
    body = back.json()
    assert body["registered"] and body["host_id"] == ids["esx-b"] and not body["locked"]
    assert body["key_ids"] == {"home": key_id, "disk-0": key_id}
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == [key_id]
    assert await _read(control, admin, vm["id"]) == PAYLOAD

    # KMS down: registered, but locked with the reason; unlock once the KMS is back.
    await control.post(f"{API}/vms/{vm['id']}/unregister", headers=admin)
    port = kms.address[1]
    kms.shutdown()
    locked = await control.post(f"{API}/vms/{vm['id']}/register",
                                json={"host_id": ids["esx-a"]}, headers=admin)
    assert locked.status_code == 200, locked.text
    assert locked.json()["registered"] and locked.json()["locked"]
    assert locked.json()["lock_reason"] == "kms_unreachable"
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == []
    kms_back = KmsServer(dataclasses.replace(kms.config, port=port), master_key=KMS_MASTER_KEY)
    kms_back.start()
    try:
        unlocked = await control.post(f"{API}/vms/{vm['id']}/unlock", headers=admin)
        assert unlocked.status_code == 200, unlocked.text
        assert not unlocked.json()["locked"]
        assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == [key_id]
        assert await _read(control, admin, vm["id"]) == PAYLOAD
    finally:
        kms_back.shutdown()

    events = (await control.get(f"{API}/events?type=crypto.register", headers=admin)).json()
    assert sorted(e["details"]["locked"] for e in events) == [False, True]
    assert {e["details"]["key_id"] for e in events} == {key_id}
    assert (await control.get(f"{API}/events?type=vm.locked", headers=admin)).json()


@pytest.mark.anyio
async def test_register_a_vm_found_on_the_datastore(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Fleet,  # noqa: F811
) -> None:
    """A VM another control plane made: its KEK exists in the KMS, its folder on ``ds``."""
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    ids.update(await _second_cluster(control, admin, hosts))
    found = str(uuid.uuid4())
    reader = _reader(pki, kms.address[1])
    try:
        new = reader.new_kek(owner=KeyOwner(COMPONENT_VM, "elsewhere", found))
    finally:
        reader.close()
    key_id = new.ref.key_id
    assert key_id is not None
    esx_a = hosts.client(SimpleNamespace(name="esx-a"))  # type: ignore[arg-type]
    esx_a.put_kek("kmip", key_id, new.kek, vm_ids=[found])
    esx_a.create_vm(found, "elsewhere", [DISK, DISK], provider_id="kmip", key_id=key_id)
    esx_a.write_disk(found, 0, offset=8192, data=PAYLOAD)
    esx_a.delete_kek("kmip", key_id)  # as after a restart: no host holds it
    before = await _vms(control, admin)

    # Bad input: refused, nothing recorded, no key pushed.
    refusals = [
        ({"datastore_id": ids["datastore"], "instance_uuid": str(uuid.uuid4()),
          "host_id": ids["esx-a"]}, 404),                                   # no such VM
        ({"datastore_id": ids["datastore"], "instance_uuid": found,
          "host_id": ids["esx-c"]}, 409),                                   # other datastore
        ({"datastore_id": ids["ds2"], "instance_uuid": found,
          "host_id": ids["esx-a"]}, 409),                                   # idem
        ({"datastore_id": 9999, "instance_uuid": found, "host_id": ids["esx-a"]}, 404),
        ({"datastore_id": ids["datastore"], "instance_uuid": "not-a-uuid",
          "host_id": ids["esx-a"]}, 422),
    ]
    for body, status in refusals:
        refused = await control.post(f"{API}/vms/register", json=body, headers=admin)
        assert refused.status_code == status, (body, refused.text)
        assert refused.json()["message"]
    assert await _vms(control, admin) == before
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == []

    made = await control.post(f"{API}/vms/register", headers=admin, json={
        "datastore_id": ids["datastore"], "instance_uuid": found, "host_id": ids["esx-b"]})
    assert made.status_code == 201, made.text
    vm = made.json()
    assert vm["name"] == "elsewhere" and vm["instance_uuid"] == found
    assert vm["registered"] and vm["host_id"] == ids["esx-b"] and not vm["locked"]
    assert vm["key_ids"] == {"home": key_id, "disk-0": key_id, "disk-1": key_id}
    assert [d["size_bytes"] for d in vm["disks"]] == [DISK, DISK]
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == [key_id]
    assert await _read(control, admin, vm["id"]) == PAYLOAD

    # Known now: a second registration from the datastore is refused (409).
    twice = await control.post(f"{API}/vms/register", headers=admin, json={
        "datastore_id": ids["datastore"], "instance_uuid": found, "host_id": ids["esx-a"],
        "name": "other"})
    assert twice.status_code == 409 and "already known" in twice.json()["message"]
    # A name taken by another VM is refused too (after unregistering and forgetting…):
    # here, a plain VM on the datastore registered under a name already used.
    plain = str(uuid.uuid4())
    esx_a.create_vm(plain, "plain", [DISK])
    taken = await control.post(f"{API}/vms/register", headers=admin, json={
        "datastore_id": ids["datastore"], "instance_uuid": plain, "host_id": ids["esx-a"],
        "name": "elsewhere"})
    assert taken.status_code == 409, taken.text
    ok = await control.post(f"{API}/vms/register", headers=admin, json={
        "datastore_id": ids["datastore"], "instance_uuid": plain, "host_id": ids["esx-a"]})
    assert ok.status_code == 201, ok.text
    assert ok.json()["name"] == "plain" and not ok.json()["encrypted"]
    events = (await control.get(f"{API}/events?type=crypto.register", headers=admin)).json()
    assert {e["details"]["instance_uuid"] for e in events} == {found, plain}
