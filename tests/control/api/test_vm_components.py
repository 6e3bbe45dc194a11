"""Add disks and vTPMs, and re-key one component at a time, through the control API.

The harness of ``test_vms.py`` (control app in process, two hosts of one cluster on a
shared datastore, a real KMS). Every step checks that data written before it reads
back identical after it, that the control DB holds key IDs (or wrapped KEKs) only, and
that refused requests are clear 4xx answers that change nothing.
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
from sqlalchemy import select

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
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import EncryptionRecord, VirtualMachine
from vmcrypt.control.services.crypto_ops import track_host_job
from vmcrypt.host.datastore import KeyFacts
from vmcrypt.kms.server import KmsServer
from vmcrypt.pki import PkiLayout
from vmcrypt.providers import KekRef, KmsServerConfig, StandardKeyProvider

PAYLOAD = random.Random(7).randbytes(6000)  # no repeats: a scan counts copies
OFFSET = 12288


class Api:
    """The admin's calls on one VM, and the checks every test repeats."""

    def __init__(self, client: httpx.AsyncClient, token: str, vm_id: int = 0) -> None:
        self.client, self.headers, self.vm_id = client, auth(token), vm_id

    async def post(self, path: str, body: object = None) -> httpx.Response:
        return await self.client.post(f"{API}/vms/{self.vm_id}/{path}", json=body,
                                      headers=self.headers)

    async def vm(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.client.get(f"{API}/vms/{self.vm_id}",
                                                      headers=self.headers)).json()
        return body

    async def write(self, disk: int) -> None:
        put = await self.client.put(f"{API}/vms/{self.vm_id}/disks/{disk}/data"
                                    f"?offset={OFFSET}", content=PAYLOAD, headers=self.headers)
        assert put.status_code == 200, put.text

    async def read(self, disk: int) -> bytes:
        got = await self.client.get(f"{API}/vms/{self.vm_id}/disks/{disk}/data"
                                    f"?offset={OFFSET}&length={len(PAYLOAD)}",
                                    headers=self.headers)
        assert got.status_code == 200, got.text
        return got.content

    async def all_read_back(self, disks: list[int]) -> None:
        for disk in disks:
            assert await self.read(disk) == PAYLOAD, f"disk {disk} changed"

    async def wait(self, started: httpx.Response) -> dict[str, Any]:
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]
        for _ in range(500):
            job: dict[str, Any] = (await self.client.get(f"{API}/jobs/{job_id}",
                                                         headers=self.headers)).json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                assert job["state"] == "succeeded", job
                return job
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} did not finish")

    async def refused(self, path: str, body: object, status: int, phrase: str) -> None:
        """A refused request: the status, a message naming the problem, nothing changed."""
        before = await self.vm()
        answer = await self.post(path, body)
        assert answer.status_code == status, (path, body, answer.text)
        assert phrase.lower() in answer.text.lower(), answer.text
        assert await self.vm() == before


async def _create(api: Api, ids: dict[str, int], name: str, disks: int,
                  policy: str | None = "policy") -> None:
    body: dict[str, Any] = {"name": name, "datastore_id": ids["datastore"],
                            "host_id": ids["esx-a"], "disks": [DISK] * disks}
    if policy is not None:
        body["storage_policy_id"] = ids[policy]
    created = await api.client.post(f"{API}/vms", json=body, headers=api.headers)
    assert created.status_code == 201, created.text
    api.vm_id = created.json()["id"]
    for disk in range(disks):
        await api.write(disk)


def _kek(pki: PkiLayout, kms: KmsServer, key_id: str) -> bytes:  # noqa: F811
    cert = pki.clients["admin"]
    reader = StandardKeyProvider("kmip", [KmsServerConfig(
        "127.0.0.1", kms.address[1], ca_file=pki.ca.cert, cert_file=cert.cert,
        key_file=cert.key)], product_version="test")
    try:
        return reader.get_kek(KekRef(key_id=key_id))
    finally:
        reader.close()


