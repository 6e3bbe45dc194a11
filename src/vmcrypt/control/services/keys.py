"""Key distribution: KEKs from providers to the hosts that need them, by key ID.

The heart of the seeds' standard flow. The control plane never stores a KEK: it
holds key IDs, asks the provider for the KEK when a host needs it, and pushes it to
**every host of the VM's cluster** (or the VM's own host when it is standalone), so
any host on the shared datastore can open the VM. When a VM leaves (unregister,
delete) its KEK is dropped from those hosts unless another registered VM uses it.
When a host (re)connects it starts empty: every KEK it needs is fetched **by ID** in
batches and pushed again; a VM whose keys cannot be obtained is **locked** with the
reason, and each key error appends the seeds' event (``exc.event``).
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    ConnectionState,
    EncryptionRecord,
    Host,
    KeyProvider,
    KmsServer,
    LockReason,
    ProviderKind,
    Severity,
    VirtualMachine,
)
from vmcrypt.control.db.repo import append_event, key_ids_for_host, set_lock_state
from vmcrypt.control.hostclient import HostClient, HostKeyMissing
from vmcrypt.exceptions import UsageError
from vmcrypt.providers import (
    KekRef,
    KeyMissing,
    KeyServerUnreachable,
    KmsServerConfig,
    NativeKeyProvider,
    ProviderError,
    StandardKeyProvider,
)
from vmcrypt.providers.exceptions import AddKeysToHostFailed

__all__ = [
    "HostConnector",
    "ReconnectReport",
    "forget_keks",
    "hosts_of_vm",
    "load_native",
    "load_standard",
    "push_kek",
    "push_native_provider",
    "reconnect_host",
    "refresh_vm_keys",
    "server_files",
]

_PRODUCT_VERSION = "0.1.0"
_PEM_DIR = Path(tempfile.gettempdir()) / "vmcrypt-control-pem"


class HostConnector(Protocol):
    """How the control plane reaches a host agent (mutual TLS, or in-process in tests)."""

    def client(self, host: Host) -> HostClient:
        """A client for ``host``'s agent."""
        ...


@dataclass
class ReconnectReport:
    """What a reconnect did: KEKs pushed by ID, and VMs locked or unlocked, by ID."""

    connected: bool
    pushed: int = 0
    locked: dict[int, str] = field(default_factory=dict)
    unlocked: list[int] = field(default_factory=list)


def hosts_of_vm(session: Session, vm: VirtualMachine) -> list[Host]:
    """The hosts that need a VM's KEKs: its cluster's, or its own host when standalone."""
    if vm.cluster_id is not None:
        return list(session.scalars(
            select(Host).where(Host.cluster_id == vm.cluster_id).order_by(Host.id)))
    return [] if vm.host_id is None else [session.get_one(Host, vm.host_id)]


def load_standard(row: KeyProvider) -> StandardKeyProvider:
    """A :class:`StandardKeyProvider` from a stored provider and its KMS servers.

    Certificates stored as PEM (public) are written to files because ``ssl`` loads
    files; the client's private key is only ever a path.
    """
    if row.kind is not ProviderKind.STANDARD:
        raise UsageError(f"key provider {row.name!r} is {row.kind}, not standard")
    configs = []
    for server in row.kms_servers:
        files = server_files(server)
        if files is None:
            raise UsageError(f"KMS server {server.name!r} lacks its CA, client certificate or key")
        ca, cert, key = files
        configs.append(KmsServerConfig(server.address, server.port, ca_file=ca,
                                       cert_file=cert, key_file=key))
    return StandardKeyProvider(row.name, configs, product_version=_PRODUCT_VERSION)


def load_native(row: KeyProvider, sealing_key: bytes) -> NativeKeyProvider:
    """A :class:`NativeKeyProvider` from its stored, sealed record."""
    if row.kind is not ProviderKind.NATIVE or row.sealed_primary_key is None:
        raise UsageError(f"key provider {row.name!r} is {row.kind}, not native")
    record = {
        "version": 1, "kind": "native", "provider_id": row.name,
        "sealed_primary_key": base64.b64encode(row.sealed_primary_key).decode("ascii"),
        "fingerprint": row.fingerprint, "created_at": row.created_at.isoformat(),
        "backed_up": row.backed_up, "backup_acknowledged": row.backup_acknowledged,
    }
    return NativeKeyProvider.from_record(record, sealing_key=sealing_key)


def push_native_provider(session: Session, hosts: HostConnector, row: KeyProvider, *,
                         sealing_key: bytes, targets: Iterable[Host]) -> list[str]:
    """Push a native provider's primary key to ``targets``; names of hosts that failed.

    After this the hosts make and open the provider's KEKs themselves, with no
    control plane involved. The backup gate applies (``NotBackedUp``).
    """
    native = load_native(row, sealing_key)
    primary = native.primary_key_for_push()
    failed = []
    for host in targets:
        try:
            hosts.client(host).put_primary_key(row.name, primary, fingerprint=native.fingerprint)
        except AddKeysToHostFailed as exc:
            _key_event(session, exc, host=host, key_id=None, provider=row.name)
            failed.append(host.name)
    return failed


