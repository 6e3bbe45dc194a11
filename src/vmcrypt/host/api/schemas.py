"""Request and response bodies of the host API (pydantic).

Key material arrives base64 in a request body and is checked here, before any handler
touches it: a KEK or primary key must decode to exactly 32 bytes. Fields that carry keys
are excluded from ``repr`` so a model never prints one; responses carry IDs only.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from vmcrypt.crypto.keys import KEK_SIZE
from vmcrypt.host.datastore import DiskRecord, KeyFacts, VmRecord
from vmcrypt.host.keycache import KeyCache
from vmcrypt.host.trust import cache_key_id
from vmcrypt.host.vm import KeySpec
from vmcrypt.providers.base import KekRef

__all__ = [
    "AttestationPublic",
    "CloneAccepted",
    "CloneRequest",
    "ComponentRequest",
    "DiskAdd",
    "DiskAdded",
    "DiskPublic",
    "DiskSpec",
    "Health",
    "JobAccepted",
    "JobError",
    "JobPublic",
    "KekPush",
    "KeyFactsPublic",
    "KeyIdPublic",
    "KeyList",
    "KeyRef",
    "PrimaryKeyPush",
    "RekeyRequest",
    "TrustedProviderPublic",
    "Unregistered",
    "VmCreate",
    "VmPublic",
    "VtpmAdd",
    "WriteResult",
    "decode_key",
    "vm_public",
]

_ID = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@/+=-]+$")
_B64_KEY = Field(repr=False, min_length=1, max_length=64)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def decode_key(text: str) -> bytes:
    """The 32 key bytes of a base64 field; ValueError without the value otherwise."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64") from None
    if len(raw) != KEK_SIZE:
        raise ValueError(f"must decode to exactly {KEK_SIZE} bytes (an AES-256 key)")
    return raw


def _check_key(text: str) -> str:
    decode_key(text)
    return text


class KekPush(_Strict):
    """A KEK the control plane pushes: base64 of 32 bytes."""

    kek: str = _B64_KEY
    vm_ids: list[UUID] = Field(default_factory=list, max_length=10_000)

    _valid = field_validator("kek")(_check_key)


class PrimaryKeyPush(_Strict):
    """A native provider's primary key: base64 of 32 bytes."""

    primary_key: str = _B64_KEY
    fingerprint: str | None = Field(default=None, max_length=200)

    _valid = field_validator("primary_key")(_check_key)


class KeyIdPublic(BaseModel):
    provider_id: str
    key_id: str


class KeyList(BaseModel):
    keks: list[KeyIdPublic]
    native_providers: list[str]


class AttestationPublic(BaseModel):
    """The host's attestation with its Trust Authority: outcome, reason, when; no token."""

    state: Literal["attested", "failed", "unset"]
    reason: str | None = None
    at: float | None = Field(default=None, description="seconds since the epoch")
    baseline: str | None = None
    expires_at: float | None = Field(default=None, description="the token's expiry")
    url: str | None = None
    code: str | None = Field(default=None, description="failed: host_not_attested "
                             "(refused) or trusted_provider_unavailable (no answer)")


class TrustedProviderPublic(BaseModel):
    """A trusted provider as this (attested) host sees it at its Trust Authority."""

    provider_id: str
    reachable: bool
    key_id: str | None = Field(default=None, description="the provider's primary key ID")
    attestation: AttestationPublic


class Health(BaseModel):
    name: str
    hardware_uuid: str
    #: Random per process: a new value means the host restarted (its key cache is empty).
    boot_id: str
    version: str
    keks: int
    native_providers: int
    vms: int
    jobs_running: int
    #: ``unset`` with no reason when the host has no Trust Authority configured.
    attestation: AttestationPublic = Field(
        default_factory=lambda: AttestationPublic(state="unset"))


class KeyRef(_Strict):
    """Which KEK to use: a pushed one by key ID, or (no key ID) a new native one.

    ``trusted`` (no key ID): a new KEK from the trusted provider ``provider_id`` of the
    host's Trust Authority — the host attests if needed and asks for it itself.
    """

    provider_id: str = _ID
    key_id: str | None = Field(default=None, min_length=1, max_length=200)
    trusted: bool = False

    @field_validator("trusted")
    @classmethod
    def _no_key_id(cls, trusted: bool, info: ValidationInfo) -> bool:
        if trusted and info.data.get("key_id") is not None:
            raise ValueError("a trusted provider's KEK has no key ID: the host gets a new one")
        return trusted

    def spec(self) -> KeySpec:
        """The library's KeySpec: ``key_id`` None means the host makes a native KEK."""
        if self.key_id is None:
            return KeySpec(self.provider_id, trusted=self.trusted)
        return KeySpec(self.provider_id, KekRef(key_id=self.key_id))


class DiskSpec(_Strict):
    size: int = Field(gt=0, le=1 << 44, description="bytes, a multiple of 4096")
    encrypted: bool | None = Field(default=None, description="default: encrypted iff VM home is")


