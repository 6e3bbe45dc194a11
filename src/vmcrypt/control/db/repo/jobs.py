"""Jobs: long operations with progress that any replica can report and any client poll.

A job's progress lives in the database, not in the worker's memory, so a client polling
another replica sees it and a cancel request reaches the worker at its next report.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import Job, JobState
from vmcrypt.control.db.models.base import now as _now
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict
from vmcrypt.exceptions import UsageError

__all__ = ["create_job", "finish_job", "list_jobs", "report_progress", "request_cancel"]

_MAX_JOBS = 1000
_FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def create_job(
    session: Session,
    *,
    type: str,
    target_type: str,
    target_id: str | int,
    user_name: str | None = None,
    bytes_total: int | None = None,
    component: str | None = None,
    host_id: int | None = None,
    host_job_id: str | None = None,
) -> Job:
    """A queued job acting on one object (``vm``/``disk``/…, its ID).

    ``type`` is the operation (``vm.encrypt``); a job that follows a host job also names
    the component it changes and the host job (``host_id`` and ``host_job_id``, both or
    neither).
    """
    if (host_id is None) != (host_job_id is None):
        raise UsageError("a job follows a host job by host ID and host job ID together")
    if "@" in type:
        raise UsageError(f"a job type is an operation such as vm.encrypt, not {type!r}")
    job = Job(type=type, target_type=target_type, target_id=str(target_id),
              user_name=user_name, bytes_total=bytes_total, component=component,
              host_id=host_id, host_job_id=host_job_id)
    session.add(job)
    session.flush()
    return job


def report_progress(
    session: Session,
    *,
    job_id: int,
    bytes_done: int,
    rate_bytes_per_second: float | None = None,
    at: datetime | None = None,
) -> Job:
    """Record progress (the first report starts the job); returns the job, whose
    ``cancel_requested`` the worker checks to stop at a safe point."""
    job = fetch(session, Job, job_id)
    if job.state in _FINAL:
        raise Conflict(f"job {job_id} has already {job.state}")
    if bytes_done < 0 or (job.bytes_total is not None and bytes_done > job.bytes_total):
        raise UsageError(f"{bytes_done} bytes is outside this job's 0..{job.bytes_total}")
    if job.state is JobState.QUEUED:
        job.state = JobState.RUNNING
        job.started_at = at or _now()
    job.bytes_done = bytes_done
    job.rate_bytes_per_second = rate_bytes_per_second
    if job.bytes_total:
        job.progress_percent = 100.0 * bytes_done / job.bytes_total
    session.flush()
    return job


def finish_job(
    session: Session,
    *,
    job_id: int,
    state: JobState,
    error: str | None = None,
    at: datetime | None = None,
) -> Job:
    """End a job as succeeded, failed (with ``error``) or cancelled."""
    if state not in _FINAL:
        raise UsageError(f"a job finishes as succeeded, failed or cancelled, not {state}")
    if (state is JobState.FAILED) != (error is not None):
        raise UsageError("a failed job needs its error, and only a failed job has one")
    job = fetch(session, Job, job_id)
    if job.state in _FINAL:
        raise Conflict(f"job {job_id} has already {job.state}")
    job.state = state
    job.error = error
    job.finished_at = at or _now()
    if state is JobState.SUCCEEDED:
        job.progress_percent = 100.0
    session.flush()
    return job


def request_cancel(session: Session, *, job_id: int) -> Job:
    """Ask a job to stop; the worker honours it at its next progress report."""
    job = fetch(session, Job, job_id)
    if job.state in _FINAL:
        raise Conflict(f"job {job_id} has already {job.state}")
    job.cancel_requested = True
    session.flush()
    return job


def list_jobs(
    session: Session,
    *,
    state: JobState | None = None,
    target_type: str | None = None,
    target_id: str | int | None = None,
    type: str | None = None,
    limit: int = 100,
) -> list[Job]:
    """Jobs, newest first, optionally only in one state, of one operation or on one object."""
    if not 0 < limit <= _MAX_JOBS:
        raise UsageError(f"limit must be between 1 and {_MAX_JOBS}, not {limit}")
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Job.state == state)
    if type is not None:
        query = query.where(Job.type == type)
    if target_type is not None:
        query = query.where(Job.target_type == target_type)
    if target_id is not None:
        query = query.where(Job.target_id == str(target_id))
    return list(session.scalars(query))
