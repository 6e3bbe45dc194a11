"""Encrypt and decrypt VM home or one disk, in the seeds' order, as host jobs."""

from __future__ import annotations

from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    Job,
    ProviderKind,
    VirtualMachine,
)
from vmcrypt.control.exceptions import Conflict
from vmcrypt.control.services.crypto_ops._common import (
    Component,
    _disk,
    _label,
    _new_standard_kek,
    _provider_for,
    _push_existing,
    _ready,
    _records,
)
from vmcrypt.control.services.crypto_ops.jobs import (
    _not_busy,
    _started,
    track_host_job,
)
from vmcrypt.control.services.keys import (
    HostConnector,
)

__all__ = ["decrypt", "encrypt"]


def encrypt(session: Session, hosts: HostConnector, vm: VirtualMachine, component: Component,
            *, user_name: str | None = None) -> Job:
    """Start encrypting VM home or one disk (VM home first) as a job."""
    client = _ready(session, hosts, vm)
    _not_busy(session, hosts, vm)
    records = _records(session, vm)
    if component == "home":
        if "home" in records:
            raise Conflict(f"VM {vm.name!r}: VM home is already encrypted; re-key it instead")
        provider = _provider_for(session, vm)
        key_id: str | None = None
        if provider.kind is ProviderKind.STANDARD:
            key_id = _new_standard_kek(session, hosts, vm, provider)
            host_job = client.encrypt(vm.instance_uuid, None, provider_id=provider.name,
                                      key_id=key_id)
        elif provider.kind is ProviderKind.NATIVE:
            host_job = client.encrypt(vm.instance_uuid, None, provider_id=provider.name)
        else:
            raise Conflict(f"encrypting with a {provider.kind} provider is not supported yet")
        job = track_host_job(session, vm, "vm.encrypt", "home", host_job, user_name)
        _started(session, job, vm, provider=provider.name, key_id=key_id)
        return job
    disk = _disk(vm, component)
    home = records.get("home")
    if home is None:
        raise Conflict(f"VM {vm.name!r}: disk {disk} cannot be encrypted while VM home is "
                       "not; encrypt VM home first")
    if f"disk-{disk}" in records:
        raise Conflict(f"VM {vm.name!r}: disk {disk} is already encrypted; re-key it instead")
    if home.key_id is not None:
        _push_existing(session, hosts, vm, home.provider, home.key_id)
    host_job = client.encrypt(vm.instance_uuid, disk)
    job = track_host_job(session, vm, "vm.encrypt", f"disk-{disk}", host_job, user_name)
    _started(session, job, vm, provider=home.provider.name, key_id=home.key_id)
    return job

def decrypt(session: Session, hosts: HostConnector, vm: VirtualMachine, component: Component,
            *, user_name: str | None = None) -> Job:
    """Start decrypting one disk, or VM home once no disk is encrypted, as a job."""
    client = _ready(session, hosts, vm)
    _not_busy(session, hosts, vm)
    records = _records(session, vm)
    name = "home" if component == "home" else f"disk-{_disk(vm, component)}"
    if name not in records:
        raise Conflict(f"VM {vm.name!r}: {_label(name)} is not encrypted")
    if name == "home":
        still = sorted(n for n in records if n != "home")
        if still:
            raise Conflict(f"VM {vm.name!r}: VM home cannot be decrypted while "
                           f"{', '.join(still)} is encrypted; decrypt the disks first")
        if vm.has_vtpm:
            raise Conflict(f"VM {vm.name!r}: VM home cannot be decrypted while the VM has a "
                           "vTPM (its state is sealed by VM home's DEK); remove the vTPM first")
    record = records[name]
    if record.key_id is not None:
        _push_existing(session, hosts, vm, record.provider, record.key_id)
    disk = None if name == "home" else int(name.removeprefix("disk-"))
    host_job = client.decrypt(vm.instance_uuid, disk)
    job = track_host_job(session, vm, "vm.decrypt", name, host_job, user_name)
    _started(session, job, vm, provider=record.provider.name, key_id=record.key_id)
    return job
