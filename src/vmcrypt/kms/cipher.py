"""The ciphers behind Encrypt and Decrypt: AES-GCM and the NIST AES key wraps.

Encrypt and Decrypt (KMIP 1.4, 4.29 and 4.30) let a client use a key without ever
holding it: the Trust Authority wraps KEKs with a primary key that never leaves this
server. Three Block Cipher Modes are offered, all authenticated:

- **GCM** (SP 800-38D): Data, an IV/Counter/Nonce (8 to 128 bytes; the server makes a
  random 12-byte one when the request brings none, and returns it), optional
  Authenticated Encryption Additional Data, a tag of Tag Length bytes (4, 8 or 12 to 16;
  16 by default) returned as Authenticated Encryption Tag;
- **NIST Key Wrap** (SP 800-38F KW, RFC 3394): Data of 16 bytes or more, a multiple of 8;
- **AES Key Wrap Padding** (SP 800-38F KWP, RFC 5649): any Data of 1 byte or more.

Any decryption that does not authenticate is a *Cryptographic Failure* that says which
inputs may be wrong and never echoes them. Modes without integrity (ECB, CBC, CTR …)
are refused: a KEK wrapped without integrity could be swapped undetected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vmcrypt.kmip.items import find, get_bool, get_bytes, get_enum, get_int
from vmcrypt.kmip.tags import BlockCipherMode, CryptographicAlgorithm, ResultReason, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.errors import OperationError

__all__ = ["MODES", "CipherRequest", "Sealed", "decrypt", "encrypt", "request_of"]

#: The Block Cipher Modes offered, by name (for messages and ``Query``-style listings).
MODES: Final = {
    BlockCipherMode.GCM: "GCM",
    BlockCipherMode.NIST_KEY_WRAP: "NIST Key Wrap",
    BlockCipherMode.AES_KEY_WRAP_PADDING: "AES Key Wrap Padding",
}
_GCM_TAG_LENGTHS: Final = frozenset({4, 8, 12, 13, 14, 15, 16})
_GCM_DEFAULT_TAG: Final = 16
_GCM_DEFAULT_IV: Final = 12
_GCM_IV_RANGE: Final = (8, 128)


@dataclass(frozen=True)
class CipherRequest:
    """What one Encrypt or Decrypt asks for, checked."""

    mode: BlockCipherMode
    data: bytes
    iv: bytes | None
    aad: bytes
    tag_length: int | None
    iv_length: int | None
    tag: bytes | None


@dataclass(frozen=True)
class Sealed:
    """An Encrypt result: the ciphertext, the IV when the server chose it, the GCM tag."""

    data: bytes
    iv: bytes | None
    tag: bytes | None


def request_of(payload: Item, key_attributes: Item | None) -> CipherRequest:
    """Read the request; the key's own Cryptographic Parameters fill what it leaves out."""
    _refuse_streaming(payload)
    given = find(payload, Tag.CRYPTOGRAPHIC_PARAMETERS)
    params = given if given is not None else key_attributes
    if params is None:
        raise OperationError(
            ResultReason.MISSING_DATA,
            "Cryptographic Parameters with a Block Cipher Mode are needed "
            f"({', '.join(MODES.values())})",
        )
    algorithm = get_enum(params, Tag.CRYPTOGRAPHIC_ALGORITHM, required=False)
    if algorithm is not None and algorithm != CryptographicAlgorithm.AES:
        raise OperationError(ResultReason.INVALID_FIELD,
                             f"Cryptographic Algorithm {algorithm} is not AES: this server "
                             "encrypts with AES keys only")
    raw_mode = get_enum(params, Tag.BLOCK_CIPHER_MODE, required=False)
    if raw_mode is None:
        raise OperationError(ResultReason.MISSING_DATA,
                             "Cryptographic Parameters name no Block Cipher Mode "
                             f"({', '.join(MODES.values())})")
    if raw_mode not in MODES:
        raise OperationError(
            ResultReason.FEATURE_NOT_SUPPORTED,
            f"Block Cipher Mode {raw_mode} is not offered: use {', '.join(MODES.values())} "
            "(modes without integrity are refused)",
        )
    data = get_bytes(payload, Tag.DATA, required=False)
    if data is None:
        raise OperationError(ResultReason.MISSING_DATA, "the request has no Data")
    return CipherRequest(
        mode=BlockCipherMode(raw_mode),
        data=data,
        iv=get_bytes(payload, Tag.IV_COUNTER_NONCE, required=False),
        aad=get_bytes(payload, Tag.AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA,
                      required=False) or b"",
        tag_length=get_int(params, Tag.TAG_LENGTH, required=False),
        iv_length=get_int(params, Tag.IV_LENGTH, required=False),
        tag=get_bytes(payload, Tag.AUTHENTICATED_ENCRYPTION_TAG, required=False),
    )


def encrypt(key: bytes, request: CipherRequest) -> Sealed:
    """Encrypt ``request.data`` under ``key`` in the requested mode."""
    if request.mode is BlockCipherMode.GCM:
        return _gcm_encrypt(key, request)
    _no_gcm_fields(request)
    if request.mode is BlockCipherMode.NIST_KEY_WRAP:
        if len(request.data) < 16 or len(request.data) % 8:
            raise OperationError(ResultReason.INVALID_FIELD,
                                 f"NIST Key Wrap takes 16 bytes or more in multiples of 8, "
                                 f"not {len(request.data)}; use AES Key Wrap Padding")
        return Sealed(keywrap.aes_key_wrap(key, request.data), None, None)
    if not request.data:
        raise OperationError(ResultReason.INVALID_FIELD, "AES Key Wrap Padding needs 1 byte "
                             "of Data or more")
    return Sealed(keywrap.aes_key_wrap_with_padding(key, request.data), None, None)


