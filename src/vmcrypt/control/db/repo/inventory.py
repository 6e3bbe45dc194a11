"""Inventory: clusters, hosts, datastores, VMs and disks, and a VM's lock state."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    Cluster,
    ConnectionState,
    Datastore,
    Host,
    LockReason,
    VirtualDisk,
    VirtualMachine,
)
from vmcrypt.control.db.models.base import now as _now
from vmcrypt.control.db.repo._common import fetch, insert
from vmcrypt.exceptions import UsageError

__all__ = [
    "add_disk",
    "create_cluster",
    "create_datastore",
    "create_host",
    "create_vm",
    "enroll_host",
    "list_vms",
    "set_connection_state",
    "set_lock_state",
    "set_registration",
]


def create_cluster(session: Session, *, name: str) -> Cluster:
    """A new, empty cluster."""
    return insert(session, Cluster(name=name), what=f"cluster {name!r}")


def create_host(
    session: Session,
    *,
    name: str,
    hardware_uuid: str,
    cluster_id: int | None = None,
    api_url: str | None = None,
) -> Host:
    """A host known by name and hardware UUID, not yet enrolled (disconnected)."""
    if cluster_id is not None:
        fetch(session, Cluster, cluster_id)
    host = Host(
        name=name, hardware_uuid=_canonical_uuid(hardware_uuid), cluster_id=cluster_id,
        api_url=api_url,
    )
    return insert(session, host, what=f"host {name!r}")


def enroll_host(
    session: Session, *, host_id: int, certificate_fingerprint: str, at: datetime | None = None
) -> Host:
    """Record the certificate a host was issued; from now on it is pinned by it."""
    if len(certificate_fingerprint) != 64 or not _is_hex(certificate_fingerprint):
        raise UsageError("a certificate fingerprint is 64 hex digits (SHA-256)")
    host = fetch(session, Host, host_id)
    host.certificate_fingerprint = certificate_fingerprint.lower()
    host.enrolled_at = at or _now()
    session.flush()
    return host


def set_connection_state(session: Session, *, host_id: int, state: ConnectionState) -> Host:
    """Record whether the control plane can reach the host."""
    host = fetch(session, Host, host_id)
    host.connection_state = state
    session.flush()
    return host


def create_datastore(
    session: Session,
    *,
    name: str,
    path: str,
    cluster_id: int | None = None,
    host_id: int | None = None,
) -> Datastore:
    """A datastore shared by a cluster's hosts, or local to one host (exactly one)."""
    if (cluster_id is None) == (host_id is None):
        raise UsageError("a datastore belongs to exactly one cluster or one host")
    if cluster_id is not None:
        fetch(session, Cluster, cluster_id)
    if host_id is not None:
        fetch(session, Host, host_id)
    store = Datastore(name=name, path=path, cluster_id=cluster_id, host_id=host_id)
    return insert(session, store, what=f"datastore {name!r}")


def create_vm(
    session: Session,
    *,
    name: str,
    datastore_id: int,
    host_id: int | None = None,
    instance_uuid: str | None = None,
    storage_policy_id: int | None = None,
) -> VirtualMachine:
    """A VM record (its home folder), registered with ``host_id`` if one is given.

    The VM's cluster is its host's cluster: the set of hosts that need its KEKs.
    """
    fetch(session, Datastore, datastore_id)
    cluster_id = fetch(session, Host, host_id).cluster_id if host_id is not None else None
    vm = VirtualMachine(
        name=name,
        instance_uuid=_canonical_uuid(instance_uuid) if instance_uuid else str(uuid.uuid4()),
        datastore_id=datastore_id,
        host_id=host_id,
        cluster_id=cluster_id,
        storage_policy_id=storage_policy_id,
        registered=host_id is not None,
    )
    return insert(session, vm, what=f"VM {name!r}")


def add_disk(
    session: Session,
    *,
    vm_id: int,
    size_bytes: int,
    index: int | None = None,
    storage_policy_id: int | None = None,
) -> VirtualDisk:
    """A disk of a VM at ``index`` (default: the next free one), not yet encrypted."""
    if size_bytes <= 0:
        raise UsageError(f"a disk size must be positive, not {size_bytes}")
    fetch(session, VirtualMachine, vm_id)
    if index is None:
        last = session.scalar(select(func.max(VirtualDisk.index)).where(VirtualDisk.vm_id == vm_id))
        index = 0 if last is None else last + 1
    disk = VirtualDisk(
        vm_id=vm_id, index=index, size_bytes=size_bytes, storage_policy_id=storage_policy_id
    )
    return insert(session, disk, what=f"disk {index} of VM {vm_id}")


def set_lock_state(
    session: Session, *, vm_id: int, reason: LockReason | None
) -> VirtualMachine:
    """Lock a VM for ``reason``, or unlock it with ``reason=None``."""
    vm = fetch(session, VirtualMachine, vm_id)
    vm.locked = reason is not None
    vm.lock_reason = reason
    session.flush()
    return vm


def set_registration(
    session: Session, *, vm_id: int, host_id: int | None
) -> VirtualMachine:
    """Register a VM with a host, or unregister it (``host_id=None``); files stay."""
    vm = fetch(session, VirtualMachine, vm_id)
    host = fetch(session, Host, host_id) if host_id is not None else None
    vm.host_id = host_id
    vm.cluster_id = host.cluster_id if host is not None else None
    vm.registered = host is not None
    session.flush()
    return vm


def list_vms(
    session: Session,
    *,
    host_id: int | None = None,
    cluster_id: int | None = None,
    locked: bool | None = None,
) -> list[VirtualMachine]:
    """VMs, oldest first, optionally only those of a host, of a cluster, or (un)locked."""
    query = select(VirtualMachine).order_by(VirtualMachine.id)
    if host_id is not None:
        query = query.where(VirtualMachine.host_id == host_id)
    if cluster_id is not None:
        query = query.where(VirtualMachine.cluster_id == cluster_id)
    if locked is not None:
        query = query.where(VirtualMachine.locked == locked)
    return list(session.scalars(query))


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdefABCDEF" for char in text)


def _canonical_uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise UsageError(f"{text!r} is not a UUID") from None
