"""Every cryptographic operation leaves one ``crypto.*`` event: who, which VM, which key.

The harness of ``test_vms.py`` (control app in process, two hosts, a real KMS). A
scenario runs each operation once; the event log then holds, per operation, one event
with its VM, component, key ID and result (jobs: one ``started`` and one final event),
filterable by type through ``GET /events?type=…`` — and never a key's bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
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
from vmcrypt.providers import KekRef, KmsServerConfig, StandardKeyProvider


@pytest.mark.anyio
async def test_one_crypto_event_per_operation(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts,  # noqa: F811
) -> None:
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)

    async def call(method: str, path: str, body: object = None) -> dict[str, Any]:
        answer = await control.request(method, f"{API}{path}", json=body, headers=admin)
        assert answer.status_code < 300, answer.text
        if answer.status_code == 202:  # a job: follow it to its end
            job_id = answer.json()["id"]
            for _ in range(500):
                job: dict[str, Any] = (await control.get(f"{API}/jobs/{job_id}",
                                                         headers=admin)).json()
                if job["state"] == "succeeded":
                    return job
                assert job["state"] in ("queued", "running"), job
                await asyncio.sleep(0.02)
        result: dict[str, Any] = answer.json() if answer.content else {}
        return result

    vm = await call("POST", "/vms", {"name": "audited", "datastore_id": ids["datastore"],
                                     "host_id": ids["esx-a"], "disks": [DISK],
                                     "storage_policy_id": ids["policy"]})
    v = vm["id"]
    first = vm["key_ids"]["home"]
    await call("POST", f"/vms/{v}/disks", {"size": DISK})
    await call("POST", f"/vms/{v}/vtpm")
    second = (await call("POST", f"/vms/{v}/rekey", {"component": "home"}))["key_id"]
    await call("POST", f"/vms/{v}/rekey", {"deep": True, "component": 0})
    await call("DELETE", f"/vms/{v}/vtpm")
    await call("POST", f"/vms/{v}/decrypt", {"component": 1})
    await call("POST", f"/vms/{v}/encrypt", {"component": 1})
    await call("POST", f"/vms/{v}/unlock")
    await call("POST", f"/vms/{v}/unregister")
    await call("DELETE", f"/vms/{v}")
    plain = await call("POST", "/vms", {"name": "plain", "datastore_id": ids["datastore"],
                                        "host_id": ids["esx-a"], "disks": [DISK]})
    await call("POST", f"/vms/{plain['id']}/encrypt", {"component": "home"})
    third = (await call("GET", f"/vms/{plain['id']}"))["key_ids"]["home"]
    await call("POST", f"/vms/{plain['id']}/disks", {"size": DISK, "encrypted": False})

    # (operation, VM, component, key ID, result), oldest first.
    expected = [
        ("create", v, "all", first, "succeeded"),
        ("add-disk", v, "disk-1", first, "succeeded"),
        ("add-vtpm", v, "vtpm", first, "succeeded"),
        ("rekey-shallow", v, "home", second, "succeeded"),
        ("rekey-deep", v, "disk-0", first, "started"),
        ("rekey-deep", v, "disk-0", first, "succeeded"),
        ("remove-vtpm", v, "vtpm", second, "succeeded"),
        ("decrypt", v, "disk-1", first, "started"),
        ("decrypt", v, "disk-1", first, "succeeded"),
        ("encrypt", v, "disk-1", second, "started"),  # under VM home's (new) KEK
        ("encrypt", v, "disk-1", second, "succeeded"),
        ("unlock", v, "all", second, "succeeded"),
        ("unregister", v, "all", second, "succeeded"),
        ("delete", v, "all", second, "succeeded"),
        ("encrypt", plain["id"], "home", third, "started"),
        ("encrypt", plain["id"], "home", third, "succeeded"),
        # no event for the clear VM's creation or its clear disk: nothing cryptographic
    ]
    events = (await control.get(f"{API}/events?limit=1000", headers=admin)).json()
    crypto = [e for e in reversed(events) if e["type"].startswith("crypto.")]
    got = [(e["type"].removeprefix("crypto."), int(e["object_id"]), e["details"]["component"],
            e["details"]["key_id"], e["details"]["result"]) for e in crypto]
    assert got == expected
    assert all(e["user_name"] == "admin" and e["object_type"] == "vm" for e in crypto)
    assert all(e["details"]["provider"] == "kmip" for e in crypto)

    # Filtering by type through the API (what `vmcrypt events --type …` sends).
    for kind in {row[0] for row in expected}:
        listed = (await control.get(f"{API}/events", params={"type": f"crypto.{kind}"},
                                    headers=admin)).json()
        assert [e["details"]["result"] for e in reversed(listed)] == [
            row[4] for row in expected if row[0] == kind], kind
    mine = (await control.get(f"{API}/events", params={
        "type": "crypto.encrypt", "object_type": "vm", "object_id": str(plain["id"])},
        headers=admin)).json()
    # SQLite may give a deleted VM's ID to the next VM; the instance UUID tells them apart.
    assert [e["details"]["instance_uuid"] for e in mine].count(plain["instance_uuid"]) == 2

    # Key IDs only: no KEK in any event, raw, hex or base64.
    cert = pki.clients["admin"]
    reader = StandardKeyProvider("kmip", [KmsServerConfig(
        "127.0.0.1", kms.address[1], ca_file=pki.ca.cert, cert_file=cert.cert,
        key_file=cert.key)], product_version="test")
    try:
        keks = [reader.get_kek(KekRef(key_id=k)) for k in (first, second, third)]
    finally:
        reader.close()
    text = json.dumps(events)
    for kek in keks:
        for needle in (kek.hex(), base64.b64encode(kek).decode()):
            assert needle not in text


@pytest.mark.anyio
async def test_a_failed_job_ends_with_a_failed_event(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Hosts,  # noqa: F811
) -> None:
    """A host that forgot the job (it restarted) ends it failed, and the event says so."""
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    vm = (await control.post(f"{API}/vms", headers=admin, json={
        "name": "lost", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK], "storage_policy_id": ids["policy"]})).json()
    started = await control.post(f"{API}/vms/{vm['id']}/rekey", json={"deep": True},
                                 headers=admin)
    assert started.status_code == 202, started.text
    while hosts.states["esx-a"].jobs.busy(vm["instance_uuid"]):
        await asyncio.sleep(0.01)
    hosts.start("esx-a")  # a restart: the host's job table is empty
    job = (await control.get(f"{API}/jobs/{started.json()['id']}", headers=admin)).json()
    assert job["state"] == "failed" and "restarted" in job["error"]
    events = (await control.get(f"{API}/events?type=crypto.rekey-deep", headers=admin)).json()
    assert [e["details"]["result"] for e in events] == ["failed", "started"]
    assert events[0]["severity"] == "error" and "restarted" in events[0]["details"]["error"]
