"""VM life cycle on the control plane: create, unregister, delete, unlock, disk data.

The control plane decides and stores IDs; providers hand out KEKs; hosts do the
cryptography. Creating an encrypted VM follows the seeds' standard flow: a new KEK
from the provider (tagged with the VM's name and instance UUID), its **key ID**
recorded, the KEK pushed to every host of the cluster, then the host creates the VM.

Each cryptographic step appends its ``crypto.*`` audit event (key IDs only) in the
request's transaction: creating an encrypted VM, and unregistering, deleting or
unlocking one.
"""

from __future__ import annotations

import base64
import contextlib
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    Host,
    KeyProvider,
    ProviderKind,
    StoragePolicy,
    VirtualDisk,
    VirtualMachine,
)
from vmcrypt.control.db.repo import (
    add_disk,
    create_vm,
    default_provider,
    encryption_records,
    record_encryption,
    set_registration,
)
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict
from vmcrypt.control.hostclient import HostClient
from vmcrypt.control.services.audit import crypto_event
from vmcrypt.control.services.keys import (
    HostConnector,
    forget_keks,
    hosts_of_vm,
    load_standard,
    push_kek,
    refresh_vm_keys,
)
from vmcrypt.exceptions import UsageError, VmcryptError
from vmcrypt.providers import COMPONENT_VM, KeyOwner

__all__ = ["MAX_DISK_SIZE", "SECTOR", "create", "delete", "host_of", "key_ids", "unlock",
           "unregister"]

#: Disk sizes: whole 4096-byte sectors, at most 16 TiB (the host's own limit).
SECTOR: Final = 4096
MAX_DISK_SIZE: Final = 1 << 44


def create(session: Session, hosts: HostConnector, *, name: str, datastore_id: int,
           host_id: int, disk_sizes: list[int],
           storage_policy_id: int | None = None,
           user_name: str | None = None) -> VirtualMachine:
    """Create a VM on ``host_id``; encrypted when its storage policy says so.

    VM names are unique here (409 otherwise): clients such as the CLI name VMs, as govc
    does, and a second VM of the same name would make every such command ambiguous.
    """
    for size in disk_sizes:  # before any KEK is made or pushed
        if size <= 0 or size % SECTOR or size > MAX_DISK_SIZE:
            raise UsageError(f"a disk size must be a positive multiple of {SECTOR} bytes up "
                             f"to {MAX_DISK_SIZE} (16 TiB), not {size}")
    if session.scalar(select(VirtualMachine.id).where(VirtualMachine.name == name)) is not None:
        raise Conflict(f"a VM named {name!r} already exists: choose another name")
    vm = create_vm(session, name=name, datastore_id=datastore_id, host_id=host_id,
                   storage_policy_id=storage_policy_id)
    disks = [add_disk(session, vm_id=vm.id, size_bytes=size) for size in disk_sizes]
    provider = _policy_provider(session, storage_policy_id)
    client = host_of(session, hosts, vm)
    if provider is None:
        client.create_vm(vm.instance_uuid, name, disk_sizes)
        return vm
    if provider.kind is ProviderKind.NATIVE:
        _create_native(session, client, vm, provider, disks, disk_sizes)
        crypto_event(session, operation="create", vm=vm, component="all",
                     user_name=user_name, provider=provider.name,
                     details={"disks": len(disk_sizes)})
        return vm
    if provider.kind is not ProviderKind.STANDARD:
        raise UsageError(f"creating {provider.kind} provider VMs through the control plane "
                         "is not supported yet: use a standard or native provider")
    standard = load_standard(provider)
    try:
        new = standard.new_kek(owner=KeyOwner(COMPONENT_VM, name, vm.instance_uuid))
    finally:
        standard.close()
    key_id = new.ref.key_id
    assert key_id is not None
    record_encryption(session, vm_id=vm.id, key_provider_id=provider.id, key_id=key_id)
    for disk in disks:
        record_encryption(session, vm_id=vm.id, key_provider_id=provider.id,
                          disk_id=disk.id, key_id=key_id)
    failed = push_kek(session, hosts, vm, provider_id=provider.name, key_id=key_id,
                      kek=new.kek)
    try:
        if client.name in failed:
            raise Conflict(f"the KEK could not be pushed to host {client.name!r}: see the "
                           "events")
        client.create_vm(vm.instance_uuid, name, disk_sizes, provider_id=provider.name,
                         key_id=key_id)
    except Exception:
        # The transaction rolls back; the hosts must not keep a KEK no record names.
        _withdraw(hosts, hosts_of_vm(session, vm), provider.name, key_id)
        raise
    crypto_event(session, operation="create", vm=vm, component="all", user_name=user_name,
                 provider=provider.name, key_id=key_id, details={"disks": len(disk_sizes)})
    return vm


