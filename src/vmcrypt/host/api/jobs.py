"""``/api/v1/jobs``: progress and cancellation of this host's long operations."""

from __future__ import annotations

from fastapi import APIRouter

from vmcrypt.host.api.runner import Job
from vmcrypt.host.api.schemas import JobError, JobPublic
from vmcrypt.host.api.state import StateDep
from vmcrypt.host.exceptions import HostError

__all__ = ["JobNotFound", "job_public", "router"]

router = APIRouter(tags=["jobs"])


class JobNotFound(HostError):
    """This host process has no job with that ID (jobs do not survive a restart)."""


def job_public(job: Job) -> JobPublic:
    """A job as the API shows it."""
    return JobPublic(
        id=job.id,
        kind=job.kind,
        vm_id=job.vm_id,
        state=job.state,
        percent=job.percent,
        bytes_done=job.bytes_done,
        bytes_total=job.bytes_total,
        rate=job.rate,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=None if job.error is None else JobError(error=job.error[0], message=job.error[1]),
    )


def _get(state: StateDep, job_id: str) -> Job:
    job = state.jobs.get(job_id)
    if job is None:
        raise JobNotFound(
            f"no job {job_id} on this host; jobs live as long as the host process — "
            "read the VM to see the state its operation left"
        )
    return job


@router.get("/jobs")
def list_jobs(state: StateDep) -> list[JobPublic]:
    """Every job this host process still remembers, oldest first."""
    return [job_public(j) for j in state.jobs.all()]


@router.get("/jobs/{job_id}")
def get_job(job_id: str, state: StateDep) -> JobPublic:
    """State, percent, bytes, rate and error of one job."""
    return job_public(_get(state, job_id))


@router.post("/jobs/{job_id}/cancel", status_code=202)
def cancel_job(job_id: str, state: StateDep) -> JobPublic:
    """Ask a job to stop; a disk conversion stops at a safe point, readable."""
    job = _get(state, job_id)
    job.cancel.set()
    return job_public(job)
