"""Encrypt, decrypt and re-key existing VMs: the control plane's half of the seeds' flows.

The control plane checks the order rules against its own records first (encrypt VM
home before any disk, decrypt every disk before VM home) so a refused operation is a
409 at once and nothing changes. It then makes sure every host of the cluster holds
the KEK (by key ID from the provider — never stored here) and asks the VM's host to
do the work. Data-rewriting work runs as a host job; the control plane records a job
of its own that points at it, and each poll copies the host's progress into the
jobs table. When a host job ends, the encryption records are set from what the host
reports (its keySafes are the truth), so a failed or cancelled job leaves the records
matching the data.

The jobs table has no column for the host job yet (that needs a migration), so the
reference lives in the job's ``type``: ``vm.encrypt:disk-0@3:<host job UUID>``
(operation, component, host ID, host job ID); :func:`job_ref` parses it.
"""

from __future__ import annotations

import base64
import contextlib
from dataclasses import dataclass
from typing import Any, Literal

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
    VirtualMachine,
)
from vmcrypt.control.db.repo import (
    clear_encryption,
    create_job,
    default_provider,
    encryption_records,
    finish_job,
    record_encryption,
    report_progress,
    request_cancel,
)
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict
from vmcrypt.control.hostclient import HostClient, HostNotFound
from vmcrypt.control.services.keys import (
    HostConnector,
    hosts_of_vm,
    load_standard,
    push_kek,
)
from vmcrypt.control.services.vms import host_of
from vmcrypt.providers import COMPONENT_VM, KekRef, KeyOwner

__all__ = ["JobRef", "cancel", "decrypt", "deep_rekey", "encrypt", "job_ref", "poll",
           "shallow_rekey", "track_host_job"]

Component = Literal["home"] | int
_FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class JobRef:
    """What a control-plane job points at: operation, component, host and host job."""

    operation: str
    component: str
    host_id: int
    host_job_id: str

    def type(self) -> str:
        """The encoded form stored in ``Job.type``."""
        return f"{self.operation}:{self.component}@{self.host_id}:{self.host_job_id}"


def job_ref(job: Job) -> JobRef | None:
    """The host job a control-plane job follows; None for jobs of another shape."""
    head, sep, tail = job.type.partition("@")
    host_id, sep2, host_job_id = tail.partition(":")
    operation, sep3, component = head.partition(":")
    if not (sep and sep2 and sep3 and host_id.isdigit()):
        return None
    return JobRef(operation, component, int(host_id), host_job_id)


def encrypt(session: Session, hosts: HostConnector, vm: VirtualMachine, component: Component,
            *, user_name: str | None = None) -> Job:
    """Start encrypting VM home or one disk (VM home first) as a job."""
    client = _ready(session, hosts, vm)
    records = _records(session, vm)
    if component == "home":
        if "home" in records:
            raise Conflict(f"VM {vm.name!r}: VM home is already encrypted; re-key it instead")
        provider = _provider_for(session, vm)
        if provider.kind is ProviderKind.STANDARD:
            key_id = _new_standard_kek(session, hosts, vm, provider)
            host_job = client.encrypt(vm.instance_uuid, None, provider_id=provider.name,
                                      key_id=key_id)
        elif provider.kind is ProviderKind.NATIVE:
            host_job = client.encrypt(vm.instance_uuid, None, provider_id=provider.name)
        else:
            raise Conflict(f"encrypting with a {provider.kind} provider is not supported yet")
        return track_host_job(session, vm, "vm.encrypt", "home", host_job, user_name)
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
    return track_host_job(session, vm, "vm.encrypt", f"disk-{disk}", host_job, user_name)


def decrypt(session: Session, hosts: HostConnector, vm: VirtualMachine, component: Component,
            *, user_name: str | None = None) -> Job:
    """Start decrypting one disk, or VM home once no disk is encrypted, as a job."""
    client = _ready(session, hosts, vm)
    records = _records(session, vm)
    name = "home" if component == "home" else f"disk-{_disk(vm, component)}"
    if name not in records:
        raise Conflict(f"VM {vm.name!r}: {_label(name)} is not encrypted")
    if name == "home":
        still = sorted(n for n in records if n != "home")
        if still:
            raise Conflict(f"VM {vm.name!r}: VM home cannot be decrypted while "
                           f"{', '.join(still)} is encrypted; decrypt the disks first")
    record = records[name]
    if record.key_id is not None:
        _push_existing(session, hosts, vm, record.provider, record.key_id)
    disk = None if name == "home" else int(name.removeprefix("disk-"))
    host_job = client.decrypt(vm.instance_uuid, disk)
    return track_host_job(session, vm, "vm.decrypt", name, host_job, user_name)


