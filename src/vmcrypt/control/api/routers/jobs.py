"""``/jobs``: long operations (encrypt, decrypt, deep re-key) and their progress.

The host doing the work holds the live progress; reading a job here polls that host
and stores what it says, so the jobs table is current whenever someone looks and any
replica can answer. When the host job ends, the VM's encryption records are set from
the host's keySafes and the operation's final ``crypto.*`` event is appended
(:func:`vmcrypt.control.services.crypto_ops.poll`). A job shows its operation
(``type``: ``vm.encrypt``), the component it changes and the host job it follows.

A ``vm.migrate`` job follows no host job: the control plane relays the VM's files
itself (:func:`vmcrypt.control.services.mobility.relay`) and writes the progress into
the row as it goes; its cancel is read from the row between chunks.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session

from vmcrypt.control.api.deps import AuditedRoute, SessionDep, requires
from vmcrypt.control.api.schemas import JobPublic
from vmcrypt.control.db.models import Job, JobState
from vmcrypt.control.db.repo import list_jobs
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.privileges import CRYPTO_ACCESS, SYSTEM_READ
from vmcrypt.control.services import crypto_ops, mobility
from vmcrypt.control.services.keys import HostConnector

__all__ = ["router"]

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=AuditedRoute)


def _hosts(request: Request) -> HostConnector:
    connector: HostConnector = request.app.state.hosts
    return connector


Hosts = Annotated[HostConnector, Depends(_hosts)]


@router.get("", dependencies=[requires(SYSTEM_READ)])
def list_all(session: SessionDep, state: JobState | None = None,
             vm_id: int | None = None,
             type: Annotated[str | None, Query(max_length=128,
                                               description="an operation: vm.encrypt")] = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobPublic]:
    """Jobs, newest first, as last polled (read one to refresh it)."""
    jobs = list_jobs(session, state=state, target_type="vm" if vm_id is not None else None,
                     target_id=vm_id, type=type, limit=limit)
    return [JobPublic.model_validate(j) for j in jobs]


@router.get("/{job_id}", dependencies=[requires(SYSTEM_READ)])
def get(job_id: int, session: SessionDep, hosts: Hosts) -> JobPublic:
    """One job, refreshed from its host: state, percent, bytes, rate, error.

    A clone job that ended is settled here too (the clone recorded, or its KEK
    withdrawn), so following a job at either URL leaves the inventory the same.
    """
    job = _refresh(session, hosts, fetch(session, Job, job_id))
    return JobPublic.model_validate(job)


@router.post("/{job_id}/cancel", status_code=202, dependencies=[requires(CRYPTO_ACCESS)])
def cancel(job_id: int, session: SessionDep, hosts: Hosts) -> JobPublic:
    """Ask the job to stop at a safe point; the data stays readable either way."""
    job = _refresh(session, hosts, crypto_ops.cancel(session, hosts, fetch(session, Job, job_id)))
    return JobPublic.model_validate(job)


def _refresh(session: Session, hosts: HostConnector, job: Job) -> Job:
    if job.type == mobility.CLONE_JOB and job.host_id is not None:
        mobility.settle_clone(session, hosts, job)
        return job
    return crypto_ops.poll(session, hosts, job)
