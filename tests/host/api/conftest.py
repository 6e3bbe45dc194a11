"""In-process host API: the app of ``vmcrypt host serve`` over httpx's ASGI transport."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from vmcrypt.crypto import generate_kek
from vmcrypt.host import Datastore
from vmcrypt.host.api import HostState, create_app

KMS = "kms-1"
NATIVE = "nkp-1"
SIZE = 64 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def state(tmp_path: Path) -> HostState:
    return HostState(
        name="esx-1", hardware_uuid=str(uuid.uuid4()), datastore=Datastore(tmp_path / "ds")
    )


@pytest.fixture
def kek() -> bytes:
    return generate_kek()


@pytest.fixture
async def client(state: HostState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://esx-1/api/v1") as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def push(client: httpx.AsyncClient, kek: bytes, key_id: str = "key-1") -> None:
    r = await client.put(f"/keys/{KMS}/{key_id}", json={"kek": b64(kek)})
    assert r.status_code == 204, r.text


async def create(client: httpx.AsyncClient, *, key_id: str | None = "key-1",
                 encrypted: bool = True, disks: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "vm-a", "disks": [{"size": SIZE}] * disks}
    if encrypted:
        body["encryption"] = {"provider_id": KMS if key_id else NATIVE, "key_id": key_id}
    r = await client.post("/vms", json=body)
    assert r.status_code == 201, r.text
    vm: dict[str, Any] = r.json()
    return vm


async def wait_job(client: httpx.AsyncClient, accepted: httpx.Response) -> dict[str, Any]:
    """Poll a 202's job until it ends."""
    assert accepted.status_code == 202, accepted.text
    url = "/jobs/" + accepted.json()["job_id"]
    with anyio.fail_after(20):
        while True:
            job: dict[str, Any] = (await client.get(url)).json()
            if job["state"] not in ("queued", "running"):
                return job
            await anyio.sleep(0.01)
