"""In-place, crash-safe, resumable conversions: encrypt, decrypt, deep re-key; and the
O(1) shallow re-key.

Each conversion walks the data file in chunks of :data:`CHUNK` bytes and rewrites every
chunk in place (no second copy of the disk: the only extra space is the journal, at most
512 KiB). Chunks are computed by sector worker processes and written by one writer
thread, one *range* of up to two chunks at a time (:mod:`vmcrypt.disk.pipeline`). The
order of durable steps is what makes it safe:

1. journal: "range k is in flight, these are its old sectors' fingerprints" (fsync'd);
2. the range's new bytes are written over the old ones and fdatasync'd;
3. the next journal update moves the in-flight mark on, which also says "range k done".

After the last chunk the journal says ``done == size`` and the header changes (written
for encrypt and deep re-key, removed for decrypt) before the journal is deleted. Killed
at any instant, :func:`resume` finds the journal, repairs the in-flight chunk sector by
sector (see :mod:`vmcrypt.disk.journal`), and carries on; the logical content is intact
at every instant.

DEKs are parameters, never looked up here: ``resume`` takes a resolver that turns a
keySafe into its DEK (the CLI unwraps with a KEK file; a host uses its KEK cache).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from vmcrypt.crypto.keys import constant_time_equal
from vmcrypt.crypto.keysafe import KeySafe
from vmcrypt.disk import luks2
from vmcrypt.disk.codec import SECTOR, RawCodec, SectorCodec, XtsCodec, transcode
from vmcrypt.disk.container import Progress, check_dek, read_header
from vmcrypt.disk.exceptions import (
    ConversionInProgress,
    DiskError,
    JournalError,
    WrongKeyError,
)
from vmcrypt.disk.files import (
    StrPath,
    fsync_dir,
    header_path,
    journal_path,
    lock_file,
    pread_exact,
    pwrite_all,
    remove_stale_temporaries,
)
from vmcrypt.disk.journal import Journal, dek_digest, fingerprints, verify_dek_digest
from vmcrypt.disk.pipeline import CHUNK, convert_chunks
from vmcrypt.exceptions import UsageError

__all__ = [
    "CHUNK",
    "DekResolver",
    "decrypt_disk",
    "deep_rekey",
    "encrypt_disk",
    "resume",
    "shallow_rekey",
]

#: Turns a keySafe into its plaintext DEK (unwrapping it with the right KEK).
DekResolver = Callable[[KeySafe], bytes]


# -- entry points --------------------------------------------------------------------------


def encrypt_disk(
    path: StrPath,
    *,
    dek: bytes,
    keysafe: KeySafe,
    label: str = "",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Encrypt a raw disk in place under ``dek``; ``keysafe`` holds ``dek`` wrapped."""
    _check_idle(path)
    if header_path(path).exists():
        raise UsageError(f"{path} is already encrypted")
    size = _data_size(path)
    if size % SECTOR:
        raise UsageError(
            f"{path} is {size} bytes, not a multiple of {SECTOR}; grow it to a whole number "
            "of sectors before encrypting"
        )
    XtsCodec(dek)  # validates the key before anything is written
    journal = Journal(
        path=journal_path(path),
        operation="encrypt",
        size=size,
        new_keysafe=keysafe,
        new_dek_digest=dek_digest(dek),
        label=label,
    )
    _run(path, journal, old_dek=None, new_dek=dek, progress=progress, cancel=cancel)


