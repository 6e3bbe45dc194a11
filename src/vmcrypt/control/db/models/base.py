"""The declarative base, its naming convention, and the enums the tables store."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from vmcrypt.control.db.types import UtcDateTime

__all__ = [
    "Base",
    "ComponentKind",
    "ConnectionState",
    "JobState",
    "LockReason",
    "ProviderKind",
    "Severity",
    "now",
]

_NAMING: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: ``table.column`` of every binary column, each ciphertext under some other key.
KEY_BEARING_COLUMNS: Final = frozenset({
    "key_providers.sealed_primary_key",  # AES-256-GCM under the control plane master key
    "encryption_records.wrapped_kek",  # KWP under a native/trusted provider's primary key
})


def now() -> datetime:
    """The current time, aware UTC: the default of every ``created_at``."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """The declarative base; its ``metadata`` is the schema the migrations build."""

    metadata = MetaData(naming_convention=_NAMING)
    # Read once by SQLAlchemy when the class is built; never mutated.
    type_annotation_map: Any = {datetime: UtcDateTime()}  # noqa: RUF012


class ConnectionState(enum.StrEnum):
    """A host's connection state, as vSphere's ``HostSystemConnectionState``."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    NOT_RESPONDING = "not_responding"


class LockReason(enum.StrEnum):
    """Why a VM is locked: its keys could not be put on (or got by) its host.

    The last two are the trusted key provider's: the host is not attested (the Trust
    Authority refused its evidence), or the Trust Authority or the provider's key
    server did not answer. The precise sentence is in the ``vm.locked`` event.
    """

    KEY_MISSING_IN_KMS = "key_missing_in_kms"
    KMS_UNREACHABLE = "kms_unreachable"
    KEY_MISSING_ON_HOST = "key_missing_on_host"
    HOST_NOT_ATTESTED = "host_not_attested"
    TRUSTED_PROVIDER_UNAVAILABLE = "trusted_provider_unavailable"


class ProviderKind(enum.StrEnum):
    """The three kinds of key provider of the seeds."""

    STANDARD = "standard"
    NATIVE = "native"
    TRUSTED = "trusted"


class ComponentKind(enum.StrEnum):
    """What an encryption record protects: a VM's home folder or one of its disks."""

    VM_HOME = "vm_home"
    DISK = "disk"


class Severity(enum.StrEnum):
    """Event severity, as vSphere's event categories."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class JobState(enum.StrEnum):
    """A job's life: queued → running → one of the three final states."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


