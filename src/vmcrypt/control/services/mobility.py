"""Clone and migrate VMs: who needs which KEK, before the hosts move any data.

**Clone** (same datastore): the clone gets a new instance UUID and **new keys**. For a
standard provider the control plane asks the provider for a new KEK tagged with the
clone (name, instance UUID), pushes it to every host of the cluster and keeps only its
key ID; for a native provider the host makes the KEK from the primary key; an
unencrypted VM clones as plaintext. The host copies each disk through its memory with
fresh DEKs (a host job with progress and cancel). The clone's inventory row is made by
:func:`settle_clone` once the job succeeded, from the host's keySafes; a failed or
cancelled clone leaves no files (the host removes them) and no row, and its new KEK
leaves the hosts' caches.

**Migrate** to a host that reaches the VM's datastore (its cluster): the destination
gets the VM's KEKs (pushed again if it restarted) and the registration moves; no key
and no byte of data moves. To a host of **another cluster** (or a standalone host):
the KEKs are pushed to every host there **first**; then the VM folder is relayed as a
stream from the source host to the destination host (ciphertext and wrapped keys
only), which checks every keySafe opens with the KEK it holds and commits it in one
rename. Only then are the source files deleted and the registration moved, and the
KEKs leave the source cluster's hosts unless another VM there uses them. Any failure
before the destination committed leaves the VM where it was, registered, intact.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import (
    Datastore,
    EncryptionRecord,
    Event,
    Host,
    Job,
    JobState,
    KeyProvider,
    ProviderKind,
    Severity,
    VirtualMachine,
)
from vmcrypt.control.db.repo import (
    add_disk,
    append_event,
    create_job,
    create_vm,
    encryption_records,
    finish_job,
    list_jobs,
    report_progress,
    set_registration,
)
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict, ControlError, NotFound
from vmcrypt.control.hostclient import HostClient
from vmcrypt.control.jobrunner import Stopping
from vmcrypt.control.services import crypto_ops, vms
from vmcrypt.control.services.audit import crypto_event
from vmcrypt.control.services.keys import (
    HostConnector,
    hosts_of_vm,
    load_standard,
    push_native_provider,
)
from vmcrypt.control.services.records import record_from_host
from vmcrypt.providers import COMPONENT_VM, KekRef, KeyOwner
from vmcrypt.providers.exceptions import AddKeysToHostFailed

__all__ = ["CLONE_JOB", "MIGRATE_JOB", "ORPHANED", "Relay", "RelayCancelled", "clone",
           "migrate", "relay", "settle_clone"]

#: ``Job.type`` of a clone; the job follows the host job and targets the source VM.
CLONE_JOB = "vm.clone"
#: ``Job.type`` of a migration that moves files: the control plane's own job (a relay).
MIGRATE_JOB: Final = "vm.migrate"
#: How a relay job found unfinished at start ends (its control plane died during it).
ORPHANED: Final = {MIGRATE_JOB: (
    "the control plane restarted while relaying this VM's files; the VM stayed registered "
    "where it was (its source files are deleted only after the destination committed). "
    "If the destination datastore holds a complete copy of the VM, delete that copy, then "
    "migrate again")}
_FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
_DISCARDED = "vm.clone.discarded"


# -- clone ----------------------------------------------------------------------------
def clone(session: Session, hosts: HostConnector, vm: VirtualMachine, *, name: str,
          host_id: int | None, sealing_key: bytes, user_name: str | None) -> Job:
    """Start cloning ``vm`` (new keys) on its host or ``host_id`` of its cluster; a job."""
    source_host = _registered(session, vm)
    host = source_host if host_id is None else fetch(session, Host, host_id)
    datastore = fetch(session, Datastore, vm.datastore_id)
    if not _reaches(datastore, host):
        raise Conflict(f"host {host.name!r} does not reach datastore {datastore.name!r} of VM "
                       f"{vm.name!r}: clone on a host of its cluster, then migrate the clone")
    if session.scalar(select(VirtualMachine.id).where(VirtualMachine.name == name)) is not None:
        raise Conflict(f"a VM named {name!r} already exists: choose another name for the clone")
    if name in _pending_clone_names(session):
        raise Conflict(f"a clone named {name!r} is already being made: choose another name")
    client = hosts.client(host)
    _idle(session, hosts, vm, client)
    clone_uuid = str(uuid.uuid4())
    home = _home(session, vm)
    provider: KeyProvider | None = None if home is None else home.provider
    key_id: str | None = None
    targets = hosts_of_vm(session, vm)
    if provider is not None:
        _push_vm_keys(session, hosts, vm, [host], sealing_key=sealing_key, must=host)
        if provider.kind is ProviderKind.STANDARD:
            standard = load_standard(provider)
            try:
                new = standard.new_kek(owner=KeyOwner(COMPONENT_VM, name, clone_uuid))
            finally:
                standard.close()
            key_id = new.ref.key_id
            assert key_id is not None
        elif provider.kind is not ProviderKind.NATIVE:
            raise Conflict(f"cloning a {provider.kind} provider VM is not supported yet")
    try:
        if provider is not None and key_id is not None:
            failed = _put_kek(hosts, targets, provider.name, key_id, new.kek, clone_uuid)
            if host.name in failed:
                raise Conflict(f"the clone's new KEK could not be pushed to host "
                               f"{host.name!r}")
        host_job = client.clone_vm(vm.instance_uuid, clone_id=clone_uuid, name=name,
                                   provider_id=None if provider is None else provider.name,
                                   key_id=key_id)
    except Exception as exc:
        if provider is not None and key_id is not None:
            # No record will name the new KEK: not on the hosts, not Active on the KMS.
            vms.discard_new_kek(hosts, targets, provider, key_id, vm_name=name,
                                instance_uuid=clone_uuid, error=exc)
        raise
    job = create_job(session, type=CLONE_JOB, target_type="vm", target_id=vm.id,
                     user_name=user_name, component="all", host_id=host.id,
                     host_job_id=host_job)
    crypto_event(session, operation="clone", vm=vm, component="all", user_name=user_name,
                 provider=None if provider is None else provider.name, key_id=key_id,
                 result="started",
                 message=f"clone of VM {vm.name!r} as {name!r} started (job {job.id})",
                 details={"job_id": job.id, "clone_instance_uuid": clone_uuid,
                          "clone_name": name, "host": host.name})
    return job


def settle_clone(session: Session, hosts: HostConnector, job: Job) -> VirtualMachine | None:
    """Poll a clone job; once it ended, record the clone (or discard its new KEK).

    Succeeded: the clone's row — same datastore, registered on the host that made it,
    its disks and its encryption records from the host's keySafes — is created once,
    with a ``crypto.clone`` event on the clone. Failed or cancelled: the host already
    removed the partial clone; its new KEK leaves the hosts' caches. Returns the clone
    (None while the job runs, or after a failure). Safe to call any number of times.
    """
    host_id = job.host_id
    if job.type != CLONE_JOB or host_id is None:
        raise NotFound(f"job {job.id} is not a clone")
    job = crypto_ops.poll(session, hosts, job)
    started = _started_event(session, job)
    clone_uuid = str(started.get("clone_instance_uuid", ""))
    existing = session.scalar(select(VirtualMachine).where(
        VirtualMachine.instance_uuid == clone_uuid))
    if job.state not in _FINAL or existing is not None:
        return existing
    source = fetch(session, VirtualMachine, int(job.target_id))
    host = fetch(session, Host, host_id)
    if job.state is not JobState.SUCCEEDED:
        _discard(session, hosts, job, source, started)
        return None
    view = hosts.client(host).get_vm(clone_uuid)
    made = create_vm(session, name=str(view["name"]), datastore_id=source.datastore_id,
                     host_id=host.id, instance_uuid=clone_uuid,
                     storage_policy_id=source.storage_policy_id)
    made.has_vtpm = bool(view.get("vtpm", False))
    disks = {int(d["index"]): add_disk(session, vm_id=made.id, size_bytes=int(d["size"]),
                                       index=int(d["index"]))
             for d in view.get("disks", [])}
    home = view.get("home")
    if home is not None:
        record_from_host(session, made, None, home)
        for disk in view.get("disks", []):
            if disk.get("encryption"):
                record_from_host(session, made, disks[int(disk["index"])].id, disk["encryption"])
    session.flush()
    crypto_event(session, operation="clone", vm=made, component="all",
                 user_name=job.user_name, provider=None if home is None else home["provider_id"],
                 key_id=None if home is None else home.get("key_id"),
                 message=f"VM {made.name!r} cloned from {source.name!r} with new keys",
                 details={"job_id": job.id, "source_vm": source.id,
                          "source_instance_uuid": source.instance_uuid})
    return made


def settle_clones(session: Session, hosts: HostConnector, vm: VirtualMachine) -> None:
    """Settle every clone job of ``vm`` that ended unseen (no one followed it)."""
    for job in list_jobs(session, target_type="vm", target_id=vm.id, limit=1000):
        if job.type == CLONE_JOB and job.host_id is not None:
            with contextlib.suppress(ControlError, AddKeysToHostFailed):
                settle_clone(session, hosts, job)


def _pending_clone_names(session: Session) -> set[str]:
    """Names of clones whose jobs still run (their rows do not exist yet)."""
    active = set(session.scalars(select(Job.id).where(
        Job.type == CLONE_JOB, Job.state.in_([JobState.QUEUED, JobState.RUNNING]))))
    if not active:
        return set()
    return {str(event.details["clone_name"]) for event in session.scalars(
                select(Event).where(Event.type == "crypto.clone"))
            if event.details.get("job_id") in active and "clone_name" in event.details}


def _started_event(session: Session, job: Job) -> dict[str, Any]:
    for event in session.scalars(select(Event).where(
            Event.type == "crypto.clone", Event.object_type == "vm",
            Event.object_id == job.target_id)):
        if event.details.get("job_id") == job.id and "clone_instance_uuid" in event.details:
            return dict(event.details)
    raise NotFound(f"job {job.id}: the clone it started is not recorded")


def _discard(session: Session, hosts: HostConnector, job: Job, source: VirtualMachine,
             started: dict[str, Any]) -> None:
    """Drop a failed clone's new KEK from the hosts, once (marked by an event)."""
    for event in session.scalars(select(Event).where(
            Event.type == _DISCARDED, Event.object_id == str(source.id))):
        if event.details.get("job_id") == job.id:
            return
    key_id, provider = started.get("key_id"), started.get("provider")
    orphan: str | None = None
    if isinstance(key_id, str) and isinstance(provider, str):
        _drop_kek(hosts, hosts_of_vm(session, source), provider, key_id)
        row = session.scalar(select(KeyProvider).where(KeyProvider.name == provider))
        if row is not None and row.kind is ProviderKind.STANDARD:
            orphan = vms.destroy_kek(row, key_id)
    if orphan is not None:
        append_event(session, type=vms.ORPHAN_EVENT, severity=Severity.ERROR,
                     object_type="key-provider", object_id=provider,
                     user_name=job.user_name,
                     message=f"key {key_id} of provider {provider!r}, made for a clone of VM "
                             f"{source.name!r} that {job.state}, could not be destroyed: "
                             f"{orphan}; revoke and destroy it on the KMS",
                     details={"provider": provider, "key_id": key_id, "job_id": job.id,
                              "error": orphan})
    error = job.error if job.state is JobState.FAILED else None
    crypto_event(session, operation="clone", vm=source, component="all",
                 user_name=job.user_name, provider=provider if isinstance(provider, str)
                 else None, key_id=key_id if isinstance(key_id, str) else None,
                 result=job.state.value,
                 message=f"clone of VM {source.name!r} (job {job.id}) {job.state}",
                 details={"job_id": job.id, "clone_name": started.get("clone_name"),
                          **({"error": error} if error else {})})
    append_event(session, type=_DISCARDED, severity=Severity.WARNING, object_type="vm",
                 object_id=source.id, user_name=job.user_name,
                 message=f"the clone of VM {source.name!r} (job {job.id}) {job.state}: "
                         "nothing of it was kept",
                 details={"job_id": job.id, "clone_instance_uuid":
                          started.get("clone_instance_uuid"), "result": job.state.value})


