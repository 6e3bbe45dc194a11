"""Disk I/O through a host: any offset and length, encrypted or raw, locked against jobs."""

from __future__ import annotations

import pytest

from tests.host.conftest import MIB, pattern
from vmcrypt.exceptions import UsageError
from vmcrypt.host import (
    Datastore,
    KeyCache,
    KeySpec,
    NoSuchDisk,
    VmBusy,
    create_vm,
    open_disk,
    read_disk,
    write_disk,
)


@pytest.mark.parametrize("encrypted", [True, False])
def test_unaligned_read_write(
    ds: Datastore, cache: KeyCache, std_key: KeySpec, encrypted: bool
) -> None:
    vm_id = create_vm(
        ds, cache, name="io", disk_sizes=[MIB], key=std_key, encrypt_disks=[encrypted]
    ).instance_uuid
    blob = pattern(9, 10_000)
    write_disk(ds, cache, vm_id, 0, offset=4093, data=blob)
    assert read_disk(ds, cache, vm_id, 0, offset=4093, length=len(blob)) == blob
    assert read_disk(ds, cache, vm_id, 0, offset=0, length=4093) == bytes(4093)
    raw = ds.disk_path(vm_id, 0).read_bytes()
    assert (blob in raw) is not encrypted


def test_bad_ranges_and_disks(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    vm_id = create_vm(ds, cache, name="io", disk_sizes=[MIB], key=std_key).instance_uuid
    with pytest.raises(NoSuchDisk):
        read_disk(ds, cache, vm_id, 3, offset=0, length=1)
    with pytest.raises(UsageError, match="outside the disk"):
        read_disk(ds, cache, vm_id, 0, offset=MIB - 1, length=2)
    with pytest.raises(UsageError, match="outside the disk"):
        write_disk(ds, cache, vm_id, 0, offset=MIB, data=b"x")


def test_io_is_refused_while_vm_is_changed(
    ds: Datastore, cache: KeyCache, std_key: KeySpec
) -> None:
    vm_id = create_vm(ds, cache, name="io", disk_sizes=[MIB], key=std_key).instance_uuid
    with ds.lock(vm_id), pytest.raises(VmBusy):
        read_disk(ds, cache, vm_id, 0, offset=0, length=1)
    # Readers share the lock with each other.
    with ds.lock(vm_id, shared=True):
        assert read_disk(ds, cache, vm_id, 0, offset=0, length=4) == bytes(4)


def test_open_disk_streams(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    vm_id = create_vm(ds, cache, name="io", disk_sizes=[2 * MIB], key=std_key).instance_uuid
    with open_disk(ds, cache, vm_id, 0, writable=True) as disk:
        assert disk.encrypted and disk.size == 2 * MIB
        for n in range(4):
            disk.write(n * 512 * 1024, pattern(n, 512 * 1024))
    with open_disk(ds, cache, vm_id, 0) as disk:
        assert disk.read(512 * 1024, 512 * 1024) == pattern(1, 512 * 1024)
