"""Control-plane jobs that follow host jobs: create, poll, cancel, and "is the VM busy".

A job row names its operation (``Job.type``: ``vm.encrypt``), the component, the host
and the host's job ID (revision 0004). The host holds the live progress; each poll
copies it into the row, and when the host job ends the VM's encryption records are set
from the host's keySafes and the operation's final ``crypto.*`` event is appended.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    EncryptionRecord,
    Host,
    Job,
    JobState,
    VirtualMachine,
)
from vmcrypt.control.db.repo import (
    create_job,
    finish_job,
    list_jobs,
    request_cancel,
)
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict
from vmcrypt.control.hostclient import HostNotFound
from vmcrypt.control.services.audit import crypto_event
from vmcrypt.control.services.crypto_ops._common import (
    _FINAL,
    _progress,
    _records,
    _sync_records,
)
from vmcrypt.control.services.keys import (
    HostConnector,
)

__all__ = ["SETTLED_ELSEWHERE", "JobRef", "cancel", "job_ref", "poll", "track_host_job"]

#: Job types whose final ``crypto.*`` event is not :func:`poll`'s to write: a clone's
#: end is recorded once by ``mobility.settle_clone`` (on the clone when it succeeded,
#: on the source when it failed or was cancelled), so each clone has exactly one start
#: and one end event.
SETTLED_ELSEWHERE = frozenset({"vm.clone"})


@dataclass(frozen=True)
class JobRef:
    """What a control-plane job points at: operation, component, host and host job."""

    operation: str
    component: str
    host_id: int
    host_job_id: str

    def type(self) -> str:
        """What is stored in ``Job.type``: the operation alone (since revision 0004)."""
        return self.operation

def job_ref(job: Job) -> JobRef | None:
    """The host job a control-plane job follows; None for a job that follows none."""
    if job.host_id is None or job.host_job_id is None:
        return None
    return JobRef(job.type, job.component or "all", job.host_id, job.host_job_id)

def track_host_job(session: Session, vm: VirtualMachine, operation: str, component: str,
                   host_job: str, user_name: str | None) -> Job:
    """A control-plane job following ``host_job`` on the VM's host, polled by :func:`poll`.

    ``operation`` becomes ``Job.type`` (``vm.encrypt``); the component, host and host
    job go to their own columns. When the host job ends, :func:`poll` sets ``vm``'s
    encryption records from the host's view and appends ``crypto.<operation without
    "vm.">`` with the final state, so ``vm`` must be the VM whose keySafes the job
    changes.
    """
    assert vm.host_id is not None
    return create_job(session, type=operation, target_type="vm", target_id=vm.id,
                      user_name=user_name, component=component, host_id=vm.host_id,
                      host_job_id=host_job)

def poll(session: Session, hosts: HostConnector, job: Job) -> Job:
    """Copy the host job's progress into ``job``; on its end, set the records from the host.

    The end also appends the operation's ``crypto.*`` event with the job's final state
    as its result and the component's key ID as the host left it.
    """
    ref = job_ref(job)
    if ref is None or job.state in _FINAL:
        return job
    host = fetch(session, Host, ref.host_id)
    client = hosts.client(host)
    try:
        remote = client.get_job(ref.host_job_id)
    except HostNotFound:
        remote = {"state": "failed", "bytes_done": job.bytes_done, "bytes_total": 0,
                  "rate": 0.0, "error": {"message": f"host {host.name!r} no longer knows "
                                         "the job (it restarted); read the VM for its state"}}
    _progress(session, job, remote)
    state = JobState(remote["state"])
    if state in _FINAL:
        vm = fetch(session, VirtualMachine, int(job.target_id))
        before = _records(session, vm)
        used = before.get(ref.component)  # a decrypted component's record goes below
        _sync_records(session, client, vm)
        error = remote.get("error") or {}
        message = str(error.get("message", "failed")) if state is JobState.FAILED else None
        finish_job(session, job_id=job.id, state=state, error=message)
        after = _records(session, vm)
        record = after.get(ref.component) or used or after.get("home")
        if job.type not in SETTLED_ELSEWHERE:
            _ended(session, job, ref, vm, state, message, record)
    return job

def cancel(session: Session, hosts: HostConnector, job: Job) -> Job:
    """Ask the job's host to stop it at a safe point (the data stays readable)."""
    request_cancel(session, job_id=job.id)
    ref = job_ref(job)
    if ref is not None:
        # A host that forgot the job (it restarted) is fine: the poll below ends it.
        with contextlib.suppress(HostNotFound):
            hosts.client(fetch(session, Host, ref.host_id)).cancel_job(ref.host_job_id)
    return poll(session, hosts, job)

def _not_busy(session: Session, hosts: HostConnector, vm: VirtualMachine) -> None:
    """409 while a job of the VM still runs; a job that ended unseen is polled to its end."""
    for job in list_jobs(session, target_type="vm", target_id=vm.id, limit=1000):
        if job.state not in _FINAL:
            poll(session, hosts, job)
        if job.state not in _FINAL:
            raise Conflict(f"VM {vm.name!r} is busy: job {job.id} ({job.type}) is "
                           f"{job.state}; wait for it or cancel it, then retry")

def _started(session: Session, job: Job, vm: VirtualMachine, *, provider: str | None,
             key_id: str | None) -> None:
    crypto_event(session, operation=job.type.removeprefix("vm."), vm=vm,
                 component=job.component or "all", user_name=job.user_name,
                 provider=provider, key_id=key_id, result="started",
                 details={"job_id": job.id})

def _ended(session: Session, job: Job, ref: JobRef, vm: VirtualMachine, state: JobState,
           error: str | None, record: EncryptionRecord | None) -> None:
    """The job's final ``crypto.*`` event: its state and the key of the component."""
    crypto_event(session, operation=ref.operation.removeprefix("vm."), vm=vm,
                 component=ref.component, user_name=job.user_name,
                 provider=record.provider.name if record else None,
                 key_id=record.key_id if record else None, result=state.value,
                 details={"job_id": job.id, **({"error": error} if error else {})})
