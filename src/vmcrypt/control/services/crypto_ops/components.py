"""Add a disk, add or remove a vTPM: quick changes answered when done.

An encrypted disk gets its own DEK wrapped by VM home's KEK; a vTPM's state is sealed
by VM home's DEK on the host, so both need an encrypted VM home.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    VirtualDisk,
    VirtualMachine,
)
from vmcrypt.control.db.repo import (
    add_disk as record_disk,
)
from vmcrypt.control.exceptions import Conflict
from vmcrypt.control.services.audit import crypto_event
from vmcrypt.control.services.crypto_ops._common import (
    MAX_DISK_SIZE,
    SECTOR,
    _push_existing,
    _ready,
    _records,
    _sync_records,
)
from vmcrypt.control.services.crypto_ops.jobs import (
    _not_busy,
)
from vmcrypt.control.services.keys import (
    HostConnector,
)
from vmcrypt.exceptions import UsageError

__all__ = ["add_disk", "add_vtpm", "remove_vtpm"]


def add_disk(session: Session, hosts: HostConnector, vm: VirtualMachine, *, size: int,
             encrypted: bool | None = None, user_name: str | None = None) -> VirtualDisk:
    """Add a disk, encrypted iff VM home is unless ``encrypted`` says otherwise.

    An encrypted disk gets its own DEK wrapped by VM home's KEK (pushed again first: a
    host may have restarted); the control plane records the disk and, from the host's
    keySafe, its key ID (or wrapped KEK) only. Asking for an encrypted disk on a VM
    whose home is clear is a 409: the seeds encrypt VM home first.
    """
    if size <= 0 or size % SECTOR or size > MAX_DISK_SIZE:
        raise UsageError(f"a disk size must be a positive multiple of {SECTOR} bytes up to "
                         f"{MAX_DISK_SIZE} (16 TiB), not {size}")
    client = _ready(session, hosts, vm)
    _not_busy(session, hosts, vm)
    home = _records(session, vm).get("home")
    want = home is not None if encrypted is None else encrypted
    if want and home is None:
        raise Conflict(f"VM {vm.name!r}: an encrypted disk needs an encrypted VM home; "
                       "encrypt VM home first, or add the disk with encrypted=false")
    if want and home is not None and home.key_id is not None:
        _push_existing(session, hosts, vm, home.provider, home.key_id)
    index = client.add_disk(vm.instance_uuid, size, encrypted=want)
    disk = record_disk(session, vm_id=vm.id, size_bytes=size, index=index)
    session.refresh(vm, ["disks"])
    _sync_records(session, client, vm)
    if want:
        record = _records(session, vm).get(f"disk-{index}")
        crypto_event(session, operation="add-disk", vm=vm, component=f"disk-{index}",
                     user_name=user_name,
                     provider=record.provider.name if record else None,
                     key_id=record.key_id if record else None, details={"size": size})
    return disk

def add_vtpm(session: Session, hosts: HostConnector, vm: VirtualMachine, *,
             user_name: str | None = None) -> VirtualMachine:
    """Add a vTPM: it needs an encrypted VM home, whose DEK seals its state on the host."""
    client = _ready(session, hosts, vm)
    _not_busy(session, hosts, vm)
    home = _records(session, vm).get("home")
    if home is None:
        raise Conflict(f"VM {vm.name!r}: a vTPM needs an encrypted VM home (its DEK seals "
                       "the vTPM state); encrypt VM home first")
    if vm.has_vtpm:
        raise Conflict(f"VM {vm.name!r} already has a vTPM")
    if home.key_id is not None:
        _push_existing(session, hosts, vm, home.provider, home.key_id)
    view = client.add_vtpm(vm.instance_uuid)
    vm.has_vtpm = bool(view.get("vtpm", True))
    session.flush()
    crypto_event(session, operation="add-vtpm", vm=vm, component="vtpm", user_name=user_name,
                 provider=home.provider.name, key_id=home.key_id)
    return vm

def remove_vtpm(session: Session, hosts: HostConnector, vm: VirtualMachine, *,
                user_name: str | None = None) -> VirtualMachine:
    """Remove the vTPM and its sealed state (needed before VM home can be decrypted).

    Idempotent, as an HTTP DELETE: a VM without a vTPM (in the host's own view) is
    answered as it is, with no event, since nothing cryptographic happened.
    """
    client = _ready(session, hosts, vm)
    _not_busy(session, hosts, vm)
    if not client.get_vm(vm.instance_uuid).get("vtpm"):
        vm.has_vtpm = False
        session.flush()
        return vm
    home = _records(session, vm).get("home")
    view = client.remove_vtpm(vm.instance_uuid)
    vm.has_vtpm = bool(view.get("vtpm", False))
    session.flush()
    crypto_event(session, operation="remove-vtpm", vm=vm, component="vtpm",
                 user_name=user_name, provider=home.provider.name if home else None,
                 key_id=home.key_id if home else None)
    return vm
