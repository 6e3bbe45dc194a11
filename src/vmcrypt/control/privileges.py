"""Privileges and the built-in roles, named as vSphere names them.

A privilege is a dotted string; a role is a set of privileges; a user has one role.
Every API operation will name the privileges it needs in one dependency
(``requires(ENCRYPT)``), never inside the handler.

The cryptographic operations are exactly vSphere's "Cryptographic operations" group
(``Cryptographer.*``). The ordinary ones are the subset of vSphere's inventory, VM,
datastore, storage-policy, session and authorization privileges that vmcrypt's
operations need. Names are kept byte-for-byte as in vSphere so an operator can carry a
role definition across.

Built-in roles (seeded at start, see :data:`BUILTIN_ROLES`):

- ``Administrator`` — every privilege;
- ``No cryptography administrator`` — every privilege except ``Cryptographer.*``: can
  manage inventory and power VMs but never encrypt, decrypt, re-key or touch key
  providers, and cannot reach into the contents of encrypted VMs;
- ``Read-only`` — ``System.Anonymous``, ``System.View``, ``System.Read``: sees the
  inventory and the event log, changes nothing.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

__all__ = [
    "ADMINISTRATOR",
    "ALL_PRIVILEGES",
    "AUTHORIZATION_MODIFY_PERMISSIONS",
    "AUTHORIZATION_MODIFY_ROLES",
    "BUILTIN_ROLES",
    "CRYPTOGRAPHIC_PRIVILEGES",
    "CRYPTO_ACCESS",
    "CRYPTO_ADD_DISK",
    "CRYPTO_CLONE",
    "CRYPTO_DECRYPT",
    "CRYPTO_ENCRYPT",
    "CRYPTO_ENCRYPT_NEW",
    "CRYPTO_MANAGE_ENCRYPTION_POLICY",
    "CRYPTO_MANAGE_KEYS",
    "CRYPTO_MANAGE_KEY_SERVERS",
    "CRYPTO_MIGRATE",
    "CRYPTO_RECRYPT",
    "CRYPTO_REGISTER_HOST",
    "CRYPTO_REGISTER_VM",
    "DATASTORE_ALLOCATE_SPACE",
    "DATASTORE_BROWSE",
    "DATASTORE_CONFIG",
    "GLOBAL_CANCEL_TASK",
    "HOST_ADD_STANDALONE",
    "HOST_ADD_TO_CLUSTER",
    "HOST_CREATE_CLUSTER",
    "HOST_DELETE_CLUSTER",
    "HOST_EDIT_CLUSTER",
    "HOST_REMOVE_FROM_CLUSTER",
    "NO_CRYPTOGRAPHY_ADMINISTRATOR",
    "READ_ONLY",
    "RESOURCE_COLD_MIGRATE",
    "RESOURCE_HOT_MIGRATE",
    "SESSIONS_TERMINATE",
    "STORAGE_PROFILE_UPDATE",
    "STORAGE_PROFILE_VIEW",
    "SYSTEM_ANONYMOUS",
    "SYSTEM_READ",
    "SYSTEM_VIEW",
    "VM_ADD_EXISTING_DISK",
    "VM_ADD_NEW_DISK",
    "VM_CHANGE_SETTINGS",
    "VM_CLONE",
    "VM_CREATE",
    "VM_DELETE",
    "VM_GUEST_DATA",
    "VM_POWER_OFF",
    "VM_POWER_ON",
    "VM_REGISTER",
    "VM_REMOVE_DISK",
    "VM_UNREGISTER",
]

# --- Cryptographic operations (vSphere "Cryptographer.*") ---------------------------

CRYPTO_ACCESS: Final = "Cryptographer.Access"
"""Reach into an encrypted VM's contents: read/write its disks' data, its console."""
CRYPTO_ADD_DISK: Final = "Cryptographer.AddDisk"
"""Add an encrypted disk (new or existing) to a VM."""
CRYPTO_CLONE: Final = "Cryptographer.Clone"
"""Clone an encrypted VM (the clone gets new keys)."""
CRYPTO_DECRYPT: Final = "Cryptographer.Decrypt"
"""Decrypt a VM or a disk (disks first, then the VM home)."""
CRYPTO_ENCRYPT: Final = "Cryptographer.Encrypt"
"""Encrypt an existing VM or disk."""
CRYPTO_ENCRYPT_NEW: Final = "Cryptographer.EncryptNew"
"""Create a new encrypted VM or disk."""
CRYPTO_MANAGE_ENCRYPTION_POLICY: Final = "Cryptographer.ManageEncryptionPolicy"
"""Create, change and delete storage policies that carry encryption."""
CRYPTO_MANAGE_KEY_SERVERS: Final = "Cryptographer.ManageKeyServers"
"""Add, change, remove key providers and their KMS servers; back up a native one."""
CRYPTO_MANAGE_KEYS: Final = "Cryptographer.ManageKeys"
"""List keys, remove keys from hosts' caches, unlock (CryptoUnlock) a locked VM."""
CRYPTO_MIGRATE: Final = "Cryptographer.Migrate"
"""Migrate an encrypted VM to another host."""
CRYPTO_RECRYPT: Final = "Cryptographer.Recrypt"
"""Re-key an encrypted VM or disk (shallow: new KEK; deep: new DEKs)."""
CRYPTO_REGISTER_HOST: Final = "Cryptographer.RegisterHost"
"""Enrol a host so that it may receive keys (host encryption mode)."""
CRYPTO_REGISTER_VM: Final = "Cryptographer.RegisterVM"
"""Register an encrypted VM with a host."""

