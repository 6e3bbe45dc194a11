"""The native key provider: KEKs wrapped under a primary key, with no key server.

As vSphere's Native Key Provider: the control plane generates a 256-bit primary key
when the provider is created and pushes it to every host of the cluster; KEKs are born
from the CSPRNG wherever they are needed and stored only *wrapped* under the primary key
(RFC 5649 KWP) in the keySafe, so losing the primary key loses every VM it protects.

Two objects, because the two sides hold the key differently:

- :class:`NativeKeyProvider` — the control plane's. It persists as a JSON-able record
  with the primary key **sealed** (AES-256-GCM) under the control plane's master key,
  the provider ID bound in as associated data so a record cannot be moved to another
  provider. It owns the backup life cycle: vSphere refuses to use a native provider
  until it was backed up or the administrator acknowledged the risk, and so does this
  one (:class:`~.NotBackedUp`). The gate also guards :meth:`primary_key_for_push`, so
  a host never receives a key the administrator has not decided about.
- :class:`HostNativeKeyProvider` — a host's, built from the pushed primary key, held in
  memory only. It has **no** backup gate: a host cannot back anything up (it holds no
  sealing key and no record), the decision was taken — and enforced — before the push,
  and refusing to open existing KEKs after a host restart would only lock data away.

The provider is mutable (acknowledging or exporting a backup changes it); the caller
persists :meth:`NativeKeyProvider.to_record` afterwards.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any, Literal, overload

from vmcrypt.crypto.aead import seal, unseal
from vmcrypt.crypto.exceptions import IntegrityError
from vmcrypt.crypto.keys import AEAD_KEY_SIZE, KEK_SIZE, check_key, generate_kek
from vmcrypt.crypto.keywrap import unwrap_key, wrap_key
from vmcrypt.providers.backup import (
    BackupInfo,
    key_fingerprint,
    read_backup,
    write_backup,
)
from vmcrypt.providers.base import KekRef, KeyOwner, KeyProvider, NewKek, ProviderHealth
from vmcrypt.providers.exceptions import (
    AddKeysToHostFailed,
    ForeignWrappedKek,
    KeyMissing,
    NotBackedUp,
    SealedRecordError,
)

__all__ = ["HostNativeKeyProvider", "NativeKeyProvider"]

_RECORD_VERSION = 1
# Associated data of the sealed primary key: a fixed label, then the provider ID.
_SEAL_LABEL = b"vmcrypt native key provider primary key v1\x00"


class _NativeKeys(KeyProvider):
    """KEK creation and lookup under a primary key, shared by both sides."""

    kind = "native"

    def __init__(self, provider_id: str, primary_key: bytes) -> None:
        super().__init__(provider_id)
        self._primary_key = check_key(primary_key, KEK_SIZE, "native provider primary key")
        #: Public: matches a backup or a pushed key to this provider; reveals no key bits.
        self.fingerprint = key_fingerprint(self._primary_key)

    def _check_usable(self) -> None:
        """Raise when the provider may not hand out keys; the host side always may."""

    def new_kek(self, *, owner: KeyOwner | None = None) -> NewKek:
        """A fresh KEK from the CSPRNG; ``owner`` is ignored (wrapped KEKs carry no tags)."""
        self._check_usable()
        kek = generate_kek()
        return NewKek(ref=KekRef(wrapped_kek=wrap_key(self._primary_key, kek)), kek=kek)

    def get_kek(self, ref: KekRef) -> bytes:
        """Unwrap a keySafe's wrapped KEK with the primary key."""
        self._check_usable()
        if ref.wrapped_kek is None:
            raise KeyMissing(
                f"native key provider {self.provider_id!r} has no key IDs, but was asked "
                f"for key ID {ref.key_id!r}; the keySafe names a standard (KMIP) key, so "
                "check which key provider the keySafe's provider ID refers to"
            )
        try:
            kek = unwrap_key(self._primary_key, ref.wrapped_kek)
        except IntegrityError:
            kek = b""
        if len(kek) != KEK_SIZE:
            raise ForeignWrappedKek(
                f"the KEK was not wrapped by the primary key of native key provider "
                f"{self.provider_id!r} (fingerprint {self.fingerprint}): it belongs to "
                "another provider, or the keySafe was altered; open it with the provider "
                "that created it, or restore that provider from its backup"
            )
        return kek

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider_id={self.provider_id!r}, "
            f"fingerprint={self.fingerprint!r})"
        )


