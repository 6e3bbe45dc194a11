"""``/api/v1/vms``: create, read, encrypt, decrypt, re-key, grow and remove VMs.

Quick changes (create, add a disk or a vTPM, shallow re-key, delete) answer when done.
Changes that rewrite data (encrypt, decrypt, deep re-key) start a job and answer 202
with its ID. Before a job starts, the seeds' order rules and the presence of the keys
are checked here, so a refused operation is a 4xx at once rather than a failed job;
the library checks them again under the VM's lock.
"""

from __future__ import annotations

import base64
import logging

from fastapi import APIRouter, Response

from vmcrypt.exceptions import UsageError
from vmcrypt.host.api.runner import Work
from vmcrypt.host.api.schemas import (
    ComponentRequest,
    DiskAdd,
    DiskAdded,
    JobAccepted,
    KeyIdPublic,
    KeyRef,
    RekeyRequest,
    Unregistered,
    VmCreate,
    VmPublic,
    VtpmAdd,
    vm_public,
)
from vmcrypt.host.api.state import HostState, StateDep
from vmcrypt.host.datastore import KeyFacts, VmRecord
from vmcrypt.host.exceptions import (
    AlreadyEncrypted,
    ConfigError,
    DisksStillEncrypted,
    HomeNotEncrypted,
    KeyNotOnHost,
    NotEncrypted,
    VmBusy,
    VtpmPresent,
)
from vmcrypt.host.vm import (
    add_disk,
    add_vtpm,
    create_vm,
    decrypt_disk,
    decrypt_home,
    deep_rekey,
    delete_vm,
    encrypt_disk,
    encrypt_home,
    remove_vtpm,
    shallow_rekey,
)

__all__ = ["router"]

log = logging.getLogger("vmcrypt.host.api")
router = APIRouter(tags=["vms"])


def _need_key(state: HostState, provider_id: str, key_id: str | None,
              wrapped_kek: bytes | None = None) -> None:
    """KeyNotOnHost now, rather than from inside a job, when this host lacks the key.

    A trusted provider's KEK is fetched here (attesting if needed), so an untrusted
    host's refusal — with its reason — is the answer, not a failed job.
    """
    cache = state.cache
    if key_id is not None:
        if not cache.has(provider_id, key_id):
            raise KeyNotOnHost(provider_id, key_id)
    elif cache.has_primary_key(provider_id):
        return
    elif cache.is_trusted(provider_id):
        if wrapped_kek is not None:
            cache.trusted_kek(provider_id, wrapped_kek)
    else:
        raise KeyNotOnHost(provider_id)


def _need_facts(state: HostState, facts: KeyFacts | None) -> None:
    if facts is not None:
        _need_key(state, facts.provider_id, facts.key_id, facts.wrapped_kek)


def _need_ref(state: HostState, ref: KeyRef | None) -> None:
    if ref is not None and not ref.trusted:
        _need_key(state, ref.provider_id, ref.key_id)


def _home(record: VmRecord) -> KeyFacts | None:
    return None if record.home_keysafe is None else KeyFacts.of(record.home_keysafe)


def _accepted(state: HostState, kind: str, vm_id: str, work: Work) -> JobAccepted:
    job = state.jobs.start(kind, vm_id, work)
    log.info("VM %s: %s accepted as job %s", vm_id, kind, job.id)
    return JobAccepted(job_id=job.id, url=f"/api/v1/jobs/{job.id}")


# -- create, read, delete ------------------------------------------------------------
@router.post("/vms", status_code=201)
def create(body: VmCreate, state: StateDep) -> VmPublic:
    """Create a VM; with ``encryption`` the host makes DEKs and wraps them under that KEK."""
    _need_ref(state, body.encryption)
    flags = None
    if any(d.encrypted is not None for d in body.disks):
        default = body.encryption is not None
        flags = [default if d.encrypted is None else d.encrypted for d in body.disks]
    info = create_vm(
        state.datastore,
        state.cache,
        name=body.name,
        disk_sizes=[d.size for d in body.disks],
        key=None if body.encryption is None else body.encryption.spec(),
        encrypt_disks=flags,
        instance_uuid=None if body.id is None else str(body.id),
        extra_config=body.extra_config,
    )
    log.info("VM %s created", info.instance_uuid)
    return vm_public(state.cache, state.datastore.read(info.instance_uuid))


