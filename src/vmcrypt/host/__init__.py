"""The host: a key cache in memory, a datastore folder, and the VM operations on it.

A host does the cryptography on data (``../../shared/DESIGN.md``): it holds the KEKs
the control plane pushed (or a native provider's primary key), generates DEKs, wraps
them, and encrypts, decrypts and re-keys VM homes and disks. This package is a plain
library; the host's API process sits on top of it.
"""

from vmcrypt.host.datastore import Datastore, DiskRecord, KeyFacts, VmRecord
from vmcrypt.host.exceptions import (
    AlreadyEncrypted,
    ConfigError,
    DisksStillEncrypted,
    HomeNotEncrypted,
    HostError,
    KeyNotOnHost,
    NoSuchDisk,
    NotEncrypted,
    StateError,
    VmBusy,
    VmExists,
    VmNotFound,
    VtpmPresent,
)
from vmcrypt.host.keycache import KeyCache
from vmcrypt.host.vm import (
    KeySpec,
    VmInfo,
    add_disk,
    add_vtpm,
    create_vm,
    decrypt_disk,
    decrypt_home,
    deep_rekey,
    delete_vm,
    encrypt_disk,
    encrypt_home,
    open_disk,
    read_disk,
    read_vm,
    remove_vtpm,
    resume_disk,
    shallow_rekey,
    write_disk,
)

__all__ = [
    "AlreadyEncrypted",
    "ConfigError",
    "Datastore",
    "DiskRecord",
    "DisksStillEncrypted",
    "HomeNotEncrypted",
    "HostError",
    "KeyCache",
    "KeyFacts",
    "KeyNotOnHost",
    "KeySpec",
    "NoSuchDisk",
    "NotEncrypted",
    "StateError",
    "VmBusy",
    "VmExists",
    "VmInfo",
    "VmNotFound",
    "VmRecord",
    "VtpmPresent",
    "add_disk",
    "add_vtpm",
    "create_vm",
    "decrypt_disk",
    "decrypt_home",
    "deep_rekey",
    "delete_vm",
    "encrypt_disk",
    "encrypt_home",
    "open_disk",
    "read_disk",
    "read_vm",
    "remove_vtpm",
    "resume_disk",
    "shallow_rekey",
    "write_disk",
]
