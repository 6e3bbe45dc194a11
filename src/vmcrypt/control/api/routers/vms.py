"""``/vms`` and ``/hosts/{id}/reconnect``: encrypted VMs across the control plane and hosts.

Handlers only translate HTTP to :mod:`vmcrypt.control.services.vms` and
:mod:`~vmcrypt.control.services.crypto_ops`; the services decide, the providers hand
out KEKs and the hosts do the cryptography. The routers are mounted only when
:func:`~vmcrypt.control.api.app.create_app` is given a host connector (how the control
plane reaches host agents).

Adding a disk needs ``VirtualMachine.Config.AddNewDisk`` always, and
``Cryptographer.AddDisk`` only when the new disk will be encrypted (asked for, or by
default because VM home is) — as in vSphere, where a user without cryptographic
privileges may still add a clear disk to a clear VM. That second check is a dependency
too (:func:`_add_disk_crypto`), so handlers still check nothing themselves.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from vmcrypt.control.api.deps import AuditedRoute, CurrentUser, SessionDep, requires
from vmcrypt.control.api.schemas import (
    MAX_DISK_SIZE,
    ComponentRequest,
    DiskCreate,
    JobPublic,
    RekeyRequest,
    RekeyResult,
)
from vmcrypt.control.db.models import Host, VirtualMachine
from vmcrypt.control.db.repo import encryption_records, list_vms
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import PermissionDenied
from vmcrypt.control.privileges import (
    CRYPTO_ACCESS,
    CRYPTO_ADD_DISK,
    CRYPTO_DECRYPT,
    CRYPTO_ENCRYPT,
    CRYPTO_ENCRYPT_NEW,
    CRYPTO_RECRYPT,
    CRYPTO_REGISTER_HOST,
    CRYPTO_REGISTER_VM,
    SYSTEM_READ,
    VM_ADD_NEW_DISK,
    VM_CHANGE_SETTINGS,
    VM_CREATE,
    VM_DELETE,
    VM_GUEST_DATA,
    VM_REGISTER,
    VM_UNREGISTER,
)
from vmcrypt.control.services import crypto_ops
from vmcrypt.control.services import vms as service
from vmcrypt.control.services.keys import HostConnector, reconnect_host

__all__ = ["ROUTERS", "VmCreate", "VmDiskPublic", "VmFound", "VmPublic", "VmRegister",
           "host_router", "router"]

router = APIRouter(prefix="/vms", tags=["vms"], route_class=AuditedRoute)
host_router = APIRouter(prefix="/hosts", tags=["hosts"], route_class=AuditedRoute)
_DATA = requires(VM_GUEST_DATA, CRYPTO_ACCESS)


def _hosts(request: Request) -> HostConnector:
    connector: HostConnector = request.app.state.hosts
    return connector


Hosts = Annotated[HostConnector, Depends(_hosts)]


class VmCreate(BaseModel):
    """A new VM on a host; encrypted when ``storage_policy_id`` names an encryption policy."""

    name: str = Field(min_length=1, max_length=200)
    datastore_id: int
    host_id: int
    disks: list[Annotated[int, Field(gt=0, le=MAX_DISK_SIZE, multiple_of=4096)]] = Field(
        default_factory=list, max_length=64,
        description="disk sizes in bytes: positive multiples of 4096, at most 16 TiB")
    storage_policy_id: int | None = None


class VmRegister(BaseModel):
    """The host (of the VM's datastore) a known, unregistered VM is registered with."""

    host_id: int


class VmFound(BaseModel):
    """A VM folder on a datastore the control plane does not know yet, and its host."""

    datastore_id: int
    instance_uuid: UUID
    host_id: int
    name: str | None = Field(default=None, min_length=1, max_length=200,
                             description="default: the name in the VM's configuration")


class VmDiskPublic(BaseModel):
    """One disk of a VM: index, size, and whether it is encrypted."""

    index: int
    size_bytes: int
    encrypted: bool


class VmPublic(BaseModel):
    """A VM as the control plane knows it: key IDs only, its disks, vTPM and lock state."""

    id: int
    name: str
    instance_uuid: str
    host_id: int | None
    cluster_id: int | None
    registered: bool
    locked: bool
    lock_reason: str | None
    encrypted: bool
    key_ids: dict[str, str | None]
    vtpm: bool = False
    disks: list[VmDiskPublic] = Field(default_factory=list)


def _public(session: Any, vm: VirtualMachine) -> VmPublic:
    keys = service.key_ids(session, vm)
    disks = [VmDiskPublic(index=d.index, size_bytes=d.size_bytes, encrypted=d.encrypted)
             for d in sorted(vm.disks, key=lambda d: d.index)]
    return VmPublic(id=vm.id, name=vm.name, instance_uuid=vm.instance_uuid, host_id=vm.host_id,
                    cluster_id=vm.cluster_id, registered=vm.registered, locked=vm.locked,
                    lock_reason=vm.lock_reason.value if vm.lock_reason else None,
                    encrypted="home" in keys, key_ids=keys, vtpm=vm.has_vtpm, disks=disks)


@router.post("", status_code=201, dependencies=[requires(VM_CREATE, CRYPTO_ENCRYPT_NEW)])
def create(body: VmCreate, session: SessionDep, hosts: Hosts, user: CurrentUser) -> VmPublic:
    """Create a VM (home and disks), encrypted as its storage policy says.

    A creation that fails after the KMS made the VM's KEK destroys that KEK again; if
    even that fails, the ``kms.key.orphaned`` event outlives the rollback.
    """
    try:
        vm = service.create(session, hosts, name=body.name, datastore_id=body.datastore_id,
                            host_id=body.host_id, disk_sizes=body.disks,
                            storage_policy_id=body.storage_policy_id,
                            user_name=user.user_name)
    except Exception as exc:
        keep_after_rollback(session, exc)
        raise
    return _public(session, vm)


def keep_after_rollback(session: Session, exc: BaseException) -> None:
    """Roll back, then commit the events ``exc`` carries for after the rollback (if any).

    The pipeline rolls a failed request back whole; an event saying a key could not be
    cleaned up must survive that, so it is written in a transaction of its own.
    """
    session.rollback()
    if service.after_rollback(session, exc):
        session.commit()


@router.post("/register", status_code=201,
             dependencies=[requires(VM_REGISTER, CRYPTO_REGISTER_VM)])
def register_found(body: VmFound, session: SessionDep, hosts: Hosts, user: CurrentUser,
                   request: Request) -> VmPublic:
    """Register a VM found on a datastore: its disks and keys from the host's view.

    Every KEK is fetched by key ID and pushed to every host of the cluster; a key that
    cannot be had leaves the VM registered but locked, with the reason.
    """
    vm = service.register_found(session, hosts, datastore_id=body.datastore_id,
                                instance_uuid=str(body.instance_uuid), host_id=body.host_id,
                                name=body.name, sealing_key=request.app.state.master_key,
                                user_name=user.user_name)
    return _public(session, vm)


@router.get("", dependencies=[requires(SYSTEM_READ)])
def list_all(session: SessionDep) -> list[VmPublic]:
    """Every VM, oldest first, with key IDs and lock state."""
    return [_public(session, vm) for vm in list_vms(session)]


@router.get("/{vm_id}", dependencies=[requires(SYSTEM_READ)])
def get(vm_id: int, session: SessionDep) -> VmPublic:
    """One VM: encryption state, key ID per component, locked and why."""
    return _public(session, fetch(session, VirtualMachine, vm_id))


@router.post("/{vm_id}/unregister", dependencies=[requires(VM_UNREGISTER, CRYPTO_REGISTER_VM)])
def unregister(vm_id: int, session: SessionDep, hosts: Hosts, user: CurrentUser) -> VmPublic:
    """Unregister a VM; its KEKs leave every host's cache (files stay)."""
    vm = fetch(session, VirtualMachine, vm_id)
    service.unregister(session, hosts, vm, user_name=user.user_name)
    return _public(session, vm)


@router.post("/{vm_id}/register", dependencies=[requires(VM_REGISTER, CRYPTO_REGISTER_VM)])
def register(vm_id: int, body: VmRegister, session: SessionDep, hosts: Hosts,
             user: CurrentUser, request: Request) -> VmPublic:
    """Register an unregistered VM again; its KEKs go back to every host of the cluster.

    A key that cannot be had leaves the VM registered but locked (``vm unlock`` retries).
    """
    vm = fetch(session, VirtualMachine, vm_id)
    return _public(session, service.register(session, hosts, vm, host_id=body.host_id,
                                             sealing_key=request.app.state.master_key,
                                             user_name=user.user_name))


@router.delete("/{vm_id}", status_code=204, dependencies=[requires(VM_DELETE)])
def delete(vm_id: int, session: SessionDep, hosts: Hosts, user: CurrentUser) -> Response:
    """Delete a VM and its files; its KEKs leave every host's cache."""
    service.delete(session, hosts, fetch(session, VirtualMachine, vm_id),
                   user_name=user.user_name)
    return Response(status_code=204)


@router.post("/{vm_id}/unlock", dependencies=[requires(CRYPTO_REGISTER_VM)])
def unlock(vm_id: int, session: SessionDep, hosts: Hosts, user: CurrentUser) -> VmPublic:
    """Fetch and push a locked VM's keys again (CryptoUnlock)."""
    vm = fetch(session, VirtualMachine, vm_id)
    return _public(session, service.unlock(session, hosts, vm, user_name=user.user_name))


@router.post("/{vm_id}/encrypt", status_code=202,
             dependencies=[requires(CRYPTO_ENCRYPT)])
def encrypt(vm_id: int, body: ComponentRequest, session: SessionDep, hosts: Hosts,
            user: CurrentUser) -> JobPublic:
    """Encrypt VM home, or a disk once VM home is; a job (poll ``/jobs/{id}``)."""
    vm = fetch(session, VirtualMachine, vm_id)
    job = crypto_ops.encrypt(session, hosts, vm, body.component, user_name=user.user_name)
    return JobPublic.model_validate(job)


@router.post("/{vm_id}/decrypt", status_code=202,
             dependencies=[requires(CRYPTO_DECRYPT)])
def decrypt(vm_id: int, body: ComponentRequest, session: SessionDep, hosts: Hosts,
            user: CurrentUser) -> JobPublic:
    """Decrypt a disk, or VM home once no disk is encrypted; a job (poll ``/jobs/{id}``)."""
    vm = fetch(session, VirtualMachine, vm_id)
    job = crypto_ops.decrypt(session, hosts, vm, body.component, user_name=user.user_name)
    return JobPublic.model_validate(job)


@router.post("/{vm_id}/rekey", response_model=None,
             dependencies=[requires(CRYPTO_RECRYPT)])
def rekey(vm_id: int, body: RekeyRequest, session: SessionDep, hosts: Hosts,
          user: CurrentUser, response: Response) -> RekeyResult | JobPublic:
    """Re-key VM home, one disk or all (default). Shallow: a new KEK now (200).
    Deep: new DEKs, data re-encrypted, as a job (202)."""
    vm = fetch(session, VirtualMachine, vm_id)
    if body.deep:
        response.status_code = 202
        job = crypto_ops.deep_rekey(session, hosts, vm, body.component,
                                    user_name=user.user_name)
        return JobPublic.model_validate(job)
    key_id = crypto_ops.shallow_rekey(session, hosts, vm, body.component,
                                      user_name=user.user_name)
    label = body.component if isinstance(body.component, str) else f"disk-{body.component}"
    return RekeyResult(vm_id=vm.id, component=label, key_id=key_id,
                       key_ids=service.key_ids(session, vm))


def _add_disk_crypto(vm_id: int, body: DiskCreate, session: SessionDep,
                     principal: CurrentUser) -> None:
    """Cryptographer.AddDisk, needed only when the new disk will be encrypted.

    The outcome is known before the host is asked: ``encrypted`` if given, else whether
    VM home is encrypted in the control plane's records.
    """
    encrypted = body.encrypted
    if encrypted is None:
        records = encryption_records(session, vm_id=fetch(session, VirtualMachine, vm_id).id)
        encrypted = any(r.disk_id is None for r in records)
    if encrypted and not principal.has(CRYPTO_ADD_DISK):
        raise PermissionDenied(CRYPTO_ADD_DISK)


@router.post("/{vm_id}/disks", status_code=201,
             dependencies=[requires(VM_ADD_NEW_DISK), Depends(_add_disk_crypto)])
def add_disk(vm_id: int, body: DiskCreate, session: SessionDep, hosts: Hosts,
             user: CurrentUser) -> VmPublic:
    """Add a disk: encrypted under VM home's KEK iff VM home is, unless ``encrypted`` says."""
    vm = fetch(session, VirtualMachine, vm_id)
    crypto_ops.add_disk(session, hosts, vm, size=body.size, encrypted=body.encrypted,
                        user_name=user.user_name)
    return _public(session, vm)


@router.post("/{vm_id}/vtpm", status_code=201,
             dependencies=[requires(VM_CHANGE_SETTINGS, CRYPTO_ENCRYPT)])
def add_vtpm(vm_id: int, session: SessionDep, hosts: Hosts, user: CurrentUser) -> VmPublic:
    """Add a vTPM; VM home must be encrypted (its DEK seals the vTPM state on the host)."""
    vm = fetch(session, VirtualMachine, vm_id)
    return _public(session, crypto_ops.add_vtpm(session, hosts, vm, user_name=user.user_name))


@router.delete("/{vm_id}/vtpm", dependencies=[requires(VM_CHANGE_SETTINGS, CRYPTO_DECRYPT)])
def remove_vtpm(vm_id: int, session: SessionDep, hosts: Hosts,
                user: CurrentUser) -> VmPublic:
    """Remove the vTPM and its sealed state (VM home can then be decrypted)."""
    vm = fetch(session, VirtualMachine, vm_id)
    return _public(session, crypto_ops.remove_vtpm(session, hosts, vm,
                                                   user_name=user.user_name))


@router.get("/{vm_id}/disks/{index}/data", dependencies=[_DATA])
def read_data(vm_id: int, index: int, offset: int, length: int, session: SessionDep,
              hosts: Hosts) -> Response:
    """Plaintext bytes of a disk range, decrypted by the VM's host."""
    vm = fetch(session, VirtualMachine, vm_id)
    data = service.host_of(session, hosts, vm).read_disk(
        vm.instance_uuid, index, offset=offset, length=length)
    return Response(content=data, media_type="application/octet-stream")


@router.put("/{vm_id}/disks/{index}/data", dependencies=[_DATA])
async def write_data(vm_id: int, index: int, offset: int, request: Request,
                     session: SessionDep, hosts: Hosts) -> dict[str, int]:
    """Write the body at ``offset``; the host encrypts it when the disk is encrypted."""
    data = await request.body()

    def write() -> int:
        vm = fetch(session, VirtualMachine, vm_id)
        return service.host_of(session, hosts, vm).write_disk(
            vm.instance_uuid, index, offset=offset, data=data)

    return {"written": await run_in_threadpool(write)}


@host_router.post("/{host_id}/reconnect", dependencies=[requires(CRYPTO_REGISTER_HOST)])
def reconnect(host_id: int, session: SessionDep, hosts: Hosts, request: Request) -> dict[str, Any]:
    """A host (re)connected: push every KEK it needs, by ID; lock VMs whose keys fail."""
    host = fetch(session, Host, host_id)
    report = reconnect_host(session, hosts, host, sealing_key=request.app.state.master_key)
    return {"connected": report.connected, "pushed": report.pushed,
            "locked": {str(k): v for k, v in report.locked.items()},
            "unlocked": report.unlocked}

from vmcrypt.control.api.routers import vm_moves  # noqa: E402  (clone, migrate; imports us)

#: Mounted by ``create_app`` when it has a host connector.
ROUTERS = (router, host_router, vm_moves.router)
