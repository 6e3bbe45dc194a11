"""The LUKS2 header value (:class:`Luks2Header`) and the functions that make new ones."""

from __future__ import annotations

import hashlib
import secrets
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from vmcrypt.crypto.exceptions import InvalidKey
from vmcrypt.disk.exceptions import HeaderError
from vmcrypt.disk.luks2.constants import (
    _BINARY_HEADER_SIZE,
    _LABEL_SIZE,
    CIPHER,
    DEFAULT_HDR_SIZE,
    DEFAULT_KEYSLOTS_SIZE,
    MIN_DIGEST_ITERATIONS,
    SECTOR_SIZE,
    TOKEN_TYPE,
    VOLUME_KEY_SIZE,
)
from vmcrypt.disk.luks2.metadata import (
    _b64,
    _decimal,
    _encode_json_area,
    _find_vmcrypt_token,
    _json_copy,
    _pbkdf2_digest_matches,
    _segment0,
    _sorted_objects,
)
from vmcrypt.exceptions import UsageError

_DIGEST_SALT_SIZE = 32
_DIGEST_SIZE = 32  # cryptsetup stores the full hash output: 32 bytes for sha256
_MAX_TOKENS = 32  # LUKS2_TOKENS_MAX in cryptsetup


@dataclass(frozen=True)
class Luks2Header:
    """One LUKS2 header: the binary-header identity fields plus the parsed JSON metadata.

    The object is a value: :func:`with_keysafe` returns a new one and
    :func:`write_header` serialises it. ``metadata`` is the JSON exactly as stored, so
    keyslots, tokens and digests made by cryptsetup survive a read-modify-write; treat
    it as read-only.
    """

    uuid: str
    label: str
    seqid: int
    hdr_size: int
    metadata: dict[str, Any] = field(repr=False, hash=False)
    subsystem: str = ""

    @property
    def keysafe(self) -> dict[str, Any] | None:
        """The keySafe of the first ``vmcrypt`` token, or None when there is no such token.

        A cryptsetup-made header has none. The value is a copy, so callers cannot alter
        the header by mutating it.
        """
        token = _find_vmcrypt_token(self.metadata)
        if token is None:
            return None
        token_id, body = token
        value = body.get("keysafe")
        if not isinstance(value, dict):
            raise HeaderError(
                f"LUKS2 token {token_id} has type {TOKEN_TYPE!r} but no keysafe object; "
                "the header was altered or written by an incompatible tool; restore the "
                "header file from a backup"
            )
        return _json_copy(value)

    @property
    def sector_size(self) -> int:
        """Encryption sector size of data segment 0, after checking vmcrypt can use it."""
        size = _segment0(self.metadata).get("sector_size")
        if isinstance(size, bool) or size not in (512, 1024, 2048, 4096):
            raise HeaderError(
                f"LUKS2 data segment 0 has an invalid sector_size {size!r}; "
                "the header is corrupt; restore it from a backup"
            )
        return int(size)

    @property
    def data_offset(self) -> int:
        """Byte offset of data segment 0 in the data file (vmcrypt writes 0)."""
        return _decimal(_segment0(self.metadata).get("offset"), "segment 0 offset")

    @property
    def keyslots_size(self) -> int:
        """Size in bytes of the binary keyslots area that follows the two header copies."""
        return _decimal(self.metadata["config"].get("keyslots_size"), "config.keyslots_size")

    def verify_volume_key(self, volume_key: bytes) -> bool:
        """True when ``volume_key`` matches the digest of data segment 0.

        This is the check cryptsetup itself performs ("digests": PBKDF2 of the volume key
        with the digest's salt and iterations), so a key accepted here is accepted by
        ``cryptsetup luksAddKey --volume-key-file``. The comparison is constant-time.
        """
        digests = self.metadata["digests"]
        covered = False
        for digest_id, digest in _sorted_objects(digests):
            segments = digest.get("segments")
            if not isinstance(segments, list) or "0" not in segments:
                continue
            covered = True
            if _pbkdf2_digest_matches(digest_id, digest, volume_key):
                return True
        if not covered:
            raise HeaderError(
                "no LUKS2 digest covers data segment 0, so no volume key can be verified; "
                "the header is incomplete or corrupt; restore it from a backup"
            )
        return False


# --------------------------------------------------------------------------- build


