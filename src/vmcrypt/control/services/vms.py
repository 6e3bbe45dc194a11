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
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    Datastore,
    Host,
    KeyProvider,
    ProviderKind,
    Severity,
    StoragePolicy,
    VirtualDisk,
    VirtualMachine,
)
from vmcrypt.control.db.repo import (
    add_disk,
    append_event,
    clear_encryption,
    create_vm,
    default_provider,
    encryption_records,
    record_encryption,
    set_registration,
)
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict
from vmcrypt.control.hostclient import HostClient
from vmcrypt.control.services import trusted
from vmcrypt.control.services.audit import crypto_event
from vmcrypt.control.services.keys import (
    HostConnector,
    forget_keks,
    hosts_of_vm,
    load_standard,
    push_kek,
    push_native_provider,
    refresh_vm_keys,
)
from vmcrypt.control.services.records import record_from_host
from vmcrypt.exceptions import UsageError, VmcryptError
from vmcrypt.kmip.client import KmipClient
from vmcrypt.kmip.exceptions import KmipConnectionError, KmipError, OperationFailed
from vmcrypt.kmip.tags import ResultReason
from vmcrypt.pki.tls import client_context
from vmcrypt.providers import COMPONENT_VM, KeyOwner

__all__ = ["MAX_DISK_SIZE", "ORPHAN_EVENT", "SECTOR", "after_rollback", "create", "delete",
           "destroy_kek", "discard_new_kek", "host_of", "key_ids", "register",
           "register_found", "unlock", "unregister"]

#: Event type when a KEK made for a failed operation could not be destroyed on the KMS.
ORPHAN_EVENT: Final = "kms.key.orphaned"
_AFTER_ROLLBACK: Final = "vmcrypt_after_rollback"

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
    # A cluster's default provider wins over the global one; a trusted provider's
    # host gets its KEK itself (services/trusted.py): no KEK is made or pushed here.
    provider = trusted.policy_provider(session, host_id=host_id,
                                       storage_policy_id=storage_policy_id)
    if provider is not None and provider.kind is ProviderKind.TRUSTED:
        return trusted.create_vm(session, hosts, provider, name=name, datastore_id=datastore_id,
                                 host_id=host_id, disk_sizes=disk_sizes,
                                 storage_policy_id=storage_policy_id, user_name=user_name)
    vm = create_vm(session, name=name, datastore_id=datastore_id, host_id=host_id,
                   storage_policy_id=storage_policy_id)
    disks = [add_disk(session, vm_id=vm.id, size_bytes=size) for size in disk_sizes]
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
    try:
        record_encryption(session, vm_id=vm.id, key_provider_id=provider.id, key_id=key_id)
        for disk in disks:
            record_encryption(session, vm_id=vm.id, key_provider_id=provider.id,
                              disk_id=disk.id, key_id=key_id)
        failed = push_kek(session, hosts, vm, provider_id=provider.name, key_id=key_id,
                          kek=new.kek)
        if client.name in failed:
            raise Conflict(f"the KEK could not be pushed to host {client.name!r}: see the "
                           "events")
        client.create_vm(vm.instance_uuid, name, disk_sizes, provider_id=provider.name,
                         key_id=key_id)
    except Exception as exc:
        # The transaction rolls back: no host and no KMS may keep a KEK no record names.
        discard_new_kek(hosts, hosts_of_vm(session, vm), provider, key_id, vm_name=name,
                        instance_uuid=vm.instance_uuid, error=exc)
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
    trusted.forget_vm(session, hosts, vm)  # trusted KEKs are cached by VM, not by key ID
    _event(session, vm, "unregister", user_name, details={"dropped_key_ids": dropped})
    set_registration(session, vm_id=vm.id, host_id=None)
    return dropped


def register(session: Session, hosts: HostConnector, vm: VirtualMachine, *, host_id: int,
             sealing_key: bytes, user_name: str | None = None) -> VirtualMachine:
    """Register a known, unregistered VM with ``host_id`` again (vSphere's RegisterVM).

    The host's view of the VM folder is the truth: the encryption records are set from
    its keySafes, then every KEK is fetched **by key ID** and pushed to every host of
    the cluster (see :func:`_adopt`). Refused (409, nothing changed) when the VM is
    registered already or the host does not reach the VM's datastore; 404 when the
    host does not find the VM's files.
    """
    if vm.registered:
        raise Conflict(f"VM {vm.name!r} is already registered: unregister it first")
    host = fetch(session, Host, host_id)
    datastore = fetch(session, Datastore, vm.datastore_id)
    _must_reach(datastore, host)
    view = hosts.client(host).get_vm(vm.instance_uuid)
    _known_providers(session, view)
    return _adopt(session, hosts, vm, host, view, sealing_key=sealing_key,
                  user_name=user_name)


