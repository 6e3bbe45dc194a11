"""The datastore layout: vm.json round trip, atomic writes, per-VM locks, safe names."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from vmcrypt.crypto import IntegrityError, generate_aead_key, generate_kek, seal_keysafe
from vmcrypt.host import (
    ConfigError,
    Datastore,
    DiskRecord,
    KeyFacts,
    NoSuchDisk,
    VmBusy,
    VmExists,
    VmNotFound,
    VmRecord,
)


def _record(vm_id: str) -> VmRecord:
    ks = seal_keysafe(
        kek=generate_kek(),
        dek=generate_aead_key(),
        provider_id="kms",
        key_id="k1",
        dek_algorithm="AES-256-GCM",
    )
    return VmRecord(
        instance_uuid=vm_id,
        name="web-1",
        disks=(
            DiskRecord(0, 4096, KeyFacts("kms", "k1")),
            DiskRecord(1, 8192, KeyFacts("nkp", wrapped_kek=b"\x01" * 40)),
            DiskRecord(2, 4096),
        ),
        home_keysafe=ks,
        has_vtpm=True,
        blobs={"config": b"sealed", "nvram": b"\x00\xff"},
    )


def test_round_trip_and_layout(ds: Datastore) -> None:
    vm_id = str(uuid.uuid4())
    ds.create_dir(vm_id)
    record = _record(vm_id)
    ds.write(record)
    assert ds.read(vm_id) == record
    assert ds.vm_ids() == [vm_id]
    assert ds.exists(vm_id)
    doc = json.loads(ds.config_path(vm_id).read_text())
    assert doc["name"] == "web-1"
    assert doc["home"]["encryption"] == {"provider_id": "kms", "key_id": "k1", "wrapped_kek": None}
    assert [d["file"] for d in doc["disks"]] == ["disk-0.img", "disk-1.img", "disk-2.img"]
    assert [d["encrypted"] for d in doc["disks"]] == [True, True, False]
    assert ds.disk_path(vm_id, 1) == ds.root / vm_id / "disk-1.img"
    assert record.disk(2).encryption is None
    with pytest.raises(NoSuchDisk, match="has no disk 7"):
        record.disk(7)


def test_write_leaves_no_temporaries(ds: Datastore) -> None:
    vm_id = str(uuid.uuid4())
    ds.create_dir(vm_id)
    for _ in range(3):
        ds.write(_record(vm_id))
    names = sorted(p.name for p in (ds.root / vm_id).iterdir())
    assert names == ["vm.json"]


def test_unknown_and_malformed(ds: Datastore) -> None:
    vm_id = str(uuid.uuid4())
    with pytest.raises(VmNotFound):
        ds.read(vm_id)
    with pytest.raises(VmNotFound, match="not a VM instance UUID"):
        ds.vm_dir("../etc")
    assert ds.vm_ids() == []
    ds.create_dir(vm_id)
    with pytest.raises(VmExists):
        ds.create_dir(vm_id)
    ds.config_path(vm_id).write_text("{not json")
    with pytest.raises(ConfigError, match="restore it from a backup"):
        ds.read(vm_id)
    other = str(uuid.uuid4())
    ds.config_path(vm_id).write_bytes(_record(other).to_json())
    with pytest.raises(ConfigError, match="names VM"):
        ds.read(vm_id)


def test_tampered_keysafe_is_the_opaque_integrity_error(ds: Datastore) -> None:
    vm_id = str(uuid.uuid4())
    ds.create_dir(vm_id)
    ds.write(_record(vm_id))
    doc = json.loads(ds.config_path(vm_id).read_text())
    doc["home"]["keysafe"]["wrapped_dek"] = "***"
    ds.config_path(vm_id).write_text(json.dumps(doc))
    with pytest.raises(IntegrityError):
        ds.read(vm_id)


def test_lock_excludes_a_second_host(tmp_path: Path) -> None:
    """Two Datastore objects on one folder (two hosts) never both hold a VM's lock."""
    host_a, host_b = Datastore(tmp_path), Datastore(tmp_path)
    vm_id = str(uuid.uuid4())
    host_a.create_dir(vm_id)
    with host_a.lock(vm_id):
        with pytest.raises(VmBusy, match="busy"):
            host_b.lock(vm_id).__enter__()
        with pytest.raises(VmBusy):
            host_b.lock(vm_id, shared=True).__enter__()
    with (
        host_a.lock(vm_id, shared=True),
        host_b.lock(vm_id, shared=True),
        pytest.raises(VmBusy),
    ):
        host_b.lock(vm_id).__enter__()
    with host_b.lock(vm_id):
        pass
    with pytest.raises(VmNotFound):
        host_a.lock(str(uuid.uuid4())).__enter__()
