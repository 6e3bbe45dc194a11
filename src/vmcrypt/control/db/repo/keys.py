"""Key providers, KMS servers, storage policies and per-component encryption records.

The records keep the seeds' order rules where they can be checked from the database
alone: a disk is encrypted only once its VM home is, and the VM home is decrypted only
after every disk is (both keys are needed while either is encrypted).
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    ComponentKind,
    EncryptionRecord,
    Host,
    KeyProvider,
    KmsServer,
    ProviderKind,
    StoragePolicy,
    VirtualDisk,
    VirtualMachine,
)
from vmcrypt.control.db.repo._common import fetch, insert
from vmcrypt.control.exceptions import Conflict, NotFound
from vmcrypt.exceptions import UsageError

__all__ = [
    "add_kms_server",
    "clear_encryption",
    "create_key_provider",
    "create_storage_policy",
    "default_provider",
    "encryption_records",
    "key_ids_for_host",
    "record_encryption",
    "remove_kms_server",
    "set_default_provider",
]


def create_key_provider(
    session: Session,
    *,
    name: str,
    kind: ProviderKind,
    sealed_primary_key: bytes | None = None,
    fingerprint: str | None = None,
    is_default: bool = False,
) -> KeyProvider:
    """A key provider; a native one must come with its primary key already sealed.

    ``fingerprint`` (native only) is the key's public fingerprint, needed to load the
    provider again with ``NativeKeyProvider.from_record``.
    """
    if (kind is ProviderKind.NATIVE) != (sealed_primary_key is not None):
        raise UsageError("a native provider needs its sealed primary key; others have none")
    if fingerprint is not None and kind is not ProviderKind.NATIVE:
        raise UsageError("only a native provider has a primary key fingerprint")
    provider = insert(
        session,
        KeyProvider(name=name, kind=kind, sealed_primary_key=sealed_primary_key,
                    fingerprint=fingerprint),
        what=f"key provider {name!r}",
    )
    if is_default:
        set_default_provider(session, provider_id=provider.id)
    return provider


def set_default_provider(session: Session, *, provider_id: int) -> KeyProvider:
    """Make one provider the default, and every other one not."""
    provider = fetch(session, KeyProvider, provider_id)
    session.execute(
        update(KeyProvider).where(KeyProvider.id != provider_id).values(is_default=False)
    )
    provider.is_default = True
    session.flush()
    return provider


def default_provider(session: Session) -> KeyProvider:
    """The default key provider, used by policies that name none."""
    found = session.scalar(select(KeyProvider).where(KeyProvider.is_default))
    if found is None:
        raise NotFound("no default key provider: add one or mark one as default")
    return found


def add_kms_server(
    session: Session,
    *,
    provider_id: int,
    name: str,
    address: str,
    port: int = 5696,
    ca_pem: str | None = None,
    ca_path: str | None = None,
    client_cert_pem: str | None = None,
    client_cert_path: str | None = None,
    client_key_path: str | None = None,
) -> KmsServer:
    """Append a KMS server to a standard provider's failover list.

    A trusted provider has one row too: its Trust Authority's endpoint (the control
    plane asks it which providers it publishes; hosts get the keys themselves).
    Certificates may be given as PEM or as paths; the client's private key only as a
    path, and PEM arguments must hold no private key.
    """
    provider = fetch(session, KeyProvider, provider_id)
    if provider.kind is ProviderKind.NATIVE:
        raise UsageError("only standard and trusted providers have KMS servers (a trusted "
                         "one: its Trust Authority), not a native one")
    if not 0 < port < 65536:
        raise UsageError(f"{port} is not a TCP port")
    for pem in (ca_pem, client_cert_pem):
        if pem is not None and "PRIVATE KEY" in pem:
            raise UsageError("only certificates belong here: the private key stays a path")
    server = KmsServer(
        name=name, address=address, port=port, position=len(provider.kms_servers),
        ca_pem=ca_pem, ca_path=ca_path, client_cert_pem=client_cert_pem,
        client_cert_path=client_cert_path, client_key_path=client_key_path,
    )
    provider.kms_servers.append(server)
    session.flush()
    return server


def remove_kms_server(session: Session, *, provider_id: int, server_id: int) -> None:
    """Take one KMS server out of a standard provider's failover list.

    The provider keeps at least one server (it could reach no key otherwise), and the
    others close up so the failover order stays 0, 1, 2…
    """
    provider = fetch(session, KeyProvider, provider_id)
    server = next((s for s in provider.kms_servers if s.id == server_id), None)
    if server is None:
        raise NotFound(f"key provider {provider.name!r} has no KMS server {server_id}")
    if provider.kind is not ProviderKind.STANDARD:
        raise Conflict(f"key provider {provider.name!r} is {provider.kind}: only a standard "
                       "provider's KMS servers can be removed one by one")
    if len(provider.kms_servers) == 1:
        raise Conflict(f"{server.name!r} is the last KMS server of {provider.name!r}: add "
                       "another first, or delete the provider")
    provider.kms_servers.remove(server)
    session.delete(server)
    for position, remaining in enumerate(sorted(provider.kms_servers,
                                                key=lambda s: s.position)):
        remaining.position = position
    session.flush()


def create_storage_policy(
    session: Session,
    *,
    name: str,
    encryption: bool,
    key_provider_id: int | None = None,
    description: str = "",
) -> StoragePolicy:
    """A storage policy; with encryption, ``key_provider_id=None`` means the default."""
    if key_provider_id is not None:
        if not encryption:
            raise UsageError("only an encryption policy names a key provider")
        fetch(session, KeyProvider, key_provider_id)
    policy = StoragePolicy(
        name=name, encryption=encryption, key_provider_id=key_provider_id,
        description=description,
    )
    return insert(session, policy, what=f"storage policy {name!r}")


def record_encryption(
    session: Session,
    *,
    vm_id: int,
    key_provider_id: int,
    disk_id: int | None = None,
    key_id: str | None = None,
    wrapped_kek: bytes | None = None,
) -> EncryptionRecord:
    """Record that a VM home (``disk_id=None``) or a disk is encrypted, and under what.

    A standard provider's KEK is named by ``key_id`` only; a native or trusted one's by
    its ``wrapped_kek`` (ciphertext). Re-recording a component (a re-key) replaces its
    record.
    """
    vm = fetch(session, VirtualMachine, vm_id)
    provider = fetch(session, KeyProvider, key_provider_id)
    if provider.kind is ProviderKind.STANDARD:
        if key_id is None or wrapped_kek is not None:
            raise UsageError("a standard provider's KEK is recorded by key ID only")
    elif wrapped_kek is None:
        raise UsageError(f"a {provider.kind} provider's KEK is recorded as the wrapped KEK")
    disk = _disk_of(session, vm, disk_id)
    if disk is not None and _record_of(session, vm_id, None) is None:
        raise Conflict("encrypt the VM home first: a disk cannot be encrypted before it")
    existing = _record_of(session, vm_id, disk_id)
    if existing is not None:
        session.delete(existing)
        session.flush()
    record = EncryptionRecord(
        vm_id=vm_id,
        component=ComponentKind.DISK if disk is not None else ComponentKind.VM_HOME,
        disk_id=disk_id, key_provider_id=key_provider_id, key_id=key_id,
        wrapped_kek=wrapped_kek,
    )
    if disk is not None:
        disk.encrypted = True
    return insert(session, record, what="encryption record")


def clear_encryption(session: Session, *, vm_id: int, disk_id: int | None = None) -> None:
    """Record that a component was decrypted; the VM home only after every disk."""
    vm = fetch(session, VirtualMachine, vm_id)
    disk = _disk_of(session, vm, disk_id)
    if disk is None and any(d.encrypted for d in vm.disks):
        raise Conflict("decrypt every disk first: the VM home is needed while one is encrypted")
    record = _record_of(session, vm_id, disk_id)
    if record is None:
        raise Conflict("that component is not encrypted")
    session.delete(record)
    if disk is not None:
        disk.encrypted = False
    session.flush()


def encryption_records(session: Session, *, vm_id: int) -> list[EncryptionRecord]:
    """A VM's encryption records: the VM home's first, then its disks'."""
    query = (
        select(EncryptionRecord)
        .where(EncryptionRecord.vm_id == vm_id)
        .order_by(EncryptionRecord.disk_id.is_not(None), EncryptionRecord.disk_id)
    )
    return list(session.scalars(query))


