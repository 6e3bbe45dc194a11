"""Trusted key providers on the control plane: published by a Trust Authority, used by hosts.

The seeds' trusted flow, control plane side:

1. The Trust Authority *publishes* trusted key providers; an administrator lists them
   (:func:`published`) and registers one here (:func:`register`) — its endpoint is kept
   in the provider's single ``kms_servers`` row (address, port, CA, this control
   plane's client certificate and key path). It may become the default for a cluster
   of trusted hosts (:func:`set_cluster_default`), which wins over the global default
   for VMs created on that cluster (:func:`policy_provider`).
2. Creating an encrypted VM with a trusted provider (:func:`create_vm`): the control
   plane checks the provider is reachable **by the target host** (it asks the host,
   which attests if it must), adds the provider to the VM spec and sends the creation
   to the host. It **never pushes keys**: the host gets its KEK from the Key Provider
   Service. The records keep the KEK *ciphertext* the host reports (opaque: only the
   provider's primary key, inside its key server, opens it), never a key ID or a KEK.
3. A host's attestation status is read from its ``/health`` (:func:`refresh_host`):
   a change appends ``trust.attestation.passed`` or ``trust.attestation.failed``, and
   the trusted VMs on the host are locked with the reason (``host_not_attested``,
   ``trusted_provider_unavailable``) or unlocked.

Deleting or unregistering such a VM removes its KEK from the host's cache: the host's
delete does it, and :func:`forget_vm` asks the host to forget an unregistered VM.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    Cluster,
    EncryptionRecord,
    Event,
    Host,
    KeyProvider,
    LockReason,
    ProviderKind,
    Severity,
    StoragePolicy,
    VirtualMachine,
)
from vmcrypt.control.db.repo import (
    add_disk,
    add_kms_server,
    append_event,
    create_key_provider,
    default_provider,
    record_encryption,
    set_lock_state,
)
from vmcrypt.control.db.repo import create_vm as insert_vm
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict, NotFound
from vmcrypt.control.hostclient import HostRefused
from vmcrypt.control.services.audit import crypto_event
from vmcrypt.control.services.keys import HostConnector, hosts_of_vm, server_files
from vmcrypt.exceptions import UsageError, VmcryptError
from vmcrypt.providers.exceptions import AddKeysToHostFailed
from vmcrypt.trust.client import TrustClient
from vmcrypt.trust.exceptions import TrustObjectNotFound

__all__ = [
    "TA_SERVER_NAME",
    "TrustEndpoint",
    "create_vm",
    "endpoint_of",
    "forget_vm",
    "host_attestation",
    "lock_for",
    "policy_provider",
    "published",
    "refresh_host",
    "register",
    "set_cluster_default",
]

#: The name of the one ``kms_servers`` row of a trusted provider: its Trust Authority.
TA_SERVER_NAME: Final = "trust-authority"
#: Seconds a call to the Trust Authority may take from a request handler.
_TA_TIMEOUT: Final = 5.0
#: Where an error carries events for after the rollback (``services.vms.after_rollback``).
_AFTER_ROLLBACK: Final = "vmcrypt_after_rollback"
_HOST_CODES: Final = {"host_not_attested": LockReason.HOST_NOT_ATTESTED,
                      "trusted_provider_unavailable": LockReason.TRUSTED_PROVIDER_UNAVAILABLE}


@dataclass(frozen=True)
class TrustEndpoint:
    """How the control plane reaches a Trust Authority (files on this machine)."""

    url: str
    ca_file: Path
    cert_file: Path
    key_file: Path

    def address(self) -> tuple[str, int]:
        """(host, port) of the URL, as a ``kms_servers`` row stores them."""
        parts = urlsplit(self.url)
        if parts.scheme != "https" or not parts.hostname:
            raise UsageError(f"{self.url!r}: a Trust Authority URL is https://HOST[:PORT]")
        return parts.hostname, parts.port or 443


@contextmanager
def _client(endpoint: TrustEndpoint) -> Iterator[TrustClient]:
    """A client of the Trust Authority; its errors become the control plane's."""
    for path in (endpoint.ca_file, endpoint.cert_file, endpoint.key_file):
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file on the control plane")
    try:
        client = TrustClient(endpoint.url, ca_file=endpoint.ca_file,
                             cert_file=endpoint.cert_file, key_file=endpoint.key_file,
                             timeout=_TA_TIMEOUT)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot use the Trust Authority certificates: {exc}") from None
    try:
        yield client
    except TrustObjectNotFound as exc:
        raise NotFound(f"Trust Authority {endpoint.url}: {exc}") from None
    except (UsageError, NotFound, Conflict):
        raise
    except VmcryptError as exc:
        raise Conflict(f"Trust Authority {endpoint.url} did not answer: {exc}") from None
    finally:
        client.close()


