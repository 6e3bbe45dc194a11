"""Create, read, delete VMs; add disks and a vTPM."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.host.conftest import KMS, MIB, pattern
from vmcrypt.crypto import IntegrityError
from vmcrypt.disk import container
from vmcrypt.exceptions import UsageError
from vmcrypt.host import (
    Datastore,
    HomeNotEncrypted,
    KeyCache,
    KeyNotOnHost,
    KeySpec,
    StateError,
    VmExists,
    VmNotFound,
    add_disk,
    add_vtpm,
    create_vm,
    delete_vm,
    read_disk,
    read_vm,
    remove_vtpm,
    write_disk,
)
from vmcrypt.providers import KekRef


def test_create_encrypted_vm(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    progress: list[tuple[int, int]] = []
    vm = create_vm(
        ds,
        cache,
        name="db-1",
        disk_sizes=[MIB, 2 * MIB],
        key=std_key,
        extra_config={"guestinfo.secret": "s3cr3t"},
        nvram=b"NVRAM-CONTENT",
        progress=lambda d, t: progress.append((d, t)),
    )
    assert vm.home_encrypted
    assert vm.home is not None and vm.home.key_id == "key-1"
    assert [d.encryption is not None for d in vm.disks] == [True, True]
    assert vm.extra_config == {"guestinfo.secret": "s3cr3t"}
    assert vm.nvram == b"NVRAM-CONTENT"
    assert progress[-1] == (3 * MIB, 3 * MIB)
    folder = ds.vm_dir(vm.instance_uuid)
    assert sorted(p.name for p in folder.iterdir()) == [
        ".vm.lock",
        "disk-0.img",
        "disk-0.img.luks",
        "disk-1.img",
        "disk-1.img.luks",
        "vm.json",
    ]
    raw = (folder / "vm.json").read_bytes()
    assert b"s3cr3t" not in raw
    assert b"NVRAM-CONTENT" not in raw
    ks = container.read_keysafe(ds.disk_path(vm.instance_uuid, 0))
    assert ks is not None and ks.key_id == "key-1" and ks.provider_id == KMS
    assert cache.vm_ids() == [vm.instance_uuid]


def test_create_unencrypted_vm(ds: Datastore, cache: KeyCache) -> None:
    vm = create_vm(ds, cache, name="plain", disk_sizes=[MIB], extra_config={"a": "b"})
    assert not vm.home_encrypted
    assert vm.disks[0].encryption is None
    assert not container.is_encrypted(ds.disk_path(vm.instance_uuid, 0))
    doc = json.loads(ds.config_path(vm.instance_uuid).read_text())
    assert doc["home"]["keysafe"] is None
    assert read_vm(ds, KeyCache(), vm.instance_uuid).extra_config == {"a": "b"}


def test_create_mixed_disks(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    vm = create_vm(
        ds, cache, name="m", disk_sizes=[MIB, MIB], key=std_key, encrypt_disks=[False, True]
    )
    assert [d.encryption is not None for d in vm.disks] == [False, True]


def test_create_refusals_change_nothing(ds: Datastore, cache: KeyCache) -> None:
    with pytest.raises(HomeNotEncrypted, match="give the VM an encryption key"):
        create_vm(ds, cache, name="x", disk_sizes=[MIB], encrypt_disks=[True])
    with pytest.raises(UsageError, match="multiple of 4096"):
        create_vm(ds, cache, name="x", disk_sizes=[1000])
    with pytest.raises(UsageError, match="one flag per disk"):
        create_vm(ds, cache, name="x", disk_sizes=[MIB], encrypt_disks=[])
    with pytest.raises(KeyNotOnHost):
        create_vm(ds, cache, name="x", disk_sizes=[MIB], key=KeySpec(KMS, KekRef(key_id="gone")))
    assert ds.vm_ids() == []
    assert not ds.root.exists() or list(ds.root.iterdir()) == []


def test_create_twice_same_uuid(ds: Datastore, cache: KeyCache) -> None:
    vm_id = str(uuid.uuid4())
    create_vm(ds, cache, name="a", instance_uuid=vm_id)
    with pytest.raises(VmExists):
        create_vm(ds, cache, name="b", instance_uuid=vm_id)
    assert read_vm(ds, cache, vm_id).name == "a"


def test_read_needs_the_kek(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    vm = create_vm(ds, cache, name="a", key=std_key)
    with pytest.raises(KeyNotOnHost, match="key-1"):
        read_vm(ds, KeyCache(), vm.instance_uuid)


def test_sealed_blobs_are_bound_to_vm_and_role(
    ds: Datastore, cache: KeyCache, std_key: KeySpec
) -> None:
    vm = create_vm(ds, cache, name="a", key=std_key, nvram=b"nv")
    path = ds.config_path(vm.instance_uuid)
    doc = json.loads(path.read_text())
    blobs = doc["home"]["blobs"]
    blobs["config"], blobs["nvram"] = blobs["nvram"], blobs["config"]
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError):
        read_vm(ds, cache, vm.instance_uuid)


def test_add_disk_follows_home(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    enc = create_vm(ds, cache, name="e", disk_sizes=[MIB], key=std_key)
    assert add_disk(ds, cache, enc.instance_uuid, size=MIB) == 1
    assert read_vm(ds, cache, enc.instance_uuid).disks[1].encryption is not None
    assert container.is_encrypted(ds.disk_path(enc.instance_uuid, 1))
    write_disk(ds, cache, enc.instance_uuid, 1, offset=4096, data=b"new disk")
    assert read_disk(ds, cache, enc.instance_uuid, 1, offset=4096, length=8) == b"new disk"
    assert add_disk(ds, cache, enc.instance_uuid, size=MIB, encrypted=False) == 2
    assert not container.is_encrypted(ds.disk_path(enc.instance_uuid, 2))

    plain = create_vm(ds, cache, name="p")
    assert add_disk(ds, cache, plain.instance_uuid, size=MIB) == 0
    assert not container.is_encrypted(ds.disk_path(plain.instance_uuid, 0))
    before = ds.config_path(plain.instance_uuid).read_bytes()
    with pytest.raises(HomeNotEncrypted, match="encrypt VM home first"):
        add_disk(ds, cache, plain.instance_uuid, size=MIB, encrypted=True)
    assert ds.config_path(plain.instance_uuid).read_bytes() == before
    assert not ds.disk_path(plain.instance_uuid, 1).exists()


def test_vtpm(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    plain = create_vm(ds, cache, name="p")
    with pytest.raises(HomeNotEncrypted, match="vTPM requires an encrypted VM home"):
        add_vtpm(ds, cache, plain.instance_uuid, state=b"tpm")
    assert not read_vm(ds, cache, plain.instance_uuid).has_vtpm

    vm = create_vm(ds, cache, name="t", key=std_key)
    add_vtpm(ds, cache, vm.instance_uuid, state=b"TPM-STATE-BYTES")
    info = read_vm(ds, cache, vm.instance_uuid)
    assert info.has_vtpm and info.vtpm_state == b"TPM-STATE-BYTES"
    assert b"TPM-STATE-BYTES" not in ds.config_path(vm.instance_uuid).read_bytes()
    with pytest.raises(StateError, match="already has a vTPM"):
        add_vtpm(ds, cache, vm.instance_uuid)
    remove_vtpm(ds, vm.instance_uuid)
    assert read_vm(ds, cache, vm.instance_uuid).vtpm_state is None
    with pytest.raises(StateError, match="has no vTPM"):
        remove_vtpm(ds, vm.instance_uuid)


def test_delete_vm_removes_files_and_keks(
    ds: Datastore, cache: KeyCache, std_key: KeySpec
) -> None:
    vm = create_vm(ds, cache, name="d", disk_sizes=[MIB], key=std_key)
    write_disk(ds, cache, vm.instance_uuid, 0, offset=0, data=pattern(1, 4096))
    delete_vm(ds, cache, vm.instance_uuid)
    assert not ds.vm_dir(vm.instance_uuid).exists()
    assert not cache.has(KMS, "key-1")
    with pytest.raises(VmNotFound):
        read_vm(ds, cache, vm.instance_uuid)
    with pytest.raises(VmNotFound):
        delete_vm(ds, cache, vm.instance_uuid)


def test_delete_keeps_kek_another_vm_uses(
    ds: Datastore, cache: KeyCache, std_key: KeySpec
) -> None:
    a = create_vm(ds, cache, name="a", key=std_key)
    b = create_vm(ds, cache, name="b", key=std_key)
    delete_vm(ds, cache, a.instance_uuid)
    assert cache.has(KMS, "key-1")
    assert read_vm(ds, cache, b.instance_uuid).name == "b"
    delete_vm(ds, cache, b.instance_uuid)
    assert not cache.has(KMS, "key-1")


def test_failed_create_leaves_nothing(
    ds: Datastore, cache: KeyCache, std_key: KeySpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = container.create_encrypted
    calls = []

    def fail_second(*args: object, **kwargs: object) -> container.Disk:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(container, "create_encrypted", fail_second)
    with pytest.raises(OSError, match="disk full"):
        create_vm(ds, cache, name="x", disk_sizes=[MIB, MIB], key=std_key)
    assert list(ds.root.iterdir()) == []
