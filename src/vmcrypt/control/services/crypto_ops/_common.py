"""What every cryptographic operation of the control plane shares.

Reading a VM's encryption records by component (``home``, ``disk-N``), getting a KEK
from a standard provider (KMS Create tagged with the VM) or again by key ID, pushing it
to every host of the VM's cluster, and setting the records from the host's view of the
VM (its keySafes are the truth). Key IDs and wrapped KEKs only: a KEK passes through
memory on its way to the hosts and is never stored here.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    EncryptionRecord,
    Host,
    Job,
    JobState,
    KeyProvider,
    StoragePolicy,
    VirtualMachine,
)
from vmcrypt.control.db.repo import (
    clear_encryption,
    default_provider,
    encryption_records,
    report_progress,
)
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict, NotFound
from vmcrypt.control.hostclient import HostClient
from vmcrypt.control.services.keys import (
    HostConnector,
    hosts_of_vm,
    load_standard,
    push_kek,
)
from vmcrypt.control.services.records import record_from_host
from vmcrypt.control.services.vms import MAX_DISK_SIZE, SECTOR, host_of
from vmcrypt.providers import COMPONENT_VM, KekRef, KeyOwner

__all__ = ["MAX_DISK_SIZE", "SECTOR", "Component", "RekeyTarget"]

#: VM home, or one disk by index.
Component = Literal["home"] | int
#: What a re-key changes: VM home only, one disk, or every encrypted component.
RekeyTarget = Literal["home", "all"] | int
_FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})




def _ready(session: Session, hosts: HostConnector, vm: VirtualMachine) -> HostClient:
    if vm.locked:
        reason = vm.lock_reason.value if vm.lock_reason else "unknown"
        raise Conflict(f"VM {vm.name!r} is locked ({reason}): unlock it first")
    return host_of(session, hosts, vm)

def _records(session: Session, vm: VirtualMachine) -> dict[str, EncryptionRecord]:
    by_disk = {d.id: d.index for d in vm.disks}
    return {"home" if r.disk_id is None else f"disk-{by_disk[r.disk_id]}": r
            for r in encryption_records(session, vm_id=vm.id)}

def _disk(vm: VirtualMachine, component: Component | RekeyTarget) -> int:
    assert not isinstance(component, str)
    if component not in {d.index for d in vm.disks}:
        raise NotFound(f"VM {vm.name!r} has no disk {component}")
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
        record_from_host(session, vm, None, home)
    for disk in view.get("disks", []):
        row = by_index.get(int(disk["index"]))
        if row is None:
            continue
        if disk.get("encryption"):
            record_from_host(session, vm, row.id, disk["encryption"])
        elif f"disk-{row.index}" in current:
            clear_encryption(session, vm_id=vm.id, disk_id=row.id)
    if home is None and "home" in current:
        clear_encryption(session, vm_id=vm.id)
    vm.has_vtpm = bool(view.get("vtpm", vm.has_vtpm))
    session.flush()


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