@pytest.mark.anyio
async def test_add_disk_encrypted_by_default_and_bad_sizes(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts, tmp_path: Path, db_path: Path,  # noqa: F811
) -> None:
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    api = Api(control, tokens["admin"])
    await _create(api, ids, "grow", disks=1)
    key_id = (await api.vm())["key_ids"]["home"]

    # Bad sizes and an encrypted disk's missing privilege: 4xx, and nothing changes.
    for size in (0, -4096, 1000, 4097, 1 << 50, "big"):
        await api.refused("disks", {"size": size}, 422, "size")
    nocrypto = Api(control, tokens["nocrypto"], api.vm_id)
    await nocrypto.refused("disks", {"size": DISK}, 403, "Cryptographer.AddDisk")
    await nocrypto.refused("disks", {"size": DISK, "encrypted": True}, 403, "AddDisk")

    # Default: encrypted, as VM home is, under VM home's KEK (a new DEK of its own).
    added = await api.post("disks", {"size": DISK})
    assert added.status_code == 201, added.text
    vm = added.json()
    assert vm["key_ids"] == {"home": key_id, "disk-0": key_id, "disk-1": key_id}
    assert vm["disks"][1] == {"index": 1, "size_bytes": DISK, "encrypted": True}
    await api.write(1)
    # A clear disk on an encrypted VM is allowed when asked for; it holds plaintext.
    plain = await api.post("disks", {"size": 2 * DISK, "encrypted": False})
    assert plain.status_code == 201, plain.text
    assert "disk-2" not in plain.json()["key_ids"]
    await api.write(2)
    assert _scan([hosts.datastore], PAYLOAD[:64]) == 1  # only disk 2 is clear
    await api.all_read_back([0, 1, 2])

    # The control DB: the disks' key IDs, never the KEK.
    files = [p for p in tmp_path.iterdir() if p.name.startswith(db_path.name)]
    assert _scan(files, key_id.encode()) > 0
    assert _scan(files, _kek(pki, kms, key_id)) == 0

    # A clear VM: clear disks only (409 for an encrypted one), no AddDisk privilege needed.
    clear = Api(control, tokens["admin"])
    await _create(clear, ids, "clear", disks=0, policy=None)
    await clear.refused("disks", {"size": DISK, "encrypted": True}, 409, "encrypt VM home first")
    nocrypto.vm_id = clear.vm_id
    added = await nocrypto.post("disks", {"size": DISK})
    assert added.status_code == 201, added.text
    assert added.json()["key_ids"] == {} and added.json()["disks"][0]["encrypted"] is False
    missing = await control.post(f"{API}/vms/999/disks", json={"size": DISK},
                                 headers=api.headers)
    assert missing.status_code == 404


@pytest.mark.anyio
async def test_vtpm_needs_an_encrypted_home_and_blocks_its_decryption(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts,  # noqa: F811
) -> None:
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    clear = Api(control, tokens["admin"])
    await _create(clear, ids, "clear", disks=1, policy=None)
    await clear.refused("vtpm", None, 409, "encrypted VM home")

    api = Api(control, tokens["admin"])
    await _create(api, ids, "tpm", disks=1)
    assert (await api.vm())["vtpm"] is False
    denied = await Api(control, tokens["nocrypto"], api.vm_id).post("vtpm")
    assert denied.status_code == 403
    added = await api.post("vtpm")
    assert added.status_code == 201, added.text
    assert added.json()["vtpm"] is True
    assert hosts.states["esx-a"].datastore.read(added.json()["instance_uuid"]).has_vtpm
    await api.refused("vtpm", None, 409, "already has a vTPM")
    await api.all_read_back([0])

    # VM home cannot be decrypted while the vTPM needs its DEK.
    await api.wait(await api.post("decrypt", {"component": 0}))
    await api.refused("decrypt", {"component": "home"}, 409, "vTPM")
    removed = await api.client.delete(f"{API}/vms/{api.vm_id}/vtpm", headers=api.headers)
    assert removed.status_code == 200, removed.text
    assert removed.json()["vtpm"] is False
    again = await api.client.delete(f"{API}/vms/{api.vm_id}/vtpm", headers=api.headers)
    assert again.status_code == 200 and again.json() == removed.json()  # idempotent
    await api.wait(await api.post("decrypt", {"component": "home"}))
    assert (await api.vm())["key_ids"] == {}
    await api.all_read_back([0])