def key_ids_for_host(session: Session, *, host_id: int) -> list[tuple[str, str]]:
    """``(provider name, key ID)`` of every standard KEK the host must hold.

    That is the KEKs of the VMs registered on the host and, when the host is in a
    cluster, of every VM of the cluster (the control plane pushes a KEK to each host
    of the cluster). Native and trusted KEKs are absent: hosts open those themselves.
    After a host restart the control plane fetches these by ID and pushes them again.
    """
    host = fetch(session, Host, host_id)
    on_host = VirtualMachine.host_id == host_id
    where = on_host if host.cluster_id is None else (
        on_host | (VirtualMachine.cluster_id == host.cluster_id)
    )
    query = (
        select(KeyProvider.name, EncryptionRecord.key_id)
        .join(EncryptionRecord.provider)
        .join(VirtualMachine, VirtualMachine.id == EncryptionRecord.vm_id)
        .where(where, VirtualMachine.registered, EncryptionRecord.key_id.is_not(None))
        .distinct()
        .order_by(KeyProvider.name, EncryptionRecord.key_id)
    )
    return [(name, key_id) for name, key_id in session.execute(query) if key_id is not None]


def _disk_of(session: Session, vm: VirtualMachine, disk_id: int | None) -> VirtualDisk | None:
    if disk_id is None:
        return None
    disk = fetch(session, VirtualDisk, disk_id)
    if disk.vm_id != vm.id:
        raise NotFound(f"VM {vm.id} has no disk with ID {disk_id}")
    return disk


def _record_of(session: Session, vm_id: int, disk_id: int | None) -> EncryptionRecord | None:
    query = select(EncryptionRecord).where(EncryptionRecord.vm_id == vm_id)
    if disk_id is None:
        query = query.where(EncryptionRecord.disk_id.is_(None))
    else:
        query = query.where(EncryptionRecord.disk_id == disk_id)
    return session.scalar(query)
