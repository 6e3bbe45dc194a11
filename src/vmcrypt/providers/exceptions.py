"""Errors of the key providers.

::

    VmcryptError
    └── providers.ProviderError        — a key provider could not deliver a KEK
        ├── KeyServerUnreachable       — "getting keys from the key server failed due to
        │                                the key server connection" (every server tried)
        ├── KeyMissing                 — "getting keys from the key server failed due to
        │                                key missing in the key server"
        │   └── ForeignWrappedKek      — a wrapped KEK that this native provider's primary
        │                                key did not wrap (another provider's, or altered)
        ├── AddKeysToHostFailed        — "adding keys to the host failed due to host
        │                                connection or host support issues"
        ├── NotBackedUp                — a native provider used before its primary key was
        │                                backed up (or the risk explicitly acknowledged)
        ├── BackupError                — a native provider backup is not a backup, is
        │                                damaged, or the password is wrong
        └── SealedRecordError          — a native provider's stored record does not open
                                         with this sealing key, or is malformed

The first three are the three key error events of the seeds ("Encryption Key Errors");
``event`` names the event the control plane records for each. Messages name the key
ID and the server, never key bytes, and say what the operator can do.
"""

from __future__ import annotations

from typing import ClassVar

from vmcrypt.exceptions import VmcryptError

__all__ = [
    "AddKeysToHostFailed",
    "BackupError",
    "ForeignWrappedKek",
    "KeyMissing",
    "KeyServerUnreachable",
    "NotBackedUp",
    "ProviderError",
    "SealedRecordError",
]


class ProviderError(VmcryptError):
    """A key provider could not create, fetch or protect a key."""

    #: The event type the control plane records for this error.
    event: ClassVar[str] = "provider.error"


class KeyServerUnreachable(ProviderError):
    """No key server of the provider answered (connection, TLS or timeout)."""

    event = "kms.connection.failed"


class KeyMissing(ProviderError):
    """The key server answered that the key does not exist (or is destroyed)."""

    event = "kms.key.missing"


class ForeignWrappedKek(KeyMissing):
    """A native provider cannot unwrap a KEK: another primary key wrapped it, or it changed.

    A subclass of :class:`KeyMissing` because, for the caller, the outcome is the same —
    this provider cannot deliver that KEK — while the event and message say precisely
    why (KWP's integrity check cannot tell "foreign" from "altered", so neither can we).
    """

    event = "native.kek.foreign"


class AddKeysToHostFailed(ProviderError):
    """The key was obtained but could not be installed on a host."""

    event = "host.keys.add.failed"


class NotBackedUp(ProviderError):
    """A native provider whose primary key was never backed up nor acknowledged."""

    event = "native.not.backed.up"


class BackupError(ProviderError):
    """A native provider backup cannot be read with this password, or is not a backup."""

    event = "native.backup.invalid"


class SealedRecordError(ProviderError):
    """A native provider's stored record is malformed or its sealing key is not this one."""

    event = "native.record.invalid"