def endpoint_of(row: KeyProvider) -> TrustEndpoint:
    """The Trust Authority a registered trusted provider comes from."""
    if row.kind is not ProviderKind.TRUSTED or not row.kms_servers:
        raise UsageError(f"key provider {row.name!r} is not a registered trusted provider")
    server = row.kms_servers[0]
    files = server_files(server)
    if files is None:
        raise UsageError(f"trusted provider {row.name!r} lacks its Trust Authority CA, "
                         "client certificate or key")
    return TrustEndpoint(f"https://{server.address}:{server.port}", *files)


def published(endpoint: TrustEndpoint) -> list[dict[str, Any]]:
    """The trusted providers a Trust Authority publishes (names, primary key IDs)."""
    with _client(endpoint) as client:
        listed = client.request("GET", "/key-providers")
    return [dict(p) for p in listed or []]


def register(session: Session, *, name: str, endpoint: TrustEndpoint,
             is_default: bool = False, user_name: str | None = None,
             verify: bool = True) -> KeyProvider:
    """Register a provider the Trust Authority publishes under ``name``.

    With ``verify`` it is checked against the authority first (404 when it publishes no
    such provider), so hosts are never sent a provider that does not exist; without,
    it is registered offline and hosts find out on first use. The provider's name is
    the one every keySafe carries, so it is the authority's own name for it.
    """
    host, port = endpoint.address()
    described: dict[str, Any] = {}
    if verify:
        with _client(endpoint) as client:
            described = client.request("GET", f"/key-providers/{name}")
    row = create_key_provider(session, name=name, kind=ProviderKind.TRUSTED,
                              is_default=is_default)
    add_kms_server(session, provider_id=row.id, name=TA_SERVER_NAME, address=host, port=port,
                   ca_path=str(endpoint.ca_file), client_cert_path=str(endpoint.cert_file),
                   client_key_path=str(endpoint.key_file))
    append_event(session, type="trust.provider.added", object_type="key-provider",
                 object_id=row.id, user_name=user_name,
                 message=f"trusted key provider {name!r} of {endpoint.url} registered",
                 details={"provider": name, "url": endpoint.url,
                          "primary_key_id": described.get("key_id")})
    return row


def set_cluster_default(session: Session, *, cluster_id: int,
                        provider_id: int | None) -> Cluster:
    """Make a provider the default for one cluster (None: back to the global default)."""
    cluster = fetch(session, Cluster, cluster_id)
    if provider_id is not None:
        fetch(session, KeyProvider, provider_id)
    cluster.default_key_provider_id = provider_id
    session.flush()
    return cluster


def policy_provider(session: Session, *, host_id: int,
                    storage_policy_id: int | None) -> KeyProvider | None:
    """The provider a new VM on ``host_id`` uses under its storage policy, or None.

    A policy naming a provider uses it; an encryption policy naming none uses the
    default of the host's cluster when it has one, else the global default.
    """
    if storage_policy_id is None:
        return None
    policy = fetch(session, StoragePolicy, storage_policy_id)
    if not policy.encryption:
        return None
    if policy.key_provider_id is not None:
        return fetch(session, KeyProvider, policy.key_provider_id)
    host = fetch(session, Host, host_id)
    if host.cluster_id is not None:
        cluster = fetch(session, Cluster, host.cluster_id)
        if cluster.default_key_provider_id is not None:
            return fetch(session, KeyProvider, cluster.default_key_provider_id)
    return default_provider(session)


