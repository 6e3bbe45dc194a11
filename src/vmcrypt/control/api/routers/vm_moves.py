"""``/vms/{id}/clone`` and ``/vms/{id}/migrate``: copies and moves of VMs with their keys.

Handlers only translate HTTP to :mod:`vmcrypt.control.services.mobility`. A clone is a
job (202) followed like any other through ``/jobs/{id}``; reading
``/vms/{id}/jobs/{job}`` also records the clone once the job succeeded (and discards
its new KEK when it failed). A migration within the VM's cluster answers the VM on its
new host (200); to another datastore its files are relayed by a ``vm.migrate`` job on
the control plane's job runner (202), with progress and cancel at ``/jobs/{id}``.

Every clone and migration appends its ``crypto.clone`` / ``crypto.migrate`` event. A
refused or failed one is rolled back whole and its event, with ``result="failed"`` and
the reason, is written on its own afterwards, so the log shows the attempt too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from vmcrypt.control.api.deps import AuditedRoute, CurrentUser, SessionDep, requires
from vmcrypt.control.api.routers.vms import VmPublic
from vmcrypt.control.api.routers.vms import _public as vm_public
from vmcrypt.control.api.schemas import JobPublic
from vmcrypt.control.db.models import Job, VirtualMachine
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import NotFound
from vmcrypt.control.jobrunner import JobRunner
from vmcrypt.control.privileges import (
    CRYPTO_CLONE,
    CRYPTO_MIGRATE,
    RESOURCE_COLD_MIGRATE,
    SYSTEM_READ,
    VM_CLONE,
)
from vmcrypt.control.services import crypto_ops, mobility
from vmcrypt.control.services import vms as vms_service
from vmcrypt.control.services.audit import crypto_event
from vmcrypt.control.services.keys import HostConnector
from vmcrypt.exceptions import VmcryptError

__all__ = ["CloneRequest", "MigrateRequest", "VmJob", "router"]

router: APIRouter = APIRouter(prefix="/vms", tags=["vms"], route_class=AuditedRoute)
T = TypeVar("T")


def _hosts(request: Request) -> HostConnector:
    connector: HostConnector = request.app.state.hosts
    return connector


Hosts = Annotated[HostConnector, Depends(_hosts)]


class CloneRequest(BaseModel):
    """A clone of the VM: its name, and optionally the host (of its cluster) that copies."""

    name: str = Field(min_length=1, max_length=200)
    host_id: int | None = Field(default=None, description="default: the VM's own host")


class VmJob(BaseModel):
    """A job of a VM as last polled, and for a clone job that succeeded, the clone."""

    job: JobPublic
    clone: VmPublic | None


class MigrateRequest(BaseModel):
    """Where the VM goes: a host, and (when that host reaches several) a datastore."""

    host_id: int
    datastore_id: int | None = None


def _audited(session: Session, vm: VirtualMachine, operation: str, user: str | None,
             work: Callable[[], T]) -> T:
    """Run ``work``; on any error roll it back and keep only a failed ``crypto.*`` event."""
    vm_id, name = vm.id, vm.name
    try:
        return work()
    except VmcryptError as exc:
        session.rollback()
        vms_service.after_rollback(session, exc)  # e.g. a new KEK that could not be destroyed
        again = session.get(VirtualMachine, vm_id)
        if again is not None:
            crypto_event(session, operation=operation, vm=again, component="all",
                         user_name=user, result="failed",
                         message=f"{operation} of VM {name!r} failed: {exc}",
                         details={"error": type(exc).__name__})
        session.commit()
        raise


@router.post("/{vm_id}/clone", status_code=202,
             dependencies=[requires(VM_CLONE, CRYPTO_CLONE)])
def clone(vm_id: int, body: CloneRequest, session: SessionDep, hosts: Hosts,
          user: CurrentUser, request: Request) -> JobPublic:
    """Clone a VM with new keys (same datastore); a job — follow it, then read the clone."""
    vm = fetch(session, VirtualMachine, vm_id)
    job = _audited(session, vm, "clone", user.user_name, lambda: mobility.clone(
        session, hosts, vm, name=body.name, host_id=body.host_id,
        sealing_key=request.app.state.master_key, user_name=user.user_name))
    return JobPublic.model_validate(job)


@router.get("/{vm_id}/jobs/{job_id}", dependencies=[requires(SYSTEM_READ)])
def vm_job(vm_id: int, job_id: int, session: SessionDep, hosts: Hosts) -> VmJob:
    """One job of the VM, refreshed from its host; a clone that succeeded comes with it.

    Reading a clone job that ended records the clone (from the host's keySafes) or, if
    it failed, withdraws its new KEK: follow clones here rather than at ``/jobs/{id}``.
    """
    job = fetch(session, Job, job_id)
    if job.target_type != "vm" or job.target_id != str(vm_id):
        raise NotFound(f"job {job_id} is not a job of VM {vm_id}")
    made = None
    if job.type == mobility.CLONE_JOB:
        made = mobility.settle_clone(session, hosts, job)
    else:
        job = crypto_ops.poll(session, hosts, job)
    return VmJob(job=JobPublic.model_validate(job),
                 clone=None if made is None else vm_public(session, made))


@router.post("/{vm_id}/migrate", response_model=None,
             dependencies=[requires(RESOURCE_COLD_MIGRATE, CRYPTO_MIGRATE)])
def migrate(vm_id: int, body: MigrateRequest, session: SessionDep, hosts: Hosts,
            user: CurrentUser, request: Request, response: Response,
            background: BackgroundTasks) -> VmPublic | JobPublic:
    """Move a VM to another host: in its cluster at once (200, the VM); to another
    datastore its KEKs go there first, then its files are relayed as a job (202).

    The job (``vm.migrate``) shows bytes, percent and rate at ``/jobs/{id}`` and is
    cancelled by ``POST /jobs/{id}/cancel``: a cancelled or failed relay leaves the VM
    registered, intact, at its source. It starts once this request has committed.
    """
    vm = fetch(session, VirtualMachine, vm_id)
    moved = _audited(session, vm, "migrate", user.user_name, lambda: mobility.migrate(
        session, hosts, vm, host_id=body.host_id, datastore_id=body.datastore_id,
        sealing_key=request.app.state.master_key, user_name=user.user_name))
    if isinstance(moved, VirtualMachine):
        return vm_public(session, moved)
    runner: JobRunner = request.app.state.jobrunner
    database = request.app.state.database
    plan = moved
    # A background task runs after the response, so after the pipeline committed the
    # job row and the KEKs' pushes: the worker never sees a job that is not there yet.
    background.add_task(runner.submit, lambda: _relay(database, hosts, plan, runner))
    response.status_code = 202
    return JobPublic.model_validate(fetch(session, Job, plan.job_id))


def _relay(database: Any, hosts: HostConnector, plan: mobility.Relay,
           runner: JobRunner) -> None:
    mobility.relay(database, hosts, plan, check=runner.check)