def _create_native(session: Session, client: HostClient, vm: VirtualMachine,
                   provider: KeyProvider, disks: list[VirtualDisk], disk_sizes: list[int]
                   ) -> VirtualMachine:
    """Seeds (native provider): the host makes the KEK itself, wrapped by the primary key
    the control plane pushed to it; the control plane records only the wrapped KEK."""
    made = client.create_vm(vm.instance_uuid, vm.name, disk_sizes, provider_id=provider.name)
    home = made.get("home") or {}
    wrapped = home.get("wrapped_kek")
    if not wrapped:
        raise Conflict(f"host {client.name!r} did not report the wrapped KEK of VM {vm.name!r}")
    record_encryption(session, vm_id=vm.id, key_provider_id=provider.id,
                      wrapped_kek=base64.b64decode(wrapped))
    for disk, reported in zip(disks, made.get("disks", []), strict=False):
        facts = reported.get("encryption") or {}
        if facts.get("wrapped_kek"):
            record_encryption(session, vm_id=vm.id, key_provider_id=provider.id,
                              disk_id=disk.id, wrapped_kek=base64.b64decode(facts["wrapped_kek"]))
    return vm


def unregister(session: Session, hosts: HostConnector, vm: VirtualMachine, *,
               user_name: str | None = None) -> list[str]:
    """Unregister a VM (files stay): its KEKs leave every host's cache; key IDs dropped."""
    if not vm.registered:
        raise Conflict(f"VM {vm.name!r} is not registered")
    dropped = forget_keks(session, hosts, vm)
    _event(session, vm, "unregister", user_name, details={"dropped_key_ids": dropped})
    set_registration(session, vm_id=vm.id, host_id=None)
    return dropped


def delete(session: Session, hosts: HostConnector, vm: VirtualMachine, *,
           user_name: str | None = None) -> None:
    """Delete a VM's files on its host, drop its KEKs from every host, forget the VM."""
    dropped: list[str] = []
    if vm.registered:
        host_of(session, hosts, vm).delete_vm(vm.instance_uuid)
        dropped = forget_keks(session, hosts, vm)
    _event(session, vm, "delete", user_name, details={"dropped_key_ids": dropped})
    session.delete(vm)
    session.flush()


def unlock(session: Session, hosts: HostConnector, vm: VirtualMachine, *,
           user_name: str | None = None) -> VirtualMachine:
    """Retry getting and pushing a locked VM's keys (vSphere's CryptoUnlock)."""
    if not vm.registered:
        raise Conflict(f"VM {vm.name!r} is not registered: register it first")
    refresh_vm_keys(session, hosts, vm)
    reason = vm.lock_reason.value if vm.lock_reason else None
    _event(session, vm, "unlock", user_name, always=True,
           result="failed" if vm.locked else "succeeded", details={"lock_reason": reason})
    return vm


def _event(session: Session, vm: VirtualMachine, operation: str, user_name: str | None, *,
           always: bool = False, result: str = "succeeded",
           details: dict[str, object] | None = None) -> None:
    """``crypto.<operation>`` naming VM home's KEK, for an encrypted VM (or ``always``)."""
    records = encryption_records(session, vm_id=vm.id)
    home = next((r for r in records if r.disk_id is None), None)
    if home is None and not always:
        return  # a VM with no encrypted component: nothing cryptographic happened
    crypto_event(session, operation=operation, vm=vm, component="all", user_name=user_name,
                 provider=home.provider.name if home else None,
                 key_id=home.key_id if home else None, result=result, details=details)


def _withdraw(hosts: HostConnector, targets: list[Host], provider_id: str,
              key_id: str) -> None:
    """Best effort: drop a KEK pushed for a VM whose creation failed from its hosts."""
    for host in targets:
        with contextlib.suppress(VmcryptError):
            hosts.client(host).delete_kek(provider_id, key_id)


def host_of(session: Session, hosts: HostConnector, vm: VirtualMachine) -> HostClient:
    """The client of the host the VM is registered with."""
    if vm.host_id is None:
        raise Conflict(f"VM {vm.name!r} is not registered with a host")
    return hosts.client(fetch(session, Host, vm.host_id))


def key_ids(session: Session, vm: VirtualMachine) -> dict[str, str | None]:
    """Key ID per component (``home``, ``disk-N``); None for a wrapped (native) KEK."""
    result: dict[str, str | None] = {}
    by_disk = {d.id: d.index for d in vm.disks}
    for record in encryption_records(session, vm_id=vm.id):
        name = "home" if record.disk_id is None else f"disk-{by_disk[record.disk_id]}"
        result[name] = record.key_id
    return result


def _policy_provider(session: Session, policy_id: int | None) -> KeyProvider | None:
    if policy_id is None:
        return None
    policy = fetch(session, StoragePolicy, policy_id)
    if not policy.encryption:
        return None
    if policy.key_provider_id is None:
        return default_provider(session)
    return fetch(session, KeyProvider, policy.key_provider_id)