def build_header(
    *,
    volume_key: bytes,
    keysafe: dict[str, Any],
    uuid: str | None = None,
    label: str = "",
    iterations: int = MIN_DIGEST_ITERATIONS,
) -> Luks2Header:
    """A fresh vmcrypt header: one aes-xts-plain64 segment, no keyslot, the keySafe token.

    The digest is computed here because it is the only place the volume key enters the
    header; the key itself is never stored. ``iterations`` only slows down checking a
    *guessed* volume key, which is a 512-bit random value, so cryptsetup's minimum is
    enough.
    """
    if len(volume_key) != VOLUME_KEY_SIZE:
        raise InvalidKey(
            f"the volume key (DEK) must be {VOLUME_KEY_SIZE} bytes for {CIPHER} with a "
            f"512-bit key, got {len(volume_key)} bytes"
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise UsageError("iterations must be an integer")
    if iterations < MIN_DIGEST_ITERATIONS:
        raise UsageError(
            f"digest iterations must be at least {MIN_DIGEST_ITERATIONS} "
            f"(cryptsetup's minimum), got {iterations}"
        )
    if not isinstance(keysafe, dict):
        raise UsageError("the keysafe must be a JSON object (a dict)")
    keysafe_copy = _json_copy(keysafe)
    header_uuid = _normalise_uuid(uuid)
    _check_c_string(label, _LABEL_SIZE, "label")

    # "digests": pbkdf2 over the volume key; the digest object also pins the key size
    # for the segments it lists. keyslots is empty because there is no keyslot yet;
    # cryptsetup luksAddKey links the new keyslot to this digest.
    salt = secrets.token_bytes(_DIGEST_SALT_SIZE)
    digest = hashlib.pbkdf2_hmac("sha256", volume_key, salt, iterations, _DIGEST_SIZE)
    metadata: dict[str, Any] = {
        "keyslots": {},
        "tokens": {"0": {"type": TOKEN_TYPE, "keyslots": [], "keysafe": keysafe_copy}},
        # "segments": one crypt segment covering the whole data file from offset 0;
        # "dynamic" size means "up to the end of the device".
        "segments": {
            "0": {
                "type": "crypt",
                "offset": "0",
                "size": "dynamic",
                "iv_tweak": "0",
                "encryption": CIPHER,
                "sector_size": SECTOR_SIZE,
            }
        },
        "digests": {
            "0": {
                "type": "pbkdf2",
                "keyslots": [],
                "segments": ["0"],
                "hash": "sha256",
                "iterations": iterations,
                "salt": _b64(salt),
                "digest": _b64(digest),
            }
        },
        # "config": sizes are decimal strings; json_size = hdr_size - 4096.
        "config": {
            "json_size": str(DEFAULT_HDR_SIZE - _BINARY_HEADER_SIZE),
            "keyslots_size": str(DEFAULT_KEYSLOTS_SIZE),
        },
    }
    _encode_json_area(metadata, DEFAULT_HDR_SIZE)  # fail now, not at write time
    return Luks2Header(
        uuid=header_uuid,
        label=label,
        seqid=1,
        hdr_size=DEFAULT_HDR_SIZE,
        metadata=metadata,
    )


def with_keysafe(header: Luks2Header, keysafe: dict[str, Any]) -> Luks2Header:
    """A copy of ``header`` whose vmcrypt token carries ``keysafe``; seqid goes up by one.

    Everything else (keyslots, other tokens, digests, segments) is kept, so a recovery
    passphrase added with cryptsetup survives a KEK rotation. If the header has no
    vmcrypt token yet (a cryptsetup-made header being adopted), one is added under the
    lowest free token id.
    """
    if not isinstance(keysafe, dict):
        raise UsageError("the keysafe must be a JSON object (a dict)")
    metadata = _json_copy(header.metadata)
    tokens = metadata.get("tokens")
    if not isinstance(tokens, dict):
        raise HeaderError("the LUKS2 metadata has no tokens object; the header is corrupt")
    found = _find_vmcrypt_token(metadata)
    if found is not None:
        tokens[found[0]]["keysafe"] = _json_copy(keysafe)
    else:
        free = next((str(i) for i in range(_MAX_TOKENS) if str(i) not in tokens), None)
        if free is None:
            raise HeaderError(
                f"all {_MAX_TOKENS} LUKS2 token slots are in use; remove one with "
                "cryptsetup token remove --token-id N before adding the vmcrypt keySafe"
            )
        tokens[free] = {"type": TOKEN_TYPE, "keyslots": [], "keysafe": _json_copy(keysafe)}
    _encode_json_area(metadata, header.hdr_size)
    return Luks2Header(
        uuid=header.uuid,
        label=header.label,
        seqid=header.seqid + 1,
        hdr_size=header.hdr_size,
        metadata=metadata,
        subsystem=header.subsystem,
    )


def _check_c_string(value: str, size: int, what: str) -> None:
    if not isinstance(value, str) or "\0" in value or len(value.encode("utf-8")) >= size:
        raise UsageError(f"the LUKS2 {what} must be a string of at most {size - 1} bytes")


def _normalise_uuid(value: str | None) -> str:
    if value is None:
        return str(uuidlib.uuid4())
    try:
        return str(uuidlib.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise UsageError(f"{value!r} is not a UUID") from None