@pytest.mark.anyio
async def test_rekey_one_component_at_a_time(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts, tmp_path: Path, db_path: Path,  # noqa: F811
) -> None:
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    api = Api(control, tokens["admin"])
    await _create(api, ids, "parts", disks=2)
    first = (await api.vm())["key_ids"]["home"]
    plain = await api.post("disks", {"size": DISK, "encrypted": False})
    assert plain.status_code == 201
    await api.write(2)

    # Refusals: a clear or unknown component, a bad component; nothing changes.
    await api.refused("rekey", {"component": 2}, 409, "not encrypted")
    await api.refused("rekey", {"component": 2, "deep": True}, 409, "not encrypted")
    await api.refused("rekey", {"component": 9}, 404, "no disk 9")
    await api.refused("rekey", {"component": "disk"}, 422, "component")

    # Shallow, disk 1 only: a new KEK for it; VM home and disk 0 keep theirs.
    shallow = await api.post("rekey", {"component": 1})
    assert shallow.status_code == 200, shallow.text
    second = shallow.json()["key_id"]
    assert second not in (None, first) and shallow.json()["component"] == "disk-1"
    assert shallow.json()["key_ids"] == {"home": first, "disk-0": first, "disk-1": second}
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == sorted([first, second])
    await api.all_read_back([0, 1, 2])

    # Shallow, VM home only: disk 0 still uses the first KEK, so it stays on the hosts.
    home = await api.post("rekey", {"component": "home"})
    third = home.json()["key_id"]
    assert home.json()["key_ids"] == {"home": third, "disk-0": first, "disk-1": second}
    assert hosts.kek_ids("esx-a") == sorted([first, second, third])
    await api.all_read_back([0, 1, 2])

    # Shallow, all (the old body): one new KEK for every component; the old ones leave.
    everything = await api.post("rekey", {"deep": False})
    fourth = everything.json()["key_id"]
    assert set(everything.json()["key_ids"].values()) == {fourth}
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == [fourth]
    await api.all_read_back([0, 1, 2])

    # Deep, one disk then VM home: jobs naming their component; KEKs and data kept.
    job = await api.wait(await api.post("rekey", {"deep": True, "component": 0}))
    assert (job["type"], job["component"], job["bytes_total"]) == ("vm.rekey-deep", "disk-0",
                                                                    DISK)
    job = await api.wait(await api.post("rekey", {"deep": True, "component": "home"}))
    assert job["component"] == "home"
    assert set((await api.vm())["key_ids"].values()) == {fourth}
    await api.all_read_back([0, 1, 2])
    assert _scan([hosts.datastore], PAYLOAD[:64]) == 1  # only the clear disk 2
    files = [p for p in tmp_path.iterdir() if p.name.startswith(db_path.name)]
    for key_id in (first, second, third, fourth):
        assert _scan(files, _kek(pki, kms, key_id)) == 0


@pytest.mark.anyio
async def test_a_busy_vm_refuses_changes_until_its_job_ends(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts, database: Database,  # noqa: F811
) -> None:
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    api = Api(control, tokens["admin"])
    await _create(api, ids, "busy", disks=1)
    instance = (await api.vm())["instance_uuid"]
    release = threading.Event()
    held = hosts.states["esx-a"].jobs.start("hold", instance,
                                            lambda _p, _c: release.wait(30))
    with database.transaction() as session:
        vm = session.get_one(VirtualMachine, api.vm_id)
        track_host_job(session, vm, "vm.test-hold", "all", held.id, "admin")
    try:
        for path, body in (("disks", {"size": DISK}), ("vtpm", None),
                           ("rekey", {"component": "home"}), ("rekey", {"deep": True}),
                           ("encrypt", {"component": 0}), ("decrypt", {"component": 0})):
            await api.refused(path, body, 409, "busy")
    finally:
        release.set()
    for _ in range(200):
        if held.state == "succeeded":
            break
        await asyncio.sleep(0.01)
    added = await api.post("disks", {"size": DISK})  # polls the ended job, then goes on
    assert added.status_code == 201, added.text
    await api.all_read_back([0])


