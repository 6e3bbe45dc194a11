"""Encrypt, decrypt, re-key, add disks and vTPMs: the control plane's half of the seeds' flows.

The control plane checks the order rules against its own records first (encrypt VM
home before any disk, decrypt every disk before VM home, no VM home decrypt while a
vTPM needs its DEK) so a refused operation is a 409 at once and nothing changes. It
then makes sure every host of the cluster holds the KEK (by key ID from the provider —
never stored here) and asks the VM's host to do the work. Data-rewriting work runs as
a host job; the control plane records a job of its own that names it (``Job.host_id``,
``Job.host_job_id``, revision 0004), and each poll copies the host's progress into the
jobs table. When a host job ends, the encryption records are set from what the host
reports (its keySafes are the truth), so a failed or cancelled job leaves the records
matching the data.

Every operation appends its ``crypto.*`` audit event (:func:`crypto_event`, key IDs
only) in the request's transaction: quick ones once done, jobs once when accepted
(``result="started"``) and once when :func:`poll` sees them end (their final state).
"""

from __future__ import annotations

import base64
import contextlib
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    EncryptionRecord,
    Host,
    Job,
    JobState,
    KeyProvider,
    ProviderKind,
    StoragePolicy,
    VirtualDisk,
    VirtualMachine,
)
from vmcrypt.control.db.repo import (
    add_disk as record_disk,
)
from vmcrypt.control.db.repo import (
    clear_encryption,
    create_job,
    default_provider,
    encryption_records,
    finish_job,
    list_jobs,
    record_encryption,
    report_progress,
    request_cancel,
)
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict, NotFound
from vmcrypt.control.hostclient import HostClient, HostNotFound
from vmcrypt.control.services.audit import crypto_event
from vmcrypt.control.services.keys import (
    HostConnector,
    hosts_of_vm,
    load_standard,
    push_kek,
)
from vmcrypt.control.services.vms import host_of
from vmcrypt.exceptions import UsageError
from vmcrypt.providers import COMPONENT_VM, KekRef, KeyOwner

__all__ = ["MAX_DISK_SIZE", "JobRef", "add_disk", "add_vtpm", "cancel", "decrypt",
           "deep_rekey", "encrypt", "job_ref", "poll", "remove_vtpm", "shallow_rekey",
           "track_host_job"]

#: VM home, or one disk by index.
Component = Literal["home"] | int
#: What a re-key changes: VM home only, one disk, or every encrypted component.
RekeyTarget = Literal["home", "all"] | int
_FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
#: Disk sizes: whole 4096-byte sectors, at most 16 TiB (the host's own limit).
SECTOR: Final = 4096
MAX_DISK_SIZE: Final = 1 << 44


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


def encrypt(session: Session, hosts: HostConnector, vm: VirtualMachine, component: Component,
            *, user_name: str | None = None) -> Job:
    """Start encrypting VM home or one disk (VM home first) as a job."""
    client = _ready(session, hosts, vm)
    _not_busy(session, hosts, vm)
    records = _records(session, vm)
    if component == "home":
        if "home" in records:
            raise Conflict(f"VM {vm.name!r}: VM home is already encrypted; re-key it instead")
        provider = _provider_for(session, vm)
        key_id: str | None = None
        if provider.kind is ProviderKind.STANDARD:
            key_id = _new_standard_kek(session, hosts, vm, provider)
            host_job = client.encrypt(vm.instance_uuid, None, provider_id=provider.name,
                                      key_id=key_id)
        elif provider.kind is ProviderKind.NATIVE:
            host_job = client.encrypt(vm.instance_uuid, None, provider_id=provider.name)
        else:
            raise Conflict(f"encrypting with a {provider.kind} provider is not supported yet")
        job = track_host_job(session, vm, "vm.encrypt", "home", host_job, user_name)
        _started(session, job, vm, provider=provider.name, key_id=key_id)
        return job
    disk = _disk(vm, component)
    home = records.get("home")
    if home is None:
        raise Conflict(f"VM {vm.name!r}: disk {disk} cannot be encrypted while VM home is "
                       "not; encrypt VM home first")
    if f"disk-{disk}" in records:
        raise Conflict(f"VM {vm.name!r}: disk {disk} is already encrypted; re-key it instead")
    if home.key_id is not None:
        _push_existing(session, hosts, vm, home.provider, home.key_id)
    host_job = client.encrypt(vm.instance_uuid, disk)
    job = track_host_job(session, vm, "vm.encrypt", f"disk-{disk}", host_job, user_name)
    _started(session, job, vm, provider=home.provider.name, key_id=home.key_id)
    return job


