"""Reading and atomically (re)writing a detached LUKS2 header file."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable
from typing import Any, BinaryIO

from vmcrypt.disk.exceptions import HeaderError
from vmcrypt.disk.luks2.binary import (
    _MAGIC_PRIMARY,
    _MAGIC_SECONDARY,
    _claimed_hdr_size,
    _Copy,
    _parse_copy,
    _peek,
    _seal_copy,
)
from vmcrypt.disk.luks2.constants import _HDR_SIZES, _LABEL_SIZE, _UUID_SIZE
from vmcrypt.disk.luks2.header import Luks2Header, _check_c_string
from vmcrypt.disk.luks2.metadata import (
    _BadCopy,
    _decimal,
    _encode_json_area,
    _sorted_objects,
    _validate_metadata,
)

# The package's name ("vmcrypt.disk.luks2"), as before the split: callers such as
# the CLI listen for header warnings on luks2.__name__.
_log = logging.getLogger(__package__)


# ---------------------------------------------------------------------------- read


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
