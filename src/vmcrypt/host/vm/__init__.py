"""Host operations on a VM: the host's part of "the host does the cryptography on data".

Each operation is a function of the datastore, the host's key cache and the VM's
instance UUID. DEKs are generated or unwrapped on the host and never leave its memory;
only ciphertext and wrapped keys reach the datastore.
"""

from vmcrypt.host.vm._common import KeySpec, Progress
from vmcrypt.host.vm.encryption import (
    decrypt_disk,
    decrypt_home,
    encrypt_disk,
    encrypt_home,
    resume_disk,
)
from vmcrypt.host.vm.io import open_disk, read_disk, write_disk
from vmcrypt.host.vm.lifecycle import (
    VmInfo,
    add_disk,
    add_vtpm,
    create_vm,
    delete_vm,
    read_vm,
    remove_vtpm,
)
from vmcrypt.host.vm.mobility import Bundle, BundleReceiver, clone_vm, open_bundle
from vmcrypt.host.vm.rekey import deep_rekey, shallow_rekey

__all__ = [
    "Bundle",
    "BundleReceiver",
    "KeySpec",
    "Progress",
    "VmInfo",
    "add_disk",
    "add_vtpm",
    "clone_vm",
    "create_vm",
    "decrypt_disk",
    "decrypt_home",
    "deep_rekey",
    "delete_vm",
    "encrypt_disk",
    "encrypt_home",
    "open_bundle",
    "open_disk",
    "read_disk",
    "read_vm",
    "remove_vtpm",
    "resume_disk",
    "shallow_rekey",
    "write_disk",
]
