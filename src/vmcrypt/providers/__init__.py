"""Key providers: standard (KMIP), native and — later — trusted, behind one interface.

Providers know keys, not disks or VMs; the control plane asks them for KEKs and pushes
the KEKs to hosts.
"""

from vmcrypt.providers.backup import BackupInfo, key_fingerprint
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
    ForeignWrappedKek,
    KeyMissing,
    KeyServerUnreachable,
    NotBackedUp,
    ProviderError,
    SealedRecordError,
)
from vmcrypt.providers.native import HostNativeKeyProvider, NativeKeyProvider
from vmcrypt.providers.standard import KmsServerConfig, StandardKeyProvider

__all__ = [
    "COMPONENT_HOST",
    "COMPONENT_VM",
    "AddKeysToHostFailed",
    "BackupError",
    "BackupInfo",
    "ForeignWrappedKek",
    "HostNativeKeyProvider",
    "KekRef",
    "KeyMissing",
    "KeyOwner",
    "KeyProvider",
    "KeyServerUnreachable",
    "KmsServerConfig",
    "NativeKeyProvider",
    "NewKek",
    "NotBackedUp",
    "ProviderError",
    "ProviderHealth",
    "SealedRecordError",
    "ServerHealth",
    "StandardKeyProvider",
    "key_fingerprint",
]
