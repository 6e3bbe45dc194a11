"""``/api/v1/vms/{id}/clone`` and ``/api/v1/vms/{id}/bundle``: copies and moves of VMs.

- ``POST /vms/{id}/clone`` starts a job that copies the VM on this datastore with new
  DEKs (and, through ``key``, a new KEK); 202 with the job and the clone's UUID.
- ``GET /vms/{id}/bundle`` streams the VM folder as tar: ciphertext and wrapped keys
  only, nothing is decrypted, so the relay (the control plane) never sees plaintext.
- ``PUT /vms/{id}/bundle`` receives such a stream into a staging folder, checks every
  keySafe opens with a KEK this host holds, then renames it into place (201 VM).

The order rules, the keys and the VM's lock are checked before a job or a stream
starts, so a refusal is a 4xx at once; a VM with a running job is 423 ``vm_busy``.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from vmcrypt.host.api.schemas import CloneAccepted, CloneRequest, VmPublic, vm_public
from vmcrypt.host.api.state import HostState, StateDep
from vmcrypt.host.datastore import KeyFacts
from vmcrypt.host.exceptions import KeyNotOnHost, VmBusy, VmExists
from vmcrypt.host.vm import BundleReceiver, clone_vm, open_bundle
from vmcrypt.host.vm.mobility import check_clone

__all__ = ["router"]

log = logging.getLogger("vmcrypt.host.api")
router = APIRouter(tags=["moves"])


def _need(state: HostState, facts: KeyFacts | None) -> None:
    """KeyNotOnHost now, not from inside the job, when a KEK or primary key is missing."""
    if facts is None:
        return
    if facts.key_id is not None:
        if not state.cache.has(facts.provider_id, facts.key_id):
            raise KeyNotOnHost(facts.provider_id, facts.key_id)
    elif not state.cache.has_primary_key(facts.provider_id):
        raise KeyNotOnHost(facts.provider_id)


def _idle(state: HostState, vm_id: str) -> None:
    if state.jobs.busy(vm_id):
        raise VmBusy(f"VM {vm_id} has a job running; wait for it or cancel it, then retry")
    with state.datastore.lock(vm_id):
        pass  # another host (or a disk I/O) holds it: VmBusy now rather than later


@router.post("/vms/{vm_id}/clone", status_code=202)
def clone(vm_id: str, body: CloneRequest, state: StateDep) -> CloneAccepted:
    """Clone the VM on this datastore with new keys; a job (cancel leaves no clone)."""
    ds, cache = state.datastore, state.cache
    record = ds.read(vm_id)
    clone_id = str(body.id or uuid.uuid4())
    if ds.vm_dir(clone_id).exists():
        raise VmExists(f"VM {clone_id} already exists on datastore {ds.root}")
    spec = None if body.key is None else body.key.spec()
    check_clone(ds, record, spec)
    if record.home_keysafe is not None:
        _need(state, KeyFacts.of(record.home_keysafe))
    for disk in record.disks:
        _need(state, disk.encryption)
    if body.key is not None:
        _need(state, KeyFacts(body.key.provider_id, body.key.key_id))
    _idle(state, vm_id)
    name = body.name
    job = state.jobs.start(
        "clone",
        vm_id,
        lambda p, c: clone_vm(ds, cache, vm_id, name=name, key=spec, clone_id=clone_id,
                              progress=p, cancel=c),
    )
    log.info("VM %s: clone %s accepted as job %s", vm_id, clone_id, job.id)
    return CloneAccepted(job_id=job.id, url=f"/api/v1/jobs/{job.id}", vm_id=clone_id)


@router.get("/vms/{vm_id}/bundle", response_class=StreamingResponse)
def export_bundle(vm_id: str, state: StateDep) -> StreamingResponse:
    """Stream the VM folder as tar (ciphertext and wrapped keys); the VM stays locked
    until the stream ends."""
    state.datastore.read(vm_id)
    if state.jobs.busy(vm_id):
        raise VmBusy(f"VM {vm_id} has a job running; wait for it or cancel it, then move it")
    bundle = open_bundle(state.datastore, vm_id)
    log.info("VM %s: sending its bundle (%d bytes)", vm_id, bundle.size)
    return StreamingResponse(
        bundle.chunks(),
        media_type="application/x-tar",
        headers={"Content-Length": str(bundle.size)},
    )


@router.put("/vms/{vm_id}/bundle", status_code=201)
async def import_bundle(vm_id: str, request: Request, state: StateDep) -> VmPublic:
    """Receive a VM's bundle: staged, checked against this host's keys, renamed in."""
    receiver = await run_in_threadpool(BundleReceiver, state.datastore, vm_id)
    try:
        async for piece in request.stream():
            if piece:
                await run_in_threadpool(receiver.feed, piece)
        record = await run_in_threadpool(receiver.commit, state.cache)
    except BaseException:
        await run_in_threadpool(receiver.abort)
        raise
    log.info("VM %s: bundle received and committed", vm_id)
    return vm_public(state.cache, record)
