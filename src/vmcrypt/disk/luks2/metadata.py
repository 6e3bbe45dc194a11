"""The LUKS2 JSON metadata: validation, encoding and the segment, token and digest helpers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from typing import Any

from vmcrypt.disk.exceptions import HeaderError
from vmcrypt.disk.luks2.constants import _BINARY_HEADER_SIZE, CIPHER, TOKEN_TYPE
from vmcrypt.exceptions import UsageError

# Hashes accepted for a pbkdf2 digest ("digests"); names are shared by hashlib and
# cryptsetup.
_DIGEST_HASHES = frozenset({"sha1", "sha224", "sha256", "sha384", "sha512"})
_DECIMAL = re.compile(r"[0-9]{1,20}")


class _BadCopy(Exception):
    """Internal: one header copy is unusable; the message says why."""


def _validate_metadata(metadata: object, hdr_size: int) -> None:
    """Structural checks every consumer relies on; raises _BadCopy."""
    if not isinstance(metadata, dict):
        raise _BadCopy("JSON metadata is not an object")
    for key in ("keyslots", "tokens", "segments", "digests", "config"):
        if not isinstance(metadata.get(key), dict):
            raise _BadCopy(f"JSON metadata lacks the {key!r} object")
    config = metadata["config"]
    try:
        json_size = _decimal(config.get("json_size"), "config.json_size")
        keyslots_size = _decimal(config.get("keyslots_size"), "config.keyslots_size")
    except HeaderError as exc:
        raise _BadCopy(str(exc)) from None
    # "config": json_size must equal the JSON area actually present in this copy.
    if json_size != hdr_size - _BINARY_HEADER_SIZE:
        raise _BadCopy(f"config.json_size {json_size} does not match hdr_size {hdr_size}")
    if keyslots_size % _BINARY_HEADER_SIZE:
        raise _BadCopy(f"config.keyslots_size {keyslots_size} is not 4096-aligned")


def _encode_json_area(metadata: dict[str, Any], hdr_size: int) -> bytes:
    """Compact JSON, NUL-padded to the JSON area; errors if it does not fit."""
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise HeaderError(f"the LUKS2 metadata is not valid JSON: {exc}") from None
    encoded = text.encode("ascii")
    area = hdr_size - _BINARY_HEADER_SIZE
    # "JSON area": the text must be followed by at least one NUL inside the area.
    if len(encoded) >= area:
        raise HeaderError(
            f"the LUKS2 metadata needs {len(encoded) + 1} bytes (JSON plus terminating "
            f"NUL) but the JSON area of this header holds only {area}; use a smaller "
            "keySafe (for example a key ID instead of a wrapped KEK)"
        )
    return encoded.ljust(area, b"\0")


# ------------------------------------------------------------------------- helpers


def _segment0(metadata: dict[str, Any]) -> dict[str, Any]:
    """Data segment 0, checked to be something vmcrypt can read and write."""
    config = metadata.get("config", {})
    requirements = config.get("requirements") if isinstance(config, dict) else None
    mandatory = requirements.get("mandatory") if isinstance(requirements, dict) else None
    if mandatory:
        # "config": mandatory requirements (e.g. "online-reencrypt-v2" while a cryptsetup
        # reencryption is unfinished) mean the segments cannot be used as they stand.
        raise HeaderError(
            f"the LUKS2 header has mandatory requirements {mandatory!r} (for example an "
            "unfinished cryptsetup reencrypt); finish it with cryptsetup first "
            "(cryptsetup reencrypt --resume-only --header HEADER DATAFILE)"
        )
    segment = metadata["segments"].get("0")
    if isinstance(segment, dict) and segment.get("type") == "linear":
        # What cryptsetup reencrypt --decrypt leaves behind with a detached header.
        raise HeaderError(
            "LUKS2 data segment 0 is 'linear' (unencrypted): the data file was decrypted "
            "(for example by cryptsetup reencrypt --decrypt) and is now plain; move the "
            "header file away to use it as an unencrypted disk"
        )
    if not isinstance(segment, dict) or segment.get("type") != "crypt":
        kind = segment.get("type") if isinstance(segment, dict) else None
        raise HeaderError(
            f"LUKS2 data segment 0 is {kind!r}, not an encrypted ('crypt') segment; "
            "vmcrypt cannot use this header"
        )
    cipher = segment.get("encryption")
    if cipher != CIPHER:
        raise HeaderError(
            f"LUKS2 data segment 0 uses cipher {cipher!r}; vmcrypt supports only {CIPHER}. "
            "Re-encrypt it with cryptsetup reencrypt --cipher aes-xts-plain64 --key-size 512 "
            "or decrypt it with cryptsetup reencrypt --decrypt"
        )
    return segment


def _find_vmcrypt_token(metadata: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The first (lowest id) token of type ``vmcrypt``."""
    for token_id, token in _sorted_objects(metadata["tokens"]):
        if token.get("type") == TOKEN_TYPE:
            return token_id, token
    return None


def _sorted_objects(container: object) -> list[tuple[str, dict[str, Any]]]:
    """Numbered LUKS2 objects ("0", "1", ...) in numeric order, skipping junk entries."""
    if not isinstance(container, dict):
        return []
    items = [(k, v) for k, v in container.items() if isinstance(v, dict)]
    return sorted(items, key=lambda kv: (not kv[0].isdigit(), len(kv[0]), kv[0]))


def _pbkdf2_digest_matches(digest_id: str, digest: dict[str, Any], volume_key: bytes) -> bool:
    # "digests": type pbkdf2 = PBKDF2(hash, password=volume key, salt, iterations),
    # output length = len(digest).
    if digest.get("type") != "pbkdf2":
        raise HeaderError(
            f"LUKS2 digest {digest_id} has type {digest.get('type')!r}; "
            "only pbkdf2 digests are supported"
        )
    hash_name = digest.get("hash")
    if hash_name not in _DIGEST_HASHES:
        raise HeaderError(f"LUKS2 digest {digest_id} uses unsupported hash {hash_name!r}")
    iterations = digest.get("iterations")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise HeaderError(f"LUKS2 digest {digest_id} has invalid iterations {iterations!r}")
    salt = _unb64(digest.get("salt"), f"digest {digest_id} salt")
    expected = _unb64(digest.get("digest"), f"digest {digest_id} value")
    if not expected:
        raise HeaderError(f"LUKS2 digest {digest_id} is empty; the header is corrupt")
    candidate = hashlib.pbkdf2_hmac(str(hash_name), volume_key, salt, iterations, len(expected))
    return hmac.compare_digest(candidate, expected)


def _decimal(value: object, what: str) -> int:
    """LUKS2 stores 64-bit sizes and offsets as decimal strings ("JSON area")."""
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value) or int(value) >= 2**64:
        raise HeaderError(f"LUKS2 {what} is {value!r}, not a decimal string; header is corrupt")
    return int(value)


def _json_copy(value: dict[str, Any]) -> dict[str, Any]:
    """Deep copy through JSON: snapshots the value and proves it serialises."""
    try:
        copied = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"the value cannot be stored as LUKS2 JSON: {exc}") from None
    if not isinstance(copied, dict):
        raise UsageError("a JSON object (dict) is required")
    return copied


def _reject_constant(name: str) -> Any:
    """LUKS2 JSON is strict JSON: NaN and Infinity are not values."""
    raise ValueError(f"{name} is not allowed in LUKS2 JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("non-finite number in LUKS2 JSON")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise HeaderError(f"LUKS2 {what} is not a base64 string; the header is corrupt")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise HeaderError(f"LUKS2 {what} is not valid base64; the header is corrupt") from None