class NativeKeyProvider(_NativeKeys):
    """The control plane's native provider: sealed at rest, backed up, gated until then.

    Build one with :meth:`create`, :meth:`from_record` or :meth:`restore`.
    """

    def __init__(
        self,
        provider_id: str,
        *,
        primary_key: bytes,
        sealed_primary_key: bytes,
        created_at: datetime,
        backed_up: bool = False,
        backup_acknowledged: bool = False,
    ) -> None:
        super().__init__(provider_id, primary_key)
        self._sealed_primary_key = bytes(sealed_primary_key)
        self.created_at = _utc_seconds(created_at)
        self.backed_up = backed_up
        self.backup_acknowledged = backup_acknowledged

    # -- construction -------------------------------------------------------------

    @classmethod
    def create(
        cls, provider_id: str, *, sealing_key: bytes, now: datetime | None = None
    ) -> NativeKeyProvider:
        """A new provider with a fresh primary key; not usable until backed up or acked."""
        return cls._sealed(
            provider_id, generate_kek(), sealing_key=sealing_key, created_at=now or _now()
        )

    @classmethod
    def from_record(cls, record: object, *, sealing_key: bytes) -> NativeKeyProvider:
        """Load a stored provider; a wrong sealing key or altered record is explicit."""
        fields = _parse_record(record)
        provider_id = fields["provider_id"]
        check_key(sealing_key, AEAD_KEY_SIZE, "sealing key")
        try:
            primary_key = unseal(
                sealing_key, fields["sealed_primary_key"], associated_data=_ad(provider_id)
            )
        except IntegrityError:
            raise SealedRecordError(
                f"cannot unseal the primary key of native key provider {provider_id!r}: "
                "the sealing key is not the one the record was sealed with, or the record "
                "was altered or copied from another provider; use the control plane's "
                "master key of that record, or restore the provider from its backup"
            ) from None
        provider = cls(
            provider_id,
            primary_key=primary_key,
            sealed_primary_key=fields["sealed_primary_key"],
            created_at=fields["created_at"],
            backed_up=fields["backed_up"],
            backup_acknowledged=fields["backup_acknowledged"],
        )
        if provider.fingerprint != fields["fingerprint"]:
            raise SealedRecordError(
                f"the record of native key provider {provider_id!r} names fingerprint "
                f"{fields['fingerprint']} but its sealed key has {provider.fingerprint}; "
                "the record was altered, restore the provider from its backup"
            )
        return provider

    @overload
    @classmethod
    def restore(
        cls,
        backup: bytes,
        password: str,
        *,
        sealing_key: bytes,
        dry_run: Literal[False] = False,
    ) -> NativeKeyProvider: ...

    @overload
    @classmethod
    def restore(
        cls, backup: bytes, password: str, *, sealing_key: bytes, dry_run: Literal[True]
    ) -> BackupInfo: ...

    @classmethod
    def restore(
        cls, backup: bytes, password: str, *, sealing_key: bytes, dry_run: bool = False
    ) -> NativeKeyProvider | BackupInfo:
        """Rebuild a provider from its ``.p12`` backup (same ID and fingerprint).

        ``dry_run`` opens and checks the file and returns what it holds, building
        nothing, so an operator can confirm the right file and password first. A
        restored provider counts as backed up: the file it came from is a backup.
        """
        check_key(sealing_key, AEAD_KEY_SIZE, "sealing key")
        opened = read_backup(backup, password)
        if dry_run:
            return opened.info
        provider = cls._sealed(
            opened.info.provider_id,
            opened.primary_key,
            sealing_key=sealing_key,
            created_at=opened.info.created_at,
        )
        provider.backed_up = True
        return provider

    @classmethod
    def _sealed(
        cls, provider_id: str, primary_key: bytes, *, sealing_key: bytes, created_at: datetime
    ) -> NativeKeyProvider:
        check_key(sealing_key, AEAD_KEY_SIZE, "sealing key")
        return cls(
            provider_id,
            primary_key=primary_key,
            sealed_primary_key=seal(sealing_key, primary_key, associated_data=_ad(provider_id)),
            created_at=created_at,
        )

    # -- persistence and push -----------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The JSON-able form the control plane stores; the primary key only sealed."""
        return {
            "version": _RECORD_VERSION,
            "kind": self.kind,
            "provider_id": self.provider_id,
            "sealed_primary_key": base64.b64encode(self._sealed_primary_key).decode("ascii"),
            "fingerprint": self.fingerprint,
            "created_at": _iso(self.created_at),
            "backed_up": self.backed_up,
            "backup_acknowledged": self.backup_acknowledged,
        }

    def primary_key_for_push(self) -> bytes:
        """The raw primary key, for the push to hosts and nothing else.

        Named loudly so that every use is easy to find in review. Gated like the
        provider itself: hosts hold no gate of their own.
        """
        self._check_usable()
        return self._primary_key

    # -- backup life cycle --------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether KEKs may be handed out: backed up, or the risk acknowledged."""
        return self.backed_up or self.backup_acknowledged

    def acknowledge_no_backup(self) -> None:
        """Accept the risk of an unbacked primary key; health stays degraded."""
        self.backup_acknowledged = True

    def export_backup(self, password: str) -> bytes:
        """A password-protected PKCS#12 (``.p12``) holding the primary key.

        Marks the provider backed up: vSphere, too, counts the export as the backup,
        since vmcrypt cannot see where the file is kept.
        """
        data = write_backup(
            info=BackupInfo(self.provider_id, self.fingerprint, self.created_at),
            primary_key=self._primary_key,
            password=password,
        )
        self.backed_up = True
        return data

    def warnings(self) -> list[str]:
        """Conditions the control plane raises as warning events (empty when none)."""
        if self.backed_up:
            return []
        return [
            f"not backed up: native key provider {self.provider_id!r} (fingerprint "
            f"{self.fingerprint}) has never been backed up; if the control plane's data "
            "is lost, every VM it encrypts is lost too; export a backup and keep it and "
            "its password safe"
        ]

    def health(self) -> ProviderHealth:
        """Degraded while no backup exists, even when the risk was acknowledged."""
        warnings = tuple(self.warnings())
        return ProviderHealth(
            provider_id=self.provider_id,
            kind=self.kind,
            state="degraded" if warnings else "healthy",
            warnings=warnings,
        )

    def _check_usable(self) -> None:
        if not self.usable:
            raise NotBackedUp(
                f"native key provider {self.provider_id!r} is not backed up: back it up "
                "with export_backup (the 'Back up' action, a password-protected .p12) or "
                "acknowledge the risk with acknowledge_no_backup, then retry"
            )