def withdraw_native_provider(session: Session, hosts: HostConnector, row: KeyProvider, *,
                             targets: Iterable[Host]) -> list[str]:
    """Remove a deleted native provider's primary key from ``targets``; names that failed.

    The seeds: when a native provider is deleted, the change is pushed to the hosts.
    A host that no longer has it is fine (nothing to remove).
    """
    failed = []
    for host in targets:
        try:
            hosts.client(host).delete_primary_key(row.name)
        except HostKeyMissing:
            continue
        except AddKeysToHostFailed as exc:
            _key_event(session, exc, host=host, key_id=None, provider=row.name)
            failed.append(host.name)
    return failed


def push_kek(session: Session, hosts: HostConnector, vm: VirtualMachine, *,
             provider_id: str, key_id: str, kek: bytes) -> list[str]:
    """Push one KEK to every host that needs ``vm``'s keys; names of hosts that failed.

    A host that cannot take it gets the seeds' "adding keys to the host failed" event;
    the caller decides whether the operation can go on without that host.
    """
    failed = []
    for host in hosts_of_vm(session, vm):
        try:
            hosts.client(host).put_kek(provider_id, key_id, kek, vm_ids=[vm.instance_uuid])
        except AddKeysToHostFailed as exc:
            _key_event(session, exc, host=host, key_id=key_id, provider=provider_id, vm=vm)
            failed.append(host.name)
    return failed


def forget_keks(session: Session, hosts: HostConnector, vm: VirtualMachine) -> list[str]:
    """Drop ``vm``'s standard KEKs from its hosts' caches unless another VM uses them.

    Returns the key IDs dropped. Runs before the VM is unregistered or deleted, while
    its records still say which hosts hold what. An unreachable host is skipped: it
    holds nothing after its next restart anyway.
    """
    dropped = []
    for record in _standard_records(session, vm.id):
        assert record.key_id is not None
        if _used_elsewhere(session, record.key_id, vm.id):
            continue
        for host in hosts_of_vm(session, vm):
            try:
                hosts.client(host).delete_kek(record.provider.name, record.key_id)
            except AddKeysToHostFailed as exc:
                _key_event(session, exc, host=host, key_id=record.key_id,
                           provider=record.provider.name, vm=vm)
        dropped.append(record.key_id)
    return sorted(set(dropped))


def reconnect_host(session: Session, hosts: HostConnector, host: Host, *,
                   sealing_key: bytes) -> ReconnectReport:
    """Bring a (re)started host up to date: native primary keys, then every KEK by ID.

    KEKs are fetched per provider in one batched call (``get_keks``); if a batch fails
    the keys are fetched one by one so only the VMs whose keys are really missing are
    locked. VMs whose keys all arrive are unlocked.
    """
    client = hosts.client(host)
    try:
        client.health()
    except AddKeysToHostFailed as exc:
        host.connection_state = ConnectionState.NOT_RESPONDING
        _key_event(session, exc, host=host, key_id=None, provider=None)
        session.flush()
        return ReconnectReport(connected=False)
    host.connection_state = ConnectionState.CONNECTED
    natives = session.scalars(select(KeyProvider).where(KeyProvider.kind == ProviderKind.NATIVE))
    for row in natives:
        if row.backed_up or row.backup_acknowledged:
            push_native_provider(session, hosts, row, sealing_key=sealing_key, targets=[host])
    report = ReconnectReport(connected=True)
    by_provider: dict[str, list[str]] = {}
    for provider_name, key_id in key_ids_for_host(session, host_id=host.id):
        by_provider.setdefault(provider_name, []).append(key_id)
    failures: dict[str, LockReason] = {}
    for provider_name, key_ids in by_provider.items():
        row = session.scalars(select(KeyProvider).where(KeyProvider.name == provider_name)).one()
        keks = _fetch(session, row, key_ids, failures)
        for key_id, kek in keks.items():
            try:
                client.put_kek(provider_name, key_id, kek)
                report.pushed += 1
            except AddKeysToHostFailed as exc:
                _key_event(session, exc, host=host, key_id=key_id, provider=provider_name)
                failures[key_id] = LockReason.KEY_MISSING_ON_HOST
    _apply_locks(session, host, failures, report)
    session.flush()
    return report


def refresh_vm_keys(
    session: Session, hosts: HostConnector, vm: VirtualMachine
) -> LockReason | None:
    """Fetch and push every KEK of ``vm`` again (``vm unlock``); the lock reason left."""
    failures: dict[str, LockReason] = {}
    records = _standard_records(session, vm.id)
    for record in records:
        assert record.key_id is not None
        keks = _fetch(session, record.provider, [record.key_id], failures)
        for key_id, kek in keks.items():
            failed = push_kek(session, hosts, vm, provider_id=record.provider.name,
                              key_id=key_id, kek=kek)
            if vm.host_id is not None and any(h.id == vm.host_id and h.name in failed
                                              for h in hosts_of_vm(session, vm)):
                failures[key_id] = LockReason.KEY_MISSING_ON_HOST
    reason = next((failures[r.key_id] for r in records if r.key_id in failures), None)
    _set_lock(session, vm, reason)
    return reason