# --- Ordinary privileges ------------------------------------------------------------

SYSTEM_ANONYMOUS: Final = "System.Anonymous"
"""Reach the service at all (vSphere grants it to every role)."""
SYSTEM_VIEW: Final = "System.View"
"""See that objects exist."""
SYSTEM_READ: Final = "System.Read"
"""Read objects, their properties and the event log."""
SESSIONS_TERMINATE: Final = "Sessions.TerminateSession"
"""Revoke other users' API tokens."""
AUTHORIZATION_MODIFY_ROLES: Final = "Authorization.ModifyRoles"
"""Create, change and delete roles."""
AUTHORIZATION_MODIFY_PERMISSIONS: Final = "Authorization.ModifyPermissions"
"""Create users, give them roles and issue their API tokens."""
GLOBAL_CANCEL_TASK: Final = "Global.CancelTask"
"""Cancel a running job."""
HOST_ADD_TO_CLUSTER: Final = "Host.Inventory.AddHostToCluster"
"""Add a host to a cluster."""
HOST_ADD_STANDALONE: Final = "Host.Inventory.AddStandaloneHost"
"""Add a host outside any cluster."""
HOST_REMOVE_FROM_CLUSTER: Final = "Host.Inventory.RemoveHostFromCluster"
"""Take a host out of its cluster."""
HOST_CREATE_CLUSTER: Final = "Host.Inventory.CreateCluster"
"""Create a cluster."""
HOST_DELETE_CLUSTER: Final = "Host.Inventory.DeleteCluster"
"""Delete an empty cluster."""
HOST_EDIT_CLUSTER: Final = "Host.Inventory.EditCluster"
"""Rename or reconfigure a cluster."""
DATASTORE_CONFIG: Final = "Datastore.Config"
"""Create, change and remove datastores."""
DATASTORE_ALLOCATE_SPACE: Final = "Datastore.AllocateSpace"
"""Allocate space on a datastore for new VM homes and disks."""
DATASTORE_BROWSE: Final = "Datastore.Browse"
"""List the files of a datastore."""
STORAGE_PROFILE_VIEW: Final = "StorageProfile.View"
"""See storage policies."""
STORAGE_PROFILE_UPDATE: Final = "StorageProfile.Update"
"""Create and change storage policies (encryption ones also need the Cryptographer one)."""
VM_CREATE: Final = "VirtualMachine.Inventory.Create"
"""Create a VM."""
VM_DELETE: Final = "VirtualMachine.Inventory.Delete"
"""Delete a VM and its files."""
VM_REGISTER: Final = "VirtualMachine.Inventory.Register"
"""Register an existing VM with a host."""
VM_UNREGISTER: Final = "VirtualMachine.Inventory.Unregister"
"""Unregister a VM, leaving its files."""
VM_ADD_NEW_DISK: Final = "VirtualMachine.Config.AddNewDisk"
"""Add a new disk to a VM."""
VM_ADD_EXISTING_DISK: Final = "VirtualMachine.Config.AddExistingDisk"
"""Attach an existing disk to a VM."""
VM_REMOVE_DISK: Final = "VirtualMachine.Config.RemoveDisk"
"""Detach and delete a disk."""
VM_CHANGE_SETTINGS: Final = "VirtualMachine.Config.Settings"
"""Change VM settings: storage policy, vTPM device."""
VM_CLONE: Final = "VirtualMachine.Provisioning.Clone"
"""Clone a VM."""
VM_POWER_ON: Final = "VirtualMachine.Interact.PowerOn"
"""Power a VM on."""
VM_POWER_OFF: Final = "VirtualMachine.Interact.PowerOff"
"""Power a VM off."""
VM_GUEST_DATA: Final = "VirtualMachine.Interact.GuestControl"
"""Read and write a VM's disk data through its host."""
RESOURCE_COLD_MIGRATE: Final = "Resource.ColdMigrate"
"""Move a powered-off VM to another host."""
RESOURCE_HOT_MIGRATE: Final = "Resource.HotMigrate"
"""Move a powered-on VM to another host."""