def register_found(session: Session, hosts: HostConnector, *, datastore_id: int,
                   instance_uuid: str, host_id: int, name: str | None, sealing_key: bytes,
                   user_name: str | None = None) -> VirtualMachine:
    """Register a VM found on a datastore that the control plane does not know yet.

    Its name (unless ``name`` is given), disks, vTPM and keys come from the host's view
    of the folder. Refused before anything changes: a VM the control plane knows (409:
    register it by ID), a taken name (409), a host that does not reach the datastore
    (409), a keySafe naming a key provider the control plane does not have (409), no
    such VM on the datastore (404).
    """
    datastore = fetch(session, Datastore, datastore_id)
    host = fetch(session, Host, host_id)
    _must_reach(datastore, host)
    known = session.scalar(select(VirtualMachine).where(
        VirtualMachine.instance_uuid == instance_uuid))
    if known is not None:
        state = "registered" if known.registered else "unregistered"
        raise Conflict(f"VM {instance_uuid} is already known as {known.name!r} ({state}): "
                       f"register it by its ID ({known.id})")
    view = hosts.client(host).get_vm(instance_uuid)
    vm_name = name or str(view["name"])
    if session.scalar(select(VirtualMachine.id).where(VirtualMachine.name == vm_name)):
        raise Conflict(f"a VM named {vm_name!r} already exists: give another name")
    _known_providers(session, view)
    vm = create_vm(session, name=vm_name, datastore_id=datastore.id,
                   instance_uuid=instance_uuid)
    return _adopt(session, hosts, vm, host, view, sealing_key=sealing_key,
                  user_name=user_name)


def _adopt(session: Session, hosts: HostConnector, vm: VirtualMachine, host: Host,
           view: dict[str, Any], *, sealing_key: bytes,
           user_name: str | None) -> VirtualMachine:
    """Records from ``view``, registration on ``host``, keys to every host of the cluster.

    Standard KEKs are fetched by key ID and pushed (:func:`refresh_vm_keys`); a key that
    cannot be had leaves the VM registered but **locked** with the reason, as after a
    host restart (``vm unlock`` retries). Native providers' primary keys are pushed so
    the hosts open the wrapped KEKs themselves.
    """
    by_index = {d.index: d for d in vm.disks}
    for disk in view.get("disks", []):
        if int(disk["index"]) not in by_index:
            by_index[int(disk["index"])] = add_disk(session, vm_id=vm.id,
                                                    size_bytes=int(disk["size"]),
                                                    index=int(disk["index"]))
    seen: set[int | None] = set()
    if view.get("home") is not None:
        record_from_host(session, vm, None, view["home"])
        seen.add(None)
    for disk in view.get("disks", []):
        if disk.get("encryption"):
            row = by_index[int(disk["index"])]
            record_from_host(session, vm, row.id, disk["encryption"])
            seen.add(row.id)
    for record in encryption_records(session, vm_id=vm.id):
        if record.disk_id not in seen:
            clear_encryption(session, vm_id=vm.id, disk_id=record.disk_id)
    vm.has_vtpm = bool(view.get("vtpm", False))
    set_registration(session, vm_id=vm.id, host_id=host.id)
    session.refresh(vm)
    natives = {r.provider.name: r.provider for r in encryption_records(session, vm_id=vm.id)
               if r.provider.kind is ProviderKind.NATIVE}
    for native in natives.values():
        if native.backed_up or native.backup_acknowledged:  # the backup gate, as on reconnect
            push_native_provider(session, hosts, native, sealing_key=sealing_key,
                                 targets=hosts_of_vm(session, vm))
    reason = refresh_vm_keys(session, hosts, vm)
    records = encryption_records(session, vm_id=vm.id)
    home = next((r for r in records if r.disk_id is None), None)
    crypto_event(session, operation="register", vm=vm, component="all", user_name=user_name,
                 provider=home.provider.name if home else None,
                 key_id=home.key_id if home else None,
                 details={"host": host.name, "locked": reason is not None,
                          "lock_reason": reason.value if reason else None,
                          "key_ids": sorted({r.key_id for r in records if r.key_id})})
    return vm


