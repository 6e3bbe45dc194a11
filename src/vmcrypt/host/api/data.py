"""``/api/v1/vms/{id}/disks/{n}/data``: a disk's bytes, decrypted in the host's memory.

Raw bytes both ways, streamed in chunks so a large range never sits in memory whole.
The VM's lock is held *shared* for the whole transfer: reads and writes run beside each
other, never beside an encrypt, decrypt or re-key of the VM (those answer 423 meanwhile).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from vmcrypt.disk.container import Disk
from vmcrypt.exceptions import UsageError
from vmcrypt.host.api.schemas import WriteResult
from vmcrypt.host.api.state import HostState, StateDep
from vmcrypt.host.vm import open_disk

__all__ = ["CHUNK", "router"]

router = APIRouter(tags=["disk data"])

#: Transfer unit: large enough for the XTS fast path, small enough to stream.
CHUNK = 1 << 20


def _open(state: HostState, vm_id: str, index: int, *, writable: bool) -> tuple[ExitStack, Disk]:
    stack = ExitStack()
    try:
        stack.enter_context(state.datastore.lock(vm_id, shared=True))
        disk = stack.enter_context(
            open_disk(state.datastore, state.cache, vm_id, index, writable=writable)
        )
    except BaseException:
        stack.close()
        raise
    return stack, disk


def _range(size: int, offset: int, length: int | None) -> int:
    if offset > size:
        raise UsageError(f"offset {offset} lies beyond the disk (size {size})")
    if length is None:
        return size - offset
    if offset + length > size:
        raise UsageError(
            f"byte range {offset}+{length} lies outside the disk (size {size}); "
            "add a disk or read less"
        )
    return length


@router.get("/vms/{vm_id}/disks/{index}/data", response_class=StreamingResponse)
def read_data(
    vm_id: str,
    index: int,
    state: StateDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    length: Annotated[int | None, Query(ge=0)] = None,
) -> StreamingResponse:
    """Stream ``length`` bytes (default: to the end) from ``offset``, decrypted."""
    stack, disk = _open(state, vm_id, index, writable=False)
    try:
        count = _range(disk.size, offset, length)
    except BaseException:
        stack.close()
        raise

    def chunks() -> Iterator[bytes]:
        with stack:
            pos, end = offset, offset + count
            while pos < end:
                step = min(CHUNK, end - pos)
                yield disk.read(pos, step)
                pos += step

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={"Content-Length": str(count)},
    )


@router.put("/vms/{vm_id}/disks/{index}/data")
async def write_data(
    vm_id: str,
    index: int,
    request: Request,
    state: StateDep,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> WriteResult:
    """Write the request body at ``offset`` (encrypted when the disk is), durably."""
    stack, disk = await run_in_threadpool(_open, state, vm_id, index, writable=True)
    with stack:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            _range(disk.size, offset, int(declared))
        pos = offset
        buf = bytearray()
        async for piece in request.stream():
            buf += piece
            if len(buf) >= CHUNK:
                _range(disk.size, pos, len(buf))
                await run_in_threadpool(disk.write, pos, bytes(buf))
                pos += len(buf)
                buf.clear()
        if buf:
            _range(disk.size, pos, len(buf))
            await run_in_threadpool(disk.write, pos, bytes(buf))
            pos += len(buf)
        await run_in_threadpool(disk.flush)
    return WriteResult(written=pos - offset)
