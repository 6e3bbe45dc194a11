"""Bad input to the VM API: a clear 4xx with a message, and nothing changed.

The harness of ``test_vms.py`` (control app in process, two host agents on a shared
datastore, a real KMS). Each refusal is checked three ways: the status, a message that
says what was wrong, and the state afterwards (VM list, key caches, files, data).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control.api.conftest import auth
from tests.control.api.test_vms import (  # noqa: F401  (fixtures used by name)
    API,
    DISK,
    Hosts,
    _setup,
    control,
    hosts,
    kms,
    pki,
)
from vmcrypt.kms.server import KmsServer
from vmcrypt.pki import PkiLayout

PAYLOAD = random.Random(11).randbytes(5000)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


async def _vms(api: httpx.AsyncClient, admin: dict[str, str]) -> list[dict[str, Any]]:
    listed = await api.get(f"{API}/vms", headers=admin)
    assert listed.status_code == 200, listed.text
    body: list[dict[str, Any]] = listed.json()
    return body


def _message(response: httpx.Response) -> str:
    body = response.json()
    text = body.get("message") or body.get("detail") or body.get("error") or ""
    return text if isinstance(text, str) else str(text)


@pytest.mark.anyio
async def test_malformed_requests_change_nothing(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts,  # noqa: F811
) -> None:
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    made = await control.post(f"{API}/vms", headers=admin, json={
        "name": "keep", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK], "storage_policy_id": ids["policy"]})
    assert made.status_code == 201, made.text
    vm = made.json()
    put = await control.put(f"{API}/vms/{vm['id']}/disks/0/data?offset=0", content=PAYLOAD,
                            headers=admin)
    assert put.status_code == 200, put.text
    before_vms = await _vms(control, admin)
    before_files = _files(hosts.datastore)
    before_keys = (hosts.kek_ids("esx-a"), hosts.kek_ids("esx-b"))

    good = {"name": "new", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
            "disks": [DISK], "storage_policy_id": ids["policy"]}
    refusals: list[tuple[str, httpx.Response, set[int]]] = [
        ("not JSON", await control.post(
            f"{API}/vms", headers={**admin, "content-type": "application/json"},
            content=b"{\"name\": "), {400, 422}),
        ("JSON of the wrong shape", await control.post(f"{API}/vms", headers=admin,
                                                      json=["vm"]), {422}),
        ("size not a multiple of 4096", await control.post(
            f"{API}/vms", headers=admin, json={**good, "disks": [4097]}), {400, 409, 422}),
        ("zero size", await control.post(
            f"{API}/vms", headers=admin, json={**good, "disks": [0]}), {400, 409, 422}),
        ("negative size", await control.post(
            f"{API}/vms", headers=admin, json={**good, "disks": [-4096]}), {400, 409, 422}),
        ("unknown host", await control.post(
            f"{API}/vms", headers=admin, json={**good, "host_id": 999_999}), {404, 409, 422}),
        ("unknown datastore", await control.post(
            f"{API}/vms", headers=admin, json={**good, "datastore_id": 999_999}),
         {404, 409, 422}),
        ("unknown policy", await control.post(
            f"{API}/vms", headers=admin, json={**good, "storage_policy_id": 999_999}),
         {404, 409, 422}),
        ("taken name", await control.post(
            f"{API}/vms", headers=admin, json={**good, "name": "keep"}), {409}),
        ("unknown VM", await control.get(f"{API}/vms/999999", headers=admin), {404}),
        ("unknown VM encrypt", await control.post(
            f"{API}/vms/999999/encrypt", headers=admin, json={"component": "home"}), {404}),
        ("unknown component", await control.post(
            f"{API}/vms/{vm['id']}/decrypt", headers=admin, json={"component": "nvram"}),
         {409, 422}),
        ("unknown disk", await control.post(
            f"{API}/vms/{vm['id']}/decrypt", headers=admin, json={"component": 7}), {404, 409}),
        ("read past the end", await control.get(
            f"{API}/vms/{vm['id']}/disks/0/data?offset={DISK}&length=4096", headers=admin),
         {400, 409, 416, 422}),
        ("negative offset", await control.get(
            f"{API}/vms/{vm['id']}/disks/0/data?offset=-1&length=16", headers=admin),
         {400, 409, 422}),
        ("data of an unknown disk", await control.put(
            f"{API}/vms/{vm['id']}/disks/5/data?offset=0", content=b"x", headers=admin),
         {404, 409}),
    ]
    for what, response, allowed in refusals:
        assert response.status_code in allowed, (what, response.status_code, response.text)
        assert _message(response), (what, response.text)

    assert await _vms(control, admin) == before_vms
    assert _files(hosts.datastore) == before_files
    assert (hosts.kek_ids("esx-a"), hosts.kek_ids("esx-b")) == before_keys
    got = await control.get(f"{API}/vms/{vm['id']}/disks/0/data?offset=0&length={len(PAYLOAD)}",
                            headers=admin)
    assert got.content == PAYLOAD


@pytest.mark.anyio
async def test_conflicting_operations_on_one_vm(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts,  # noqa: F811
) -> None:
    """Two data-rewriting jobs on one VM: one runs, the other is refused (409), and the
    refused one changes nothing; the running one completes and the data survives."""
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    size = 64 * DISK  # long enough that the first job is still running
    made = await control.post(f"{API}/vms", headers=admin, json={
        "name": "busy", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [size, size], "storage_policy_id": ids["policy"]})
    assert made.status_code == 201, made.text
    vm_id = made.json()["id"]
    for disk in (0, 1):
        put = await control.put(f"{API}/vms/{vm_id}/disks/{disk}/data?offset={size - 8192}",
                                content=PAYLOAD, headers=admin)
        assert put.status_code == 200, put.text

    first, second = await asyncio.gather(
        control.post(f"{API}/vms/{vm_id}/decrypt", headers=admin, json={"component": 0}),
        control.post(f"{API}/vms/{vm_id}/decrypt", headers=admin, json={"component": 1}))
    statuses = sorted([first.status_code, second.status_code])
    assert statuses in ([202, 409], [202, 202]), (first.text, second.text)
    refused = [r for r in (first, second) if r.status_code == 409]
    for response in refused:
        assert _message(response)
    for response in (first, second):
        if response.status_code != 202:
            continue
        job_id = response.json()["id"]
        for _ in range(1000):
            job = (await control.get(f"{API}/jobs/{job_id}", headers=admin)).json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(0.02)
        assert job["state"] == "succeeded", job
    state = (await control.get(f"{API}/vms/{vm_id}", headers=admin)).json()
    encrypted = {name for name, key in state["key_ids"].items() if name.startswith("disk")}
    assert len(encrypted) == 2 - sum(r.status_code == 202 for r in (first, second))
    for disk in (0, 1):
        got = await control.get(
            f"{API}/vms/{vm_id}/disks/{disk}/data?offset={size - 8192}&length={len(PAYLOAD)}",
            headers=admin)
        assert got.content == PAYLOAD