@router.get("/vms")
def list_vms(state: StateDep) -> list[VmPublic]:
    """Every VM on the datastore (an unreadable vm.json is logged and left out)."""
    out = []
    for vm_id in state.datastore.vm_ids():
        try:
            out.append(vm_public(state.cache, state.datastore.read(vm_id)))
        except ConfigError as exc:
            log.warning("VM %s left out of the list: %s", vm_id, exc)
    return out


@router.get("/vms/{vm_id}")
def get_vm(vm_id: str, state: StateDep) -> VmPublic:
    """A VM's components, their key IDs and whether this host holds each key."""
    return vm_public(state.cache, state.datastore.read(vm_id))


@router.delete("/vms/{vm_id}", status_code=204)
def delete(vm_id: str, state: StateDep) -> Response:
    """Delete the VM's files and drop its KEKs from this host's cache."""
    if state.jobs.busy(vm_id):
        raise VmBusy(f"VM {vm_id} has a job running; cancel it or wait, then delete")
    delete_vm(state.datastore, state.cache, vm_id)
    log.info("VM %s deleted", vm_id)
    return Response(status_code=204)


@router.post("/vms/{vm_id}/unregister")
def unregister(vm_id: str, state: StateDep) -> Unregistered:
    """Forget the VM's KEKs (those no other VM uses); its files stay on the datastore."""
    state.datastore.read(vm_id)
    removed = state.cache.forget_vm(vm_id)
    log.info("VM %s unregistered; %d KEK(s) dropped", vm_id, len(removed))
    return Unregistered(
        id=vm_id, removed_keys=[KeyIdPublic(provider_id=p, key_id=k) for p, k in removed]
    )


# -- encryption state ----------------------------------------------------------------
@router.post("/vms/{vm_id}/encrypt", status_code=202)
def encrypt(vm_id: str, body: ComponentRequest, state: StateDep) -> JobAccepted:
    """Encrypt VM home (needs ``key``) or one disk (VM home first); runs as a job."""
    ds, cache = state.datastore, state.cache
    record = ds.read(vm_id)
    _need_ref(state, body.key)
    spec = None if body.key is None else body.key.spec()
    if body.disk is None:
        if record.home_encrypted:
            raise AlreadyEncrypted(f"VM {vm_id}: VM home is already encrypted; re-key it")
        if spec is None:
            raise UsageError("encrypting VM home needs a key: give {provider_id, key_id}")
        home_spec = spec
        return _accepted(
            state,
            "encrypt-home",
            vm_id,
            lambda _p, _c: encrypt_home(ds, cache, vm_id, key=home_spec),
        )
    index = body.disk
    disk = record.disk(index)
    if not record.home_encrypted:
        raise HomeNotEncrypted(
            f"VM {vm_id}: disk {index} cannot be encrypted while VM home is not; "
            "encrypt VM home first"
        )
    if disk.encryption is not None:
        raise AlreadyEncrypted(f"VM {vm_id}: disk {index} is already encrypted; re-key it")
    if spec is None:
        _need_facts(state, _home(record))
    return _accepted(
        state,
        "encrypt-disk",
        vm_id,
        lambda p, c: encrypt_disk(ds, cache, vm_id, index, key=spec, progress=p, cancel=c),
    )


