"""In-place, crash-safe, resumable conversions: encrypt, decrypt, deep re-key; and the
O(1) shallow re-key.

Each conversion walks the data file in chunks of :data:`CHUNK` bytes and rewrites every
chunk in place (no second copy of the disk: the only extra space is the journal, at most
512 KiB). Chunks are computed by sector worker processes (:mod:`vmcrypt.disk.workers`)
and written by one writer thread, one *range* of up to two chunks at a time. The order of
durable steps is what makes it safe:

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

import collections
import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmcrypt.crypto.keys import constant_time_equal
from vmcrypt.crypto.keysafe import KeySafe
from vmcrypt.disk import luks2, workers
from vmcrypt.disk.codec import SECTOR, RawCodec, SectorCodec, XtsCodec, transcode
from vmcrypt.disk.container import Progress, check_dek, read_header
from vmcrypt.disk.exceptions import (
    ConversionCancelled,
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
    start_writeback,
)
from vmcrypt.disk.journal import Journal, dek_digest, fingerprints, verify_dek_digest
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

#: Bytes computed per step: large enough to amortise per-call costs, small enough that a
#: batch's fingerprints (64 bytes per sector) keep the journal at most 512 KiB.
CHUNK = 16 * 1024 * 1024
#: Chunk buffers in flight without worker processes: one being transcoded, one being
#: written, the rest queued to absorb jitter between the two stages.
_BUFFERS = 4
#: With worker processes: one per worker computing, a batch being written, one queued
#: for the writer and one being read.
_POOL_BUFFERS = 6
#: Chunks the writer may make durable together: one journal record and one fdatasync for
#: 32 MiB instead of two of each (the in-flight range is then 8,192 sectors, a 512 KiB
#: journal).
_BATCH = 2
#: Bytes written between two writeback starts (see _pwrite_changed).
_WRITEBACK = 2 * 1024 * 1024
#: Conversions of less than this run in-process: starting the workers (~0.1 s) would
#: cost more than they save.
WORKERS_MIN_SIZE = 128 * 1024 * 1024
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
        _convert_chunks(
            fd, path=path, journal=journal, keys=(old_dek, new_dek), src=src, dst=dst,
            progress=progress, cancel=cancel,
        )
        journal.inflight_first = None
        journal.inflight_fp = None
        journal.save()
        _finish(path, journal, new_dek)
        journal.remove()


def _convert_chunks(
    fd: int,
    *,
    path: StrPath,
    journal: Journal,
    keys: tuple[bytes | None, bytes | None],
    src: SectorCodec,
    dst: SectorCodec,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> None:
    """Convert chunk after chunk: read and compute ahead while a writer makes them durable.

    The main thread reads chunk k+1 and hands it to a sector worker process (see
    :mod:`vmcrypt.disk.workers`; in-process when there is none) while a writer thread
    makes earlier chunks durable — journal record, data write, fdatasync — strictly in
    order. The writer takes up to :data:`_BATCH` chunks that are ready together under one
    journal record and one fdatasync; the journal invariant (a range is only marked in
    flight once everything before it is on disk) holds exactly as in a sequential loop.
    Buffers rotate, so memory stays at a fixed number of chunks.
    """
    size = journal.size
    if journal.done >= size:
        return
    lease: contextlib.AbstractContextManager[workers.Lease | None] = (
        workers.lease(CHUNK, _POOL_BUFFERS)
        if size - journal.done >= WORKERS_MIN_SIZE
        else contextlib.nullcontext()
    )
    with lease as lanes:
        buffers = (
            lanes.buffers if lanes is not None
            else [np.empty(CHUNK, dtype=np.uint8) for _ in range(_BUFFERS)]
        )
        pipeline = _Pipeline(fd, path=path, journal=journal, buffers=buffers, lanes=lanes,
                             progress=progress, cancel=cancel)
        pipeline.run(keys, src, dst)


@dataclass
class _Chunk:
    """One chunk on its way through the pipeline."""

    offset: int
    fps: np.ndarray  # fingerprints of its old stored sectors, for the journal
    data: np.ndarray  # a view of ``whole``, the chunk's length
    whole: np.ndarray  # the rotating buffer it lives in
    compute: _Compute
    unchanged: np.ndarray | None = None  # set once transcoded


class _Pipeline:
    """Reader (the caller's thread), compute (workers or in-line), writer (a thread)."""

    def __init__(
        self,
        fd: int,
        *,
        path: StrPath,
        journal: Journal,
        buffers: list[np.ndarray],
        lanes: workers.Lease | None,
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> None:
        self.fd = fd
        self.what = str(path)
        self.path = path
        self.journal = journal
        self.lanes = lanes
        self.progress = progress
        self.cancel = cancel
        self.free: queue.Queue[np.ndarray] = queue.Queue()
        for buf in buffers:
            self.free.put(buf)
        self.ready: queue.Queue[_Chunk | None] = queue.Queue(maxsize=2)
        self.pending: collections.deque[_Chunk] = collections.deque()
        self.failure: list[BaseException] = []

    def stopped(self) -> bool:
        return bool(self.failure) or (self.cancel is not None and self.cancel.is_set())

    def run(self, keys: tuple[bytes | None, bytes | None], src: SectorCodec,
            dst: SectorCodec) -> None:
        journal, size = self.journal, self.journal.size
        depth = max(1, self.lanes.workers if self.lanes is not None else 1)
        thread = threading.Thread(target=self.writer, name="vmcrypt-convert-writer",
                                  daemon=True)
        thread.start()
        offset = journal.done
        try:
            while offset < size and not self.stopped():
                length = min(CHUNK, size - offset)
                while len(self.pending) >= depth:
                    self.retire()
                whole = self.free.get()
                if self.failure:
                    break
                data = whole[:length]
                # pread, not mmap: a read-only map of the data file saved a copy (~5%
                # here) but turns an I/O error, or a hole on a full tmpfs, into SIGBUS
                # instead of an exception — measured: the no-space test died with signal 7.
                pread_exact(self.fd, data.data, offset, self.what)
                fps = fingerprints(data)
                job = (self.lanes.submit(data, offset // SECTOR, *keys)
                       if self.lanes is not None else None)
                self.pending.append(
                    _Chunk(offset, fps, data, whole, _Compute(job, self.lanes, src, dst))
                )
                if job is None:  # computed here and now, after the chunks before it
                    while self.pending:
                        self.retire()
                offset += length
            while self.pending:
                self.retire()
        finally:
            for chunk in self.pending:  # after an error: leave no worker holding a reply
                chunk.compute.abandon()
            self.ready.put(None)
            thread.join()
        if self.failure:
            raise self.failure[0]
        if journal.done < size:
            raise ConversionCancelled(
                f"{journal.operation} of {self.path} cancelled at {journal.percent:.0f}%; "
                f"the disk is consistent — run `vmcrypt disk resume {self.path}` to finish"
            )

    def retire(self) -> None:
        """Wait for the oldest chunk's compute and queue it for the writer, in order."""
        chunk = self.pending.popleft()
        chunk.unchanged = chunk.compute.result(self.fd, chunk.data, chunk.offset, self.what)
        self.ready.put(chunk)

    def writer(self) -> None:
        # Keeps draining after a failure or a cancel, so the producer never blocks on a
        # full queue; a chunk dropped here was never journaled, so nothing is lost.
        end = False
        while not end:
            item = self.ready.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < _BATCH:
                try:
                    more = self.ready.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    end = True
                    break
                batch.append(more)
            if not self.stopped():
                try:
                    self.write(batch)
                except BaseException as exc:  # re-raised by the main thread
                    self.failure.append(exc)
            for chunk in batch:
                self.free.put(chunk.whole)

    def write(self, batch: list[_Chunk]) -> None:
        """Make a run of consecutive chunks durable under one journal record."""
        journal = self.journal
        journal.inflight_first = batch[0].offset // SECTOR
        journal.inflight_fp = (
            batch[0].fps if len(batch) == 1 else np.concatenate([c.fps for c in batch])
        )
        journal.save()
        for chunk in batch:
            assert chunk.unchanged is not None
            _pwrite_changed(self.fd, chunk.data, chunk.offset, chunk.unchanged, self.what)
        os.fdatasync(self.fd)
        journal.done = batch[-1].offset + batch[-1].data.size
        if self.progress is not None:
            self.progress(journal.done, journal.size)


@dataclass
class _Compute:
    """A chunk's transcode: in a worker process (``job``) or on this thread."""

    job: workers.Job | None
    lanes: workers.Lease | None
    src: SectorCodec
    dst: SectorCodec

    def result(self, fd: int, chunk: np.ndarray, offset: int, what: str) -> np.ndarray:
        if self.job is not None:
            try:
                return self.job.result()
            except workers.WorkerLost as exc:
                assert self.lanes is not None
                self.lanes.lost(exc)
                # The worker may have left the buffer half-converted; the chunk was
                # neither journaled nor written, so the file still has it as it was.
                pread_exact(fd, chunk.data, offset, what)
        return transcode(chunk, offset // SECTOR, self.src, self.dst)

    def abandon(self) -> None:
        if self.job is not None:
            with contextlib.suppress(workers.WorkerLost):
                self.job.result()


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


def _pwrite_changed(
    fd: int, buf: np.ndarray, offset: int, unchanged: np.ndarray, what: str
) -> None:
    """Write ``buf`` but skip sectors that were zero and stay zero (holes stay unallocated).

    Skipped sectors hold the same bytes before and after, so crash recovery sees them as
    old and redoes them into the same zeros. Writes go in pieces of :data:`_WRITEBACK`
    bytes, each handed to the device at once (see :func:`start_writeback`); the caller's
    fdatasync then waits for them all.
    """
    if not unchanged.any():
        runs = [(0, buf.size // SECTOR)]
    else:
        change = np.flatnonzero(np.diff(np.concatenate(([1], unchanged.view(np.int8), [1]))))
        # ``change`` alternates: start of a run to write, start of a run to skip, ...
        runs = [(int(a), int(b)) for a, b in zip(change[::2], change[1::2], strict=True)]
    for start, stop in runs:
        for first in range(start * SECTOR, stop * SECTOR, _WRITEBACK):
            piece = buf[first : min(first + _WRITEBACK, stop * SECTOR)]
            pwrite_all(fd, piece.data, offset + first, what)
            start_writeback(fd, offset + first, piece.size)


