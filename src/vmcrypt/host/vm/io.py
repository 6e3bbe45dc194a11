"""Reading and writing a VM disk's data at a byte offset, through the host's keys.

Users and tests put data in and check it survives every operation. I/O holds the VM's
lock *shared*: reads and writes of a VM run beside each other, never beside an encrypt,
decrypt or re-key of it (those hold it exclusive).
"""

from __future__ import annotations

from vmcrypt.crypto.keysafe import open_keysafe
from vmcrypt.disk import container
from vmcrypt.host.datastore import Datastore
from vmcrypt.host.keycache import KeyCache
from vmcrypt.host.vm._common import disk_keysafe, kek_of

__all__ = ["open_disk", "read_disk", "write_disk"]


def open_disk(
    ds: Datastore, cache: KeyCache, vm_id: str, index: int, *, writable: bool = False
) -> container.Disk:
    """Open a VM's disk for I/O: unwrap its DEK when encrypted. The caller closes it."""
    record = ds.read(vm_id)
    disk = record.disk(index)
    path = ds.disk_path(vm_id, index)
    if not container.is_encrypted(path):
        return container.open_raw(path, writable=writable)
    keysafe = disk_keysafe(ds, vm_id, disk)
    dek = open_keysafe(keysafe, kek_of(cache, keysafe, vm_id))
    return container.open_encrypted(path, dek=dek, writable=writable)


def read_disk(
    ds: Datastore, cache: KeyCache, vm_id: str, index: int, *, offset: int, length: int
) -> bytes:
    """Read ``length`` bytes of disk ``index`` at ``offset``, decrypted."""
    with ds.lock(vm_id, shared=True), open_disk(ds, cache, vm_id, index) as disk:
        return disk.read(offset, length)


def write_disk(
    ds: Datastore, cache: KeyCache, vm_id: str, index: int, *, offset: int, data: bytes
) -> None:
    """Write ``data`` to disk ``index`` at ``offset`` (encrypted when the disk is), durably."""
    with ds.lock(vm_id, shared=True), open_disk(ds, cache, vm_id, index, writable=True) as disk:
        disk.write(offset, data)
        disk.flush()