# -- migrate --------------------------------------------------------------------------
@dataclass(frozen=True)
class Relay:
    """A cross-datastore migration accepted as job ``job_id``: what :func:`relay` needs.

    The KEKs are already on every host of the destination cluster (``pushed``); the
    relay moves the files, then the registration, or withdraws those KEKs again.
    """

    job_id: int
    vm_id: int
    source_host_id: int
    dest_host_id: int
    dest_datastore_id: int
    pushed: frozenset[tuple[str, str]]
    old_host_ids: tuple[int, ...]
    target_host_ids: tuple[int, ...]
    facts: dict[str, object] = field(default_factory=dict)


def migrate(session: Session, hosts: HostConnector, vm: VirtualMachine, *, host_id: int,
            datastore_id: int | None, sealing_key: bytes,
            user_name: str | None) -> VirtualMachine | Relay:
    """Move ``vm`` to ``host_id``: its registration at once, or its files as a job.

    Within the VM's datastore (its cluster) the registration moves now and the VM is
    returned. To another datastore the KEKs go to every host there first and a
    ``vm.migrate`` job is recorded; the caller runs :func:`relay` for the returned
    :class:`Relay` once this transaction committed.
    """
    source_host = _registered(session, vm)
    dest = fetch(session, Host, host_id)
    if dest.id == source_host.id:
        raise Conflict(f"VM {vm.name!r} is already registered with host {dest.name!r}")
    source_client = hosts.client(source_host)
    _idle(session, hosts, vm, source_client)
    source_ds = fetch(session, Datastore, vm.datastore_id)
    dest_ds = _destination_datastore(session, dest, source_ds, datastore_id)
    dest_client = hosts.client(dest)
    old_hosts = hosts_of_vm(session, vm)
    facts: dict[str, object] = {"from_host": source_host.name, "to_host": dest.name,
                                "from_datastore": source_ds.name,
                                "to_datastore": dest_ds.name}
    if dest_ds.id == source_ds.id:
        _push_vm_keys(session, hosts, vm, [dest], sealing_key=sealing_key, must=dest)
        _check_keys_on(dest_client, vm)
        set_registration(session, vm_id=vm.id, host_id=dest.id)
        _migrated(session, vm, user_name, {**facts, "files_moved": False})
        return vm
    targets = _scope(session, dest)
    pushed = _push_vm_keys(session, hosts, vm, targets, sealing_key=sealing_key, must=dest)
    try:
        job = create_job(session, type=MIGRATE_JOB, target_type="vm", target_id=vm.id,
                         user_name=user_name, component="all")
    except Exception:
        keep = {h.id for h in old_hosts}
        _drop_unused(session, hosts, vm, pushed, [h for h in targets if h.id not in keep])
        raise
    _migrated(session, vm, user_name, {**facts, "files_moved": True, "job_id": job.id},
              result="started")
    return Relay(job_id=job.id, vm_id=vm.id, source_host_id=source_host.id,
                 dest_host_id=dest.id, dest_datastore_id=dest_ds.id,
                 pushed=frozenset(pushed), old_host_ids=tuple(h.id for h in old_hosts),
                 target_host_ids=tuple(h.id for h in targets),
                 facts={**facts, "files_moved": True, "job_id": job.id})