class VmCreate(_Strict):
    """A new VM: home and disks; with ``encryption`` its home (and by default disks) too."""

    id: UUID | None = None
    name: str = Field(min_length=1, max_length=200)
    disks: list[DiskSpec] = Field(default_factory=list, max_length=64)
    encryption: KeyRef | None = None
    extra_config: dict[str, str] = Field(default_factory=dict, repr=False)


class ComponentRequest(_Strict):
    """VM home (``disk`` omitted) or one disk; ``key`` names the KEK when encrypting."""

    disk: int | None = Field(default=None, ge=0)
    key: KeyRef | None = None


class RekeyRequest(_Strict):
    mode: Literal["shallow", "deep"]
    key: KeyRef | None = None
    home: bool = True
    disks: list[int] | None = None


class DiskAdd(_Strict):
    size: int = Field(gt=0, le=1 << 44)
    encrypted: bool | None = None
    key: KeyRef | None = None


class DiskAdded(BaseModel):
    index: int


class VtpmAdd(_Strict):
    state: str = Field(default="", repr=False, max_length=1 << 20)

    @field_validator("state")
    @classmethod
    def _b64(cls, text: str) -> str:
        try:
            base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be standard base64") from None
        return text


class KeyFactsPublic(BaseModel):
    """Which KEK protects a component: its key ID, or (native, trusted) the wrapped KEK.

    A wrapped KEK is ciphertext under the provider's primary key — what the keySafe
    stores and what the control plane records for native and trusted VMs (base64) —
    not key material. A trusted provider's KEK ciphertext shows as ``native: false``
    with no ``key_id`` (once this host has used the provider since it started; before
    that it cannot tell it from a native wrapped KEK without asking its Trust Authority).
    """

    provider_id: str
    key_id: str | None
    native: bool
    key_on_host: bool
    wrapped_kek: str | None = None


class DiskPublic(BaseModel):
    index: int
    size: int
    encrypted: bool
    encryption: KeyFactsPublic | None


class VmPublic(BaseModel):
    id: str
    name: str
    home_encrypted: bool
    home: KeyFactsPublic | None
    disks: list[DiskPublic]
    vtpm: bool


class Unregistered(BaseModel):
    id: str
    removed_keys: list[KeyIdPublic]


class WriteResult(BaseModel):
    written: int


class JobAccepted(BaseModel):
    job_id: str
    url: str


class JobError(BaseModel):
    error: str
    message: str


class JobPublic(BaseModel):
    id: str
    kind: str
    vm_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    percent: float
    bytes_done: int
    bytes_total: int
    rate: float = Field(description="bytes per second")
    started_at: float
    finished_at: float | None
    error: JobError | None


def _facts(cache: KeyCache, facts: KeyFacts | None) -> KeyFactsPublic | None:
    if facts is None:
        return None
    trusted = facts.key_id is None and cache.knows_trusted(facts.provider_id)
    if facts.key_id is not None:
        on_host = cache.has(facts.provider_id, facts.key_id)
    elif trusted and facts.wrapped_kek is not None:
        on_host = cache.has(facts.provider_id, cache_key_id(facts.wrapped_kek))
    else:
        on_host = cache.has_primary_key(facts.provider_id)
    return KeyFactsPublic(
        provider_id=facts.provider_id,
        key_id=facts.key_id,
        native=facts.key_id is None and not trusted,
        key_on_host=on_host,
        wrapped_kek=base64.b64encode(facts.wrapped_kek).decode()
        if facts.wrapped_kek is not None else None,
    )


def _disk(cache: KeyCache, disk: DiskRecord) -> DiskPublic:
    return DiskPublic(
        index=disk.index,
        size=disk.size,
        encrypted=disk.encryption is not None,
        encryption=_facts(cache, disk.encryption),
    )


def vm_public(cache: KeyCache, record: VmRecord) -> VmPublic:
    """What a VM's vm.json says, plus whether this host holds each component's key."""
    home = None if record.home_keysafe is None else KeyFacts.of(record.home_keysafe)
    return VmPublic(
        id=record.instance_uuid,
        name=record.name,
        home_encrypted=record.home_encrypted,
        home=_facts(cache, home),
        disks=[_disk(cache, d) for d in record.disks],
        vtpm=record.has_vtpm,
    )


# -- clone and bundles (host/api/moves.py) ---------------------------------------------
class CloneRequest(_Strict):
    """A clone of a VM: its own instance UUID and name; ``key`` names its new KEK.

    ``key`` is required for an encrypted VM (``key_id`` omitted: a new native KEK made
    on this host) and must be absent for an unencrypted one, which clones as plaintext.
    """

    id: UUID | None = None
    name: str = Field(min_length=1, max_length=200)
    key: KeyRef | None = None


class CloneAccepted(JobAccepted):
    """The clone job, and the instance UUID the clone will have."""

    vm_id: str
