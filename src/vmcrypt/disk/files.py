"""Where the files of a disk live, and the durable-write helpers they share.

A disk is named by its data file ``NAME.img``:

- ``NAME.img``          the data: raw plaintext, or XTS ciphertext at offset 0;
- ``NAME.img.luks``     the detached LUKS2 header, present iff the disk is encrypted;
- ``NAME.img.journal``  present only while a conversion is unfinished.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from vmcrypt.disk.exceptions import DiskError, NoSpaceError

__all__ = [
    "atomic_write",
    "fsync_dir",
    "header_path",
    "journal_path",
    "lock_file",
    "no_space",
    "pread_exact",
    "pwrite_all",
    "remove_stale_temporaries",
    "start_writeback",
]

StrPath = str | os.PathLike[str]


def header_path(data: StrPath) -> Path:
    """The detached LUKS2 header that belongs to a data file."""
    return Path(os.fspath(data) + ".luks")


def journal_path(data: StrPath) -> Path:
    """The conversion journal that belongs to a data file."""
    return Path(os.fspath(data) + ".journal")


def fsync_dir(path: StrPath) -> None:
    """Make a rename or unlink in ``path``'s directory durable."""
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def no_space(exc: OSError, what: str) -> DiskError:
    """Turn ENOSPC into a NoSpaceError that says what to do; keep other errors as DiskError."""
    if exc.errno == errno.ENOSPC:
        return NoSpaceError(
            f"no space left on the file system while writing {what}; "
            "free some space and retry (nothing was lost)"
        )
    return DiskError(f"cannot write {what}: {exc.strerror or exc}")


def atomic_write(path: StrPath, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise no_space(exc, str(path)) from None


def lock_file(fd: int, path: StrPath, *, exclusive: bool) -> None:
    """Take a non-blocking flock so two processes never convert or write one disk."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DiskError(
            f"{path} is in use by another vmcrypt process; wait for it to finish"
        ) from None


def pread_exact(fd: int, view: memoryview, offset: int, what: str) -> None:
    """Fill ``view`` from ``offset``; a short file is a DiskError naming ``what``."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise DiskError(f"{what}: unexpected end of data file at byte {offset + done}")
        done += n


def pwrite_all(fd: int, view: memoryview, offset: int, what: str) -> None:
    """Write all of ``view`` at ``offset``; ENOSPC becomes a NoSpaceError naming ``what``."""
    done = 0
    try:
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
    except OSError as exc:
        raise no_space(exc, what) from None


_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """glibc's ``sync_file_range``, which Python's ``os`` module does not wrap."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: fdatasync alone does the work
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_sfr = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a just-written range to the device without waiting for it.

    A later fdatasync still decides durability; this only lets the device work while
    the next piece is copied into the page cache. Measured here, writing a 32 MiB range
    in 2 MiB pieces with this after each, then one fdatasync, was 1.3-2.5x faster than
    the writes followed by the fdatasync alone. Errors are left for that fdatasync to
    report.
    """
    if _sfr is not None:
        _sfr(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def remove_stale_temporaries(data: StrPath) -> None:
    """Delete temp files a killed process left beside a disk (journal and header updates).

    Only called while holding the disk's exclusive lock, so no live writer owns them.
    """
    path = Path(data)
    for pattern in (f".{path.name}.journal.tmp-*", f".{path.name}.luks.*.tmp"):
        for stale in path.parent.glob(pattern):
            stale.unlink(missing_ok=True)