class RelayCancelled(Exception):
    """The job's cancel was requested: stop relaying, leave the VM at its source."""


def relay(database: Database, hosts: HostConnector, plan: Relay, *,
          check: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic
          ) -> JobState:
    """Relay the VM's bundle source → destination with progress and cancel; its end state.

    Runs on the control plane's job runner, outside any request. Crash safety as in
    ``docs/mobility.md``: the destination stages the stream and commits it in one rename
    only once every keySafe opens; the source files are deleted, and the registration
    moved, only after that. A cancel (``cancel_requested``, read between chunks), a
    shutdown (``check`` raises) or any failure before the commit cuts the stream — the
    destination keeps nothing — withdraws the KEKs pushed to the destination cluster and
    leaves the VM registered, intact, where it was.
    """
    with database.transaction() as session:
        vm = fetch(session, VirtualMachine, plan.vm_id)
        vm_uuid = vm.instance_uuid
        source = hosts.client(fetch(session, Host, plan.source_host_id))
        dest = hosts.client(fetch(session, Host, plan.dest_host_id))
        report_progress(session, job_id=plan.job_id, bytes_done=0)
    meter = _Meter(database, plan.job_id, check=check, clock=clock)
    try:
        with source.export_bundle_sized(vm_uuid) as (size, chunks):
            meter.start(size)
            dest.import_bundle(vm_uuid, meter.wrap(chunks))
    except Exception as exc:  # every failure ends the job; nothing escapes the worker
        state = JobState.CANCELLED if meter.cancelled else JobState.FAILED
        reason = None if meter.cancelled else _relay_error(exc)
        with database.transaction() as session:
            _relay_undone(session, hosts, plan, state, reason)
        return state
    with database.transaction() as session:
        _relay_committed(session, hosts, plan, source)
    return JobState.SUCCEEDED


