"""Errors of the host: key cache, datastore and VM operations.

::

    VmcryptError
    └── host.HostError
        ├── KeyNotOnHost          — "key missing on host": the KEK (or a native provider's
        │                           primary key) was never pushed here, or was removed
        ├── VmNotFound            — no VM folder with that instance UUID on the datastore
        ├── VmExists              — a VM with that instance UUID is already there
        ├── VmBusy                — another host or operation holds the VM's lock
        ├── NoSuchDisk            — the VM has no disk with that index
        ├── ConfigError           — vm.json is unreadable or malformed
        └── StateError            — the VM's encryption state forbids the operation
            ├── HomeNotEncrypted  — a disk or a vTPM needs an encrypted VM home first
            ├── DisksStillEncrypted — VM home cannot be decrypted while a disk is encrypted
            ├── VtpmPresent       — VM home cannot be decrypted while it holds a vTPM
            ├── AlreadyEncrypted  — the component is already encrypted (re-key it instead)
            └── NotEncrypted      — the component is not encrypted (nothing to decrypt/re-key)

Every StateError is raised before anything is written: the VM is left exactly as it was.
Messages name the VM and component and say what to do; they never contain key bytes.
"""

from __future__ import annotations

from vmcrypt.exceptions import VmcryptError

__all__ = [
    "AlreadyEncrypted",
    "ConfigError",
    "DisksStillEncrypted",
    "HomeNotEncrypted",
    "HostError",
    "KeyNotOnHost",
    "NoSuchDisk",
    "NotEncrypted",
    "StateError",
    "VmBusy",
    "VmExists",
    "VmNotFound",
    "VtpmPresent",
]


class HostError(VmcryptError):
    """A host operation failed; unless the message says otherwise nothing was changed."""


class KeyNotOnHost(HostError):
    """The key a keySafe names is not in this host's memory (one of a VM's lock reasons)."""

    def __init__(self, provider_id: str, key_id: str | None = None) -> None:
        self.provider_id = provider_id
        self.key_id = key_id
        if key_id is None:
            what = f"the primary key of native key provider {provider_id!r}"
        else:
            what = f"KEK {key_id!r} of key provider {provider_id!r}"
        super().__init__(
            f"key missing on host: {what} is not in this host's key cache; "
            "have the control plane push it to this host (vm unlock), then retry"
        )


class VmNotFound(HostError):
    """No VM with this instance UUID lives on the datastore."""


class VmExists(HostError):
    """A VM with this instance UUID already lives on the datastore."""


class VmBusy(HostError):
    """Another host or operation holds the VM's lock; wait for it and retry."""


class NoSuchDisk(HostError):
    """The VM has no disk with the given index."""


class ConfigError(HostError):
    """A VM's vm.json cannot be read or does not describe a VM."""


class StateError(HostError):
    """The VM's current encryption state forbids the operation; nothing was changed."""


class HomeNotEncrypted(StateError):
    """Encrypting a disk, adding an encrypted disk or a vTPM needs an encrypted VM home."""


class DisksStillEncrypted(StateError):
    """VM home cannot be decrypted while any of its disks is encrypted."""


class VtpmPresent(StateError):
    """VM home cannot be decrypted while it holds a vTPM (its state needs the home DEK)."""


class AlreadyEncrypted(StateError):
    """The component is already encrypted; use a re-key to change its keys."""


class NotEncrypted(StateError):
    """The component is not encrypted, so it cannot be decrypted or re-keyed."""
