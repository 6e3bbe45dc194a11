"""Long operations as jobs: one worker thread each, progress and cancel in memory.

Encrypting, decrypting and deep re-keying rewrite a whole disk; an HTTP request must not
wait for that. The route starts a :class:`Job`, answers 202 with its ID, and the
control plane polls it. The table belongs to this host process: after a restart it is
empty, and an interrupted conversion is finished or rolled back by the disk layer's
journal (``resume_disk``), not by this table.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from vmcrypt.host.api.errors import describe
from vmcrypt.host.exceptions import VmBusy
from vmcrypt.host.vm import Progress

__all__ = ["Job", "JobState", "JobTable", "Work"]

log = logging.getLogger("vmcrypt.host.jobs")

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
#: A job's body: called in the worker thread with a progress callback and a cancel event.
Work = Callable[[Progress, threading.Event], object]
_ACTIVE = ("queued", "running")


@dataclass
class Job:
    """One long operation's state, updated by its worker thread."""

    id: str
    kind: str
    vm_id: str
    state: JobState = "queued"
    bytes_done: int = 0
    bytes_total: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: tuple[str, str] | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def percent(self) -> float:
        if self.state == "succeeded":
            return 100.0
        if self.bytes_total <= 0:
            return 0.0
        return round(100.0 * self.bytes_done / self.bytes_total, 2)

    @property
    def rate(self) -> float:
        """Average bytes per second since the job started."""
        elapsed = (self.finished_at or time.time()) - self.started_at
        return round(self.bytes_done / elapsed, 1) if elapsed > 0 else 0.0


class JobTable:
    """The jobs of this host process; at most one active job per VM."""

    def __init__(self, *, keep: int = 1000) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._keep = keep
        self._threads: dict[str, threading.Thread] = {}

    def start(self, kind: str, vm_id: str, work: Work) -> Job:
        """Run ``work`` in a new thread; VmBusy while another job of this VM is active."""
        with self._lock:
            for other in self._jobs.values():
                if other.vm_id == vm_id and other.state in _ACTIVE:
                    raise VmBusy(
                        f"VM {vm_id} is busy with job {other.id} ({other.kind}); "
                        "wait for it to finish or cancel it, then retry"
                    )
            self._prune()
            job = Job(id=str(uuid.uuid4()), kind=kind, vm_id=vm_id)
            self._jobs[job.id] = job
        thread = threading.Thread(
            target=self._run, args=(job, work), name=f"job-{job.id[:8]}", daemon=True
        )
        self._threads[job.id] = thread
        thread.start()
        return job

    def stop_all(self, *, timeout: float = 10.0) -> None:
        """Cancel every active job and wait for the threads (a conversion stops safely)."""
        with self._lock:
            active = [(j, self._threads.get(j.id)) for j in self._jobs.values()
                      if j.state in _ACTIVE]
        for job, _thread in active:
            job.cancel.set()
        for _job, thread in active:
            if thread is not None:
                thread.join(timeout)

    def _prune(self) -> None:
        # Oldest finished jobs go first, so the table cannot grow without bound.
        excess = len(self._jobs) - self._keep + 1
        if excess > 0:
            finished = [j for j in self._jobs.values() if j.state not in _ACTIVE]
            for job in sorted(finished, key=lambda j: j.started_at)[:excess]:
                del self._jobs[job.id]
                self._threads.pop(job.id, None)

    def _run(self, job: Job, work: Work) -> None:
        def progress(done: int, total: int) -> None:
            job.bytes_done, job.bytes_total = done, total

        job.state = "running"
        log.info("job %s: %s of VM %s started", job.id, job.kind, job.vm_id)
        try:
            work(progress, job.cancel)
        except Exception as exc:
            _status, code, message = describe(exc)
            if code == "internal_error":
                log.exception("job %s: %s of VM %s failed", job.id, job.kind, job.vm_id)
            job.error = (code, message)
            job.state = "cancelled" if code == "cancelled" else "failed"
        else:
            job.state = "succeeded"
        job.finished_at = time.time()
        log.info("job %s: %s of VM %s %s", job.id, job.kind, job.vm_id, job.state)

    def get(self, job_id: str) -> Job | None:
        """The job, or None when this process never ran it (or forgot it)."""
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        """Every job still in the table, oldest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started_at)

    def running(self) -> int:
        """How many jobs are queued or running."""
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.state in _ACTIVE)

    def busy(self, vm_id: str) -> bool:
        """Whether a job of this VM is active (deleting it now would pull the rug)."""
        with self._lock:
            return any(j.vm_id == vm_id and j.state in _ACTIVE for j in self._jobs.values())