def shallow_rekey(session: Session, hosts: HostConnector, vm: VirtualMachine) -> str | None:
    """New KEK from the provider, pushed to the cluster, DEKs re-wrapped; the new key ID.

    Answered at once (no data is rewritten). The old KEK then leaves the hosts'
    caches unless another VM uses it. A native VM gets a new KEK from its host
    (returns None: the control plane records only the wrapped KEK).
    """
    client = _ready(session, hosts, vm)
    home = _records(session, vm).get("home")
    if home is None:
        raise Conflict(f"VM {vm.name!r} is not encrypted: there is nothing to re-key")
    provider = home.provider
    if provider.kind is not ProviderKind.STANDARD:
        raise Conflict(f"a shallow re-key of a {provider.kind} provider VM is not supported yet")
    old = _old_key_ids(session, vm)
    key_id = _new_standard_kek(session, hosts, vm, provider)
    client.shallow_rekey(vm.instance_uuid, provider_id=provider.name, key_id=key_id)
    _sync_records(session, client, vm)
    _drop_unused(session, hosts, vm, provider, old - {key_id})
    return key_id


def deep_rekey(session: Session, hosts: HostConnector, vm: VirtualMachine, *,
               user_name: str | None = None) -> Job:
    """Start a deep re-key (new DEKs, every encrypted component's data re-encrypted)."""
    client = _ready(session, hosts, vm)
    records = _records(session, vm)
    if "home" not in records:
        raise Conflict(f"VM {vm.name!r} is not encrypted: there is nothing to re-key")
    for record in records.values():
        if record.key_id is not None:
            _push_existing(session, hosts, vm, record.provider, record.key_id)
    host_job = client.deep_rekey(vm.instance_uuid)
    return track_host_job(session, vm, "vm.rekey-deep", "all", host_job, user_name)


def poll(session: Session, hosts: HostConnector, job: Job) -> Job:
    """Copy the host job's progress into ``job``; on its end, set the records from the host."""
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
        _sync_records(session, client, vm)
        error = remote.get("error") or {}
        finish_job(session, job_id=job.id, state=state,
                   error=str(error.get("message", "failed")) if state is JobState.FAILED
                   else None)
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


def _records(session: Session, vm: VirtualMachine) -> dict[str, EncryptionRecord]:
    by_disk = {d.id: d.index for d in vm.disks}
    return {"home" if r.disk_id is None else f"disk-{by_disk[r.disk_id]}": r
            for r in encryption_records(session, vm_id=vm.id)}


def _disk(vm: VirtualMachine, component: Component) -> int:
    assert not isinstance(component, str)
    if component not in {d.index for d in vm.disks}:
        raise Conflict(f"VM {vm.name!r} has no disk {component}")
    return component


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

    When the host job ends, :func:`poll` sets ``vm``'s encryption records from the
    host's view, so ``vm`` must be the VM whose keySafes the job changes.
    """
    assert vm.host_id is not None
    ref = JobRef(operation, component, vm.host_id, host_job)
    return create_job(session, type=ref.type(), target_type="vm", target_id=vm.id,
                      user_name=user_name)


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


def _old_key_ids(session: Session, vm: VirtualMachine) -> set[str]:
    return {r.key_id for r in encryption_records(session, vm_id=vm.id) if r.key_id}


def _drop_unused(session: Session, hosts: HostConnector, vm: VirtualMachine,
                 provider: KeyProvider, key_ids: set[str]) -> None:
    """Drop KEKs this VM no longer uses from its hosts, unless another VM uses them."""
    for key_id in sorted(key_ids):
        others = session.scalar(select(EncryptionRecord.id).where(
            EncryptionRecord.key_id == key_id).limit(1))
        if others is not None:
            continue
        for host in hosts_of_vm(session, vm):
            hosts.client(host).delete_kek(provider.name, key_id)

