"""Key generation from the OS CSPRNG and constant-time comparison.

Every key vmcrypt uses is born here, from :func:`os.urandom` (``getrandom(2)`` on Linux),
never from :mod:`random`.
"""

from __future__ import annotations

import hmac
import os

from vmcrypt.crypto.exceptions import InvalidKey

__all__ = [
    "AEAD_KEY_SIZE",
    "KEK_SIZE",
    "XTS_KEY_SIZE",
    "check_key",
    "constant_time_equal",
    "generate_aead_key",
    "generate_kek",
    "generate_xts_key",
]

#: AES-256 key encryption key.
KEK_SIZE = 32
#: XTS-AES-256 uses two AES-256 keys (IEEE 1619 — 5.1): 512 bits in all.
XTS_KEY_SIZE = 64
#: AES-256-GCM key for sealing VM home data.
AEAD_KEY_SIZE = 32


def check_key(key: object, size: int, what: str) -> bytes:
    """Return ``key`` as bytes if it is exactly ``size`` bytes long, else raise InvalidKey.

    The message names the expected length but never echoes the key.
    """
    if not isinstance(key, bytes | bytearray | memoryview):
        raise InvalidKey(f"{what} must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) != size:
        raise InvalidKey(f"{what} must be {size} bytes ({size * 8} bits), got {len(key)} bytes")
    return key


def generate_kek() -> bytes:
    """A fresh AES-256 KEK (native provider, tests); KMIP KEKs come from the key server."""
    return os.urandom(KEK_SIZE)


def generate_aead_key() -> bytes:
    """A fresh AES-256-GCM key for a VM home."""
    return os.urandom(AEAD_KEY_SIZE)


def generate_xts_key() -> bytes:
    """A fresh 512-bit XTS-AES-256 key whose two halves differ.

    IEEE 1619-2018 and FIPS 140-3 IG C.I require Key1 != Key2; with 256 random bits per
    half a collision is practically impossible, but the check costs nothing.
    """
    while True:
        key = os.urandom(XTS_KEY_SIZE)
        if not constant_time_equal(key[:32], key[32:]):
            return key


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets without leaking where they differ through timing."""
    return hmac.compare_digest(a, b)
