"""Clone and migrate VMs through the control API, in process, with a real KMS.

The harness of ``test_vms.py``, with a second cluster: ``esx-a`` and ``esx-b`` share
datastore ``ds`` (cluster ``c1``), ``esx-c`` has its own folder (cluster ``c2``). Data
written before each clone or migration must read back identical after it (on the clone
too); the clone must have keys of its own; no KEK or DEK may appear in the control
database or on a datastore.
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
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
    kms,
    pki,
)
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import LockReason
from vmcrypt.control.db.repo import set_lock_state
from vmcrypt.crypto.keysafe import open_keysafe
from vmcrypt.disk import container
from vmcrypt.host.api.app import create_app as create_host_app
from vmcrypt.host.api.state import HostState
from vmcrypt.host.datastore import Datastore
from vmcrypt.kms.server import KmsServer
from vmcrypt.pki import PkiLayout
from vmcrypt.providers import KekRef, KmsServerConfig, StandardKeyProvider

PAYLOAD = random.Random(11).randbytes(5000)
FINAL = ("succeeded", "failed", "cancelled")


class Fleet(Hosts):
    """Hosts on the shared ``ds`` folder, and ``esx-c`` on a folder of its own."""

    def __init__(self, datastore: Path, other: Path) -> None:
        super().__init__(datastore)
        self.other = other

    def start(self, name: str) -> None:
        super().start(name)
        if name == "esx-c":
            state = HostState(name=name, hardware_uuid=str(uuid.uuid4()),
                              datastore=Datastore(self.other))
            self.states[name] = state
            self.apps[name] = create_host_app(state)


@pytest.fixture
def hosts(tmp_path: Path) -> Fleet:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds2").mkdir()
    fleet = Fleet(tmp_path / "ds", tmp_path / "ds2")
    for name in ("esx-a", "esx-b", "esx-c"):
        fleet.start(name)
    return fleet


async def _second_cluster(api: httpx.AsyncClient, admin: dict[str, str],
                          fleet: Fleet) -> dict[str, int]:
    async def post(path: str, body: object) -> int:
        response = await api.post(API + path, json=body, headers=admin)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    ids = {"c2": await post("/clusters", {"name": "c2"})}
    ids["esx-c"] = await post("/hosts", {"name": "esx-c", "hardware_uuid": str(uuid.uuid4()),
                                         "cluster_id": ids["c2"],
                                         "api_url": "https://esx-c:8443"})
    ids["ds2"] = await post("/datastores", {"name": "ds2", "path": str(fleet.other),
                                            "cluster_id": ids["c2"]})
    return ids


async def _clone(api: httpx.AsyncClient, admin: dict[str, str], vm_id: int,
                 name: str) -> dict[str, Any]:
    started = await api.post(f"{API}/vms/{vm_id}/clone", json={"name": name}, headers=admin)
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["type"] == "vm.clone"
    for _ in range(400):
        status = await api.get(f"{API}/vms/{vm_id}/jobs/{job['id']}", headers=admin)
        assert status.status_code == 200, status.text
        body: dict[str, Any] = status.json()
        if body["job"]["state"] in FINAL:
            assert body["job"]["state"] == "succeeded", body
            assert body["clone"] is not None
            clone: dict[str, Any] = body["clone"]
            return clone
        await asyncio.sleep(0.02)
    raise AssertionError("the clone did not finish")


async def _write(api: httpx.AsyncClient, admin: dict[str, str], vm_id: int) -> None:
    for disk in (0, 1):
        put = await api.put(f"{API}/vms/{vm_id}/disks/{disk}/data?offset=8192",
                            content=PAYLOAD, headers=admin)
        assert put.status_code == 200, put.text


async def _same_data(api: httpx.AsyncClient, admin: dict[str, str], vm_id: int) -> None:
    for disk in (0, 1):
        got = await api.get(f"{API}/vms/{vm_id}/disks/{disk}/data?offset=8192"
                            f"&length={len(PAYLOAD)}", headers=admin)
        assert got.status_code == 200, got.text
        assert got.content == PAYLOAD


def _dek(root: Path, instance_uuid: str, index: int, kek: bytes) -> bytes:
    keysafe = container.read_keysafe(root / instance_uuid / f"disk-{index}.img")
    assert keysafe is not None
    return open_keysafe(keysafe, kek)


async def _vm(api: httpx.AsyncClient, admin: dict[str, str], vm_id: int) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"{API}/vms/{vm_id}", headers=admin)).json()
    return body


async def _migrate_job(api: httpx.AsyncClient, admin: dict[str, str], vm_id: int,
                       host_id: int) -> dict[str, Any]:
    """Start a cross-datastore migration (202, a ``vm.migrate`` job); its final state."""
    started = await api.post(f"{API}/vms/{vm_id}/migrate", json={"host_id": host_id},
                             headers=admin)
    assert started.status_code == 202, started.text
    job: dict[str, Any] = started.json()
    assert job["type"] == "vm.migrate" and job["target_id"] == str(vm_id)
    for _ in range(1000):
        job = (await api.get(f"{API}/jobs/{job['id']}", headers=admin)).json()
        if job["state"] in FINAL:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError("the migration did not finish")


@pytest.mark.anyio
async def test_clone_and_migrate_standard_vm(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Fleet, tmp_path: Path, db_path: Path,  # noqa: F811
    database: Database,
) -> None:
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    ids.update(await _second_cluster(control, admin, hosts))
    created = await control.post(f"{API}/vms", headers=admin, json={
        "name": "vm-01", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK, DISK], "storage_policy_id": ids["policy"]})
    assert created.status_code == 201, created.text
    vm = created.json()
    key_id = vm["key_ids"]["home"]
    await _write(control, admin, vm["id"])

    # Clone: new key ID, its KEK on both hosts of the cluster, the same data.
    clone = await _clone(control, admin, vm["id"], "vm-02")
    clone_key = clone["key_ids"]["home"]
    assert clone_key != key_id and clone["instance_uuid"] != vm["instance_uuid"]
    assert clone["key_ids"] == {"home": clone_key, "disk-0": clone_key, "disk-1": clone_key}
    assert clone["host_id"] == ids["esx-a"] and clone["registered"]
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == sorted([key_id, clone_key])
    await _same_data(control, admin, clone["id"])
    await _same_data(control, admin, vm["id"])
    for index in (0, 1):
        ours = (hosts.datastore / vm["instance_uuid"] / f"disk-{index}.img").read_bytes()
        theirs = (hosts.datastore / clone["instance_uuid"] / f"disk-{index}.img").read_bytes()
        assert ours != theirs  # new DEKs: the clone's ciphertext differs

    # Refusals: a 4xx with a message, nothing changed.
    before = await _vm(control, admin, vm["id"])
    refusals = [
        ("clone", vm["id"], {"name": "vm-02"}, 409),       # name taken
        ("clone", 9999, {"name": "x"}, 404),               # no such VM
        ("migrate", vm["id"], {"host_id": ids["esx-a"]}, 409),  # already there
        ("migrate", vm["id"], {"host_id": 9999}, 404),     # no such host
        ("migrate", 9999, {"host_id": ids["esx-b"]}, 404),
        ("clone", vm["id"], {"name": "x", "host_id": ids["esx-c"]}, 409),  # other datastore
    ]
    for action, target, body, status in refusals:
        answer = await control.post(f"{API}/vms/{target}/{action}", json=body, headers=admin)
        assert answer.status_code == status, (action, body, answer.text)
        assert answer.json()["message"]
    # Busy: another host (or operation) holds the VM's lock. A clone is refused at once;
    # a relay is a job that fails at its start, leaving everything as it was.
    with Datastore(hosts.datastore).lock(vm["instance_uuid"]):
        busy = await control.post(f"{API}/vms/{vm['id']}/clone", json={"name": "vm-03"},
                                  headers=admin)
        assert busy.status_code == 409, busy.text
        assert "busy" in busy.json()["message"]
        job = await _migrate_job(control, admin, vm["id"], ids["esx-c"])
        assert job["state"] == "failed" and "busy" in job["error"], job
    assert hosts.kek_ids("esx-c") == []
    # Locked: unlock first.
    with database.transaction() as session:
        set_lock_state(session, vm_id=vm["id"], reason=LockReason.KMS_UNREACHABLE)
    locked = await control.post(f"{API}/vms/{vm['id']}/migrate",
                                json={"host_id": ids["esx-b"]}, headers=admin)
    assert locked.status_code == 409 and "locked" in locked.json()["message"]
    with database.transaction() as session:
        set_lock_state(session, vm_id=vm["id"], reason=None)
    assert await _vm(control, admin, vm["id"]) == before
    assert hosts.kek_ids("esx-c") == []
    assert sorted(p.name for p in hosts.other.iterdir()) == []

    # Within the cluster: esx-b restarted (empty cache) gets the KEK; no data moves.
    hosts.start("esx-b")
    moved = await control.post(f"{API}/vms/{vm['id']}/migrate",
                               json={"host_id": ids["esx-b"]}, headers=admin)
    assert moved.status_code == 200, moved.text
    assert moved.json()["host_id"] == ids["esx-b"]
    assert key_id in hosts.kek_ids("esx-b")
    await _same_data(control, admin, vm["id"])

    # Another cluster, refused by the destination (a folder is in the way): VM intact.
    (hosts.other / vm["instance_uuid"]).mkdir()
    (hosts.other / vm["instance_uuid"] / "stray").write_bytes(b"x")
    refused = await _migrate_job(control, admin, vm["id"], ids["esx-c"])
    assert refused["state"] == "failed" and "already exists" in refused["error"], refused
    assert (await _vm(control, admin, vm["id"]))["host_id"] == ids["esx-b"]
    assert hosts.kek_ids("esx-c") == []  # pushed first, withdrawn after the failure
    await _same_data(control, admin, vm["id"])
    (hosts.other / vm["instance_uuid"] / "stray").unlink()
    (hosts.other / vm["instance_uuid"]).rmdir()

    # Another cluster: KEK pushed there first, files moved, old cluster's caches cleaned.
    moved_job = await _migrate_job(control, admin, vm["id"], ids["esx-c"])
    assert moved_job["state"] == "succeeded", moved_job
    assert moved_job["progress_percent"] == 100.0
    assert moved_job["bytes_done"] == moved_job["bytes_total"] > 2 * DISK
    across = await _vm(control, admin, vm["id"])
    assert across["host_id"] == ids["esx-c"] and across["registered"]
    assert across["key_ids"]["home"] == key_id
    assert hosts.kek_ids("esx-c") == [key_id]
    assert hosts.kek_ids("esx-a") == [clone_key]  # esx-b restarted: it gets it on reconnect
    assert hosts.kek_ids("esx-b") == []
    assert not (hosts.datastore / vm["instance_uuid"]).exists()
    assert (hosts.other / vm["instance_uuid"] / "vm.json").exists()
    await _same_data(control, admin, vm["id"])
    await _same_data(control, admin, clone["id"])

    # No KEK or DEK anywhere at rest; the KMS has both KEKs, by ID.
    admin_cert = pki.clients["admin"]
    reader = StandardKeyProvider("kmip", [KmsServerConfig(
        "127.0.0.1", kms.address[1], ca_file=pki.ca.cert, cert_file=admin_cert.cert,
        key_file=admin_cert.key)], product_version="test")
    kek, clone_kek = reader.get_kek(KekRef(key_id=key_id)), reader.get_kek(
        KekRef(key_id=clone_key))
    reader.close()
    secrets = [kek, clone_kek]
    for index in (0, 1):
        secrets.append(_dek(hosts.other, vm["instance_uuid"], index, kek))
        secrets.append(_dek(hosts.datastore, clone["instance_uuid"], index, clone_kek))
    assert secrets[2] != secrets[3]
    control_files = [p for p in tmp_path.iterdir() if p.name.startswith(db_path.name)]
    for secret in secrets:
        assert _scan([*control_files, hosts.datastore, hosts.other], secret) == 0
    assert _scan([hosts.datastore, hosts.other], PAYLOAD[:64]) == 0

    # Every clone and migration is in the event log with its result.
    events = (await control.get(f"{API}/events?type=crypto.migrate", headers=admin)).json()
    results = sorted(e["details"]["result"] for e in events)
    # failed: three refused requests (already there, no such host, locked), two relay jobs
    assert results.count("succeeded") == 2 and results.count("failed") == 5
    assert results.count("started") == 3  # one per relay job, each with one end event
    clones = (await control.get(f"{API}/events?type=crypto.clone", headers=admin)).json()
    assert {e["details"]["result"] for e in clones} >= {"started", "succeeded", "failed"}


@pytest.mark.anyio
async def test_native_and_plain_vms_clone_and_cross_clusters(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Fleet,  # noqa: F811
) -> None:
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    ids.update(await _second_cluster(control, admin, hosts))

    async def post(path: str, body: object) -> dict[str, Any]:
        response = await control.post(API + path, json=body, headers=admin)
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    provider = (await post("/key-providers/native", {"name": "nkp"}))["id"]
    await post(f"/key-providers/{provider}/acknowledge-no-backup", {})
    policy = (await post("/storage-policies", {"name": "enc-native", "encryption": True,
                                               "key_provider_id": provider}))["id"]
    native = await post("/vms", {"name": "vm-n", "datastore_id": ids["datastore"],
                                 "host_id": ids["esx-a"], "disks": [DISK, DISK],
                                 "storage_policy_id": policy})
    plain = await post("/vms", {"name": "vm-p", "datastore_id": ids["datastore"],
                                "host_id": ids["esx-a"], "disks": [DISK, DISK]})
    for vm in (native, plain):
        await _write(control, admin, vm["id"])

    copy = await _clone(control, admin, native["id"], "vm-n2")
    assert copy["encrypted"] and copy["key_ids"]["home"] is None  # a wrapped KEK, by design
    await _same_data(control, admin, copy["id"])
    plain_copy = await _clone(control, admin, plain["id"], "vm-p2")
    assert not plain_copy["encrypted"]
    await _same_data(control, admin, plain_copy["id"])

    # esx-c restarted (no primary key): migrating pushes the primary key first.
    hosts.start("esx-c")
    for vm in (copy, plain_copy):
        moved = await _migrate_job(control, admin, vm["id"], ids["esx-c"])
        assert moved["state"] == "succeeded", moved
        await _same_data(control, admin, vm["id"])
        assert not (hosts.datastore / vm["instance_uuid"]).exists()
    assert hosts.states["esx-c"].cache.native_provider_ids() == ["nkp"]
    await _same_data(control, admin, native["id"])


@pytest.mark.anyio
async def test_cancelled_clone_leaves_nothing_and_busy_vm_refuses_moves(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Fleet, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    ids.update(await _second_cluster(control, admin, hosts))
    created = await control.post(f"{API}/vms", headers=admin, json={
        "name": "vm-01", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK, DISK], "storage_policy_id": ids["policy"]})
    vm = created.json()
    key_id = vm["key_ids"]["home"]
    await _write(control, admin, vm["id"])

    # The host's clone waits until it is cancelled: the job is deterministically running.
    from vmcrypt.host.api import moves

    real = moves.clone_vm

    def held(*args: Any, cancel: threading.Event | None = None, **kwargs: Any) -> Any:
        assert cancel is not None
        cancel.wait(10)
        return real(*args, cancel=cancel, **kwargs)

    monkeypatch.setattr(moves, "clone_vm", held)
    started = await control.post(f"{API}/vms/{vm['id']}/clone", json={"name": "vm-02"},
                                 headers=admin)
    assert started.status_code == 202, started.text
    job = started.json()
    clone_key = next(k for k in hosts.kek_ids("esx-a") if k != key_id)
    assert hosts.kek_ids("esx-b") == sorted([key_id, clone_key])

    # The name is taken by the clone in the making, even for another VM's clone.
    other = await control.post(f"{API}/vms", headers=admin, json={
        "name": "other", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK]})
    taken = await control.post(f"{API}/vms/{other.json()['id']}/clone",
                               json={"name": "vm-02"}, headers=admin)
    assert taken.status_code == 409 and "being made" in taken.json()["message"], taken.text
    # Busy: no second clone, no migration, while the clone runs.
    for action, body in (("clone", {"name": "vm-03"}), ("migrate", {"host_id": ids["esx-b"]}),
                         ("migrate", {"host_id": ids["esx-c"]})):
        busy = await control.post(f"{API}/vms/{vm['id']}/{action}", json=body, headers=admin)
        assert busy.status_code == 409 and "busy" in busy.json()["message"], busy.text

    cancel = await control.post(f"{API}/jobs/{job['id']}/cancel", headers=admin)
    assert cancel.status_code == 202, cancel.text
    for _ in range(400):
        status = (await control.get(f"{API}/vms/{vm['id']}/jobs/{job['id']}",
                                    headers=admin)).json()
        if status["job"]["state"] in FINAL:
            break
        await asyncio.sleep(0.02)
    assert status["job"]["state"] == "cancelled" and status["clone"] is None
    # Nothing of the clone: no row, no folder, its new KEK gone from every host.
    names = [v["name"] for v in (await control.get(f"{API}/vms", headers=admin)).json()]
    assert names == ["vm-01", "other"]
    assert sorted(p.name for p in hosts.datastore.iterdir() if not p.name.startswith(".")) == (
        sorted([vm["instance_uuid"], other.json()["instance_uuid"]]))
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == [key_id]
    await _same_data(control, admin, vm["id"])
    events = (await control.get(f"{API}/events?type=crypto.clone", headers=admin)).json()
    assert "cancelled" in {e["details"]["result"] for e in events}
    # Free again: the move goes through.
    moved = await control.post(f"{API}/vms/{vm['id']}/migrate", json={"host_id": ids["esx-b"]},
                               headers=admin)
    assert moved.status_code == 200, moved.text


@pytest.mark.anyio
async def test_a_clone_followed_at_jobs_is_recorded_too(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Fleet,  # noqa: F811
) -> None:
    """``GET /jobs/{id}`` settles a clone as ``GET /vms/{id}/jobs/{job}`` does: the clone
    appears in the inventory once its job succeeded, and only once."""
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    made = await control.post(f"{API}/vms", headers=admin, json={
        "name": "src", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK, DISK], "storage_policy_id": ids["policy"]})
    assert made.status_code == 201, made.text
    source = made.json()
    await _write(control, admin, source["id"])
    started = await control.post(f"{API}/vms/{source['id']}/clone", json={"name": "copy"},
                                 headers=admin)
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    for _ in range(400):
        job = (await control.get(f"{API}/jobs/{job_id}", headers=admin)).json()
        if job["state"] in FINAL:
            break
        await asyncio.sleep(0.02)
    assert job["state"] == "succeeded", job
    await control.get(f"{API}/jobs/{job_id}", headers=admin)  # a second read adds nothing
    names = [vm["name"] for vm in (await control.get(f"{API}/vms", headers=admin)).json()]
    assert sorted(names) == ["copy", "src"]
    clone = next(vm for vm in (await control.get(f"{API}/vms", headers=admin)).json()
                 if vm["name"] == "copy")
    assert clone["encrypted"] and clone["key_ids"]["home"] != source["key_ids"]["home"]
    await _same_data(control, admin, clone["id"])


def _kms_client(layout: PkiLayout, port: int) -> Any:
    from vmcrypt.kmip.client import KmipClient
    from vmcrypt.pki.tls import client_context

    cert = layout.clients["admin"]
    return KmipClient("127.0.0.1", port, ssl_context=client_context(
        ca_file=layout.ca.cert, cert_file=cert.cert, key_file=cert.key))


def _no_active_key(layout: PkiLayout, port: int, name: str) -> list[str]:
    """The keys the KMS made for VM ``name``: each Destroyed, none Active for its UUID."""
    from vmcrypt.kmip.tags import State

    kmip = _kms_client(layout, port)
    try:
        made = kmip.locate(attributes={"x-Name": name})
        for uid in made:
            assert kmip.get_attributes(uid, ["State"])[0].value.value == State.DESTROYED
            ident = kmip.get_attributes(uid, ["x-Identifier"])[0].value.value
            assert kmip.locate(attributes={"x-Identifier": ident, "State": State.ACTIVE}) == []
        return list(made)
    finally:
        kmip.close()


@pytest.mark.anyio
async def test_failed_create_and_clone_leave_no_orphan_kek(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Fleet, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """The KMS made a KEK, then the host refused: the KEK is Destroyed and off the hosts;
    the refused clone has exactly one start and one end ``crypto.clone`` event."""
    from vmcrypt.host.api import moves
    from vmcrypt.host.api import vms as host_vms
    from vmcrypt.host.exceptions import VmBusy

    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise VmBusy("refused by the test")

    with monkeypatch.context() as patch:
        patch.setattr(host_vms, "create_vm", refuse)
        failed = await control.post(f"{API}/vms", headers=admin, json={
            "name": "vm-x", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
            "disks": [DISK], "storage_policy_id": ids["policy"]})
    assert failed.status_code == 409, failed.text
    assert len(_no_active_key(pki, kms.address[1], "vm-x")) == 1
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == []
    assert (await control.get(f"{API}/vms", headers=admin)).json() == []

    created = await control.post(f"{API}/vms", headers=admin, json={
        "name": "vm-01", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK, DISK], "storage_policy_id": ids["policy"]})
    assert created.status_code == 201, created.text
    vm = created.json()
    key_id = vm["key_ids"]["home"]
    await _write(control, admin, vm["id"])
    with monkeypatch.context() as patch:
        patch.setattr(moves, "clone_vm", refuse)
        started = await control.post(f"{API}/vms/{vm['id']}/clone", json={"name": "vm-02"},
                                     headers=admin)
        assert started.status_code == 202, started.text
        job = started.json()
        for _ in range(400):
            status = (await control.get(f"{API}/vms/{vm['id']}/jobs/{job['id']}",
                                        headers=admin)).json()
            if status["job"]["state"] in FINAL:
                break
            await asyncio.sleep(0.02)
    assert status["job"]["state"] == "failed" and status["clone"] is None
    await control.get(f"{API}/jobs/{job['id']}", headers=admin)  # a second read adds nothing
    assert len(_no_active_key(pki, kms.address[1], "vm-02")) == 1
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == [key_id]
    await _same_data(control, admin, vm["id"])
    events = (await control.get(f"{API}/events?type=crypto.clone", headers=admin)).json()
    assert sorted(e["details"]["result"] for e in events) == ["failed", "started"]
    assert {e["details"]["job_id"] for e in events} == {job["id"]}

    # A clone that succeeds: one start (on the source), one end (on the clone).
    await _clone(control, admin, vm["id"], "vm-03")
    await control.get(f"{API}/jobs/{job['id'] + 1}", headers=admin)
    events = (await control.get(f"{API}/events?type=crypto.clone", headers=admin)).json()
    ours = [e for e in events if e["details"].get("job_id") == job["id"] + 1]
    assert sorted(e["details"]["result"] for e in ours) == ["started", "succeeded"]


@pytest.mark.anyio
async def test_a_kek_that_cannot_be_destroyed_is_an_event(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Fleet, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """The cleanup itself fails: the request is still rolled back, the event outlives it."""
    from vmcrypt.control.services import vms as service
    from vmcrypt.host.api import vms as host_vms
    from vmcrypt.host.exceptions import VmBusy

    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise VmBusy("refused by the test")

    monkeypatch.setattr(host_vms, "create_vm", refuse)
    monkeypatch.setattr(service, "destroy_kek", lambda *_a: "no key server could be reached")
    failed = await control.post(f"{API}/vms", headers=admin, json={
        "name": "vm-x", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK], "storage_policy_id": ids["policy"]})
    assert failed.status_code == 409, failed.text
    events = (await control.get(f"{API}/events?type=kms.key.orphaned", headers=admin)).json()
    assert len(events) == 1 and events[0]["details"]["vm"] == "vm-x"
    assert events[0]["details"]["key_id"] and events[0]["severity"] == "error"
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == []
    assert (await control.get(f"{API}/vms", headers=admin)).json() == []


@pytest.mark.anyio
async def test_migration_job_progress_cancel_and_restart(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Fleet, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    database: Database, master_key: bytes,
) -> None:
    """A relay reports bytes, percent and rate; cancelled mid-stream it leaves the VM at
    its source, intact, and nothing at the destination; a restart ends a dead relay."""
    from vmcrypt.control.api import create_app
    from vmcrypt.control.db.repo import create_job, report_progress
    from vmcrypt.host.vm.mobility import Bundle

    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    ids.update(await _second_cluster(control, admin, hosts))
    created = await control.post(f"{API}/vms", headers=admin, json={
        "name": "vm-01", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK, DISK], "storage_policy_id": ids["policy"]})
    vm = created.json()
    key_id = vm["key_ids"]["home"]
    await _write(control, admin, vm["id"])

    # The source sends a little over 1 MiB, then waits: the job is surely mid-stream.
    release = threading.Event()
    real = Bundle.chunks

    def held(self: Bundle, chunk: int = 1 << 20) -> Any:
        sent = 0
        for piece in real(self, chunk):
            yield piece
            sent += len(piece)
            if sent > (1 << 20) + 4096:
                release.wait(10)

    monkeypatch.setattr(Bundle, "chunks", held)
    started = await control.post(f"{API}/vms/{vm['id']}/migrate",
                                 json={"host_id": ids["esx-c"]}, headers=admin)
    assert started.status_code == 202, started.text
    job = started.json()
    for _ in range(500):
        job = (await control.get(f"{API}/jobs/{job['id']}", headers=admin)).json()
        if job["bytes_done"] > 0:
            break
        await asyncio.sleep(0.02)
    assert job["state"] == "running" and job["bytes_done"] >= 1 << 20, job
    assert job["bytes_total"] > 2 * DISK and 0 < job["progress_percent"] < 100
    assert job["rate_bytes_per_second"] > 0
    listed = (await control.get(f"{API}/jobs?type=vm.migrate", headers=admin)).json()
    assert [j["id"] for j in listed] == [job["id"]]
    # Busy while the relay runs: no other move, no clone.
    busy = await control.post(f"{API}/vms/{vm['id']}/clone", json={"name": "c"},
                              headers=admin)
    assert busy.status_code == 409 and "busy" in busy.json()["message"], busy.text
    assert key_id in hosts.kek_ids("esx-c")  # pushed first

    cancel = await control.post(f"{API}/jobs/{job['id']}/cancel", headers=admin)
    assert cancel.status_code == 202, cancel.text
    release.set()
    for _ in range(500):
        job = (await control.get(f"{API}/jobs/{job['id']}", headers=admin)).json()
        if job["state"] in FINAL:
            break
        await asyncio.sleep(0.02)
    assert job["state"] == "cancelled", job
    after = await _vm(control, admin, vm["id"])
    assert after["host_id"] == ids["esx-a"] and after["registered"] and not after["locked"]
    assert list(hosts.other.iterdir()) == []  # nothing staged, nothing committed
    assert hosts.kek_ids("esx-c") == []       # withdrawn
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == [key_id]
    await _same_data(control, admin, vm["id"])
    again = await control.post(f"{API}/jobs/{job['id']}/cancel", headers=admin)
    assert again.status_code == 409, again.text

    # Now all the way: the same data on the other side.
    monkeypatch.setattr(Bundle, "chunks", real)
    done = await _migrate_job(control, admin, vm["id"], ids["esx-c"])
    assert done["state"] == "succeeded" and done["progress_percent"] == 100.0, done
    assert (await _vm(control, admin, vm["id"]))["host_id"] == ids["esx-c"]
    await _same_data(control, admin, vm["id"])
    events = (await control.get(f"{API}/events?type=crypto.migrate", headers=admin)).json()
    assert sorted(e["details"]["result"] for e in events) == [
        "cancelled", "started", "started", "succeeded"]

    # A relay whose process died: the next start ends it as failed, saying where the VM is.
    with database.transaction() as session:
        dead = create_job(session, type="vm.migrate", target_type="vm", target_id=vm["id"],
                          component="all")
        report_progress(session, job_id=dead.id, bytes_done=0)
        dead_id = dead.id
    create_app(database, master_key=master_key, hosts=hosts)
    ended = (await control.get(f"{API}/jobs/{dead_id}", headers=admin)).json()
    assert ended["state"] == "failed" and "restarted" in ended["error"], ended
    assert "stayed registered where it was" in ended["error"]