def decrypt(session: Session, hosts: HostConnector, vm: VirtualMachine, component: Component,
            *, user_name: str | None = None) -> Job:
    """Start decrypting one disk, or VM home once no disk is encrypted, as a job."""
    client = _ready(session, hosts, vm)
    _not_busy(session, hosts, vm)
    records = _records(session, vm)
    name = "home" if component == "home" else f"disk-{_disk(vm, component)}"
    if name not in records:
        raise Conflict(f"VM {vm.name!r}: {_label(name)} is not encrypted")
    if name == "home":
        still = sorted(n for n in records if n != "home")
        if still:
            raise Conflict(f"VM {vm.name!r}: VM home cannot be decrypted while "
                           f"{', '.join(still)} is encrypted; decrypt the disks first")
        if vm.has_vtpm:
            raise Conflict(f"VM {vm.name!r}: VM home cannot be decrypted while the VM has a "
                           "vTPM (its state is sealed by VM home's DEK); remove the vTPM first")
    record = records[name]
    if record.key_id is not None:
        _push_existing(session, hosts, vm, record.provider, record.key_id)
    disk = None if name == "home" else int(name.removeprefix("disk-"))
    host_job = client.decrypt(vm.instance_uuid, disk)
    job = track_host_job(session, vm, "vm.decrypt", name, host_job, user_name)
    _started(session, job, vm, provider=record.provider.name, key_id=record.key_id)
    return job


def shallow_rekey(session: Session, hosts: HostConnector, vm: VirtualMachine,
                  component: RekeyTarget = "all", *, user_name: str | None = None
                  ) -> str | None:
    """New KEK for ``component`` (default: every encrypted one), DEKs re-wrapped; its key ID.

    Answered at once (no data is rewritten). A standard provider's KEK comes from its
    KMS and is pushed to the cluster; the old KEK then leaves the hosts' caches unless
    another component or VM still uses it. A native provider's VM gets its new KEK from
    its host, made from the primary key the control plane pushed; the control plane
    records only the wrapped KEK (the same bytes as the keySafe) and returns None.
    """
    client = _ready(session, hosts, vm)
    home, disks, label, records = _rekey_plan(session, hosts, vm, component)
    provider = records[_lead(label, disks)].provider
    old = {(r.provider.name, r.key_id) for r in records.values() if r.key_id is not None}
    if provider.kind is ProviderKind.STANDARD:
        key_id: str | None = _new_standard_kek(session, hosts, vm, provider)
    elif provider.kind is ProviderKind.NATIVE:
        key_id = None  # the host makes the KEK from the primary key it holds
    else:
        raise Conflict(f"a shallow re-key of a {provider.kind} provider VM is not supported yet")
    client.shallow_rekey(vm.instance_uuid, provider_id=provider.name, key_id=key_id,
                         home=home, disks=disks)
    _sync_records(session, client, vm)
    _drop_unused(session, hosts, vm, {pair for pair in old if pair[1] != key_id})
    crypto_event(session, operation="rekey-shallow", vm=vm, component=label,
                 user_name=user_name, provider=provider.name, key_id=key_id)
    return key_id


