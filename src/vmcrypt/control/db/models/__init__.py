"""The control plane's tables, as typed SQLAlchemy 2 declarative models.

What is stored, in short (``docs/control-db.md`` says it in prose):

- inventory: clusters, hosts, datastores, VMs and their disks;
- encryption: one :class:`EncryptionRecord` per encrypted component (VM home or disk)
  naming its key provider and its KEK by **key ID** (standard provider) or by the
  **wrapped KEK** — ciphertext under a primary key — for native and trusted providers;
- key providers and their KMS servers (addresses and *public* certificates only; a
  native provider's primary key only **sealed** under the control plane's master key);
- storage policies, users, roles and their privileges, API tokens (**hash** only);
- the append-only event log and jobs.

Never stored: a KEK, a DEK, a primary key in the clear, an API token, a private key.
The only binary columns are :data:`KEY_BEARING_COLUMNS`, each ciphertext by
construction; a test holds the schema to that.

Every table has an integer surrogate key; names and UUIDs are unique where vSphere makes
them unique. Enum columns store their values as strings (see :mod:`.types`).
"""

from __future__ import annotations

from typing import Final

from vmcrypt.control.db.models.access import ApiToken, Role, RolePrivilege, User
from vmcrypt.control.db.models.base import (
    Base,
    ComponentKind,
    ConnectionState,
    JobState,
    LockReason,
    ProviderKind,
    Severity,
)
from vmcrypt.control.db.models.enrolment import EnrolmentToken
from vmcrypt.control.db.models.inventory import (
    Cluster,
    Datastore,
    Host,
    VirtualDisk,
    VirtualMachine,
)
from vmcrypt.control.db.models.keys import EncryptionRecord, KeyProvider, KmsServer, StoragePolicy
from vmcrypt.control.db.models.log import Event, Job

__all__ = [
    "KEY_BEARING_COLUMNS",
    "ApiToken",
    "Base",
    "Cluster",
    "ComponentKind",
    "ConnectionState",
    "Datastore",
    "EncryptionRecord",
    "EnrolmentToken",
    "Event",
    "Host",
    "Job",
    "JobState",
    "KeyProvider",
    "KmsServer",
    "LockReason",
    "ProviderKind",
    "Role",
    "RolePrivilege",
    "Severity",
    "StoragePolicy",
    "User",
    "VirtualDisk",
    "VirtualMachine",
]

KEY_BEARING_COLUMNS: Final = frozenset({
    "key_providers.sealed_primary_key",  # AES-256-GCM under the control plane master key
    "encryption_records.wrapped_kek",  # KWP under a native/trusted provider's primary key
})


