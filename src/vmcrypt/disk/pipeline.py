"""The engine of a conversion: read, compute and write chunks in a pipeline.

Three stages, so that the two cores are busy and the device never waits for Python:

- the caller's thread reads chunk k+1 (pread) and fingerprints its old sectors;
- a sector worker process transcodes it (see :mod:`vmcrypt.disk.workers`; on this thread
  when there is none);
- a writer thread makes finished chunks durable, strictly in order: a journal record,
  the data write (in pieces whose writeback starts at once), one fdatasync.

The journal invariant of :mod:`vmcrypt.disk.convert` — a range is marked in flight only
once everything before it is on disk, and nothing after it has been touched — holds
exactly as in a sequential loop. Buffers rotate, so memory stays at a fixed number of
chunks: 4 without workers, 6 (96 MiB of shared memory) with them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np

from vmcrypt.disk import workers
from vmcrypt.disk.codec import SECTOR, SectorCodec, transcode
from vmcrypt.disk.container import Progress
from vmcrypt.disk.exceptions import ConversionCancelled
from vmcrypt.disk.files import StrPath, pread_exact, pwrite_all, start_writeback
from vmcrypt.disk.journal import Journal, fingerprints

__all__ = ["CHUNK", "WORKERS_MIN_SIZE", "convert_chunks"]

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


def convert_chunks(
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