@pytest.mark.anyio
async def test_native_vm_shallow_rekey_records_only_wrapped_keks(
    control: httpx.AsyncClient, tokens: dict[str, str], hosts: Hosts,  # noqa: F811
    database: Database, tmp_path: Path, db_path: Path,
) -> None:
    admin = auth(tokens["admin"])

    async def post(path: str, body: object) -> dict[str, Any]:
        answer = await control.post(API + path, json=body, headers=admin)
        assert answer.status_code in (200, 201), answer.text
        result: dict[str, Any] = answer.json()
        return result

    ids: dict[str, int] = {"cluster": (await post("/clusters", {"name": "c1"}))["id"]}
    for name in ("esx-a", "esx-b"):
        ids[name] = (await post("/hosts", {"name": name, "hardware_uuid": str(uuid.uuid4()),
                                           "cluster_id": ids["cluster"],
                                           "api_url": f"https://{name}:8443"}))["id"]
    ids["datastore"] = (await post("/datastores", {"name": "ds", "path": str(hosts.datastore),
                                                   "cluster_id": ids["cluster"]}))["id"]
    provider = (await post("/key-providers/native", {"name": "nkp"}))["id"]
    await post(f"/key-providers/{provider}/acknowledge-no-backup", None)
    ids["native"] = (await post("/storage-policies", {"name": "native", "encryption": True,
                                                      "key_provider_id": provider}))["id"]
    api = Api(control, tokens["admin"])
    await _create(api, ids, "nat", disks=2, policy="native")

    def wrapped() -> dict[int | None, bytes]:
        with database.sessions() as session:
            rows = session.scalars(select(EncryptionRecord).where(
                EncryptionRecord.vm_id == api.vm_id))
            return {r.disk_id: bytes(r.wrapped_kek or b"") for r in rows if not r.key_id}

    def on_host() -> dict[str, str | None]:
        view = hosts.states["esx-a"].datastore.read(instance)
        home = KeyFacts.of(view.home_keysafe) if view.home_keysafe else None
        facts: dict[str, KeyFacts | None] = {"home": home}
        for disk in view.disks:
            facts[f"disk-{disk.index}"] = disk.encryption
        return {k: (f.wrapped_kek.hex() if f and f.wrapped_kek else None)
                for k, f in facts.items()}

    instance = (await api.vm())["instance_uuid"]
    before = wrapped()
    assert len(before) == 3 and len(set(before.values())) == 1  # one KEK, three records

    # All: one new KEK made by the host from the primary key; only its wrapped form kept.
    answer = await api.post("rekey", {"deep": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["key_id"] is None
    assert answer.json()["key_ids"] == {"home": None, "disk-0": None, "disk-1": None}
    after = wrapped()
    assert len(set(after.values())) == 1 and set(after.values()) != set(before.values())
    assert sorted(v.hex() for v in after.values()) == sorted(
        v for v in on_host().values() if v)
    await api.all_read_back([0, 1])

    # One disk: only its record changes; the other components keep their wrapped KEK.
    disk = await api.post("rekey", {"component": 1})
    assert disk.status_code == 200, disk.text
    last = wrapped()
    changed = {k for k in last if last[k] != after[k]}
    assert len(changed) == 1 and None not in changed
    await api.all_read_back([0, 1])
    # The wrapped KEKs are stored; nothing else key-like is (they are ciphertext).
    files = [p for p in tmp_path.iterdir() if p.name.startswith(db_path.name)]
    assert all(_scan(files, v) > 0 for v in last.values())


@pytest.mark.anyio
async def test_create_refuses_bad_sizes_and_taken_names_before_any_key(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts,  # noqa: F811
) -> None:
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    api = Api(control, tokens["admin"])
    await _create(api, ids, "taken", disks=1)
    keys = hosts.kek_ids("esx-a")
    good = {"name": "new", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
            "disks": [DISK], "storage_policy_id": ids["policy"]}
    for body, status in (({**good, "disks": [4097]}, 422), ({**good, "disks": [0]}, 422),
                         ({**good, "disks": [1 << 50]}, 422), ({**good, "name": "taken"}, 409)):
        answer = await control.post(f"{API}/vms", json=body, headers=api.headers)
        assert answer.status_code == status, (body, answer.text)
    assert hosts.kek_ids("esx-a") == hosts.kek_ids("esx-b") == keys  # no KEK left behind
    listed = (await control.get(f"{API}/vms", headers=api.headers)).json()
    assert [vm["name"] for vm in listed] == ["taken"]