def deep_rekey(session: Session, hosts: HostConnector, vm: VirtualMachine,
               component: RekeyTarget = "all", *, user_name: str | None = None) -> Job:
    """Start a deep re-key of ``component`` (default: every encrypted one) as a job.

    New DEKs, the data re-encrypted; each component keeps its KEK.
    """
    client = _ready(session, hosts, vm)
    home, disks, label, records = _rekey_plan(session, hosts, vm, component)
    for record in records.values():
        if record.key_id is not None:
            _push_existing(session, hosts, vm, record.provider, record.key_id)
    host_job = client.deep_rekey(vm.instance_uuid, home=home, disks=disks)
    job = track_host_job(session, vm, "vm.rekey-deep", label, host_job, user_name)
    lead = records[_lead(label, disks)]
    _started(session, job, vm, provider=lead.provider.name, key_id=lead.key_id)
    return job


def add_disk(session: Session, hosts: HostConnector, vm: VirtualMachine, *, size: int,
             encrypted: bool | None = None, user_name: str | None = None) -> VirtualDisk:
    """Add a disk, encrypted iff VM home is unless ``encrypted`` says otherwise.

    An encrypted disk gets its own DEK wrapped by VM home's KEK (pushed again first: a
    host may have restarted); the control plane records the disk and, from the host's
    keySafe, its key ID (or wrapped KEK) only. Asking for an encrypted disk on a VM
    whose home is clear is a 409: the seeds encrypt VM home first.
    """
    if size <= 0 or size % SECTOR or size > MAX_DISK_SIZE:
        raise UsageError(f"a disk size must be a positive multiple of {SECTOR} bytes up to "
                         f"{MAX_DISK_SIZE} (16 TiB), not {size}")
    client = _ready(session, hosts, vm)
    _not_busy(session, hosts, vm)
    home = _records(session, vm).get("home")
    want = home is not None if encrypted is None else encrypted
    if want and home is None:
        raise Conflict(f"VM {vm.name!r}: an encrypted disk needs an encrypted VM home; "
                       "encrypt VM home first, or add the disk with encrypted=false")
    if want and home is not None and home.key_id is not None:
        _push_existing(session, hosts, vm, home.provider, home.key_id)
    index = client.add_disk(vm.instance_uuid, size, encrypted=want)
    disk = record_disk(session, vm_id=vm.id, size_bytes=size, index=index)
    session.refresh(vm, ["disks"])
    _sync_records(session, client, vm)
    if want:
        record = _records(session, vm).get(f"disk-{index}")
        crypto_event(session, operation="add-disk", vm=vm, component=f"disk-{index}",
                     user_name=user_name,
                     provider=record.provider.name if record else None,
                     key_id=record.key_id if record else None, details={"size": size})
    return disk


def add_vtpm(session: Session, hosts: HostConnector, vm: VirtualMachine, *,
             user_name: str | None = None) -> VirtualMachine:
    """Add a vTPM: it needs an encrypted VM home, whose DEK seals its state on the host."""
    client = _ready(session, hosts, vm)
    _not_busy(session, hosts, vm)
    home = _records(session, vm).get("home")
    if home is None:
        raise Conflict(f"VM {vm.name!r}: a vTPM needs an encrypted VM home (its DEK seals "
                       "the vTPM state); encrypt VM home first")
    if vm.has_vtpm:
        raise Conflict(f"VM {vm.name!r} already has a vTPM")
    if home.key_id is not None:
        _push_existing(session, hosts, vm, home.provider, home.key_id)
    view = client.add_vtpm(vm.instance_uuid)
    vm.has_vtpm = bool(view.get("vtpm", True))
    session.flush()
    crypto_event(session, operation="add-vtpm", vm=vm, component="vtpm", user_name=user_name,
                 provider=home.provider.name, key_id=home.key_id)
    return vm


def remove_vtpm(session: Session, hosts: HostConnector, vm: VirtualMachine, *,
                user_name: str | None = None) -> VirtualMachine:
    """Remove the vTPM and its sealed state (needed before VM home can be decrypted).

    Idempotent, as an HTTP DELETE: a VM without a vTPM (in the host's own view) is
    answered as it is, with no event, since nothing cryptographic happened.
    """
    client = _ready(session, hosts, vm)
    _not_busy(session, hosts, vm)
    if not client.get_vm(vm.instance_uuid).get("vtpm"):
        vm.has_vtpm = False
        session.flush()
        return vm
    home = _records(session, vm).get("home")
    view = client.remove_vtpm(vm.instance_uuid)
    vm.has_vtpm = bool(view.get("vtpm", False))
    session.flush()
    crypto_event(session, operation="remove-vtpm", vm=vm, component="vtpm",
                 user_name=user_name, provider=home.provider.name if home else None,
                 key_id=home.key_id if home else None)
    return vm


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