def _known_providers(session: Session, view: dict[str, Any]) -> None:
    """409 when a keySafe names a key provider the control plane does not have."""
    parts = [view.get("home")] + [d.get("encryption") for d in view.get("disks", [])]
    for name in sorted({str(p["provider_id"]) for p in parts if p}):
        row = session.scalar(select(KeyProvider).where(KeyProvider.name == name))
        if row is None:
            raise Conflict(f"the VM's keys come from key provider {name!r}, which this "
                           "control plane does not know: add it, then register the VM")
        if row.kind not in (ProviderKind.STANDARD, ProviderKind.NATIVE):
            raise Conflict(f"registering a {row.kind} provider VM is not supported yet")


def _must_reach(datastore: Datastore, host: Host) -> None:
    """409 unless ``host`` mounts ``datastore`` (its cluster's, or its own)."""
    reaches = (datastore.cluster_id == host.cluster_id if datastore.cluster_id is not None
               else datastore.host_id == host.id)
    if not reaches:
        raise Conflict(f"host {host.name!r} does not reach datastore {datastore.name!r}: "
                       "choose a host of the datastore's cluster")


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


def discard_new_kek(hosts: HostConnector, targets: list[Host], provider: KeyProvider,
                    key_id: str, *, vm_name: str, instance_uuid: str,
                    error: BaseException) -> bool:
    """Undo a KEK the KMS made for an operation that then failed; True when all went.

    The KEK leaves ``targets``' caches, then is revoked and destroyed on the KMS, so no
    orphan key stays Active there tagged with a VM that does not exist. Best effort:
    when the KMS cannot be reached the failure is remembered on ``error`` (see
    :func:`after_rollback`) so the caller can record it once its transaction rolled
    back — the request's own events are rolled back with it.
    """
    _withdraw(hosts, targets, provider.name, key_id)
    reason = destroy_kek(provider, key_id)
    if reason is None:
        return True
    pending: list[dict[str, object]] = error.__dict__.setdefault(_AFTER_ROLLBACK, [])
    pending.append({
        "type": ORPHAN_EVENT, "severity": Severity.ERROR, "object_type": "key-provider",
        "object_id": provider.name,
        "message": f"key {key_id} of provider {provider.name!r}, made for VM {vm_name!r} "
                   f"whose operation failed, could not be destroyed: {reason}; revoke and "
                   "destroy it on the KMS",
        "details": {"provider": provider.name, "key_id": key_id, "vm": vm_name,
                    "instance_uuid": instance_uuid, "error": reason},
    })
    return False


def after_rollback(session: Session, error: BaseException) -> bool:
    """Append the events ``error`` carries for after the rollback; True if there were.

    The caller has rolled ``session`` back and commits after this.
    """
    pending = error.__dict__.get(_AFTER_ROLLBACK) or []
    for facts in pending:
        append_event(session, **facts)
    return bool(pending)


def destroy_kek(provider: KeyProvider, key_id: str) -> str | None:
    """Revoke (cessation of operation) and destroy ``key_id`` on the provider's KMS.

    None once destroyed (or already gone), else why not — never key bytes. The first
    reachable server answers, as for every KMIP call of a standard provider.
    :class:`~vmcrypt.providers.StandardKeyProvider` has no revoke/destroy of its own
    yet, so this speaks KMIP to the provider's configured servers directly.
    """
    standard = load_standard(provider)
    failures: list[str] = []
    for config in standard.servers:
        context = client_context(ca_file=config.ca_file, cert_file=config.cert_file,
                                 key_file=config.key_file)
        client = KmipClient(config.host, config.port, ssl_context=context, timeout=5.0,
                            server_hostname=config.server_hostname)
        try:
            client.revoke(key_id, message="the operation that made this key failed")
            client.destroy(key_id)
            return None
        except KmipConnectionError as exc:
            failures.append(f"{config.address}: {exc}")
        except OperationFailed as exc:
            if exc.reason is ResultReason.ITEM_NOT_FOUND:
                return None
            return f"{config.address} refused: {exc}"
        except KmipError as exc:
            return f"{config.address}: {exc}"
        finally:
            client.close()
    return "no key server could be reached (" + "; ".join(failures) + ")"


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
