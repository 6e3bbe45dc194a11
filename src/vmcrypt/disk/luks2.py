"""Read and write detached LUKS2 headers, byte-compatible with stock cryptsetup.

An encrypted vmcrypt disk is a flat ciphertext file ``NAME.img`` plus a detached LUKS2
header ``NAME.img.luks``. Writing a *real* LUKS2 header (rather than a private format) is
what makes the disk recoverable without vmcrypt: anyone holding the DEK can add a
passphrase with ``cryptsetup luksAddKey --volume-key-file`` and then open or decrypt the
disk with stock tools (see ``docs/recovery.md``).

The DEK is the LUKS2 *volume key*. vmcrypt stores no passphrase keyslot by default; the
DEK is reachable only by unwrapping the keySafe kept in a LUKS2 token of type
``vmcrypt``. The header still carries the standard PBKDF2 digest of the volume key so
that cryptsetup (and :meth:`Luks2Header.verify_volume_key`) can tell a right DEK from a
wrong one.

References are to the "LUKS2 On-Disk Format Specification" (Milan Brož, cryptsetup
project, version 1.1.x), cited by section title because numbering moved between
revisions:

* "Binary header" — the 4096-byte big-endian structure and its checksum;
* "JSON area" — the NUL-padded metadata that follows each binary header;
* "Keyslots area" — binary keyslot material after the two header copies;
* "Header recovery" / "Secondary header" — the fixed offsets probed when the primary is
  damaged;
* "keyslots", "segments", "digests", "tokens", "config" — the JSON metadata objects.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import struct
import tempfile
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from vmcrypt.crypto.exceptions import InvalidKey
from vmcrypt.disk.exceptions import HeaderError  # re-exported: callers may use luks2.HeaderError
from vmcrypt.exceptions import UsageError

__all__ = [
    "CIPHER",
    "DEFAULT_HDR_SIZE",
    "DEFAULT_KEYSLOTS_SIZE",
    "SECTOR_SIZE",
    "TOKEN_TYPE",
    "VOLUME_KEY_SIZE",
    "HeaderError",
    "Luks2Header",
    "build_header",
    "read_header",
    "with_keysafe",
    "write_header",
]

_log = logging.getLogger(__name__)

#: Encryption sector size of the data segment (dm-crypt ``sector_size``).
SECTOR_SIZE = 4096
#: dm-crypt cipher spec of the data segment; the only one vmcrypt reads or writes.
CIPHER = "aes-xts-plain64"
#: XTS-AES-256 takes two 256-bit keys: the 512-bit LUKS2 volume key (the DEK).
VOLUME_KEY_SIZE = 64
#: LUKS2 token type holding the keySafe. Types without the ``luks2-`` prefix are
#: "external" tokens that cryptsetup stores and shows but never interprets ("tokens").
TOKEN_TYPE = "vmcrypt"  # noqa: S105 - a token type name, not a secret

#: One header copy = 4096-byte binary header + JSON area ("Binary header", "JSON area").
#: 16 KiB is cryptsetup's default and leaves a 12 KiB JSON area.
DEFAULT_HDR_SIZE = 16 * 1024
#: cryptsetup's default keyslots area: 16 MiB minus the two 16 KiB header copies.
#: Reserved (sparse) so that a recovery passphrase keyslot can be added later.
DEFAULT_KEYSLOTS_SIZE = 16 * 1024 * 1024 - 2 * DEFAULT_HDR_SIZE
#: Lower bound for the PBKDF2 digest iterations ("digests"); cryptsetup's own minimum.
MIN_DIGEST_ITERATIONS = 1000

_BINARY_HEADER_SIZE = 4096
_MAGIC_PRIMARY = b"LUKS\xba\xbe"
_MAGIC_SECONDARY = b"SKUL\xba\xbe"
_LUKS2_VERSION = 2
# "Binary header": hdr_size (binary header + JSON area) must be one of these; the
# secondary copy starts at offset hdr_size, so these are also the offsets probed for
# a secondary copy when the primary is unreadable ("Header recovery").
_HDR_SIZES = tuple(kib * 1024 for kib in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
_CHECKSUM_ALG = "sha256"
# Checksum algorithms accepted on read ("Binary header": checksum_alg, e.g. "sha256").
_CHECKSUM_ALGS = frozenset({"sha1", "sha256", "sha512"})
# Hashes accepted for a pbkdf2 digest ("digests"); names are shared by hashlib and
# cryptsetup.
_DIGEST_HASHES = frozenset({"sha1", "sha224", "sha256", "sha384", "sha512"})
_DIGEST_SALT_SIZE = 32
_DIGEST_SIZE = 32  # cryptsetup stores the full hash output: 32 bytes for sha256
_MAX_TOKENS = 32  # LUKS2_TOKENS_MAX in cryptsetup

# "Binary header" layout (big-endian, 512 bytes of fields, then zero padding to 4096):
#   magic[6] version:u16 hdr_size:u64 seqid:u64 label[48] checksum_alg[32] salt[64]
#   uuid[40] subsystem[48] hdr_offset:u64 _padding[184] csum[64] _padding4096[7*512]
_BINARY = struct.Struct(">6sHQQ48s32s64s40s48sQ184s64s")
_CSUM_OFFSET = 448
_CSUM_SIZE = 64
_SALT_SIZE = 64
_LABEL_SIZE = 48
_UUID_SIZE = 40
_DECIMAL = re.compile(r"[0-9]{1,20}")


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


# ---------------------------------------------------------------------------- read


class _BadCopy(Exception):
    """Internal: one header copy is unusable; the message says why."""


@dataclass(frozen=True)
class _Copy:
    offset: int
    seqid: int
    hdr_size: int
    label: str
    uuid: str
    subsystem: str
    metadata: dict[str, Any]


def read_header(path: str | os.PathLike[str]) -> Luks2Header:
    """Parse and validate the LUKS2 header in ``path``.

    Both copies are checked (magic, version, hdr_size, hdr_offset, checksum, JSON) and
    the valid one with the highest seqid wins, as in cryptsetup. One bad copy is
    tolerated and logged, so a single torn or flipped sector never locks a disk; the
    next :func:`write_header` rewrites both copies. Raises :class:`HeaderError` when the
    file is not LUKS2 or both copies are bad, and ``OSError`` when it cannot be read.
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        primary_magic = _peek(f, 0, 8)
        if primary_magic[:6] == _MAGIC_PRIMARY and primary_magic[6:8] == b"\x00\x01":
            raise HeaderError(
                f"{name} is a LUKS1 header; vmcrypt needs LUKS2: convert it with "
                f"cryptsetup convert --type luks2 --header {name} (after a backup)"
            )
        primary: _Copy | None = None
        primary_reason = ""
        try:
            primary = _parse_copy(f, 0, _MAGIC_PRIMARY)
        except _BadCopy as exc:
            primary_reason = str(exc)

        # "Header recovery": the secondary copy sits at hdr_size. Trust the primary's
        # hdr_size only when the primary verified; otherwise probe every legal offset.
        offsets = (primary.hdr_size,) if primary is not None else _HDR_SIZES
        secondary: _Copy | None = None
        secondary_reasons: dict[int, str] = {}
        for offset in offsets:
            try:
                secondary = _parse_copy(f, offset, _MAGIC_SECONDARY)
                break
            except _BadCopy as exc:
                secondary_reasons[offset] = str(exc)

        if primary is None and secondary is None:
            has_secondary_magic = any(
                _peek(f, offset, 6) == _MAGIC_SECONDARY for offset in _HDR_SIZES
            )
            if primary_magic[:6] != _MAGIC_PRIMARY and not has_secondary_magic:
                raise HeaderError(
                    f"{name} is not a LUKS2 header (no LUKS2 magic in either header "
                    "copy); check the path: a vmcrypt disk's header is NAME.img.luks"
                )
            secondary_reason = secondary_reasons.get(
                _claimed_hdr_size(f), "no valid secondary copy found"
            )
            raise HeaderError(
                f"{name} is a corrupt or tampered LUKS2 header: both copies are bad "
                f"(primary: {primary_reason}; secondary: {secondary_reason}); "
                "restore the header file from a backup"
            )

    valid = [copy for copy in (primary, secondary) if copy is not None]
    # Highest seqid wins; max() keeps the first of equals, so the primary wins a tie.
    chosen = max(valid, key=lambda copy: copy.seqid)
    if len(valid) == 1:
        bad, why = (
            ("primary", primary_reason)
            if primary is None
            else ("secondary", "; ".join(secondary_reasons.values()))
        )
        _log.warning(
            "%s: the %s LUKS2 header copy is bad (%s); using the other copy; "
            "the next header write repairs it",
            name,
            bad,
            why,
        )
    elif valid[0].seqid != valid[1].seqid:
        _log.warning(
            "%s: LUKS2 header copies disagree (seqid %d vs %d); using seqid %d",
            name,
            valid[0].seqid,
            valid[1].seqid,
            chosen.seqid,
        )
    return Luks2Header(
        uuid=chosen.uuid,
        label=chosen.label,
        seqid=chosen.seqid,
        hdr_size=chosen.hdr_size,
        metadata=chosen.metadata,
        subsystem=chosen.subsystem,
    )