def _relay_error(exc: Exception) -> str:
    if isinstance(exc, Stopping):
        return ("the control plane stopped while relaying the VM's files; the VM stayed "
                "registered where it was: migrate it again")
    return f"{exc} (the VM stayed registered where it was)"


def _relay_undone(session: Session, hosts: HostConnector, plan: Relay, state: JobState,
                  error: str | None) -> None:
    """Withdraw the KEKs pushed to the destination cluster; end the job and its event."""
    vm = fetch(session, VirtualMachine, plan.vm_id)
    keep = set(plan.old_host_ids)
    extra = [fetch(session, Host, h) for h in plan.target_host_ids if h not in keep]
    _drop_unused(session, hosts, vm, set(plan.pushed), extra)
    job = fetch(session, Job, plan.job_id)
    finish_job(session, job_id=job.id, state=state, error=error)
    _migrated(session, vm, job.user_name,
              {**plan.facts, **({"error": error} if error else {})}, result=state.value)


def _relay_committed(session: Session, hosts: HostConnector, plan: Relay,
                     source: HostClient) -> None:
    """The destination committed: delete the source, move the registration, tidy keys."""
    vm = fetch(session, VirtualMachine, plan.vm_id)
    job = fetch(session, Job, plan.job_id)
    try:
        source.delete_vm(vm.instance_uuid)
    except (ControlError, AddKeysToHostFailed) as exc:
        append_event(session, type="vm.migrate.source-left", severity=Severity.WARNING,
                     object_type="vm", object_id=vm.id, user_name=job.user_name,
                     message=f"VM {vm.name!r} moved to {plan.facts['to_host']!r}, but its "
                             f"old files on {plan.facts['from_datastore']!r} could not be "
                             f"deleted: {exc}",
                     details=plan.facts)
    vm.datastore_id = plan.dest_datastore_id
    set_registration(session, vm_id=vm.id, host_id=plan.dest_host_id)
    new_ids = set(plan.target_host_ids)
    old = [fetch(session, Host, h) for h in plan.old_host_ids if h not in new_ids]
    _drop_unused(session, hosts, vm, set(plan.pushed), old)
    if job.bytes_total:
        report_progress(session, job_id=job.id, bytes_done=job.bytes_total)
    finish_job(session, job_id=job.id, state=JobState.SUCCEEDED)
    _migrated(session, vm, job.user_name, plan.facts)


