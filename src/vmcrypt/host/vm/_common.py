"""What every VM operation shares: naming KEKs, finding them, sealing home blobs.

DEKs are generated here or unwrapped from keySafes, used, and dropped: they are never
stored, returned to callers or logged (seeds: "It keeps the internal keys in memory
only"). KEKs come from the host's :class:`~vmcrypt.host.keycache.KeyCache` — pushed by
the control plane for standard providers, made and opened with a cached primary
key for native ones, or made and unwrapped by the Trust Authority's Key Provider
Service for trusted ones (the keySafe then stores the KEK ciphertext as its wrapped
KEK, and the attested host gets the KEK back from the service after a restart).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from vmcrypt.crypto.aead import seal, unseal
from vmcrypt.crypto.keysafe import KeySafe, open_keysafe, seal_keysafe
from vmcrypt.disk import container
from vmcrypt.host.datastore import Datastore, DiskRecord, KeyFacts, VmRecord
from vmcrypt.host.exceptions import NotEncrypted
from vmcrypt.host.keycache import KeyCache
from vmcrypt.providers.base import KekRef

__all__ = [
    "DISK_DEK",
    "HOME_DEK",
    "KeySpec",
    "Progress",
    "blob_ad",
    "config_blob",
    "disk_encrypted",
    "disk_keysafe",
    "home_dek",
    "kek_of",
    "new_kek",
    "new_keysafe",
    "plain_blobs",
    "seal_blobs",
    "set_disk",
    "spec_of",
    "unseal_blobs",
]

#: Progress callbacks get (bytes done, bytes total).
Progress = Callable[[int, int], None]
#: ``dek_algorithm`` names in keySafes (see vmcrypt.crypto.keysafe.DEK_ALGORITHMS).
HOME_DEK = "AES-256-GCM"
DISK_DEK = "aes-xts-plain64"
_AD_LABEL = b"vmcrypt vm home blob v1\x00"


@dataclass(frozen=True)
class KeySpec:
    """The KEK new keySafes use: an existing one by reference, or a new native/trusted one.

    ``ref`` names a pushed KEK (``KekRef(key_id=...)``) or a wrapped KEK (native, or a
    trusted provider's KEK ciphertext). With ``ref=None`` the provider is a native one
    whose primary key this host holds — the host creates the KEK itself — or, with
    ``trusted`` (or a provider the Trust Authority publishes), a trusted one: the host
    attests if needed and asks the Key Provider Service for a new KEK. No control plane
    involved either way.
    """

    provider_id: str
    ref: KekRef | None = field(default=None)
    trusted: bool = False


def spec_of(facts: KeyFacts) -> KeySpec:
    """The spec that reuses a component's current KEK (one KEK per VM by default)."""
    return KeySpec(facts.provider_id, _ref(facts.key_id, facts.wrapped_kek))


def _ref(key_id: str | None, wrapped_kek: bytes | None) -> KekRef:
    # A key ID wins: it names the KEK the cache holds; a wrapped KEK is opened natively.
    return KekRef(key_id=key_id) if key_id is not None else KekRef(wrapped_kek=wrapped_kek)


def new_kek(cache: KeyCache, spec: KeySpec, vm_id: str) -> tuple[KekRef, bytes]:
    """Resolve a spec into (reference to store, KEK to wrap with)."""
    if spec.ref is None:
        if spec.trusted or (not cache.has_primary_key(spec.provider_id)
                            and cache.is_trusted(spec.provider_id)):
            ciphertext, kek = cache.new_trusted_kek(spec.provider_id, vm_id=vm_id)
            return KekRef(wrapped_kek=ciphertext), kek
        made = cache.native_provider(spec.provider_id).new_kek()
        return made.ref, made.kek
    return spec.ref, cache.resolve(spec.provider_id, spec.ref, vm_id=vm_id)


def new_keysafe(
    *, kek: bytes, ref: KekRef, provider_id: str, dek: bytes, algorithm: str
) -> KeySafe:
    """Wrap a fresh DEK for storage beside its data."""
    return seal_keysafe(
        kek=kek,
        dek=dek,
        provider_id=provider_id,
        key_id=ref.key_id,
        wrapped_kek=ref.wrapped_kek,
        dek_algorithm=algorithm,
    )


def kek_of(cache: KeyCache, keysafe: KeySafe, vm_id: str) -> bytes:
    """The KEK a stored keySafe names (KeyNotOnHost when this host lacks it)."""
    ref = _ref(keysafe.key_id, keysafe.wrapped_kek)
    return cache.resolve(keysafe.provider_id, ref, vm_id=vm_id)


def home_dek(cache: KeyCache, record: VmRecord) -> bytes:
    """Unwrap the VM home DEK; the caller checked that the home is encrypted."""
    assert record.home_keysafe is not None
    kek = kek_of(cache, record.home_keysafe, record.instance_uuid)
    return open_keysafe(record.home_keysafe, kek)


def blob_ad(vm_id: str, role: str) -> bytes:
    """Associated data binding a sealed blob to its VM and role (no swapping blobs)."""
    return _AD_LABEL + vm_id.encode() + b"\x00" + role.encode()


def seal_blobs(dek: bytes, vm_id: str, blobs: dict[str, bytes]) -> dict[str, bytes]:
    """Seal each home blob under the home DEK."""
    return {
        role: seal(dek, data, associated_data=blob_ad(vm_id, role)) for role, data in blobs.items()
    }


def unseal_blobs(dek: bytes, vm_id: str, blobs: dict[str, bytes]) -> dict[str, bytes]:
    """Open each sealed home blob; any tampering is one IntegrityError."""
    return {
        role: unseal(dek, data, associated_data=blob_ad(vm_id, role))
        for role, data in blobs.items()
    }


def plain_blobs(cache: KeyCache, record: VmRecord) -> dict[str, bytes]:
    """The home blobs in the clear, unsealing them when the home is encrypted."""
    if record.home_keysafe is None:
        return dict(record.blobs)
    return unseal_blobs(home_dek(cache, record), record.instance_uuid, record.blobs)


def config_blob(extra_config: dict[str, str]) -> bytes:
    """The sensitive part of a VM config, as stored (sealed when the home is)."""
    return json.dumps(extra_config, sort_keys=True).encode()


def disk_encrypted(ds: Datastore, vm_id: str, disk: DiskRecord) -> bool:
    """Whether a disk is encrypted (or being converted)."""
    # The header beside the data file is the truth; vm.json only mirrors it.
    return disk.encryption is not None or container.is_encrypted(ds.disk_path(vm_id, disk.index))


def disk_keysafe(ds: Datastore, vm_id: str, disk: DiskRecord) -> KeySafe:
    """The keySafe in an encrypted disk's header; :class:`NotEncrypted` for a raw disk."""
    path = ds.disk_path(vm_id, disk.index)
    if not container.is_encrypted(path):
        raise NotEncrypted(f"VM {vm_id}: disk {disk.index} is not encrypted")
    keysafe = container.read_keysafe(path)
    if keysafe is None:
        raise NotEncrypted(
            f"VM {vm_id}: disk {disk.index} has a LUKS2 header without a vmcrypt keySafe; "
            "it was not encrypted by vmcrypt — open it with cryptsetup"
        )
    return keysafe


def set_disk(ds: Datastore, record: VmRecord, disk: DiskRecord) -> VmRecord:
    """Write vm.json with one disk's record replaced."""
    updated = replace(
        record, disks=tuple(disk if d.index == disk.index else d for d in record.disks)
    )
    ds.write(updated)
    return updated
