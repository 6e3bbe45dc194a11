"""Key providers: standard (KMIP), native and — later — trusted, behind one interface.

Providers know keys, not disks or VMs; the control plane asks them for KEKs and pushes
the KEKs to hosts.
"""

from vmcrypt.providers.base import (
    COMPONENT_HOST,
    COMPONENT_VM,
    KekRef,
    KeyOwner,
    KeyProvider,
    NewKek,
    ProviderHealth,
    ServerHealth,
)
from vmcrypt.providers.exceptions import (
    AddKeysToHostFailed,
    BackupError,
    KeyMissing,
    KeyServerUnreachable,
    NotBackedUp,
    ProviderError,
)

__all__ = [
    "COMPONENT_HOST",
    "COMPONENT_VM",
    "AddKeysToHostFailed",
    "BackupError",
    "KekRef",
    "KeyMissing",
    "KeyOwner",
    "KeyProvider",
    "KeyServerUnreachable",
    "NewKek",
    "NotBackedUp",
    "ProviderError",
    "ProviderHealth",
    "ServerHealth",
]
