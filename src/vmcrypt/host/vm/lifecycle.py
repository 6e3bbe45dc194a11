"""Creating, reading and deleting VMs; adding disks and a vTPM.

vm.json is written last when a VM is created: until it exists the folder is an
unfinished creation that :func:`create_vm` removes on failure, and no other host sees a
VM there (:meth:`~vmcrypt.host.datastore.Datastore.vm_ids` lists only folders with a
config).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from vmcrypt.crypto.keys import generate_aead_key, generate_xts_key
from vmcrypt.disk import container
from vmcrypt.disk.codec import SECTOR
from vmcrypt.disk.files import header_path
from vmcrypt.exceptions import UsageError
from vmcrypt.host.datastore import Datastore, DiskRecord, KeyFacts, VmRecord
from vmcrypt.host.exceptions import ConfigError, HomeNotEncrypted, StateError
from vmcrypt.host.keycache import KeyCache
from vmcrypt.host.vm._common import (
    DISK_DEK,
    HOME_DEK,
    KeySpec,
    Progress,
    config_blob,
    home_dek,
    new_kek,
    new_keysafe,
    plain_blobs,
    seal_blobs,
    spec_of,
)

__all__ = ["VmInfo", "add_disk", "add_vtpm", "create_vm", "delete_vm", "read_vm", "remove_vtpm"]


@dataclass(frozen=True)
class VmInfo:
    """A VM as a host sees it after opening its config (blobs in the clear, in memory)."""

    instance_uuid: str
    name: str
    home: KeyFacts | None
    disks: tuple[DiskRecord, ...]
    has_vtpm: bool
    extra_config: dict[str, str] = field(default_factory=dict, repr=False)
    nvram: bytes = field(default=b"", repr=False)
    vtpm_state: bytes | None = field(default=None, repr=False)

    @property
    def home_encrypted(self) -> bool:
        return self.home is not None


def _check_size(size: int) -> None:
    if size <= 0 or size % SECTOR:
        raise UsageError(f"a disk size must be a positive multiple of {SECTOR} bytes, got {size}")


def create_vm(
    ds: Datastore,
    cache: KeyCache,
    *,
    name: str,
    disk_sizes: Sequence[int] = (),
    key: KeySpec | None = None,
    encrypt_disks: Sequence[bool] | None = None,
    instance_uuid: str | None = None,
    extra_config: dict[str, str] | None = None,
    nvram: bytes = b"",
    progress: Progress | None = None,
) -> VmInfo:
    """Create a VM: its folder, N disks and vm.json; encrypted where ``key`` says.

    With ``key`` the VM home is encrypted and, unless ``encrypt_disks`` says otherwise
    per disk, every disk too, all under the one KEK (new DEKs each). Without ``key``
    nothing is encrypted, and asking for an encrypted disk is :class:`HomeNotEncrypted`.
    Every check — sizes, keys — runs before the first file is made.
    """
    vm_id = instance_uuid or str(uuid.uuid4())
    flags = (
        list(encrypt_disks) if encrypt_disks is not None else [key is not None] * len(disk_sizes)
    )
    if len(flags) != len(disk_sizes):
        raise UsageError("encrypt_disks needs one flag per disk size")
    for size in disk_sizes:
        _check_size(size)
    if key is None and any(flags):
        raise HomeNotEncrypted(
            "a disk can only be encrypted when VM home is: give the VM an encryption key"
        )
    home_keysafe = None
    blobs = {"config": config_blob(extra_config or {}), "nvram": bytes(nvram)}
    kek = ref = None
    if key is not None:
        ref, kek = new_kek(cache, key, vm_id)
        dek = generate_aead_key()
        home_keysafe = new_keysafe(
            kek=kek, ref=ref, provider_id=key.provider_id, dek=dek, algorithm=HOME_DEK
        )
        blobs = seal_blobs(dek, vm_id, blobs)
    ds.create_dir(vm_id)
    try:
        with ds.lock(vm_id):
            disks = []
            total = sum(disk_sizes)
            done = 0
            for index, (size, encrypted) in enumerate(zip(disk_sizes, flags, strict=True)):
                path = ds.disk_path(vm_id, index)
                facts = None
                if encrypted:
                    assert kek is not None and ref is not None and key is not None
                    disk_dek = generate_xts_key()
                    ks = new_keysafe(
                        kek=kek,
                        ref=ref,
                        provider_id=key.provider_id,
                        dek=disk_dek,
                        algorithm=DISK_DEK,
                    )
                    container.create_encrypted(
                        path, size=size, dek=disk_dek, keysafe=ks, label=vm_id
                    ).close()
                    facts = KeyFacts.of(ks)
                else:
                    container.create_raw(path, size=size).close()
                disks.append(DiskRecord(index=index, size=size, encryption=facts))
                done += size
                if progress:
                    progress(done, total)
            record = VmRecord(
                instance_uuid=vm_id,
                name=name,
                disks=tuple(disks),
                home_keysafe=home_keysafe,
                blobs=blobs,
            )
            ds.write(record)
    except BaseException:
        with contextlib.suppress(OSError):
            ds.remove_dir(vm_id)
        raise
    return read_vm(ds, cache, vm_id)


def read_vm(ds: Datastore, cache: KeyCache, vm_id: str) -> VmInfo:
    """Open a VM's config, unsealing its home blobs (needs the KEK when encrypted)."""
    record = ds.read(vm_id)
    blobs = plain_blobs(cache, record)
    try:
        extra = json.loads(blobs.get("config", b"{}"))
    except ValueError:
        raise ConfigError(f"the sealed config of VM {vm_id} is not JSON") from None
    return VmInfo(
        instance_uuid=vm_id,
        name=record.name,
        home=None if record.home_keysafe is None else KeyFacts.of(record.home_keysafe),
        disks=record.disks,
        has_vtpm=record.has_vtpm,
        extra_config=extra,
        nvram=blobs.get("nvram", b""),
        vtpm_state=blobs.get("vtpm") if record.has_vtpm else None,
    )