CRYPTOGRAPHIC_PRIVILEGES: Final[frozenset[str]] = frozenset({
    CRYPTO_ACCESS,
    CRYPTO_ADD_DISK,
    CRYPTO_CLONE,
    CRYPTO_DECRYPT,
    CRYPTO_ENCRYPT,
    CRYPTO_ENCRYPT_NEW,
    CRYPTO_MANAGE_ENCRYPTION_POLICY,
    CRYPTO_MANAGE_KEY_SERVERS,
    CRYPTO_MANAGE_KEYS,
    CRYPTO_MIGRATE,
    CRYPTO_RECRYPT,
    CRYPTO_REGISTER_HOST,
    CRYPTO_REGISTER_VM,
})
"""vSphere's "Cryptographic operations" group, exactly."""

ALL_PRIVILEGES: Final[frozenset[str]] = CRYPTOGRAPHIC_PRIVILEGES | frozenset({
    SYSTEM_ANONYMOUS,
    SYSTEM_VIEW,
    SYSTEM_READ,
    SESSIONS_TERMINATE,
    AUTHORIZATION_MODIFY_ROLES,
    AUTHORIZATION_MODIFY_PERMISSIONS,
    GLOBAL_CANCEL_TASK,
    HOST_ADD_TO_CLUSTER,
    HOST_ADD_STANDALONE,
    HOST_REMOVE_FROM_CLUSTER,
    HOST_CREATE_CLUSTER,
    HOST_DELETE_CLUSTER,
    HOST_EDIT_CLUSTER,
    DATASTORE_CONFIG,
    DATASTORE_ALLOCATE_SPACE,
    DATASTORE_BROWSE,
    STORAGE_PROFILE_VIEW,
    STORAGE_PROFILE_UPDATE,
    VM_CREATE,
    VM_DELETE,
    VM_REGISTER,
    VM_UNREGISTER,
    VM_ADD_NEW_DISK,
    VM_ADD_EXISTING_DISK,
    VM_REMOVE_DISK,
    VM_CHANGE_SETTINGS,
    VM_CLONE,
    VM_POWER_ON,
    VM_POWER_OFF,
    VM_GUEST_DATA,
    RESOURCE_COLD_MIGRATE,
    RESOURCE_HOT_MIGRATE,
})
"""Every privilege vmcrypt knows; a role may hold only these."""

ADMINISTRATOR: Final = "Administrator"
NO_CRYPTOGRAPHY_ADMINISTRATOR: Final = "No cryptography administrator"
READ_ONLY: Final = "Read-only"

BUILTIN_ROLES: Final = MappingProxyType({
    ADMINISTRATOR: ALL_PRIVILEGES,
    NO_CRYPTOGRAPHY_ADMINISTRATOR: ALL_PRIVILEGES - CRYPTOGRAPHIC_PRIVILEGES,
    READ_ONLY: frozenset({SYSTEM_ANONYMOUS, SYSTEM_VIEW, SYSTEM_READ}),
})
"""The built-in roles by name; their privileges are re-synchronised at every start."""
