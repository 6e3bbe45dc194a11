"""Key providers, their KMS servers, storage policies and encryption records."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from vmcrypt.control.db.models.base import (
    Base,
    ComponentKind,
    ProviderKind,
    now,
)
from vmcrypt.control.db.types import str_enum

__all__ = ["EncryptionRecord", "KeyProvider", "KmsServer", "StoragePolicy"]


class KeyProvider(Base):
    """A standard, native or trusted key provider; at most one is the default."""

    __tablename__ = "key_providers"
    __table_args__ = (
        CheckConstraint(
            "kind = 'native' OR sealed_primary_key IS NULL", name="sealed_key_is_native"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The provider ID carried in every keySafe, so it never changes once used.
    name: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[ProviderKind] = mapped_column(str_enum(ProviderKind, name="provider_kind"))
    is_default: Mapped[bool] = mapped_column(default=False)
    #: Native only: the primary key **sealed** under the master key, produced by
    #: :meth:`vmcrypt.providers.native.NativeKeyProvider.to_record`; never plaintext.
    sealed_primary_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: Native only: the primary key's public fingerprint, which ``from_record`` checks
    #: the unsealed key against (see ``providers.backup.key_fingerprint``).
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    backed_up: Mapped[bool] = mapped_column(default=False)
    backup_acknowledged: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=now)

    kms_servers: Mapped[list[KmsServer]] = relationship(
        back_populates="provider", order_by="KmsServer.position", cascade="all, delete-orphan"
    )


class KmsServer(Base):
    """One KMIP server of a standard provider; tried in ``position`` order (failover).

    Only public material: the CA and client certificates as PEM or as paths, and the
    *path* of the client's private key — the key itself never enters the database.
    """

    __tablename__ = "kms_servers"
    __table_args__ = (UniqueConstraint("provider_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("key_providers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(default=5696)
    position: Mapped[int] = mapped_column(default=0)
    ca_pem: Mapped[str | None] = mapped_column(Text)
    ca_path: Mapped[str | None] = mapped_column(String(1024))
    client_cert_pem: Mapped[str | None] = mapped_column(Text)
    client_cert_path: Mapped[str | None] = mapped_column(String(1024))
    client_key_path: Mapped[str | None] = mapped_column(String(1024))

    provider: Mapped[KeyProvider] = relationship(back_populates="kms_servers")


class StoragePolicy(Base):
    """A VM storage policy; an encryption policy names a provider or means the default."""

    __tablename__ = "storage_policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    encryption: Mapped[bool] = mapped_column(default=False)
    #: ``None`` with ``encryption`` on: use the default key provider at the time of use.
    key_provider_id: Mapped[int | None] = mapped_column(ForeignKey("key_providers.id"))


class EncryptionRecord(Base):
    """How one component (VM home or disk) is encrypted: its provider and its KEK.

    The control plane's copy of the keySafe's outer half. A standard provider's KEK is
    named by ``key_id``; a native or trusted provider's KEK travels as ``wrapped_kek``,
    ciphertext only its provider's primary key opens. The wrapped DEK stays beside the
    data on the datastore; the control plane does not need it.
    """

    __tablename__ = "encryption_records"
    __table_args__ = (
        CheckConstraint(
            "(component = 'vm_home') = (disk_id IS NULL)", name="disk_iff_disk_component"
        ),
        CheckConstraint(
            "key_id IS NOT NULL OR wrapped_kek IS NOT NULL", name="names_its_kek"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    vm_id: Mapped[int] = mapped_column(
        ForeignKey("virtual_machines.id", ondelete="CASCADE"), index=True
    )
    component: Mapped[ComponentKind] = mapped_column(str_enum(ComponentKind, name="component"))
    disk_id: Mapped[int | None] = mapped_column(
        ForeignKey("virtual_disks.id", ondelete="CASCADE"), unique=True
    )
    key_provider_id: Mapped[int] = mapped_column(ForeignKey("key_providers.id"), index=True)
    key_id: Mapped[str | None] = mapped_column(String(255), index=True)
    wrapped_kek: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=now)

    provider: Mapped[KeyProvider] = relationship()