def delete_vm(ds: Datastore, cache: KeyCache, vm_id: str) -> None:
    """Delete the VM's files and drop its KEKs from this host's cache (seeds)."""
    with ds.lock(vm_id):
        ds.read(vm_id)
        ds.remove_dir(vm_id)
    cache.forget_vm(vm_id)


def add_disk(
    ds: Datastore,
    cache: KeyCache,
    vm_id: str,
    *,
    size: int,
    encrypted: bool | None = None,
    key: KeySpec | None = None,
) -> int:
    """Add a disk, encrypted iff VM home is (unless ``encrypted`` says); return its index.

    An encrypted disk uses VM home's KEK unless ``key`` names another.
    """
    _check_size(size)
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        want = record.home_encrypted if encrypted is None else encrypted
        if want and record.home_keysafe is None:
            raise HomeNotEncrypted(
                f"VM {vm_id}: a disk can only be encrypted when VM home is; encrypt VM home first"
            )
        index = max((d.index for d in record.disks), default=-1) + 1
        path = ds.disk_path(vm_id, index)
        facts = None
        if want:
            assert record.home_keysafe is not None
            spec = key or spec_of(KeyFacts.of(record.home_keysafe))
            ref, kek = new_kek(cache, spec, vm_id)
            disk_dek = generate_xts_key()
            ks = new_keysafe(
                kek=kek, ref=ref, provider_id=spec.provider_id, dek=disk_dek, algorithm=DISK_DEK
            )
            container.create_encrypted(
                path, size=size, dek=disk_dek, keysafe=ks, label=vm_id
            ).close()
            facts = KeyFacts.of(ks)
        else:
            container.create_raw(path, size=size).close()
        try:
            disk = DiskRecord(index=index, size=size, encryption=facts)
            ds.write(replace(record, disks=(*record.disks, disk)))
        except BaseException:
            path.unlink(missing_ok=True)
            header_path(path).unlink(missing_ok=True)
            raise
    return index


def add_vtpm(ds: Datastore, cache: KeyCache, vm_id: str, *, state: bytes = b"") -> None:
    """Add a vTPM; it requires an encrypted VM home, whose DEK seals its state."""
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        if record.home_keysafe is None:
            raise HomeNotEncrypted(
                f"VM {vm_id}: a vTPM requires an encrypted VM home; encrypt VM home first"
            )
        if record.has_vtpm:
            raise StateError(f"VM {vm_id} already has a vTPM; remove it first to replace it")
        sealed = seal_blobs(home_dek(cache, record), vm_id, {"vtpm": bytes(state)})
        ds.write(replace(record, has_vtpm=True, blobs={**record.blobs, **sealed}))


def remove_vtpm(ds: Datastore, vm_id: str) -> None:
    """Remove the vTPM and its sealed state (needed before VM home can be decrypted)."""
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        if not record.has_vtpm:
            raise StateError(f"VM {vm_id} has no vTPM")
        blobs = {k: v for k, v in record.blobs.items() if k != "vtpm"}
        ds.write(replace(record, has_vtpm=False, blobs=blobs))