def decrypt_disk(
    path: StrPath,
    *,
    dek: bytes,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Decrypt an encrypted disk in place; afterwards it is a plain raw file."""
    header, keysafe = _current(path, dek)
    journal = Journal(
        path=journal_path(path),
        operation="decrypt",
        size=_data_size(path),
        old_keysafe=keysafe,
        label=header.label,
    )
    _run(path, journal, old_dek=dek, new_dek=None, progress=progress, cancel=cancel)


def deep_rekey(
    path: StrPath,
    *,
    old_dek: bytes,
    new_dek: bytes,
    new_keysafe: KeySafe,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Re-encrypt every sector under a new DEK; the new keySafe replaces the old.

    Any passphrase keyslot added with cryptsetup held the *old* volume key, so the new
    header has none: add a recovery keyslot again afterwards if you use one.
    """
    header, keysafe = _current(path, old_dek)
    if constant_time_equal(old_dek, new_dek):
        raise UsageError("a deep re-key needs a new DEK, different from the current one")
    XtsCodec(new_dek)
    journal = Journal(
        path=journal_path(path),
        operation="deep-rekey",
        size=_data_size(path),
        old_keysafe=keysafe,
        new_keysafe=new_keysafe,
        new_dek_digest=dek_digest(new_dek),
        label=header.label,
    )
    _run(path, journal, old_dek=old_dek, new_dek=new_dek, progress=progress, cancel=cancel)


def shallow_rekey(path: StrPath, *, dek: bytes, new_keysafe: KeySafe) -> None:
    """Replace the keySafe (the DEK re-wrapped under a new KEK): O(1), atomic.

    ``dek`` is checked against the header digest first, so a keySafe for another DEK can
    never be written. The new header is written beside the old one, fsync'd and renamed
    over it; keyslots added by cryptsetup are carried over.
    """
    _check_idle(path)
    with _locked(path):
        header = read_header(path)
        check_dek(header, dek, path)
        updated = luks2.with_keysafe(header, new_keysafe.to_dict())
        luks2.write_header(header_path(path), updated, copy_keyslots_from=header_path(path))


def pending(path: StrPath) -> Journal | None:
    """The journal of an unfinished conversion, or None."""
    jp = journal_path(path)
    return Journal.load(jp) if jp.exists() else None


def resume(
    path: StrPath,
    *,
    resolve_dek: DekResolver,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> str | None:
    """Finish an interrupted conversion; return its operation name, or None if none was due."""
    journal = pending(path)
    if journal is None:
        return None
    old_dek = new_dek = None
    if journal.operation in ("decrypt", "deep-rekey"):
        if journal.old_keysafe is None:
            raise JournalError(
                f"the journal of {path} has no keySafe for the current key; "
                "resume it with the tool that started it"
            )
        old_dek = resolve_dek(journal.old_keysafe)
        if journal.done < journal.size or journal.inflight_first is not None:
            check_dek(read_header(path), old_dek, path)
    if journal.operation in ("encrypt", "deep-rekey"):
        if journal.new_keysafe is None or journal.new_dek_digest is None:
            raise JournalError(
                f"the journal of {path} lacks the new keySafe of its {journal.operation}; "
                "it is corrupt — restore it from a backup"
            )
        new_dek = resolve_dek(journal.new_keysafe)
        if not verify_dek_digest(new_dek, journal.new_dek_digest):
            raise WrongKeyError(
                f"the key given for the new keySafe of {path} is wrong; nothing was changed"
            )
    _run(path, journal, old_dek=old_dek, new_dek=new_dek, progress=progress, cancel=cancel)
    return journal.operation


# -- the engine ----------------------------------------------------------------------------


def _run(
    path: StrPath,
    journal: Journal,
    *,
    old_dek: bytes | None,
    new_dek: bytes | None,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> None:
    src: SectorCodec = XtsCodec(old_dek) if old_dek is not None else RawCodec()
    dst: SectorCodec = XtsCodec(new_dek) if new_dek is not None else RawCodec()
    with _locked(path) as fd:
        if os.fstat(fd).st_size != journal.size:
            raise JournalError(
                f"{path} is {os.fstat(fd).st_size} bytes but its journal expects "
                f"{journal.size}; the data file was changed outside vmcrypt"
            )
        if not journal.path.exists():
            journal.save()
        if journal.inflight_first is not None:
            _repair_inflight(fd, journal, src, dst)
        convert_chunks(
            fd, path=path, journal=journal, keys=(old_dek, new_dek), src=src, dst=dst,
            progress=progress, cancel=cancel,
        )
        journal.inflight_first = None
        journal.inflight_fp = None
        journal.save()
        _finish(path, journal, new_dek)
        journal.remove()


def _repair_inflight(fd: int, journal: Journal, src: SectorCodec, dst: SectorCodec) -> None:
    """Bring the in-flight chunk to the new state, sector by sector, after a crash."""
    assert journal.inflight_first is not None and journal.inflight_fp is not None
    first = journal.inflight_first
    sectors = journal.inflight_sectors
    offset = first * SECTOR
    now = np.empty(sectors * SECTOR, dtype=np.uint8)
    pread_exact(fd, now.data, offset, str(journal.path))
    expected = journal.inflight_fp
    is_old = (fingerprints(now) == expected).all(axis=1)
    backwards = now.copy()
    transcode(backwards, first, dst, src)
    is_new = (fingerprints(backwards) == expected).all(axis=1) & ~is_old
    torn = ~(is_old | is_new)
    if torn.any():
        bad = first + int(np.flatnonzero(torn)[0])
        raise JournalError(
            f"sector {bad} of {journal.path.name[: -len('.journal')]} matches neither its old "
            "nor its new content (a torn write below sector size); restore the disk from "
            "a backup"
        )
    forward = now.copy()
    transcode(forward, first, src, dst)
    result = np.where(is_old.repeat(SECTOR), forward, now)
    pwrite_all(fd, result.data, offset, str(journal.path))
    os.fdatasync(fd)
    journal.done = offset + sectors * SECTOR


def _finish(path: StrPath, journal: Journal, new_dek: bytes | None) -> None:
    """Make the header match the data: written for encrypt/deep re-key, gone for decrypt."""
    hdr = header_path(path)
    if journal.operation == "decrypt":
        hdr.unlink(missing_ok=True)
        fsync_dir(hdr)
        return
    assert new_dek is not None and journal.new_keysafe is not None
    header = luks2.build_header(
        volume_key=new_dek, keysafe=journal.new_keysafe.to_dict(), label=journal.label
    )
    luks2.write_header(hdr, header)


# -- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: StrPath) -> Iterator[int]:
    """Hold the disk's exclusive lock: no writer and no other conversion meanwhile."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise DiskError(f"cannot open {path}: {exc.strerror}") from None
    try:
        lock_file(fd, path, exclusive=True)
        remove_stale_temporaries(path)
        yield fd
    finally:
        os.close(fd)


def _current(path: StrPath, dek: bytes) -> tuple[luks2.Luks2Header, KeySafe | None]:
    """The header and keySafe of an idle encrypted disk whose DEK is ``dek``."""
    _check_idle(path)
    header = read_header(path)
    check_dek(header, dek, path)
    keysafe = KeySafe.from_dict(header.keysafe) if header.keysafe is not None else None
    return header, keysafe


def _check_idle(path: StrPath) -> None:
    if journal_path(path).exists():
        raise ConversionInProgress(
            f"a conversion of {path} is unfinished; run `vmcrypt disk resume {path}` first"
        )


def _data_size(path: StrPath) -> int:
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        raise DiskError(f"{path}: no such data file") from None
