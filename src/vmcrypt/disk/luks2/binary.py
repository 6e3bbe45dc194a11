"""One LUKS2 header copy on disk: the binary header layout, packing, parsing, checksums."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from vmcrypt.disk.luks2.constants import _BINARY_HEADER_SIZE, _HDR_SIZES, DEFAULT_HDR_SIZE
from vmcrypt.disk.luks2.header import Luks2Header
from vmcrypt.disk.luks2.metadata import (
    _BadCopy,
    _finite_float,
    _reject_constant,
    _validate_metadata,
)

_MAGIC_PRIMARY = b"LUKS\xba\xbe"
_MAGIC_SECONDARY = b"SKUL\xba\xbe"
_LUKS2_VERSION = 2
_CHECKSUM_ALG = "sha256"
# Checksum algorithms accepted on read ("Binary header": checksum_alg, e.g. "sha256").
_CHECKSUM_ALGS = frozenset({"sha1", "sha256", "sha512"})

# "Binary header" layout (big-endian, 512 bytes of fields, then zero padding to 4096):
#   magic[6] version:u16 hdr_size:u64 seqid:u64 label[48] checksum_alg[32] salt[64]
#   uuid[40] subsystem[48] hdr_offset:u64 _padding[184] csum[64] _padding4096[7*512]
_BINARY = struct.Struct(">6sHQQ48s32s64s40s48sQ184s64s")
_CSUM_OFFSET = 448
_CSUM_SIZE = 64
_SALT_SIZE = 64


@dataclass(frozen=True)
class _Copy:
    offset: int
    seqid: int
    hdr_size: int
    label: str
    uuid: str
    subsystem: str
    metadata: dict[str, Any]


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


def _c_string(raw: bytes, what: str) -> str:
    """A NUL-terminated string field of the binary header."""
    try:
        return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _BadCopy(f"{what} field is not valid UTF-8") from None