def _fetch(session: Session, row: KeyProvider, key_ids: list[str],
           failures: dict[str, LockReason]) -> dict[str, bytes]:
    provider = load_standard(row)
    try:
        try:
            keks = provider.get_keks([KekRef(key_id=k) for k in key_ids])
            return dict(zip(key_ids, keks, strict=True))
        except KeyMissing:
            pass  # one missing key fails the batch: find which, one by one
        found = {}
        for key_id in key_ids:
            try:
                found[key_id] = provider.get_kek(KekRef(key_id=key_id))
            except KeyMissing as exc:
                _key_event(session, exc, host=None, key_id=key_id, provider=row.name)
                failures[key_id] = LockReason.KEY_MISSING_IN_KMS
        return found
    except KeyServerUnreachable as exc:
        _key_event(session, exc, host=None, key_id=None, provider=row.name)
        failures.update(dict.fromkeys(key_ids, LockReason.KMS_UNREACHABLE))
        return {}
    finally:
        provider.close()


#: Locks that key distribution does not set and must not clear: a trusted provider's VM
#: is locked by its host's attestation (``services/trusted.py``), not by pushed KEKs.
_NOT_OURS = frozenset({LockReason.HOST_NOT_ATTESTED, LockReason.TRUSTED_PROVIDER_UNAVAILABLE})


def _apply_locks(session: Session, host: Host, failures: dict[str, LockReason],
                 report: ReconnectReport) -> None:
    scope = VirtualMachine.host_id == host.id
    if host.cluster_id is not None:
        scope = scope | (VirtualMachine.cluster_id == host.cluster_id)
    for vm in session.scalars(select(VirtualMachine).where(scope, VirtualMachine.registered)):
        if vm.locked and vm.lock_reason in _NOT_OURS:
            continue  # a trusted-provider lock: only the host's attestation clears it
        key_ids = [r.key_id for r in _standard_records(session, vm.id)]
        reason = next((failures[k] for k in key_ids if k in failures), None)
        was_locked = vm.locked
        _set_lock(session, vm, reason)
        if reason is not None:
            report.locked[vm.id] = reason.value
        elif was_locked:
            report.unlocked.append(vm.id)


def _set_lock(session: Session, vm: VirtualMachine, reason: LockReason | None) -> None:
    if vm.locked == (reason is not None) and vm.lock_reason == reason:
        return
    set_lock_state(session, vm_id=vm.id, reason=reason)
    kind = "vm.locked" if reason is not None else "vm.unlocked"
    append_event(session, type=kind,
                 severity=Severity.WARNING if reason is not None else Severity.INFO,
                 object_type="vm", object_id=vm.id,
                 message=f"VM {vm.name!r} " + (f"locked: {reason.value}" if reason else "unlocked"),
                 details={"reason": reason.value if reason else None})


def _standard_records(session: Session, vm_id: int) -> list[EncryptionRecord]:
    return list(session.scalars(select(EncryptionRecord).where(
        EncryptionRecord.vm_id == vm_id, EncryptionRecord.key_id.is_not(None))))


def _used_elsewhere(session: Session, key_id: str, vm_id: int) -> bool:
    query = (select(EncryptionRecord.id)
             .join(VirtualMachine, VirtualMachine.id == EncryptionRecord.vm_id)
             .where(EncryptionRecord.key_id == key_id, EncryptionRecord.vm_id != vm_id,
                    VirtualMachine.registered).limit(1))
    return session.scalar(query) is not None


def _key_event(session: Session, exc: ProviderError, *, host: Host | None, key_id: str | None,
               provider: str | None, vm: VirtualMachine | None = None) -> None:
    # One event per key error, typed by the error (the seeds' three key error events).
    details = {"host": host.name if host else None, "key_id": key_id, "provider": provider,
               "vm": vm.id if vm else None}
    append_event(session, type=exc.event, severity=Severity.ERROR,
                 object_type="host" if host else "key-provider",
                 object_id=host.id if host else provider, message=str(exc), details=details)


def server_files(server: KmsServer) -> tuple[Path, Path, Path] | None:
    """The CA, client certificate and client key files of a stored KMS or Trust Authority
    server (PEM kept in the database written out), or None if one is missing."""
    ca = server.ca_path or _pem_file(server.ca_pem)
    cert = server.client_cert_path or _pem_file(server.client_cert_pem)
    if ca is None or cert is None or server.client_key_path is None:
        return None
    return Path(ca), Path(cert), Path(server.client_key_path)


def _pem_file(pem: str | None) -> str | None:
    if pem is None:
        return None
    _PEM_DIR.mkdir(mode=0o700, exist_ok=True)
    path = _PEM_DIR / (hashlib.sha256(pem.encode()).hexdigest() + ".pem")
    if not path.exists():
        path.write_text(pem)
    return str(path)
