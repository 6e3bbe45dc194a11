"""Random-access disks: a raw file, or an XTS-AES-256 data file with a detached LUKS2 header.

Both kinds share one class, :class:`Disk`; what differs is the sector codec. Reads and
writes take any byte offset and length: partial sectors of an encrypted disk are read,
decrypted, merged and re-encrypted under a lock (read-modify-write), whole sectors go
straight through in pieces of at most :data:`PIECE` bytes, so memory stays bounded for
streams of any size. All I/O is positional (``pread``/``pwrite``), so one open disk can
serve many threads — the shape an NBD export needs later.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np

from vmcrypt.crypto.keysafe import KeySafe
from vmcrypt.disk import luks2
from vmcrypt.disk.codec import SECTOR, RawCodec, SectorCodec, XtsCodec
from vmcrypt.disk.exceptions import ConversionInProgress, DiskError, HeaderError, WrongKeyError
from vmcrypt.disk.files import (
    StrPath,
    fsync_dir,
    header_path,
    journal_path,
    lock_file,
    no_space,
    pread_exact,
    pwrite_all,
)
from vmcrypt.exceptions import UsageError

__all__ = [
    "PIECE",
    "SMALL_IO",
    "Disk",
    "Progress",
    "check_dek",
    "create_encrypted",
    "create_raw",
    "is_encrypted",
    "open_encrypted",
    "open_raw",
    "read_header",
    "read_keysafe",
]

#: Largest buffer one read or write step uses.
PIECE = 16 * 1024 * 1024
#: Reads and aligned writes up to this size take the lean per-sector path.
SMALL_IO = 8 * SECTOR
#: Progress callbacks get (bytes done, bytes total).
Progress = Callable[[int, int], None]


class Disk:
    """An open disk. Use :func:`open_encrypted`, :func:`open_raw` or the create functions."""

    def __init__(
        self,
        path: Path,
        fd: int,
        codec: SectorCodec,
        *,
        writable: bool,
        header: luks2.Luks2Header | None = None,
    ) -> None:
        self.path = path
        self._fd = fd
        self._codec = codec
        self._writable = writable
        self.header = header
        self._lock = threading.Lock()
        self._size = os.fstat(fd).st_size
        if codec.encrypted and self._size % SECTOR:
            os.close(fd)
            raise DiskError(
                f"{path}: data file size {self._size} is not a multiple of {SECTOR} bytes; "
                "it is not a vmcrypt data file or it was truncated"
            )

    # -- properties -------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Logical size in bytes (the data file's size: data offset is 0)."""
        return self._size

    @property
    def encrypted(self) -> bool:
        return self._codec.encrypted

    @property
    def keysafe(self) -> KeySafe | None:
        """The keySafe stored in the header's vmcrypt token (None for raw or foreign disks)."""
        if self.header is None or self.header.keysafe is None:
            return None
        return KeySafe.from_dict(self.header.keysafe)

    # -- I/O ----------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; the range must lie inside the disk."""
        self._check_range(offset, length)
        if isinstance(self._codec, XtsCodec) and 0 < length <= SMALL_IO:
            # Lean path for random small reads: bytes in, bytes out, no numpy.
            first = offset // SECTOR
            last = (offset + length - 1) // SECTOR + 1
            stored = os.pread(self._fd, (last - first) * SECTOR, first * SECTOR)
            if len(stored) != (last - first) * SECTOR:
                raise DiskError(f"{self.path}: unexpected end of data file")
            plain = self._codec.plain_bytes(stored, first)
            skip = offset - first * SECTOR
            return plain[skip : skip + length]
        out = bytearray(length)
        self.readinto(offset, out)
        return bytes(out)

    def readinto(self, offset: int, out: bytearray | memoryview) -> None:
        """Fill ``out`` with the bytes at ``offset``."""
        view = memoryview(out).cast("B")
        self._check_range(offset, len(view))
        if not self._codec.encrypted:
            self._pread_exact(view, offset)
            return
        pos = 0
        while pos < len(view):
            start = offset + pos
            first = start // SECTOR
            last = min((offset + len(view) - 1) // SECTOR + 1, first + PIECE // SECTOR)
            buf = self._load(first, last)
            skip = start - first * SECTOR
            take = min(len(view) - pos, (last - first) * SECTOR - skip)
            view[pos : pos + take] = buf[skip : skip + take].data
            pos += take

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; partial sectors are merged with what is there."""
        self._check_writable()
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view))
        if not self._codec.encrypted:
            self._pwrite_all(view, offset)
            return
        end = offset + len(view)
        if (
            isinstance(self._codec, XtsCodec)
            and 0 < len(view) <= SMALL_IO
            and offset % SECTOR == 0
            and end % SECTOR == 0
        ):
            # Lean path for aligned small writes: no read-modify-write, no numpy. Still
            # under the lock, so it cannot slip between another writer's read and write.
            stored = self._codec.stored_bytes(bytes(view), offset // SECTOR)
            with self._lock:
                self._pwrite_all(memoryview(stored), offset)
            return
        pos = offset
        while pos < end:
            first = pos // SECTOR
            last = min((end - 1) // SECTOR + 1, first + PIECE // SECTOR)
            piece_end = min(end, last * SECTOR)
            with self._lock:
                if pos % SECTOR or piece_end % SECTOR:
                    buf = self._load(first, last, edges_only=True)
                else:
                    buf = np.empty((last - first) * SECTOR, dtype=np.uint8)
                skip = pos - first * SECTOR
                buf[skip : skip + piece_end - pos] = np.frombuffer(
                    view[pos - offset : piece_end - offset], dtype=np.uint8
                )
                self._codec.to_stored(buf, first)
                self._pwrite_all(buf.data, first * SECTOR)
            pos = piece_end

    def flush(self) -> None:
        """Make every write so far durable (fdatasync)."""
        os.fdatasync(self._fd)

    def resize(self, new_size: int) -> None:
        """Grow the disk; new space reads as zeros (holes). Shrinking is refused."""
        self._check_writable()
        if new_size % SECTOR:
            raise UsageError(f"a disk size must be a multiple of {SECTOR} bytes")
        if new_size < self._size:
            raise UsageError(
                "shrinking a disk would destroy data; vmcrypt disks can only grow"
            )
        try:
            os.ftruncate(self._fd, new_size)
            os.fsync(self._fd)
        except OSError as exc:
            raise no_space(exc, str(self.path)) from None
        self._size = new_size

    def close(self) -> None:
        """Flush and release the file; the disk object is unusable afterwards."""
        if self._fd >= 0:
            try:
                if self._writable:
                    os.fdatasync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Disk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------
    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise UsageError(
                f"byte range {offset}+{length} lies outside the disk (size {self._size})"
            )

    def _check_writable(self) -> None:
        if not self._writable:
            raise UsageError(f"{self.path} was opened read-only")

    def _load(self, first: int, last: int, *, edges_only: bool = False) -> np.ndarray:
        """Plaintext of sectors [first, last); with ``edges_only`` only the two ends."""
        buf = np.empty((last - first) * SECTOR, dtype=np.uint8)
        if not edges_only:
            self._pread_exact(buf.data, first * SECTOR)
            self._codec.to_plain(buf, first)
            return buf
        for sector in sorted({first, last - 1}):
            part = buf[(sector - first) * SECTOR : (sector - first + 1) * SECTOR]
            self._pread_exact(part.data, sector * SECTOR)
            self._codec.to_plain(part, sector)
        return buf

    def _pread_exact(self, view: memoryview, offset: int) -> None:
        pread_exact(self._fd, view, offset, str(self.path))

    def _pwrite_all(self, view: memoryview, offset: int) -> None:
        pwrite_all(self._fd, view, offset, str(self.path))


# -- opening and creating -------------------------------------------------------------------


def is_encrypted(path: StrPath) -> bool:
    """A disk is encrypted iff its detached header exists (or a conversion is under way)."""
    return header_path(path).exists()


def read_header(path: StrPath) -> luks2.Luks2Header:
    """Read the detached header of the disk whose data file is ``path``."""
    hdr = header_path(path)
    if not hdr.exists():
        raise HeaderError(
            f"{path} has no LUKS2 header ({hdr.name} is missing): "
            "it is an unencrypted disk, or the header was moved"
        )
    return luks2.read_header(hdr)


def read_keysafe(path: StrPath) -> KeySafe | None:
    """The keySafe of an encrypted disk, without any key (None for a foreign LUKS2 disk)."""
    header = read_header(path)
    return KeySafe.from_dict(header.keysafe) if header.keysafe is not None else None


def _check_no_journal(path: StrPath) -> None:
    if journal_path(path).exists():
        raise ConversionInProgress(
            f"a conversion of {path} was interrupted; run `vmcrypt disk resume {path}` "
            "to finish it before opening the disk"
        )


def _open_fd(path: StrPath, writable: bool) -> int:
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except FileNotFoundError:
        raise DiskError(f"{path}: no such data file") from None
    except OSError as exc:
        raise DiskError(f"cannot open {path}: {exc.strerror}") from None
    try:
        lock_file(fd, path, exclusive=writable)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_dek(header: luks2.Luks2Header, dek: bytes, path: StrPath) -> None:
    """Refuse a DEK that fails the header's digest, before any data is touched."""
    if not header.verify_volume_key(dek):
        raise WrongKeyError(
            f"the key does not open {path}: it does not match the digest in its header; "
            "check the KEK (key provider and key ID)"
        )


def open_encrypted(
    path: StrPath, *, dek: bytes, writable: bool = True, threads: int | None = None
) -> Disk:
    """Open an encrypted disk with its DEK; a DEK that fails the header digest is refused."""
    _check_no_journal(path)
    header = read_header(path)
    _check_segment(header, path)
    check_dek(header, dek, path)
    fd = _open_fd(path, writable)
    return Disk(Path(path), fd, XtsCodec(dek, threads=threads), writable=writable, header=header)


def open_raw(path: StrPath, *, writable: bool = True) -> Disk:
    """Open an unencrypted disk (a plain raw file)."""
    _check_no_journal(path)
    if is_encrypted(path):
        raise UsageError(f"{path} is encrypted; open it with its key")
    return Disk(Path(path), _open_fd(path, writable), RawCodec(), writable=writable)


def create_raw(path: StrPath, *, size: int) -> Disk:
    """Create an unencrypted, sparse disk of ``size`` bytes."""
    _check_new(path, size)
    fd = _create_data(path, size)
    return Disk(Path(path), fd, RawCodec(), writable=True)


def create_encrypted(
    path: StrPath,
    *,
    size: int,
    dek: bytes,
    keysafe: KeySafe,
    label: str = "",
    eager_zero: bool = False,
    progress: Progress | None = None,
) -> Disk:
    """Create an encrypted disk: thin by default, or with every sector written (eager-zeroed)."""
    _check_new(path, size)
    if header_path(path).exists():
        raise UsageError(f"{header_path(path)} already exists; refusing to overwrite a header")
    header = luks2.build_header(volume_key=dek, keysafe=keysafe.to_dict(), label=label)
    fd = _create_data(path, size)
    disk = Disk(Path(path), fd, XtsCodec(dek), writable=True, header=header)
    try:
        if eager_zero:
            zeros = bytes(PIECE)
            for offset in range(0, size, PIECE):
                disk.write(offset, zeros[: min(PIECE, size - offset)])
                if progress:
                    progress(min(size, offset + PIECE), size)
            disk.flush()
        # The header goes last: until it exists the file is only an unfinished raw file.
        luks2.write_header(header_path(path), header)
    except BaseException:
        disk.close()
        Path(path).unlink(missing_ok=True)
        raise
    return disk


def _check_new(path: StrPath, size: int) -> None:
    if size <= 0 or size % SECTOR:
        raise UsageError(f"a disk size must be a positive multiple of {SECTOR} bytes, got {size}")
    if Path(path).exists():
        raise UsageError(f"{path} already exists; refusing to overwrite it")


def _create_data(path: StrPath, size: int) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise no_space(exc, str(path)) from None
    try:
        lock_file(fd, path, exclusive=True)
        os.ftruncate(fd, size)
        fsync_dir(path)
    except OSError as exc:
        os.close(fd)
        Path(path).unlink(missing_ok=True)
        raise no_space(exc, str(path)) from None
    return fd


def _check_segment(header: luks2.Luks2Header, path: StrPath) -> None:
    if header.sector_size != SECTOR or header.data_offset != 0:
        raise HeaderError(
            f"{path}: vmcrypt reads LUKS2 disks with {SECTOR}-byte sectors at data offset 0; "
            f"this one has {header.sector_size}-byte sectors at offset {header.data_offset}"
        )