def _peek(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _claimed_hdr_size(f: BinaryIO) -> int:
    """The hdr_size a damaged primary claims, if plausible; used only for error text."""
    raw = _peek(f, 8, 8)
    if len(raw) == 8:
        (size,) = struct.unpack(">Q", raw)
        if size in _HDR_SIZES:
            return int(size)
    return DEFAULT_HDR_SIZE


def _parse_copy(f: BinaryIO, offset: int, magic: bytes) -> _Copy:
    """Validate one header copy at ``offset``; raise _BadCopy with the reason."""
    binary = _peek(f, offset, _BINARY_HEADER_SIZE)
    if len(binary) < _BINARY_HEADER_SIZE:
        raise _BadCopy(f"file too short for a header copy at offset {offset}")
    (
        got_magic,
        version,
        hdr_size,
        seqid,
        raw_label,
        raw_alg,
        _salt,
        raw_uuid,
        raw_subsystem,
        hdr_offset,
        _padding,
        csum,
    ) = _BINARY.unpack_from(binary)
    # "Binary header": magic differs per copy so a copy cannot be mistaken for the other.
    if got_magic != magic:
        raise _BadCopy(f"no LUKS2 magic at offset {offset}")
    if version != _LUKS2_VERSION:
        raise _BadCopy(f"version {version}, expected {_LUKS2_VERSION}")
    if hdr_size not in _HDR_SIZES:
        raise _BadCopy(f"invalid hdr_size {hdr_size}")
    if hdr_offset != offset:
        raise _BadCopy(f"hdr_offset {hdr_offset} does not match its position {offset}")
    if magic == _MAGIC_SECONDARY and hdr_size != offset:
        # The secondary copy starts right after the primary, i.e. at hdr_size.
        raise _BadCopy(f"hdr_size {hdr_size} does not match the secondary's offset {offset}")
    alg = _c_string(raw_alg, "checksum_alg")
    if alg not in _CHECKSUM_ALGS:
        raise _BadCopy(f"unsupported checksum algorithm {alg!r}")

    json_area = f.read(hdr_size - _BINARY_HEADER_SIZE)
    if len(json_area) != hdr_size - _BINARY_HEADER_SIZE:
        raise _BadCopy(f"file too short for the JSON area at offset {offset}")
    # "Binary header": the checksum covers the binary header (csum field zeroed) and
    # the JSON area, i.e. all hdr_size bytes of this copy.
    hasher = hashlib.new(alg)
    hasher.update(binary[:_CSUM_OFFSET])
    hasher.update(bytes(_CSUM_SIZE))
    hasher.update(binary[_CSUM_OFFSET + _CSUM_SIZE :])
    hasher.update(json_area)
    if not hmac.compare_digest(hasher.digest(), csum[: hasher.digest_size]):
        raise _BadCopy("checksum mismatch")

    # "JSON area": NUL-terminated JSON text, the rest of the area zero-filled.
    end = json_area.find(b"\0")
    if end < 0:
        raise _BadCopy("JSON area is not NUL-terminated")
    try:
        metadata = json.loads(
            json_area[:end].decode("utf-8"),
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as exc:
        raise _BadCopy(f"JSON metadata does not parse ({type(exc).__name__})") from None
    _validate_metadata(metadata, hdr_size)
    return _Copy(
        offset=offset,
        seqid=seqid,
        hdr_size=hdr_size,
        label=_c_string(raw_label, "label"),
        uuid=_c_string(raw_uuid, "uuid"),
        subsystem=_c_string(raw_subsystem, "subsystem"),
        metadata=metadata,
    )


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


# --------------------------------------------------------------------------- write


def write_header(
    path: str | os.PathLike[str],
    header: Luks2Header,
    *,
    copy_keyslots_from: str | os.PathLike[str] | None = None,
) -> None:
    """Atomically (re)write ``path`` with both header copies of ``header``.

    The new file is built beside the target, fsynced, renamed over it and the directory
    fsynced, so a crash leaves either the old or the new header, never a mix. Both
    copies get seqid ``header.seqid`` and a fresh random salt each. The file is sized
    to the full LUKS2 layout (two copies + keyslots area) but written sparse.

    Keyslot *material* is not part of ``header``: it lives in the keyslots area of the
    file it was read from. Pass that file as ``copy_keyslots_from`` (it may be ``path``
    itself) and exactly the areas that ``metadata["keyslots"]`` references are copied,
    so the cost does not depend on the disk size. Writing a header that has keyslots
    without a source is refused, because it would silently destroy those keyslots.

    Callers must serialise writers of the same header (cryptsetup included).
    """
    target = os.fspath(path)
    hdr_size = header.hdr_size
    if hdr_size not in _HDR_SIZES:
        raise HeaderError(f"invalid LUKS2 hdr_size {hdr_size}; it must be one of {_HDR_SIZES}")
    try:
        _validate_metadata(header.metadata, hdr_size)
    except _BadCopy as exc:
        raise HeaderError(f"refusing to write an invalid LUKS2 header: {exc}") from None
    _check_c_string(header.label, _LABEL_SIZE, "label")
    _check_c_string(header.subsystem, _LABEL_SIZE, "subsystem")
    _check_c_string(header.uuid, _UUID_SIZE, "uuid")
    if isinstance(header.seqid, bool) or not 0 <= header.seqid < 2**64:
        raise HeaderError(f"invalid LUKS2 seqid {header.seqid!r}")
    json_area = _encode_json_area(header.metadata, hdr_size)
    total_size = 2 * hdr_size + header.keyslots_size
    areas = _keyslot_areas(header.metadata, hdr_size, total_size)
    if areas and copy_keyslots_from is None:
        raise HeaderError(
            f"the header has {len(areas)} keyslot area(s) whose key material lives in the "
            "header file it was read from; pass copy_keyslots_from=<that file> so the "
            "keyslots are not destroyed"
        )
    source = os.fspath(copy_keyslots_from) if copy_keyslots_from is not None else None
    if source is not None and areas:
        # Refuse to graft keyslot material from an unrelated header: it would decrypt
        # to garbage and the keyslot would be silently lost.
        source_uuid = read_header(source).uuid
        if source_uuid != header.uuid:
            raise HeaderError(
                f"cannot copy keyslots from {source}: its UUID {source_uuid} differs from "
                f"the header being written ({header.uuid})"
            )

    primary = _seal_copy(header, _MAGIC_PRIMARY, 0, json_area)
    secondary = _seal_copy(header, _MAGIC_SECONDARY, hdr_size, json_area)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(primary)
            out.write(secondary)
            if source is not None and areas:
                _copy_areas(source, out, areas)
            # Sparse: the unused keyslots area is a hole, so the file costs ~32 KiB.
            out.truncate(total_size)
            _copy_ownership(target, out.fileno())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _seal_copy(header: Luks2Header, magic: bytes, offset: int, json_area: bytes) -> bytes:
    """One header copy (binary header + JSON area) with its checksum filled in."""
    fields = _BINARY.pack(
        magic,
        _LUKS2_VERSION,
        header.hdr_size,
        header.seqid,
        header.label.encode("utf-8"),
        _CHECKSUM_ALG.encode("ascii"),
        # "Binary header": salt must differ between the copies so they never checksum
        # alike; cryptsetup regenerates it on every write too.
        secrets.token_bytes(_SALT_SIZE),
        header.uuid.encode("utf-8"),
        header.subsystem.encode("utf-8"),
        offset,
        bytes(184),
        bytes(_CSUM_SIZE),
    )
    blob = bytearray(fields.ljust(_BINARY_HEADER_SIZE, b"\0") + json_area)
    digest = hashlib.new(_CHECKSUM_ALG, blob).digest()
    blob[_CSUM_OFFSET : _CSUM_OFFSET + len(digest)] = digest
    return bytes(blob)


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


def _keyslot_areas(metadata: dict[str, Any], hdr_size: int, total: int) -> list[tuple[int, int]]:
    """(offset, size) of every keyslot's binary area, checked to lie in the keyslots area."""
    areas: list[tuple[int, int]] = []
    for slot_id, slot in _sorted_objects(metadata["keyslots"]):
        area = slot.get("area")
        if not isinstance(area, dict):
            raise HeaderError(f"LUKS2 keyslot {slot_id} has no area object; the header is corrupt")
        offset = _decimal(area.get("offset"), f"keyslot {slot_id} area offset")
        size = _decimal(area.get("size"), f"keyslot {slot_id} area size")
        # "Keyslots area": binary keyslot data lives after both header copies and
        # inside config.keyslots_size.
        if offset < 2 * hdr_size or offset + size > total:
            raise HeaderError(
                f"LUKS2 keyslot {slot_id} area [{offset}, {offset + size}) lies outside the "
                f"keyslots area [{2 * hdr_size}, {total}); the header is corrupt"
            )
        if size:
            areas.append((offset, size))
    return areas


def _copy_areas(source: str, out: BinaryIO, areas: Iterable[tuple[int, int]]) -> None:
    chunk = 1024 * 1024
    with open(source, "rb") as src:
        for offset, size in areas:
            src.seek(offset)
            out.seek(offset)
            remaining = size
            while remaining:
                data = src.read(min(chunk, remaining))
                if not data:
                    raise HeaderError(
                        f"{source} ends inside a keyslot area at offset {offset}; "
                        "the header file is truncated; restore it from a backup"
                    )
                out.write(data)
                remaining -= len(data)


def _copy_ownership(target: str, fd: int) -> None:
    """Keep the mode (and, when permitted, owner) of the header being replaced.

    mkstemp creates 0600, which is the right default for a file holding wrapped keys;
    an operator's deliberate chmod/chown of an existing header is kept.
    """
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return
    os.fchmod(fd, st.st_mode & 0o7777)
    with contextlib.suppress(PermissionError):
        os.fchown(fd, st.st_uid, st.st_gid)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable: fsync the directory entry, as POSIX requires."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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


def _c_string(raw: bytes, what: str) -> str:
    """A NUL-terminated string field of the binary header."""
    try:
        return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _BadCopy(f"{what} field is not valid UTF-8") from None


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