# -- helpers --------------------------------------------------------------------------
def _ready(session: Session, hosts: HostConnector, vm: VirtualMachine) -> HostClient:
    if vm.locked:
        reason = vm.lock_reason.value if vm.lock_reason else "unknown"
        raise Conflict(f"VM {vm.name!r} is locked ({reason}): unlock it first")
    return host_of(session, hosts, vm)


def _not_busy(session: Session, hosts: HostConnector, vm: VirtualMachine) -> None:
    """409 while a job of the VM still runs; a job that ended unseen is polled to its end."""
    for job in list_jobs(session, target_type="vm", target_id=vm.id, limit=1000):
        if job.state not in _FINAL:
            poll(session, hosts, job)
        if job.state not in _FINAL:
            raise Conflict(f"VM {vm.name!r} is busy: job {job.id} ({job.type}) is "
                           f"{job.state}; wait for it or cancel it, then retry")


def _rekey_plan(session: Session, hosts: HostConnector, vm: VirtualMachine,
                component: RekeyTarget
                ) -> tuple[bool, list[int] | None, str, dict[str, EncryptionRecord]]:
    """(home?, disks or None for all, event label, records of the targets), or 409/404."""
    _not_busy(session, hosts, vm)
    records = _records(session, vm)
    if "home" not in records:
        raise Conflict(f"VM {vm.name!r} is not encrypted: there is nothing to re-key")
    if component == "all":
        return True, None, "all", records
    if component == "home":
        return True, [], "home", {"home": records["home"]}
    name = f"disk-{_disk(vm, component)}"
    if name not in records:
        raise Conflict(f"VM {vm.name!r}: disk {component} is not encrypted, so it cannot be "
                       "re-keyed; encrypt it instead")
    return False, [int(component)], name, {name: records[name]}


def _lead(label: str, disks: list[int] | None) -> str:
    """The record whose provider a re-key of ``label`` uses: VM home's, or the disk's."""
    return f"disk-{disks[0]}" if label.startswith("disk-") and disks else "home"


def _records(session: Session, vm: VirtualMachine) -> dict[str, EncryptionRecord]:
    by_disk = {d.id: d.index for d in vm.disks}
    return {"home" if r.disk_id is None else f"disk-{by_disk[r.disk_id]}": r
            for r in encryption_records(session, vm_id=vm.id)}


def _disk(vm: VirtualMachine, component: Component | RekeyTarget) -> int:
    assert not isinstance(component, str)
    if component not in {d.index for d in vm.disks}:
        raise NotFound(f"VM {vm.name!r} has no disk {component}")
    return component


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


def _label(name: str) -> str:
    return "VM home" if name == "home" else name.replace("-", " ")


def _provider_for(session: Session, vm: VirtualMachine) -> KeyProvider:
    """The VM's encryption policy's provider, else the default one."""
    if vm.storage_policy_id is not None:
        policy = fetch(session, StoragePolicy, vm.storage_policy_id)
        if policy.encryption and policy.key_provider_id is not None:
            return fetch(session, KeyProvider, policy.key_provider_id)
    provider = default_provider(session)
    if provider is None:
        raise Conflict("no default key provider: add one, or give the VM an encryption "
                       "policy that names a provider")
    return provider


def _new_standard_kek(session: Session, hosts: HostConnector, vm: VirtualMachine,
                      provider: KeyProvider) -> str:
    """A new KEK (KMS Create, tagged with the VM), pushed to every host of the cluster."""
    standard = load_standard(provider)
    try:
        new = standard.new_kek(owner=KeyOwner(COMPONENT_VM, vm.name, vm.instance_uuid))
    finally:
        standard.close()
    key_id = new.ref.key_id
    assert key_id is not None
    _push_or_refuse(session, hosts, vm, provider, key_id, new.kek)
    return key_id