def create_vm(session: Session, hosts: HostConnector, provider: KeyProvider, *, name: str,
              datastore_id: int, host_id: int, disk_sizes: list[int],
              storage_policy_id: int | None, user_name: str | None) -> VirtualMachine:
    """Create an encrypted VM whose host gets its KEK from trusted ``provider``.

    The host is asked first whether it can use the provider (seeds: "checks if the
    default trusted key provider is accessible to the ESXi host"), before anything is
    written; a refusal — untrusted host, authority down — is a 409 whose event
    (``trust.attestation.failed``, ``trust.provider.unavailable``) the caller records
    after its rollback (``services.vms.after_rollback``).
    """
    host = fetch(session, Host, host_id)
    client = hosts.client(host)
    with _refusal(host, provider.name, name):
        client.trusted_provider(provider.name)
    vm = insert_vm(session, name=name, datastore_id=datastore_id, host_id=host_id,
                   storage_policy_id=storage_policy_id)
    disks = [add_disk(session, vm_id=vm.id, size_bytes=size) for size in disk_sizes]
    with _refusal(host, provider.name, name):  # e.g. the provider's key server is down
        made = client.create_trusted_vm(vm.instance_uuid, name, disk_sizes,
                                        provider_id=provider.name)
    _record(session, vm, provider, made, disks)
    crypto_event(session, operation="create", vm=vm, component="all", user_name=user_name,
                 provider=provider.name, details={"disks": len(disk_sizes), "trusted": True})
    return vm


@contextmanager
def _refusal(host: Host, provider: str, vm_name: str) -> Iterator[None]:
    """A host's trusted-provider refusal → 409 carrying its event for after the rollback."""
    try:
        yield
    except HostRefused as exc:
        if exc.code not in _HOST_CODES:
            raise
        error = Conflict(f"cannot create VM {vm_name!r} with trusted key provider "
                         f"{provider!r}: {exc}")
        # The request rolls back; the VM router records these events afterwards.
        error.__dict__.setdefault(_AFTER_ROLLBACK, []).append(
            _failure_event(host, provider, exc))
        raise error from None
    except AddKeysToHostFailed as exc:
        raise Conflict(f"host {host.name!r} cannot be asked about trusted key provider "
                       f"{provider!r}: {exc}") from None


def _record(session: Session, vm: VirtualMachine, provider: KeyProvider,
            made: dict[str, Any], disks: list[Any]) -> None:
    """Keep the KEK ciphertext of each component the host reports (never a key ID)."""
    home = made.get("home") or {}
    if not home.get("wrapped_kek") or home.get("key_id") is not None:
        raise Conflict(f"the host did not report the KEK ciphertext of VM {vm.name!r}")
    record_encryption(session, vm_id=vm.id, key_provider_id=provider.id,
                      wrapped_kek=base64.b64decode(home["wrapped_kek"]))
    for disk, reported in zip(disks, made.get("disks", []), strict=False):
        facts = reported.get("encryption") or {}
        if facts.get("wrapped_kek"):
            record_encryption(session, vm_id=vm.id, key_provider_id=provider.id,
                              disk_id=disk.id, wrapped_kek=base64.b64decode(facts["wrapped_kek"]))


def forget_vm(session: Session, hosts: HostConnector, vm: VirtualMachine) -> list[str]:
    """Have the VM's hosts drop its trusted KEKs from their caches (unregistering).

    Returns the names of the hosts that could not be told (they hold nothing after
    their next restart anyway). A VM with no trusted component is left alone.
    """
    if not _trusted_records(session, vm.id):
        return []
    failed = []
    for host in hosts_of_vm(session, vm):
        try:
            hosts.client(host).unregister_vm(vm.instance_uuid)
        except VmcryptError:
            failed.append(host.name)
    return failed


def host_attestation(hosts: HostConnector, host: Host) -> dict[str, Any]:
    """The host's attestation status as its ``/health`` reports it (``unset`` if none)."""
    try:
        health = hosts.client(host).health()
    except AddKeysToHostFailed as exc:
        return {"state": "unknown", "reason": f"host not responding: {exc}", "at": None,
                "baseline": None, "expires_at": None, "url": None}
    status = health.get("attestation") or {"state": "unset"}
    return {"state": "unset", "reason": None, "at": None, "baseline": None,
            "expires_at": None, "url": None, **status}


