"""The keySafe: what is stored beside encrypted data so that only a KEK holder can read it.

A keySafe names the key provider and the KEK (by key ID for a standard KMIP provider,
or as a wrapped KEK for native and trusted providers) and carries the DEK wrapped under
that KEK with AES key wrap with padding (RFC 5649). It holds no plaintext key: the
envelope recipe here is the only place that joins a KEK and a DEK.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from vmcrypt.crypto.exceptions import IntegrityError, InvalidKey
from vmcrypt.crypto.keys import AEAD_KEY_SIZE, XTS_KEY_SIZE
from vmcrypt.crypto.keywrap import unwrap_key, wrap_key

__all__ = [
    "DEK_ALGORITHMS",
    "KEK_ALGORITHM",
    "WRAP_ALGORITHM",
    "KeySafe",
    "open_keysafe",
    "rewrap_keysafe",
    "seal_keysafe",
]

KEK_ALGORITHM = "AES-256"
#: RFC 5649 / NIST SP 800-38F KWP.
WRAP_ALGORITHM = "AES-256-KWP"
#: DEK algorithm name → DEK length. Disks use dm-crypt's cipher spec name.
DEK_ALGORITHMS: dict[str, int] = {
    "aes-xts-plain64": XTS_KEY_SIZE,
    "AES-256-GCM": AEAD_KEY_SIZE,
}
_VERSION = 1


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class KeySafe:
    """Public facts about a wrapped DEK; safe to store, log and show."""

    provider_id: str
    wrapped_dek: bytes = field(repr=False)
    dek_algorithm: str = "aes-xts-plain64"
    key_id: str | None = None
    wrapped_kek: bytes | None = field(default=None, repr=False)
    kek_algorithm: str = KEK_ALGORITHM
    wrap_algorithm: str = WRAP_ALGORITHM
    created_at: str = field(default_factory=_now)
    version: int = _VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in a LUKS2 token or a VM home config."""
        out: dict[str, Any] = {
            "version": self.version,
            "provider_id": self.provider_id,
            "key_id": self.key_id,
            "wrapped_kek": _b64(self.wrapped_kek) if self.wrapped_kek is not None else None,
            "wrapped_dek": _b64(self.wrapped_dek),
            "kek_algorithm": self.kek_algorithm,
            "wrap_algorithm": self.wrap_algorithm,
            "dek_algorithm": self.dek_algorithm,
            "created_at": self.created_at,
        }
        return out

    @classmethod
    def from_dict(cls, data: object) -> KeySafe:
        """Parse and validate a stored keySafe; malformed input is an IntegrityError."""
        if not isinstance(data, dict):
            raise IntegrityError("keySafe")
        try:
            version = data["version"]
            provider_id = data["provider_id"]
            key_id = data.get("key_id")
            wrapped_kek = data.get("wrapped_kek")
            wrapped_dek = data["wrapped_dek"]
            kek_algorithm = data["kek_algorithm"]
            wrap_algorithm = data["wrap_algorithm"]
            dek_algorithm = data["dek_algorithm"]
            created_at = data["created_at"]
        except KeyError:
            raise IntegrityError("keySafe") from None
        ok = (
            version == _VERSION
            and isinstance(provider_id, str)
            and provider_id
            and (key_id is None or isinstance(key_id, str))
            and (wrapped_kek is None or isinstance(wrapped_kek, str))
            and isinstance(wrapped_dek, str)
            and kek_algorithm == KEK_ALGORITHM
            and wrap_algorithm == WRAP_ALGORITHM
            and dek_algorithm in DEK_ALGORITHMS
            and isinstance(created_at, str)
            and (key_id is not None or wrapped_kek is not None)
        )
        if not ok:
            raise IntegrityError("keySafe")
        return cls(
            provider_id=provider_id,
            key_id=key_id,
            wrapped_kek=_unb64(wrapped_kek) if wrapped_kek is not None else None,
            wrapped_dek=_unb64(wrapped_dek),
            kek_algorithm=kek_algorithm,
            wrap_algorithm=wrap_algorithm,
            dek_algorithm=dek_algorithm,
            created_at=created_at,
            version=version,
        )


def seal_keysafe(
    *,
    kek: bytes,
    dek: bytes,
    provider_id: str,
    key_id: str | None = None,
    wrapped_kek: bytes | None = None,
    dek_algorithm: str = "aes-xts-plain64",
    created_at: str | None = None,
) -> KeySafe:
    """Wrap ``dek`` under ``kek`` and describe where the KEK comes from."""
    expected = DEK_ALGORITHMS.get(dek_algorithm)
    if expected is None:
        raise InvalidKey(f"unknown DEK algorithm {dek_algorithm!r}")
    if len(dek) != expected:
        raise InvalidKey(f"a {dek_algorithm} DEK must be {expected} bytes, got {len(dek)}")
    if not provider_id:
        raise InvalidKey("a keySafe needs a key provider ID")
    if key_id is None and wrapped_kek is None:
        raise InvalidKey("a keySafe needs a key ID or a wrapped KEK to find its KEK again")
    return KeySafe(
        provider_id=provider_id,
        key_id=key_id,
        wrapped_kek=wrapped_kek,
        wrapped_dek=wrap_key(kek, dek),
        dek_algorithm=dek_algorithm,
        created_at=created_at or _now(),
    )


def open_keysafe(keysafe: KeySafe, kek: bytes) -> bytes:
    """Return the plaintext DEK; a wrong KEK or altered keySafe raises IntegrityError."""
    dek = unwrap_key(kek, keysafe.wrapped_dek)
    if len(dek) != DEK_ALGORITHMS[keysafe.dek_algorithm]:
        raise IntegrityError("keySafe")
    return dek


def rewrap_keysafe(
    keysafe: KeySafe,
    *,
    old_kek: bytes,
    new_kek: bytes,
    provider_id: str | None = None,
    key_id: str | None = None,
    wrapped_kek: bytes | None = None,
) -> KeySafe:
    """Shallow re-key: the same DEK wrapped under a new KEK; the data is untouched."""
    dek = open_keysafe(keysafe, old_kek)
    if key_id is None and wrapped_kek is None:
        raise InvalidKey("the new keySafe needs a key ID or a wrapped KEK")
    return replace(
        keysafe,
        provider_id=provider_id or keysafe.provider_id,
        key_id=key_id,
        wrapped_kek=wrapped_kek,
        wrapped_dek=wrap_key(new_kek, dek),
        created_at=_now(),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise IntegrityError("keySafe") from None
