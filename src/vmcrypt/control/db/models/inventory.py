"""Inventory: clusters, hosts, datastores, VMs and their disks."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from vmcrypt.control.db.models.base import (
    Base,
    ConnectionState,
    LockReason,
    now,
)
from vmcrypt.control.db.types import str_enum

__all__ = ["Cluster", "Datastore", "Host", "VirtualDisk", "VirtualMachine"]


class Cluster(Base):
    """A group of hosts sharing storage; every host of it receives the same KEKs."""

    __tablename__ = "clusters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=now)
    #: The cluster's own default key provider (revision 0005), ahead of the global one.
    default_key_provider_id: Mapped[int | None] = mapped_column(
        ForeignKey("key_providers.id", ondelete="SET NULL"))

    hosts: Mapped[list[Host]] = relationship(back_populates="cluster")


class Host(Base):
    """A host agent; enrolled once it presented its token and got a certificate."""

    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    hardware_uuid: Mapped[str] = mapped_column(String(36), unique=True)
    cluster_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id"), index=True)
    #: Where the control plane reaches the host agent (``https://host:port``).
    api_url: Mapped[str | None] = mapped_column(String(255))
    connection_state: Mapped[ConnectionState] = mapped_column(
        str_enum(ConnectionState, name="connection_state"),
        default=ConnectionState.DISCONNECTED,
    )
    #: SHA-256 of the host's DER certificate, hex; pins the host for mutual TLS.
    certificate_fingerprint: Mapped[str | None] = mapped_column(String(64))
    enrolled_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=now)

    cluster: Mapped[Cluster | None] = relationship(back_populates="hosts")


class Datastore(Base):
    """A folder of VM homes and disks: shared by a cluster, or local to one host."""

    __tablename__ = "datastores"
    __table_args__ = (
        CheckConstraint(
            "(cluster_id IS NULL) <> (host_id IS NULL)", name="one_owner"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str] = mapped_column(String(1024))
    cluster_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id"), index=True)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"), index=True)


class VirtualMachine(Base):
    """A VM: its home folder on a datastore, its disks, where it is registered."""

    __tablename__ = "virtual_machines"
    __table_args__ = (
        # A lock always says why, and an unlocked VM carries no stale reason.
        CheckConstraint("locked = (lock_reason IS NOT NULL)", name="lock_has_reason"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    #: vSphere's ``instanceUuid``: the ``x-Identifier`` of the VM's KEK.
    instance_uuid: Mapped[str] = mapped_column(String(36), unique=True)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"), index=True)
    cluster_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id"), index=True)
    datastore_id: Mapped[int] = mapped_column(ForeignKey("datastores.id"), index=True)
    #: The VM home's storage policy; ``None`` means no policy (unencrypted).
    storage_policy_id: Mapped[int | None] = mapped_column(ForeignKey("storage_policies.id"))
    registered: Mapped[bool] = mapped_column(default=True)
    has_vtpm: Mapped[bool] = mapped_column(default=False)
    locked: Mapped[bool] = mapped_column(default=False)
    lock_reason: Mapped[LockReason | None] = mapped_column(
        str_enum(LockReason, name="lock_reason")
    )
    created_at: Mapped[datetime] = mapped_column(default=now)

    disks: Mapped[list[VirtualDisk]] = relationship(
        back_populates="vm", order_by="VirtualDisk.index", cascade="all, delete-orphan"
    )


class VirtualDisk(Base):
    """One disk image of a VM; ``encrypted`` mirrors its encryption record."""

    __tablename__ = "virtual_disks"
    __table_args__ = (
        UniqueConstraint("vm_id", "index"),
        CheckConstraint("size_bytes > 0", name="positive_size"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    vm_id: Mapped[int] = mapped_column(ForeignKey("virtual_machines.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    encrypted: Mapped[bool] = mapped_column(default=False)
    storage_policy_id: Mapped[int | None] = mapped_column(ForeignKey("storage_policies.id"))

    vm: Mapped[VirtualMachine] = relationship(back_populates="disks")
