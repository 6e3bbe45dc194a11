"""Encrypting and decrypting VM home and disks, in the order the seeds require.

- A disk can only be encrypted when VM home is (:class:`HomeNotEncrypted`).
- VM home can only be decrypted when no disk is encrypted (:class:`DisksStillEncrypted`)
  and no vTPM needs its DEK (:class:`VtpmPresent`): decrypt disks first, then VM home.

Every refusal happens before anything is written. VM home changes commit with one
atomic write of vm.json; a disk changes through :mod:`vmcrypt.disk.convert` (crash-safe,
resumable with :func:`resume_disk`), and vm.json's facts follow once it is done — the
disk's own header stays the truth meanwhile.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from vmcrypt.crypto.keys import generate_aead_key, generate_xts_key
from vmcrypt.crypto.keysafe import KeySafe, open_keysafe
from vmcrypt.disk import container, convert
from vmcrypt.host.datastore import Datastore, KeyFacts
from vmcrypt.host.exceptions import (
    AlreadyEncrypted,
    DisksStillEncrypted,
    HomeNotEncrypted,
    NotEncrypted,
    VtpmPresent,
)
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

__all__ = ["decrypt_disk", "decrypt_home", "encrypt_disk", "encrypt_home", "resume_disk"]


def encrypt_home(ds: Datastore, cache: KeyCache, vm_id: str, *, key: KeySpec) -> KeyFacts:
    """Encrypt VM home: a new home DEK under ``key``'s KEK seals config, NVRAM, vTPM."""
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        if record.home_encrypted:
            raise AlreadyEncrypted(
                f"VM {vm_id}: VM home is already encrypted; use a re-key to change its keys"
            )
        ref, kek = new_kek(cache, key, vm_id)
        dek = generate_aead_key()
        keysafe = new_keysafe(
            kek=kek, ref=ref, provider_id=key.provider_id, dek=dek, algorithm=HOME_DEK
        )
        blobs = seal_blobs(dek, vm_id, record.blobs)
        ds.write(replace(record, home_keysafe=keysafe, blobs=blobs))
        return KeyFacts.of(keysafe)


def decrypt_home(ds: Datastore, cache: KeyCache, vm_id: str) -> None:
    """Decrypt VM home; refused while a disk is encrypted or a vTPM is present."""
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        if record.home_keysafe is None:
            raise NotEncrypted(f"VM {vm_id}: VM home is not encrypted")
        encrypted = [d.index for d in record.disks if disk_encrypted(ds, vm_id, d)]
        if encrypted:
            raise DisksStillEncrypted(
                f"VM {vm_id}: VM home cannot be decrypted while disks {encrypted} are "
                "encrypted; decrypt the disks first, then VM home"
            )
        if record.has_vtpm:
            raise VtpmPresent(
                f"VM {vm_id}: VM home cannot be decrypted while the VM has a vTPM; "
                "remove the vTPM first"
            )
        blobs = unseal_blobs(home_dek(cache, record), vm_id, record.blobs)
        ds.write(replace(record, home_keysafe=None, blobs=blobs))


def encrypt_disk(
    ds: Datastore,
    cache: KeyCache,
    vm_id: str,
    index: int,
    *,
    key: KeySpec | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> KeyFacts:
    """Encrypt a disk in place under a new DEK; VM home must be encrypted first.

    The DEK is wrapped by VM home's KEK unless ``key`` names another.
    """
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        disk = record.disk(index)
        if record.home_keysafe is None:
            raise HomeNotEncrypted(
                f"VM {vm_id}: disk {index} cannot be encrypted while VM home is not; "
                "encrypt VM home first"
            )
        if disk_encrypted(ds, vm_id, disk):
            raise AlreadyEncrypted(f"VM {vm_id}: disk {index} is already encrypted")
        spec = key or spec_of(KeyFacts.of(record.home_keysafe))
        ref, kek = new_kek(cache, spec, vm_id)
        dek = generate_xts_key()
        keysafe = new_keysafe(
            kek=kek, ref=ref, provider_id=spec.provider_id, dek=dek, algorithm=DISK_DEK
        )
        convert.encrypt_disk(
            ds.disk_path(vm_id, index),
            dek=dek,
            keysafe=keysafe,
            label=vm_id,
            progress=progress,
            cancel=cancel,
        )
        facts = KeyFacts.of(keysafe)
        set_disk(ds, record, replace(disk, encryption=facts))
        return facts


def decrypt_disk(
    ds: Datastore,
    cache: KeyCache,
    vm_id: str,
    index: int,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Decrypt a disk in place; afterwards it is a raw file."""
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        disk = record.disk(index)
        keysafe = disk_keysafe(ds, vm_id, disk)
        dek = open_keysafe(keysafe, kek_of(cache, keysafe, vm_id))
        convert.decrypt_disk(ds.disk_path(vm_id, index), dek=dek, progress=progress, cancel=cancel)
        set_disk(ds, record, replace(disk, encryption=None))


def resume_disk(
    ds: Datastore,
    cache: KeyCache,
    vm_id: str,
    index: int,
    *,
    progress: Progress | None = None,
) -> str | None:
    """Finish an interrupted conversion of a disk and bring vm.json's facts up to date.

    Returns the operation finished, or None when there was nothing to resume.
    """
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        disk = record.disk(index)
        path = ds.disk_path(vm_id, index)

        def resolve(keysafe: KeySafe) -> bytes:
            return open_keysafe(keysafe, kek_of(cache, keysafe, vm_id))

        done = convert.resume(path, resolve_dek=resolve, progress=progress)
        keysafe = container.read_keysafe(path) if container.is_encrypted(path) else None
        facts = None if keysafe is None else KeyFacts.of(keysafe)
        if facts != disk.encryption:
            set_disk(ds, record, replace(disk, encryption=facts))
        return done