def decrypt(key: bytes, request: CipherRequest) -> bytes:
    """Decrypt and authenticate ``request.data``; Cryptographic Failure when it does not."""
    if request.mode is BlockCipherMode.GCM:
        return _gcm_decrypt(key, request)
    _no_gcm_fields(request)
    try:
        if request.mode is BlockCipherMode.NIST_KEY_WRAP:
            return keywrap.aes_key_unwrap(key, request.data)
        return keywrap.aes_key_unwrap_with_padding(key, request.data)
    except (keywrap.InvalidUnwrap, ValueError):
        raise OperationError(
            ResultReason.CRYPTOGRAPHIC_FAILURE,
            f"{MODES[request.mode]}: the data does not unwrap under this key (wrong key, or "
            "the wrapped data was changed)",
        ) from None


def _gcm_encrypt(key: bytes, request: CipherRequest) -> Sealed:
    tag_length = _tag_length(request.tag_length)
    if request.tag is not None:
        raise OperationError(ResultReason.INVALID_FIELD,
                             "Encrypt takes no Authenticated Encryption Tag: it returns one")
    iv, chosen = request.iv, False
    if iv is None:
        iv, chosen = os.urandom(_iv_length(request.iv_length)), True
    _check_iv(iv)
    encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(request.aad)
    data = encryptor.update(request.data) + encryptor.finalize()
    return Sealed(data, iv if chosen else None, encryptor.tag[:tag_length])


def _gcm_decrypt(key: bytes, request: CipherRequest) -> bytes:
    if request.iv is None:
        raise OperationError(ResultReason.MISSING_DATA,
                             "GCM Decrypt needs the IV/Counter/Nonce Encrypt used")
    if request.tag is None:
        raise OperationError(ResultReason.MISSING_DATA,
                             "GCM Decrypt needs the Authenticated Encryption Tag")
    _check_iv(request.iv)
    if len(request.tag) not in _GCM_TAG_LENGTHS:
        raise OperationError(ResultReason.INVALID_FIELD,
                             f"a GCM tag is 4, 8 or 12 to 16 bytes, not {len(request.tag)}")
    if request.tag_length is not None and request.tag_length != len(request.tag):
        raise OperationError(ResultReason.INVALID_FIELD,
                             f"Tag Length says {request.tag_length} bytes but the tag has "
                             f"{len(request.tag)}")
    decryptor = Cipher(algorithms.AES(key), modes.GCM(
        request.iv, request.tag, min_tag_length=len(request.tag))).decryptor()
    decryptor.authenticate_additional_data(request.aad)
    try:
        return decryptor.update(request.data) + decryptor.finalize()
    except InvalidTag:
        raise OperationError(
            ResultReason.CRYPTOGRAPHIC_FAILURE,
            "GCM authentication failed: the key, IV, data, additional data or tag is not "
            "the one Encrypt used",
        ) from None


def _tag_length(given: int | None) -> int:
    length = _GCM_DEFAULT_TAG if given is None else given
    if length not in _GCM_TAG_LENGTHS:
        raise OperationError(ResultReason.INVALID_FIELD,
                             f"Tag Length {length} is not a GCM tag length (4, 8, 12 to 16 "
                             "bytes)")
    return length


def _iv_length(bits: int | None) -> int:
    """KMIP gives IV Length in bits; GCM's recommended IV is 96 bits."""
    if bits is None:
        return _GCM_DEFAULT_IV
    if bits % 8 or not _GCM_IV_RANGE[0] <= bits // 8 <= _GCM_IV_RANGE[1]:
        raise OperationError(ResultReason.INVALID_FIELD,
                             f"IV Length {bits} bits is not a whole number of bytes from "
                             f"{_GCM_IV_RANGE[0]} to {_GCM_IV_RANGE[1]}")
    return bits // 8


def _check_iv(iv: bytes) -> None:
    low, high = _GCM_IV_RANGE
    if not low <= len(iv) <= high:
        raise OperationError(ResultReason.INVALID_FIELD,
                             f"a GCM IV/Counter/Nonce is {low} to {high} bytes, not {len(iv)}")


def _no_gcm_fields(request: CipherRequest) -> None:
    for value, name in ((request.iv, "IV/Counter/Nonce"), (request.tag,
                        "Authenticated Encryption Tag"), (request.aad or None,
                        "Authenticated Encryption Additional Data")):
        if value is not None:
            raise OperationError(ResultReason.INVALID_FIELD,
                                 f"{MODES[request.mode]} takes no {name}")


def _refuse_streaming(payload: Item) -> None:
    """Multi-part (streamed) Encrypt/Decrypt (1.3) is not offered: one message, one call."""
    init = get_bool(payload, Tag.INIT_INDICATOR, required=False)
    final = get_bool(payload, Tag.FINAL_INDICATOR, required=False)
    correlation = find(payload, Tag.CORRELATION_VALUE)
    if correlation is not None or init is False or final is False or (
            init is True and final is not True):
        raise OperationError(ResultReason.FEATURE_NOT_SUPPORTED,
                             "multi-part (streamed) Encrypt and Decrypt are not supported: "
                             "send all of the Data in one request")
