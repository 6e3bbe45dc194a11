"""AES-256-GCM sealing of small blobs (VM home config, NVRAM, vTPM state).

Sealed format (all lengths fixed)::

    version (1 byte, 0x01) || nonce (12 bytes, random) || ciphertext || tag (16 bytes)

The version byte is bound into the associated data, so a blob cannot be replayed under
another format version. Random 96-bit nonces are safe here because one VM home DEK seals
few blobs (NIST SP 800-38D — 8.3 allows 2^32 random-nonce invocations per key).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vmcrypt.crypto.exceptions import IntegrityError, InvalidKey
from vmcrypt.crypto.keys import AEAD_KEY_SIZE, check_key

__all__ = ["MAX_SEALED_SIZE", "seal", "unseal"]

_VERSION = b"\x01"
_NONCE_SIZE = 12
_TAG_SIZE = 16
#: Sealing is for small blobs; large data belongs on an XTS disk.
MAX_SEALED_SIZE = 64 * 1024 * 1024


def seal(key: bytes, plaintext: bytes, *, associated_data: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext``; ``associated_data`` is authenticated only."""
    key = check_key(key, AEAD_KEY_SIZE, "VM home DEK")
    if len(plaintext) > MAX_SEALED_SIZE:
        raise InvalidKey(f"sealed blobs are limited to {MAX_SEALED_SIZE} bytes")
    nonce = os.urandom(_NONCE_SIZE)
    ct = AESGCM(key).encrypt(nonce, bytes(plaintext), _VERSION + bytes(associated_data))
    return _VERSION + nonce + ct


def unseal(key: bytes, sealed: bytes, *, associated_data: bytes = b"") -> bytes:
    """Open a sealed blob; any mismatch (key, bytes, associated data) is one IntegrityError."""
    key = check_key(key, AEAD_KEY_SIZE, "VM home DEK")
    sealed = bytes(sealed)
    if len(sealed) < 1 + _NONCE_SIZE + _TAG_SIZE or sealed[:1] != _VERSION:
        raise IntegrityError("sealed data")
    nonce, ct = sealed[1 : 1 + _NONCE_SIZE], sealed[1 + _NONCE_SIZE :]
    try:
        return AESGCM(key).decrypt(nonce, ct, _VERSION + bytes(associated_data))
    except InvalidTag:
        raise IntegrityError("sealed data") from None
