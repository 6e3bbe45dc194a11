"""Re-keying VM home and disks: shallow (new KEK) and deep (new DEKs).

- **Shallow**: each component's DEK is re-wrapped under a new KEK — O(1) per component,
  the data is not touched. This is what rotating a KMS key or replacing a native
  provider needs.
- **Deep**: each component gets a new DEK and its data is re-encrypted (disks through
  :func:`vmcrypt.disk.convert.deep_rekey`, crash-safe and resumable; VM home by
  resealing its blobs in one atomic vm.json write). The KEK changes too when ``key``
  is given.

Components are re-keyed one after the other and each commits on its own: if a re-key
stops half-way, some components carry the new keys and some the old, and every one of
them still opens. Run it again to finish.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace

from vmcrypt.crypto.keys import generate_aead_key, generate_xts_key
from vmcrypt.crypto.keysafe import KeySafe, open_keysafe, rewrap_keysafe
from vmcrypt.disk import convert
from vmcrypt.host.datastore import Datastore, DiskRecord, KeyFacts, VmRecord
from vmcrypt.host.exceptions import NotEncrypted
from vmcrypt.host.keycache import KeyCache
from vmcrypt.host.vm._common import (
    DISK_DEK,
    HOME_DEK,
    KeySpec,
    Progress,
    disk_encrypted,
    disk_keysafe,
    home_dek,
    kek_of,
    new_kek,
    new_keysafe,
    seal_blobs,
    set_disk,
    spec_of,
    unseal_blobs,
)
from vmcrypt.providers.base import KekRef

__all__ = ["deep_rekey", "shallow_rekey"]


def _targets(
    ds: Datastore, record: VmRecord, home: bool, disks: Sequence[int] | None
) -> list[DiskRecord]:
    """Check every requested component is encrypted before touching any of them."""
    vm_id = record.instance_uuid
    if home and record.home_keysafe is None:
        raise NotEncrypted(f"VM {vm_id}: VM home is not encrypted, so it cannot be re-keyed")
    if disks is None:
        return [d for d in record.disks if disk_encrypted(ds, vm_id, d)]
    chosen = [record.disk(i) for i in disks]
    for disk in chosen:
        if not disk_encrypted(ds, vm_id, disk):
            raise NotEncrypted(
                f"VM {vm_id}: disk {disk.index} is not encrypted, so it cannot be re-keyed; "
                "encrypt it instead"
            )
    return chosen


def shallow_rekey(
    ds: Datastore,
    cache: KeyCache,
    vm_id: str,
    *,
    key: KeySpec,
    home: bool = True,
    disks: Sequence[int] | None = None,
) -> KeyFacts:
    """Re-wrap the DEKs of VM home and disks (all encrypted ones by default) under a new KEK.

    For a native provider ``KeySpec(provider_id)`` makes one new KEK for all components.
    Returns the new KEK's facts.
    """
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        targets = _targets(ds, record, home, disks)
        ref, new = new_kek(cache, key, vm_id)
        for disk in targets:
            old_ks = disk_keysafe(ds, vm_id, disk)
            old = kek_of(cache, old_ks, vm_id)
            new_ks = _rewrap(old_ks, old, new, key.provider_id, ref)
            path = ds.disk_path(vm_id, disk.index)
            convert.shallow_rekey(path, dek=open_keysafe(old_ks, old), new_keysafe=new_ks)
            record = set_disk(ds, record, replace(disk, encryption=KeyFacts.of(new_ks)))
        if home:
            assert record.home_keysafe is not None
            old = kek_of(cache, record.home_keysafe, vm_id)
            new_ks = _rewrap(record.home_keysafe, old, new, key.provider_id, ref)
            ds.write(replace(record, home_keysafe=new_ks))
        return KeyFacts(key.provider_id, ref.key_id, ref.wrapped_kek)


def deep_rekey(
    ds: Datastore,
    cache: KeyCache,
    vm_id: str,
    *,
    key: KeySpec | None = None,
    home: bool = True,
    disks: Sequence[int] | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """New DEKs for VM home and disks (all encrypted ones by default), data re-encrypted.

    Each component keeps its KEK unless ``key`` names a new one. ``progress`` gets bytes
    done and total over every disk re-encrypted.
    """
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        targets = _targets(ds, record, home, disks)
        fresh = None if key is None else new_kek(cache, key, vm_id)
        total = sum(d.size for d in targets)
        base = 0
        for disk in targets:
            old_ks = disk_keysafe(ds, vm_id, disk)
            old_dek = open_keysafe(old_ks, kek_of(cache, old_ks, vm_id))
            spec = key or spec_of(KeyFacts.of(old_ks))
            ref, kek = fresh or new_kek(cache, spec, vm_id)
            new_dek = generate_xts_key()
            new_ks = new_keysafe(
                kek=kek, ref=ref, provider_id=spec.provider_id, dek=new_dek, algorithm=DISK_DEK
            )
            convert.deep_rekey(
                ds.disk_path(vm_id, disk.index),
                old_dek=old_dek,
                new_dek=new_dek,
                new_keysafe=new_ks,
                progress=_offset(progress, base, total),
                cancel=cancel,
            )
            base += disk.size
            record = set_disk(ds, record, replace(disk, encryption=KeyFacts.of(new_ks)))
        if home:
            assert record.home_keysafe is not None
            blobs = unseal_blobs(home_dek(cache, record), vm_id, record.blobs)
            spec = key or spec_of(KeyFacts.of(record.home_keysafe))
            ref, kek = fresh or new_kek(cache, spec, vm_id)
            dek = generate_aead_key()
            new_ks = new_keysafe(
                kek=kek, ref=ref, provider_id=spec.provider_id, dek=dek, algorithm=HOME_DEK
            )
            ds.write(replace(record, home_keysafe=new_ks, blobs=seal_blobs(dek, vm_id, blobs)))
        if progress and total == 0:
            progress(0, 0)


def _rewrap(keysafe: KeySafe, old: bytes, new: bytes, provider_id: str, ref: KekRef) -> KeySafe:
    return rewrap_keysafe(
        keysafe,
        old_kek=old,
        new_kek=new,
        provider_id=provider_id,
        key_id=ref.key_id,
        wrapped_kek=ref.wrapped_kek,
    )


def _offset(progress: Progress | None, base: int, total: int) -> Progress | None:
    """Turn one disk's (done, size) into the whole re-key's (done, total)."""
    if progress is None:
        return None
    report = progress

    def step(done: int, _size: int) -> None:
        report(base + done, total)

    return step