class HostNativeKeyProvider(_NativeKeys):
    """A host's native provider: the pushed primary key, in memory only, never gated."""

    @classmethod
    def from_pushed_key(
        cls, provider_id: str, primary_key: bytes, *, fingerprint: str | None = None
    ) -> HostNativeKeyProvider:
        """Build from a pushed primary key; ``fingerprint`` (if given) must match it.

        Checking the fingerprint the control plane announced catches a key pushed under
        the wrong provider ID before any KEK is made with it.
        """
        provider = cls(provider_id, primary_key)
        if fingerprint is not None and fingerprint != provider.fingerprint:
            raise AddKeysToHostFailed(
                f"the primary key pushed for native key provider {provider_id!r} has "
                f"fingerprint {provider.fingerprint}, not {fingerprint}; push it again "
                "from the control plane"
            )
        return provider

    def health(self) -> ProviderHealth:
        """Always healthy: backups are the control plane's concern, not a host's."""
        return ProviderHealth(provider_id=self.provider_id, kind=self.kind, state="healthy")


def _ad(provider_id: str) -> bytes:
    return _SEAL_LABEL + provider_id.encode("utf-8")


def _now() -> datetime:
    return datetime.now(UTC)


def _utc_seconds(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    return when.astimezone(UTC).replace(microsecond=0)


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _parse_record(record: object) -> dict[str, Any]:
    """Validate a stored record's shape; the sealed key is checked by unsealing."""
    bad = SealedRecordError(
        "the native key provider record is malformed (missing or mistyped fields); "
        "restore the provider from its backup"
    )
    if (
        not isinstance(record, dict)
        or record.get("version") != _RECORD_VERSION
        or record.get("kind") != "native"
    ):
        raise bad
    provider_id = record.get("provider_id")
    sealed = record.get("sealed_primary_key")
    fingerprint = record.get("fingerprint")
    created_at = record.get("created_at")
    flags = (record.get("backed_up"), record.get("backup_acknowledged"))
    if not (
        isinstance(provider_id, str)
        and provider_id
        and isinstance(sealed, str)
        and isinstance(fingerprint, str)
        and isinstance(created_at, str)
        and all(isinstance(flag, bool) for flag in flags)
    ):
        raise bad
    try:
        sealed_bytes = base64.b64decode(sealed.encode("ascii"), validate=True)
        created = _utc_seconds(datetime.fromisoformat(created_at))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise bad from None
    return {
        "provider_id": provider_id,
        "sealed_primary_key": sealed_bytes,
        "fingerprint": fingerprint,
        "created_at": created,
        "backed_up": flags[0],
        "backup_acknowledged": flags[1],
    }