def _push_existing(session: Session, hosts: HostConnector, vm: VirtualMachine,
                   provider: KeyProvider, key_id: str) -> None:
    """Fetch an existing KEK by ID and push it again: a host may have restarted."""
    standard = load_standard(provider)
    try:
        kek = standard.get_kek(KekRef(key_id=key_id))
    finally:
        standard.close()
    _push_or_refuse(session, hosts, vm, provider, key_id, kek)


def _push_or_refuse(session: Session, hosts: HostConnector, vm: VirtualMachine,
                    provider: KeyProvider, key_id: str, kek: bytes) -> None:
    failed = push_kek(session, hosts, vm, provider_id=provider.name, key_id=key_id, kek=kek)
    own = session.get(Host, vm.host_id) if vm.host_id is not None else None
    if own is not None and own.name in failed:
        raise Conflict(f"the KEK could not be pushed to host {own.name!r}: see the events")


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


def _progress(session: Session, job: Job, remote: dict[str, Any]) -> None:
    total = int(remote.get("bytes_total") or 0)
    done = int(remote.get("bytes_done") or 0)
    if total:
        job.bytes_total = max(total, done)
    report_progress(session, job_id=job.id, bytes_done=done,
                    rate_bytes_per_second=float(remote.get("rate") or 0.0))
    if remote.get("percent") is not None:
        job.progress_percent = float(remote["percent"])


def _sync_records(session: Session, client: HostClient, vm: VirtualMachine) -> None:
    """Set the encryption records from the host's view of the VM (its keySafes)."""
    view = client.get_vm(vm.instance_uuid)
    current = _records(session, vm)
    by_index = {d.index: d for d in vm.disks}
    home = view.get("home")
    if home is not None:
        _record(session, vm, None, home)
    for disk in view.get("disks", []):
        row = by_index.get(int(disk["index"]))
        if row is None:
            continue
        if disk.get("encryption"):
            _record(session, vm, row.id, disk["encryption"])
        elif f"disk-{row.index}" in current:
            clear_encryption(session, vm_id=vm.id, disk_id=row.id)
    if home is None and "home" in current:
        clear_encryption(session, vm_id=vm.id)
    vm.has_vtpm = bool(view.get("vtpm", vm.has_vtpm))
    session.flush()


def _record(session: Session, vm: VirtualMachine, disk_id: int | None,
            facts: dict[str, Any]) -> None:
    provider = session.scalars(
        select(KeyProvider).where(KeyProvider.name == facts["provider_id"])).one()
    existing = next((r for r in encryption_records(session, vm_id=vm.id)
                     if r.disk_id == disk_id), None)
    wrapped = facts.get("wrapped_kek")
    if existing is not None and existing.key_provider_id == provider.id and (
            existing.key_id == facts.get("key_id")) and (
            existing.wrapped_kek == (base64.b64decode(wrapped) if wrapped else None)):
        return  # unchanged: keep the record (and its creation time)
    if facts.get("key_id") is not None:
        record_encryption(session, vm_id=vm.id, key_provider_id=provider.id,
                          disk_id=disk_id, key_id=facts["key_id"])
    elif wrapped:
        record_encryption(session, vm_id=vm.id, key_provider_id=provider.id,
                          disk_id=disk_id, wrapped_kek=base64.b64decode(wrapped))


def _drop_unused(session: Session, hosts: HostConnector, vm: VirtualMachine,
                 keys: set[tuple[str, str]]) -> None:
    """Drop (provider, key ID) KEKs from the VM's hosts unless a record still uses them."""
    for provider, key_id in sorted(keys):
        others = session.scalar(select(EncryptionRecord.id).where(
            EncryptionRecord.key_id == key_id).limit(1))
        if others is not None:
            continue
        for host in hosts_of_vm(session, vm):
            hosts.client(host).delete_kek(provider, key_id)
