"""A host's key cache: KEKs and native primary keys, in memory only.

The control plane pushes KEKs of standard (KMIP) providers by ``(provider_id, key_id)``
and the primary keys of native providers by provider ID. Nothing here is ever written
to disk, logged or pickled: after a restart a host starts empty and the control plane
pushes again (seeds: "ESXi does not store the KEK on a disk"). ``repr`` shows counts
only, and :meth:`KeyCache.key_ids` returns IDs, never key bytes.

KEKs of trusted providers come from the host's Trust Authority (:mod:`vmcrypt.host.trust`)
instead: the cache asks its :class:`~vmcrypt.host.trust.TrustLink` for a new KEK or to
unwrap the KEK ciphertext a keySafe stores, and holds the plaintext under
``(provider_id, cache_key_id(ciphertext))`` like any pushed KEK.

The cache also remembers which registered VM uses which KEK, so that unregistering or
deleting an encrypted VM removes its KEK from the cache (seeds: "the ESXi host and the
cluster remove the KEK from cache") unless another VM still needs it.

Stored keys are kept in ``bytearray`` buffers and zeroed when removed; Python cannot
promise no other copy exists, but a removed key does not linger in the cache's buffers.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, NoReturn

from vmcrypt.crypto.keys import KEK_SIZE, check_key
from vmcrypt.host.exceptions import KeyNotOnHost
from vmcrypt.host.trust import TrustedProviderUnavailable, cache_key_id
from vmcrypt.providers.base import KekRef
from vmcrypt.providers.native import HostNativeKeyProvider

if TYPE_CHECKING:
    from vmcrypt.host.trust import TrustLink

__all__ = ["KeyCache", "KeyId"]

#: A standard or trusted KEK's name on a host.
KeyId = tuple[str, str]


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


class KeyCache:
    """Thread-safe, memory-only KEKs and native primary keys of one host."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._keks: dict[KeyId, bytearray] = {}
        self._native: dict[str, HostNativeKeyProvider] = {}
        self._vm_keys: dict[str, set[KeyId]] = {}
        self._trust: TrustLink | None = None
        #: Provider IDs known to be trusted (used here, or published by the authority).
        self._trusted: set[str] = set()

    # -- KEKs of standard and trusted providers ---------------------------------------
    def put_kek(
        self, provider_id: str, key_id: str, kek: bytes, *, vm_id: str | None = None
    ) -> None:
        """Hold a pushed KEK; with ``vm_id`` also record that this VM uses it."""
        kek = check_key(kek, KEK_SIZE, "KEK")
        if not provider_id or not key_id:
            raise ValueError("a cached KEK needs a provider ID and a key ID")
        with self._lock:
            old = self._keks.get((provider_id, key_id))
            if old is not None:
                _wipe(old)
            self._keks[(provider_id, key_id)] = bytearray(kek)
            if vm_id is not None:
                self._vm_keys.setdefault(vm_id, set()).add((provider_id, key_id))

    def get_kek(self, provider_id: str, key_id: str) -> bytes:
        """The KEK, or :class:`KeyNotOnHost` when it was never pushed here or was removed."""
        with self._lock:
            buf = self._keks.get((provider_id, key_id))
            if buf is None:
                raise KeyNotOnHost(provider_id, key_id)
            return bytes(buf)

    def has(self, provider_id: str, key_id: str) -> bool:
        """Whether the KEK is in the cache."""
        with self._lock:
            return (provider_id, key_id) in self._keks

    def remove_kek(self, provider_id: str, key_id: str) -> bool:
        """Drop one KEK (and its VM associations); False if it was not cached."""
        with self._lock:
            buf = self._keks.pop((provider_id, key_id), None)
            for keys in self._vm_keys.values():
                keys.discard((provider_id, key_id))
            if buf is None:
                return False
            _wipe(buf)
            return True

    def key_ids(self) -> list[KeyId]:
        """The ``(provider_id, key_id)`` of every cached KEK, sorted; never key bytes."""
        with self._lock:
            return sorted(self._keks)

    # -- native providers --------------------------------------------------------------
    def put_primary_key(
        self, provider_id: str, primary_key: bytes, *, fingerprint: str | None = None
    ) -> None:
        """Hold a native provider's pushed primary key (replacing an older one)."""
        provider = HostNativeKeyProvider.from_pushed_key(
            provider_id, primary_key, fingerprint=fingerprint
        )
        with self._lock:
            self._native[provider_id] = provider

    def native_provider(self, provider_id: str) -> HostNativeKeyProvider:
        """The native provider built from the pushed primary key, or :class:`KeyNotOnHost`."""
        with self._lock:
            provider = self._native.get(provider_id)
        if provider is None:
            raise KeyNotOnHost(provider_id)
        return provider

    def has_primary_key(self, provider_id: str) -> bool:
        """Whether a native provider's primary key was pushed here."""
        with self._lock:
            return provider_id in self._native

    def native_provider_ids(self) -> list[str]:
        """IDs of the native providers whose primary key this host holds."""
        with self._lock:
            return sorted(self._native)

    # -- trusted providers (through the Trust Authority) ---------------------------------
    def attach_trust(self, link: TrustLink | None) -> None:
        """Use ``link`` for trusted providers' KEKs (None: this host has no Trust Authority)."""
        with self._lock:
            self._trust = link

    @property
    def trust(self) -> TrustLink | None:
        """The Trust Authority link, if this host has one."""
        return self._trust

    def knows_trusted(self, provider_id: str) -> bool:
        """Whether ``provider_id`` is known here as trusted (no network call)."""
        with self._lock:
            return provider_id in self._trusted

    def is_trusted(self, provider_id: str) -> bool:
        """Whether a provider is trusted: known here, or published by the Trust Authority.

        A native provider whose primary key is cached is never trusted. May ask the
        Trust Authority (:class:`TrustedProviderUnavailable` when it cannot answer).
        """
        with self._lock:
            if provider_id in self._trusted:
                return True
            if provider_id in self._native or self._trust is None:
                return False
            link = self._trust
        if link.publishes(provider_id):
            with self._lock:
                self._trusted.add(provider_id)
            return True
        return False

    def _link(self, provider_id: str) -> TrustLink:
        link = self._trust
        if link is None:
            raise TrustedProviderUnavailable(
                provider_id, "this host has no Trust Authority configured (start it with "
                "--trust-url, --trust-ca, --trust-cert, --trust-key and --trust-identity)")
        return link

    def new_trusted_kek(self, provider_id: str, *, vm_id: str | None = None
                        ) -> tuple[bytes, bytes]:
        """A new KEK from a trusted provider: (KEK ciphertext to store, KEK), cached."""
        kek, ciphertext = self._link(provider_id).new_kek(provider_id)
        with self._lock:
            self._trusted.add(provider_id)
        self.put_kek(provider_id, cache_key_id(ciphertext), kek, vm_id=vm_id)
        return ciphertext, kek

    def trusted_kek(self, provider_id: str, kek_ciphertext: bytes, *,
                    vm_id: str | None = None) -> bytes:
        """The KEK inside a stored ciphertext: from the cache, or unwrapped by the service."""
        key_id = cache_key_id(kek_ciphertext)
        with self._lock:
            buf = self._keks.get((provider_id, key_id))
            if buf is not None:
                if vm_id is not None:
                    self._vm_keys.setdefault(vm_id, set()).add((provider_id, key_id))
                return bytes(buf)
        kek = self._link(provider_id).unwrap(provider_id, kek_ciphertext)
        with self._lock:
            self._trusted.add(provider_id)
        self.put_kek(provider_id, key_id, kek, vm_id=vm_id)
        return kek

    # -- looking keys up as a keySafe names them ----------------------------------------
    def resolve(self, provider_id: str, ref: KekRef, *, vm_id: str | None = None) -> bytes:
        """The KEK a keySafe names: by key ID from the cache, or unwrapped.

        A wrapped KEK is opened with the cached primary key of a native ``provider_id``
        (a missing primary key is :class:`KeyNotOnHost`, a KEK it did not wrap is
        :class:`~vmcrypt.providers.ForeignWrappedKek`), or, for a trusted provider, is
        the KEK ciphertext the Trust Authority unwraps (:meth:`trusted_kek`).
        """
        if ref.key_id is not None:
            with self._lock:
                kek = self.get_kek(provider_id, ref.key_id)
                if vm_id is not None:
                    self._vm_keys.setdefault(vm_id, set()).add((provider_id, ref.key_id))
            return kek
        assert ref.wrapped_kek is not None
        if self.is_trusted(provider_id):
            return self.trusted_kek(provider_id, ref.wrapped_kek, vm_id=vm_id)
        return self.native_provider(provider_id).get_kek(ref)

    # -- VMs and removal ---------------------------------------------------------------
    def associate(self, vm_id: str, provider_id: str, key_id: str) -> None:
        """Record that a registered VM uses a KEK (so forget_vm knows what to drop)."""
        with self._lock:
            self._vm_keys.setdefault(vm_id, set()).add((provider_id, key_id))

    def forget_vm(self, vm_id: str) -> list[KeyId]:
        """Unregister a VM: drop the KEKs it used that no other registered VM uses.

        Returns the IDs of the KEKs removed. Native primary keys stay: they belong to the
        provider, not to a VM.
        """
        with self._lock:
            mine = self._vm_keys.pop(vm_id, set())
            still_used: set[KeyId] = set().union(*self._vm_keys.values())
            removed = sorted(k for k in mine - still_used if k in self._keks)
            for key in removed:
                _wipe(self._keks.pop(key))
            return removed

    def vm_ids(self) -> list[str]:
        """The VMs the cache knows to use cached KEKs."""
        with self._lock:
            return sorted(vm for vm, keys in self._vm_keys.items() if keys)

    def remove_provider(self, provider_id: str) -> None:
        """Drop every key of a provider (deleted provider, or pushed removal)."""
        with self._lock:
            for key in [k for k in self._keks if k[0] == provider_id]:
                self.remove_kek(*key)
            self._native.pop(provider_id, None)

    def clear(self) -> None:
        """Forget every key, as a host restart would."""
        with self._lock:
            for buf in self._keks.values():
                _wipe(buf)
            self._keks.clear()
            self._native.clear()
            self._vm_keys.clear()
            self._trusted.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._keks) + len(self._native)

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"KeyCache(keks={len(self._keks)}, native_providers={len(self._native)}, "
                f"vms={len(self._vm_keys)})"
            )

    def __reduce__(self) -> NoReturn:
        # A cache that could be pickled could end up in a file: refuse.
        raise TypeError("a KeyCache holds keys in memory only and cannot be pickled")