@router.post("/vms/{vm_id}/decrypt", status_code=202)
def decrypt(vm_id: str, body: ComponentRequest, state: StateDep) -> JobAccepted:
    """Decrypt one disk, or VM home once no disk is encrypted and no vTPM remains."""
    ds, cache = state.datastore, state.cache
    record = ds.read(vm_id)
    if body.key is not None:
        raise UsageError("decrypting takes no key: the keySafe names the KEK")
    if body.disk is None:
        if not record.home_encrypted:
            raise NotEncrypted(f"VM {vm_id}: VM home is not encrypted")
        if any(d.encryption is not None for d in record.disks):
            raise DisksStillEncrypted(
                f"VM {vm_id}: VM home cannot be decrypted while a disk is encrypted; "
                "decrypt the disks first"
            )
        if record.has_vtpm:
            raise VtpmPresent(
                f"VM {vm_id}: VM home cannot be decrypted while it holds a vTPM; remove it first"
            )
        _need_facts(state, _home(record))
        return _accepted(
            state, "decrypt-home", vm_id, lambda _p, _c: decrypt_home(ds, cache, vm_id)
        )
    index = body.disk
    disk = record.disk(index)
    if disk.encryption is None:
        raise NotEncrypted(f"VM {vm_id}: disk {index} is not encrypted")
    _need_facts(state, disk.encryption)
    return _accepted(
        state,
        "decrypt-disk",
        vm_id,
        lambda p, c: decrypt_disk(ds, cache, vm_id, index, progress=p, cancel=c),
    )


@router.post("/vms/{vm_id}/rekey", response_model=None)
def rekey(
    vm_id: str, body: RekeyRequest, state: StateDep, response: Response
) -> VmPublic | JobAccepted:
    """Shallow: new KEK (``key``), DEKs re-wrapped, answered at once. Deep: a job."""
    ds, cache = state.datastore, state.cache
    record = ds.read(vm_id)
    for index in body.disks or ():
        record.disk(index)
    _need_ref(state, body.key)
    spec = None if body.key is None else body.key.spec()
    if body.mode == "shallow":
        if spec is None:
            raise UsageError("a shallow re-key needs the new key: give {provider_id, key_id}")
        if state.jobs.busy(vm_id):
            raise VmBusy(f"VM {vm_id} has a job running; wait for it, then re-key")
        shallow_rekey(ds, cache, vm_id, key=spec, home=body.home, disks=body.disks)
        return vm_public(cache, ds.read(vm_id))
    # The current keys open the old DEKs: a missing one is a 409 now, not a failed job.
    if body.home:
        _need_facts(state, _home(record))
    wanted = set(body.disks) if body.disks is not None else {d.index for d in record.disks}
    for disk in record.disks:
        if disk.index in wanted:
            _need_facts(state, disk.encryption)
    response.status_code = 202
    home, disks = body.home, body.disks
    return _accepted(
        state,
        "deep-rekey",
        vm_id,
        lambda p, c: deep_rekey(
            ds, cache, vm_id, key=spec, home=home, disks=disks, progress=p, cancel=c
        ),
    )


# -- disks and vTPM -------------------------------------------------------------------
@router.post("/vms/{vm_id}/disks", status_code=201)
def create_disk(vm_id: str, body: DiskAdd, state: StateDep) -> DiskAdded:
    """Add a disk, encrypted iff VM home is unless ``encrypted`` says otherwise."""
    _need_ref(state, body.key)
    index = add_disk(
        state.datastore,
        state.cache,
        vm_id,
        size=body.size,
        encrypted=body.encrypted,
        key=None if body.key is None else body.key.spec(),
    )
    return DiskAdded(index=index)


@router.post("/vms/{vm_id}/vtpm", status_code=201)
def create_vtpm(vm_id: str, body: VtpmAdd, state: StateDep) -> VmPublic:
    """Add a vTPM; it needs an encrypted VM home, whose DEK seals its state."""
    add_vtpm(state.datastore, state.cache, vm_id, state=base64.b64decode(body.state))
    return vm_public(state.cache, state.datastore.read(vm_id))


@router.delete("/vms/{vm_id}/vtpm")
def delete_vtpm(vm_id: str, state: StateDep) -> VmPublic:
    """Remove the vTPM (and its sealed state): needed before VM home can be decrypted."""
    remove_vtpm(state.datastore, vm_id)
    return vm_public(state.cache, state.datastore.read(vm_id))