def refresh_host(session: Session, hosts: HostConnector, host: Host, *,
                 attest: bool = False) -> dict[str, Any]:
    """Read (or, with ``attest``, renew) a host's attestation and act on a change.

    A change appends ``trust.attestation.passed``, ``trust.attestation.failed`` (with
    the reason) or ``trust.provider.unavailable``; the host's trusted VMs are locked
    ``host_not_attested`` or ``trusted_provider_unavailable``, or unlocked once it
    attests again.
    """
    if attest:
        try:
            hosts.client(host).attest()
        except HostRefused as exc:
            if exc.code != "trusted_provider_unavailable":
                raise Conflict(f"host {host.name!r}: {exc}") from None
        except AddKeysToHostFailed:
            pass  # reported as "unknown" below
    status = host_attestation(hosts, host)
    state = status["state"]
    if state not in ("attested", "failed"):
        return status
    unavailable = state == "failed" and status.get("code") == "trusted_provider_unavailable"
    kind = ("trust.attestation.passed" if state == "attested" else
            "trust.provider.unavailable" if unavailable else "trust.attestation.failed")
    last = _last_trust_event(session, host)
    if last is None or last.type != kind or (
            state == "failed" and (last.details or {}).get("reason") != status["reason"]):
        append_event(
            session, type=kind,
            severity=Severity.INFO if state == "attested" else Severity.ERROR,
            object_type="host", object_id=host.id,
            message=(f"host {host.name!r} attested (baseline {status['baseline']})"
                     if state == "attested" else
                     f"host {host.name!r}: Trust Authority unavailable: {status['reason']}"
                     if unavailable else
                     f"host {host.name!r} failed attestation: {status['reason']}"),
            details={"host": host.name, "reason": status["reason"],
                     "baseline": status["baseline"]})
    if state == "attested":
        _apply_locks(session, host, None)
    elif unavailable:
        _apply_locks(session, host, (LockReason.TRUSTED_PROVIDER_UNAVAILABLE,
                                     f"trusted key provider unavailable: {status['reason']}"))
    else:
        _apply_locks(session, host, (LockReason.HOST_NOT_ATTESTED,
                                     f"host not attested: {status['reason']}"))
    return status


_TRUST_EVENTS: Final = ("trust.attestation.passed", "trust.attestation.failed",
                         "trust.provider.unavailable")


def _last_trust_event(session: Session, host: Host) -> Event | None:
    return session.scalar(
        select(Event).where(Event.type.in_(_TRUST_EVENTS), Event.object_type == "host",
                            Event.object_id == str(host.id)).order_by(Event.id.desc()).limit(1))


def _apply_locks(session: Session, host: Host,
                 lock: tuple[LockReason, str] | None) -> None:
    """Lock (with the reason) or unlock the trusted VMs registered on ``host``."""
    vms = session.scalars(select(VirtualMachine).where(VirtualMachine.host_id == host.id,
                                                       VirtualMachine.registered))
    for vm in vms:
        if not _trusted_records(session, vm.id):
            continue
        if lock is not None and vm.lock_reason != lock[0]:
            set_lock_state(session, vm_id=vm.id, reason=lock[0])
            append_event(session, type="vm.locked", severity=Severity.WARNING,
                         object_type="vm", object_id=vm.id,
                         message=f"VM {vm.name!r} locked: {lock[1]}",
                         details={"reason": lock[0].value, "detail": lock[1]})
        elif lock is None and vm.lock_reason in _HOST_CODES.values():
            set_lock_state(session, vm_id=vm.id, reason=None)
            append_event(session, type="vm.unlocked", object_type="vm", object_id=vm.id,
                         message=f"VM {vm.name!r} unlocked", details={"reason": None})


def lock_for(session: Session, vm: VirtualMachine, exc: HostRefused) -> LockReason | None:
    """Lock a trusted VM for a host refusal (``host_not_attested`` …); the reason, or None."""
    reason = _HOST_CODES.get(exc.code)
    if reason is not None and vm.lock_reason != reason:
        set_lock_state(session, vm_id=vm.id, reason=reason)
        append_event(session, type="vm.locked", severity=Severity.WARNING, object_type="vm",
                     object_id=vm.id, message=f"VM {vm.name!r} locked: {exc}",
                     details={"reason": reason.value, "detail": str(exc)})
    return reason


def _trusted_records(session: Session, vm_id: int) -> list[EncryptionRecord]:
    return list(session.scalars(
        select(EncryptionRecord)
        .join(KeyProvider, KeyProvider.id == EncryptionRecord.key_provider_id)
        .where(EncryptionRecord.vm_id == vm_id, KeyProvider.kind == ProviderKind.TRUSTED)))


def _failure_event(host: Host, provider: str, exc: HostRefused) -> dict[str, Any]:
    if exc.code == "host_not_attested":
        kind, message = "trust.attestation.failed", f"host {host.name!r} failed attestation"
    else:
        kind, message = "trust.provider.unavailable", (
            f"trusted key provider {provider!r} unavailable to host {host.name!r}")
    return {"type": kind, "severity": Severity.ERROR, "object_type": "host",
            "object_id": host.id, "message": f"{message}: {exc}",
            "details": {"host": host.name, "provider": provider, "reason": str(exc),
                        "code": exc.code}}
