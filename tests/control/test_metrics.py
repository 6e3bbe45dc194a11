"""``/metrics``: operations by type and result, jobs, KMS latency, keys per host, locks."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from unittest import mock

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import LockReason
from vmcrypt.control.db.repo import (
    create_cluster,
    create_datastore,
    create_host,
    create_job,
    create_user,
    create_vm,
    issue_token,
    report_progress,
    set_lock_state,
)
from vmcrypt.control.health import HealthBoard, HostHealth
from vmcrypt.control.metrics import CONTENT_TYPE
from vmcrypt.control.privileges import ADMINISTRATOR
from vmcrypt.providers.base import ProviderHealth, ServerHealth


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def board() -> HealthBoard:
    board = HealthBoard()
    board.set_host(HostHealth(name="esx-1", connected=True, keks=3, latency_ms=2.0))
    board.set_host(HostHealth(name="esx-2", connected=False, error="timed out"))
    board.set_provider("kms-a", ProviderHealth(
        provider_id="kms-a", kind="standard", state="healthy",
        servers=(ServerHealth(address="kms1:5696", reachable=True, tls_ok=True,
                              latency_ms=12.5),
                 ServerHealth(address="kms2:5696", reachable=False, tls_ok=False))))
    return board


@pytest.fixture
def app(database: Database, board: HealthBoard) -> FastAPI:
    return create_app(database, master_key=secrets.token_bytes(32), health=board)


@pytest.mark.anyio
async def test_metrics_from_the_board_the_database_and_the_requests(
        app: FastAPI, database: Database) -> None:
    with database.transaction() as session:
        token = issue_token(session, user_id=create_user(
            session, name="admin", role=ADMINISTRATOR).id).token
        cluster = create_cluster(session, name="c")
        host = create_host(session, name="esx-1", hardware_uuid=str(uuid.uuid4()),
                           cluster_id=cluster.id)
        store = create_datastore(session, name="d", path="/srv/d", cluster_id=cluster.id)
        vm = create_vm(session, name="vm-1", datastore_id=store.id, host_id=host.id)
        create_vm(session, name="vm-2", datastore_id=store.id, host_id=host.id)
        set_lock_state(session, vm_id=vm.id, reason=LockReason.KMS_UNREACHABLE)
        job = create_job(session, type="vm.encrypt", target_type="vm", target_id=vm.id)
        report_progress(session, job_id=job.id, bytes_done=4096, rate_bytes_per_second=2048.0)
        create_job(session, type="vm.decrypt", target_type="vm", target_id=vm.id)
    admin = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://control") as client:
        assert (await client.post("/api/v1/clusters", json={"name": "x"},
                                  headers=admin)).status_code == 201
        assert (await client.post("/api/v1/clusters", json={"name": "x"},
                                  headers=admin)).status_code == 409
        assert (await client.post("/api/v1/clusters", json={"name": "y"})).status_code == 401
        await client.get("/api/v1/clusters", headers=admin)  # reads are not operations
        await client.post("/api/v1/sessions", json={"name": "admin", "password": "nope"})
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    got = _samples(response.text)
    op = "vmcrypt_operations_total"
    assert got[(op, (("operation", "clusters.create"), ("result", "succeeded")))] == 1
    assert got[(op, (("operation", "clusters.create"), ("result", "failed")))] == 2
    assert got[(op, (("operation", "sessions.login"), ("result", "failed")))] == 1
    assert not any(name == op and ("operation", "clusters.list_all") in labels
                   for name, labels in got)
    assert got[("vmcrypt_jobs", (("state", "running"),))] == 1
    assert got[("vmcrypt_jobs", (("state", "queued"),))] == 1
    assert got[("vmcrypt_jobs", (("state", "failed"),))] == 0
    assert got[("vmcrypt_job_throughput_bytes_per_second", ())] == 2048.0
    assert got[("vmcrypt_vms_locked", ())] == 1
    kms1 = (("provider", "kms-a"), ("server", "kms1:5696"))
    assert got[("vmcrypt_kms_latency_seconds", kms1)] == pytest.approx(0.0125)
    assert got[("vmcrypt_kms_reachable", kms1)] == 1
    assert got[("vmcrypt_kms_reachable", (("provider", "kms-a"), ("server", "kms2:5696")))] == 0
    assert ("vmcrypt_kms_latency_seconds",
            (("provider", "kms-a"), ("server", "kms2:5696"))) not in got
    assert got[("vmcrypt_host_keys_cached", (("host", "esx-1"),))] == 3
    assert got[("vmcrypt_host_connected", (("host", "esx-2"),))] == 0
    assert token not in response.text


@pytest.mark.anyio
async def test_a_scrape_never_calls_a_host_or_a_key_server(app: FastAPI) -> None:
    """Scrape-time collectors read the board and the database only."""
    with mock.patch("httpx.Client.send", side_effect=AssertionError("network")), \
            mock.patch("socket.create_connection", side_effect=AssertionError("network")):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://control") as client:
            response = await client.get("/metrics")
    assert response.status_code == 200
    assert "vmcrypt_host_keys_cached" in response.text


def test_two_apps_keep_their_own_counters(database: Database) -> None:
    first = create_app(database, master_key=bytes(32))
    second = create_app(database, master_key=bytes(32))
    first.state.metrics.operations.labels(operation="x.y", result="succeeded").inc()
    assert b"x.y" in first.state.metrics.render()
    assert b"x.y" not in second.state.metrics.render()


def test_the_root_address_leads_to_the_web_client(tmp_path: Path) -> None:
    """A browser pointed at the control plane's address lands on the web UI."""
    from starlette.testclient import TestClient

    from vmcrypt.control.db.engine import open_database

    database = open_database(tmp_path / "control.db")
    try:
        with TestClient(create_app(database, master_key=bytes(32))) as client:
            response = client.get("/", follow_redirects=False)
            assert response.status_code == 307
            assert response.headers["location"] == "/ui/"
    finally:
        database.close()
