"""AES key wrap with padding (RFC 5649 / NIST SP 800-38F KWP) of DEKs under a KEK.

KWP is deterministic and authenticated: unwrapping with the wrong KEK, or unwrapping
altered bytes, fails the integrity check of RFC 5649 — 3 (the 32-bit MSB of the AIV and
the padding check), and both cases raise the same :class:`IntegrityError`.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import keywrap as _kw

from vmcrypt.crypto.exceptions import IntegrityError, InvalidKey
from vmcrypt.crypto.keys import KEK_SIZE, check_key

__all__ = ["unwrap_key", "wrap_key"]


def wrap_key(kek: bytes, key: bytes) -> bytes:
    """Wrap ``key`` (1 byte or more) under the AES-256 ``kek``."""
    kek = check_key(kek, KEK_SIZE, "KEK")
    if not isinstance(key, bytes | bytearray | memoryview) or len(key) < 1:
        raise InvalidKey("the key to wrap must be at least 1 byte of bytes")
    return _kw.aes_key_wrap_with_padding(kek, bytes(key))


def unwrap_key(kek: bytes, wrapped: bytes) -> bytes:
    """Unwrap a KWP blob; raise :class:`IntegrityError` for a wrong KEK or altered bytes."""
    kek = check_key(kek, KEK_SIZE, "KEK")
    # RFC 5649 — 4.2: a wrapped key is at least 16 bytes and a multiple of 8. Shorter
    # or ragged input cannot be a wrapped key; say so in the same opaque way.
    if not isinstance(wrapped, bytes | bytearray | memoryview):
        raise IntegrityError()
    wrapped = bytes(wrapped)
    if len(wrapped) < 16 or len(wrapped) % 8:
        raise IntegrityError()
    try:
        return _kw.aes_key_unwrap_with_padding(kek, wrapped)
    except (_kw.InvalidUnwrap, ValueError):
        raise IntegrityError() from None
