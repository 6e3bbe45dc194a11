"""The one interface every key provider implements: standard, native and trusted.

A provider hands out KEKs and finds them again. How it names a KEK differs: a standard
(KMIP) provider names it by the key server's key ID; native and trusted providers give
back the KEK *wrapped* under their primary key, and that wrapped KEK is what the keySafe
stores. :class:`KekRef` carries either, so callers never branch on the provider kind.

Providers know keys, not disks or VMs (``../shared/STYLE.md``): a :class:`KeyOwner` is
plain text the provider may attach to a key (the KMIP ``x-Component``, ``x-Name`` and
``x-Identifier`` custom attributes), nothing more.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Literal

__all__ = [
    "COMPONENT_HOST",
    "COMPONENT_VM",
    "KekRef",
    "KeyOwner",
    "KeyProvider",
    "NewKek",
    "ProviderHealth",
    "ServerHealth",
]

#: ``x-Component`` values vCenter sets (seeds: "Custom Attributes for Key Servers").
COMPONENT_VM = "Virtual Machine"
COMPONENT_HOST = "ESXi Server"

ProviderKind = Literal["standard", "native", "trusted"]
HealthState = Literal["healthy", "degraded", "unreachable"]


@dataclass(frozen=True)
class KekRef:
    """How a keySafe names a KEK: a key ID, or the KEK wrapped under a primary key."""

    key_id: str | None = None
    wrapped_kek: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.key_id is None) == (self.wrapped_kek is None):
            raise ValueError("a KEK reference has exactly one of key_id and wrapped_kek")


@dataclass(frozen=True)
class NewKek:
    """A freshly created KEK: the reference to store, and the key to use right now."""

    ref: KekRef
    kek: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyOwner:
    """What a key is used for, as the KMIP custom attributes describe it."""

    component: str
    name: str
    identifier: str


@dataclass(frozen=True)
class ServerHealth:
    """One key server as last probed."""

    address: str
    reachable: bool
    tls_ok: bool
    latency_ms: float | None = None
    version: str | None = None
    error: str | None = None
    #: The notAfter of the certificate the server presented in this probe's handshake
    #: (UTC), so an operator sees an expiry coming before failover has nowhere to go.
    certificate_expires_at: datetime | None = None


@dataclass(frozen=True)
class ProviderHealth:
    """A provider's overall state and, for KMIP providers, each server's."""

    provider_id: str
    kind: ProviderKind
    state: HealthState
    servers: tuple[ServerHealth, ...] = ()
    warnings: tuple[str, ...] = ()


class KeyProvider(ABC):
    """Creates KEKs and finds them again by reference."""

    kind: ClassVar[ProviderKind]

    def __init__(self, provider_id: str) -> None:
        if not provider_id or len(provider_id) > 128:
            raise ValueError("a key provider ID is 1 to 128 characters")
        self.provider_id = provider_id

    @abstractmethod
    def new_kek(self, *, owner: KeyOwner | None = None) -> NewKek:
        """Create a new AES-256 KEK, described by ``owner`` when the provider can."""

    @abstractmethod
    def get_kek(self, ref: KekRef) -> bytes:
        """The KEK a keySafe names; :class:`~.KeyMissing` when it no longer exists."""

    def get_keks(self, refs: Sequence[KekRef]) -> list[bytes]:
        """Several KEKs at once (after a host restart); providers batch when they can."""
        return [self.get_kek(ref) for ref in refs]

    def set_owner(self, ref: KekRef, owner: KeyOwner) -> None:  # noqa: B027
        """Record what the key is now used for; a no-op where keys carry no attributes."""

    @abstractmethod
    def health(self) -> ProviderHealth:
        """Probe the provider (and its key servers) now."""