class _Meter:
    """Counts relayed bytes into the job row (at most every ``interval`` seconds) and
    reads its cancel flag between chunks, so progress and cancel work from any replica."""

    def __init__(self, database: Database, job_id: int, *, check: Callable[[], None],
                 clock: Callable[[], float], interval: float = 0.25) -> None:
        self.database = database
        self.job_id = job_id
        self.check = check
        self.clock = clock
        self.interval = interval
        self.done = 0
        self.total: int | None = None
        self.cancelled = False
        self._began = clock()
        self._written = -interval

    def start(self, total: int | None) -> None:
        self.total = total
        with self.database.transaction() as session:
            fetch(session, Job, self.job_id).bytes_total = total

    def wrap(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for piece in chunks:
            self.done += len(piece)
            self._tick()
            yield piece
        self._write()

    def _tick(self) -> None:
        self.check()
        with self.database.transaction() as session:
            if session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                self.cancelled = True
                raise RelayCancelled(f"job {self.job_id} was cancelled")
        if self.clock() - self._written >= self.interval:
            self._write()

    def _write(self) -> None:
        now = self.clock()
        elapsed = max(now - self._began, 1e-6)
        done = self.done if self.total is None else min(self.done, self.total)
        with self.database.transaction() as session:
            report_progress(session, job_id=self.job_id, bytes_done=done,
                            rate_bytes_per_second=done / elapsed)
        self._written = now


def _migrated(session: Session, vm: VirtualMachine, user_name: str | None,
              facts: dict[str, object], *, result: str = "succeeded") -> None:
    home = _home(session, vm)
    done = {"succeeded": "migrated", "started": "migration started"}.get(
        result, f"migration {result}")
    crypto_event(session, operation="migrate", vm=vm, component="all", user_name=user_name,
                 provider=None if home is None else home.provider.name,
                 key_id=None if home is None else home.key_id, result=result,
                 message=f"VM {vm.name!r} {done}: from {facts['from_host']} to "
                         f"{facts['to_host']}", details=facts)


def _destination_datastore(session: Session, dest: Host, source: Datastore,
                           datastore_id: int | None) -> Datastore:
    """The datastore the VM lands on: its own when ``dest`` reaches it, else dest's one."""
    if datastore_id is not None:
        chosen = fetch(session, Datastore, datastore_id)
        if not _reaches(chosen, dest):
            raise Conflict(f"host {dest.name!r} does not reach datastore {chosen.name!r}")
        return chosen
    if _reaches(source, dest):
        return source
    scope = [Datastore.host_id == dest.id]
    if dest.cluster_id is not None:
        scope.append(Datastore.cluster_id == dest.cluster_id)
    found = list(session.scalars(select(Datastore).where(or_(*scope)).order_by(Datastore.id)))
    if not found:
        raise Conflict(f"host {dest.name!r} has no datastore to receive the VM: add one")
    if len(found) > 1:
        raise Conflict(f"host {dest.name!r} reaches several datastores "
                       f"({', '.join(d.name for d in found)}): give datastore_id")
    return found[0]


def _check_keys_on(client: HostClient, vm: VirtualMachine) -> None:
    """The destination opens every component: it sees the VM and holds each KEK."""
    view = client.get_vm(vm.instance_uuid)
    parts = [view.get("home")] + [d.get("encryption") for d in view.get("disks", [])]
    if any(p is not None and not p.get("key_on_host") for p in parts):
        raise Conflict(f"host {client.name!r} lacks a key of VM {vm.name!r} although it "
                       "was pushed: see the events, then retry")


# -- shared ---------------------------------------------------------------------------
def _registered(session: Session, vm: VirtualMachine) -> Host:
    if not vm.registered or vm.host_id is None:
        raise Conflict(f"VM {vm.name!r} is not registered with a host: register it first")
    if vm.locked:
        reason = vm.lock_reason.value if vm.lock_reason else "unknown"
        raise Conflict(f"VM {vm.name!r} is locked ({reason}): unlock it first")
    return fetch(session, Host, vm.host_id)


def _idle(session: Session, hosts: HostConnector, vm: VirtualMachine,
          client: HostClient) -> None:
    """409 while a job of the VM runs (control-plane records, then the host's table)."""
    settle_clones(session, hosts, vm)
    for job in list_jobs(session, target_type="vm", target_id=vm.id, limit=1000):
        if job.state not in _FINAL:
            crypto_ops.poll(session, hosts, job)
        if job.state not in _FINAL:
            raise Conflict(f"VM {vm.name!r} is busy: job {job.id} ({job.type}) is "
                           f"{job.state}; wait for it or cancel it, then retry")
    if client.vm_busy(vm.instance_uuid):
        raise Conflict(f"VM {vm.name!r} is busy on host {client.name!r}: wait, then retry")


def _reaches(datastore: Datastore, host: Host) -> bool:
    """Whether ``host`` mounts ``datastore``: its cluster's, or its own."""
    if datastore.cluster_id is not None:
        return datastore.cluster_id == host.cluster_id
    return datastore.host_id == host.id


def _scope(session: Session, host: Host) -> list[Host]:
    """The hosts that need the KEKs of a VM registered on ``host``."""
    if host.cluster_id is None:
        return [host]
    return list(session.scalars(
        select(Host).where(Host.cluster_id == host.cluster_id).order_by(Host.id)))


def _home(session: Session, vm: VirtualMachine) -> EncryptionRecord | None:
    return next((r for r in encryption_records(session, vm_id=vm.id) if r.disk_id is None),
                None)


def _push_vm_keys(session: Session, hosts: HostConnector, vm: VirtualMachine,
                  targets: list[Host], *, sealing_key: bytes,
                  must: Host) -> set[tuple[str, str]]:
    """Give ``targets`` every KEK of ``vm`` (standard: fetched by ID; native: the primary
    key); the standard (provider, key ID) pairs pushed. 409 when ``must`` misses one."""
    standard: dict[str, tuple[KeyProvider, set[str]]] = {}
    native: dict[str, KeyProvider] = {}
    for record in encryption_records(session, vm_id=vm.id):
        provider = record.provider
        if provider.kind is ProviderKind.STANDARD and record.key_id is not None:
            standard.setdefault(provider.name, (provider, set()))[1].add(record.key_id)
        elif provider.kind is ProviderKind.NATIVE:
            native[provider.name] = provider
        else:
            raise Conflict(f"moving a {provider.kind} provider VM is not supported yet")
    failed: list[str] = []
    pushed: set[tuple[str, str]] = set()
    for row in native.values():
        failed += push_native_provider(session, hosts, row, sealing_key=sealing_key,
                                       targets=targets)
    for name, (row, key_ids) in sorted(standard.items()):
        ordered = sorted(key_ids)
        kms = load_standard(row)
        try:
            keks = kms.get_keks([KekRef(key_id=k) for k in ordered])
        finally:
            kms.close()
        for key_id, kek in zip(ordered, keks, strict=True):
            failed += _put_kek(hosts, targets, name, key_id, kek, vm.instance_uuid)
            pushed.add((name, key_id))
    if must.name in failed:
        raise Conflict(f"the keys of VM {vm.name!r} could not be pushed to host "
                       f"{must.name!r}: nothing was moved")
    return pushed


def _put_kek(hosts: HostConnector, targets: Iterable[Host], provider: str, key_id: str,
             kek: bytes, vm_uuid: str) -> list[str]:
    failed = []
    for host in targets:
        try:
            hosts.client(host).put_kek(provider, key_id, kek, vm_ids=[vm_uuid])
        except AddKeysToHostFailed:
            failed.append(host.name)
    return failed


def _drop_kek(hosts: HostConnector, targets: Iterable[Host], provider: str,
              key_id: str) -> None:
    for host in targets:
        with contextlib.suppress(AddKeysToHostFailed, ControlError):
            hosts.client(host).delete_kek(provider, key_id)


def _drop_unused(session: Session, hosts: HostConnector, vm: VirtualMachine,
                 keys: set[tuple[str, str]], targets: list[Host]) -> None:
    """Drop KEKs of ``vm`` from ``targets`` unless another registered VM there uses them."""
    if not targets:
        return
    target_ids = {h.id for h in targets}
    for provider, key_id in sorted(keys):
        others = session.scalars(
            select(VirtualMachine).join(EncryptionRecord,
                                        EncryptionRecord.vm_id == VirtualMachine.id)
            .where(EncryptionRecord.key_id == key_id, VirtualMachine.id != vm.id,
                   VirtualMachine.registered))
        if any(target_ids & {h.id for h in hosts_of_vm(session, other)} for other in others):
            continue
        _drop_kek(hosts, targets, provider, key_id)
