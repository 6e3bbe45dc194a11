"""The control plane's own jobs: long work the control plane does itself, off the request.

Most jobs run on hosts (encrypt, re-key, clone) and the control plane only follows them.
Relaying a VM's files between datastores of two clusters is the control plane's own
work: bytes flow from one host through it to another. A request must not hold that
(no progress, no cancel, a client time-out kills it), so it runs here: a small, bounded
pool of threads started with the app.

The rules that keep this safe with several replicas and restarts:

- **State lives in the database.** A worker writes its progress (bytes, percent,
  rate) to the job row and reads ``cancel_requested`` from it between chunks, so any
  replica can show the job and take the cancel.
- **A job is submitted after its row is committed** (the route hands it over as a
  background task, which runs once the response — and so the transaction — is done).
- **A restart ends orphaned jobs.** A worker's thread dies with its process; the next
  :class:`JobRunner` over the database marks every job of a relayed type still queued or
  running as failed, with a message saying what state the VM was left in. With several
  replicas, run relays on one of them (a later revision may record the owning replica).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from sqlalchemy import select

from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import Job, JobState

__all__ = ["DEFAULT_WORKERS", "JobRunner", "Stopping"]

log = logging.getLogger("vmcrypt.control.jobs")

#: Relays are network-bound; two at a time keep a small control plane responsive.
DEFAULT_WORKERS: Final = 2


class Stopping(Exception):
    """Raised inside a worker's work when the control plane is shutting down."""


class JobRunner:
    """A bounded thread pool for control-plane jobs, and their recovery after a restart.

    ``orphaned`` maps each job type this runner executes to the message a job of that
    type ends with when found queued or running at start (its process died).
    """

    def __init__(self, database: Database, *, workers: int = DEFAULT_WORKERS,
                 orphaned: dict[str, str] | None = None) -> None:
        self.database = database
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vmcrypt-job")
        self._stopping = threading.Event()
        self._orphaned = dict(orphaned or {})
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`shutdown` was called: work should stop at its next safe point."""
        return self._stopping.is_set()

    def check(self) -> None:
        """Raise :class:`Stopping` when the runner is shutting down (call between chunks)."""
        if self._stopping.is_set():
            raise Stopping("the control plane is shutting down")

    def recover(self) -> list[int]:
        """End as failed every job of a type this runner owns still queued or running.

        Called once at start, before any job is submitted; returns the job IDs ended.
        """
        from vmcrypt.control.db.repo import finish_job

        if not self._orphaned:
            return []
        ended = []
        with self.database.transaction() as session:
            jobs = session.scalars(select(Job).where(
                Job.type.in_(list(self._orphaned)),
                Job.state.in_([JobState.QUEUED, JobState.RUNNING])))
            for job in list(jobs):
                finish_job(session, job_id=job.id, state=JobState.FAILED,
                           error=self._orphaned[job.type])
                ended.append(job.id)
        for job_id in ended:
            log.warning("job %d ended as failed: the control plane restarted during it", job_id)
        return ended

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the pool; it owns its job row and its errors (logged here too)."""
        if self._stopping.is_set():
            raise Stopping("the control plane is shutting down: retry later")
        future = self._pool.submit(work)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
        error = future.exception()
        if error is not None:
            log.error("a control-plane job failed outside its own handling: %s", error)

    def idle(self) -> bool:
        """Whether no work is queued or running (tests wait for this)."""
        with self._lock:
            return not self._futures

    def shutdown(self) -> None:
        """Ask running work to stop at its next chunk, then wait for the threads."""
        self._stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
