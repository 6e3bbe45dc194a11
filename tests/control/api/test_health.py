"""Key provider health: the provider monitor, its events, the health routes, and the
native provider's not-backed-up alarm.

A real KMS on a local port (the standard provider); the monitor's passes are called
directly (:meth:`ProviderMonitor.check_once`), and a server going away is simulated by
pointing the stored KMS server at a closed port, then back.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control.api.conftest import InProcessHosts, auth
from tests.control.api.test_vms import KMS_MASTER_KEY, _setup, kms, pki  # noqa: F401 — fixtures
from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import KmsServer as KmsServerRow
from vmcrypt.control.db.models import Severity
from vmcrypt.control.db.repo import list_events
from vmcrypt.control.health import HealthBoard
from vmcrypt.control.provider_monitor import ProviderMonitor
from vmcrypt.kms.server import KmsServer
from vmcrypt.pki import PkiLayout
from vmcrypt.pki.tls import certificate_expiry

pytestmark = pytest.mark.anyio
API = "/api/v1"


@pytest.fixture
def board() -> HealthBoard:
    return HealthBoard()


@pytest.fixture
async def control(database: Database, master_key: bytes, board: HealthBoard,
                  tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    (tmp_path / "ds").mkdir()
    app = create_app(database, master_key=master_key, hosts=InProcessHosts(tmp_path / "ds"),
                     health=board)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://control") as c:
        yield c


@pytest.fixture
def monitor(database: Database, master_key: bytes, board: HealthBoard) -> ProviderMonitor:
    return ProviderMonitor(database, sealing_key=master_key, health=board, interval=60,
                           timeout=2.0)


def _events(database: Database, type: str) -> list[tuple[Severity, str, dict[str, Any]]]:
    with database.transaction() as session:
        return [(e.severity, e.message, dict(e.details or {}))
                for e in reversed(list_events(session, type=type, limit=100))]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _point_at(database: Database, port: int) -> None:
    with database.transaction() as session:
        row = session.query(KmsServerRow).one()
        row.port = port


async def test_provider_health_changes_make_one_event_each(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, monitor: ProviderMonitor, database: Database, tmp_path: Path,  # noqa: F811
) -> None:
    admin = auth(tokens["admin"])
    port = kms.address[1]
    ids = await _setup(control, tokens["admin"], pki, port, tmp_path / "ds")
    before = await control.get(f"{API}/key-providers/{ids['provider']}/health", headers=admin)
    assert before.status_code == 200, before.text
    assert before.json()["state"] == "unknown" and before.json()["checked_at"] is None

    # Healthy on the first pass: on the board, no event (nothing changed worth telling).
    [check] = monitor.check_once()
    assert check.state == "healthy" and not check.changed
    assert _events(database, "kp.health.changed") == []
    body = (await control.get(f"{API}/key-providers/{ids['provider']}/health",
                              headers=admin)).json()
    assert body["state"] == "healthy" and body["name"] == "kmip"
    [server] = body["servers"]
    assert server["reachable"] and server["tls_ok"] and server["latency_ms"] > 0
    assert server["address"] == f"127.0.0.1:{port}"
    expiry = datetime.fromisoformat(server["certificate_expires_at"])
    assert expiry == certificate_expiry(pki.server.cert).replace(microsecond=0)
    assert expiry > datetime.now(UTC)
    listed = (await control.get(f"{API}/key-providers?health=true", headers=admin)).json()
    assert [p["health"]["state"] for p in listed] == ["healthy"]
    plain = (await control.get(f"{API}/key-providers", headers=admin)).json()
    assert [p["health"] for p in plain] == [None]

    # The server goes away: one error event naming it and why, then silence while down.
    _point_at(database, _closed_port())
    [check] = monitor.check_once()
    assert check.state == "unreachable" and check.changed
    monitor.check_once()
    [(severity, message, details)] = _events(database, "kp.health.changed")
    assert severity is Severity.ERROR
    assert "'kmip' is unreachable (was healthy)" in message and "refused" in message
    assert details["state"] == "unreachable" and details["previous_state"] == "healthy"
    [changed] = details["servers"]
    assert changed["reachable"] is False and changed["previously_reachable"] is True
    assert changed["error"]
    down = (await control.get(f"{API}/key-providers/{ids['provider']}/health",
                              headers=admin)).json()
    assert down["state"] == "unreachable" and down["servers"][0]["error"]

    # Back: one info event with the latency.
    _point_at(database, port)
    [check] = monitor.check_once()
    assert check.state == "healthy" and check.changed
    events = _events(database, "kp.health.changed")
    assert len(events) == 2
    severity, message, details = events[-1]
    assert severity is Severity.INFO and "reachable (" in message and " ms)" in message
    assert details["servers"][0]["latency_ms"] > 0
    # No key material anywhere in what health reports.
    assert "key" not in str(details).lower().replace("key_provider", "")


async def test_a_deleted_provider_leaves_the_board(
    control: httpx.AsyncClient, tokens: dict[str, str], monitor: ProviderMonitor,
    board: HealthBoard,
) -> None:
    admin = auth(tokens["admin"])
    created = await control.post(f"{API}/key-providers/native", headers=admin,
                                 json={"name": "nkp"})
    assert created.status_code == 201, created.text
    [check] = monitor.check_once()
    assert check.state == "degraded" and check.changed  # not backed up
    assert board.provider("nkp") is not None
    deleted = await control.delete(f"{API}/key-providers/{created.json()['id']}",
                                   headers=admin)
    assert deleted.status_code == 204, deleted.text
    assert monitor.check_once() == []
    assert board.provider("nkp") is None


async def test_native_not_backed_up_alarm_acknowledged_then_cleared(
    control: httpx.AsyncClient, tokens: dict[str, str], database: Database,
) -> None:
    admin = auth(tokens["admin"])
    created = await control.post(f"{API}/key-providers/native", headers=admin,
                                 json={"name": f"nkp-{uuid.uuid4().hex[:6]}"})
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    [(severity, message, details)] = _events(database, "native.not.backed.up")
    assert severity is Severity.WARNING and "is not backed up" in message
    assert details["acknowledged"] is False

    ack = await control.post(f"{API}/key-providers/{pid}/acknowledge-no-backup", headers=admin)
    assert ack.status_code == 200, ack.text
    again = await control.post(f"{API}/key-providers/{pid}/acknowledge-no-backup",
                               headers=admin)
    assert again.status_code == 200, again.text
    events = _events(database, "native.not.backed.up")
    assert len(events) == 2  # acknowledging twice tells it once
    severity, message, details = events[-1]
    assert severity is Severity.WARNING and "accepted the risk" in message
    assert details["acknowledged"] is True

    password = "correct horse battery"
    for _ in range(2):
        backed = await control.post(f"{API}/key-providers/{pid}/backup", headers=admin,
                                    json={"password": password})
        assert backed.status_code == 200, backed.text
    [(severity, message, _details)] = _events(database, "native.backed.up")
    assert severity is Severity.INFO and "cleared" in message
    # The backup carries the key; no event does.
    everything = str(_events(database, "native.not.backed.up")
                     + _events(database, "native.backed.up"))
    assert "primary_key" not in everything and "BEGIN" not in everything


async def test_health_needs_system_read(
    control: httpx.AsyncClient, tokens: dict[str, str],
) -> None:
    admin = auth(tokens["admin"])
    created = await control.post(f"{API}/key-providers/native", headers=admin,
                                 json={"name": "nkp-read"})
    pid = created.json()["id"]
    assert (await control.get(f"{API}/key-providers/{pid}/health")).status_code == 401
    missing = await control.get(f"{API}/key-providers/999999/health", headers=admin)
    assert missing.status_code == 404


async def test_a_hung_key_server_costs_one_short_timeout(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    database: Database, board: HealthBoard, master_key: bytes,
) -> None:
    """A KMS that accepts TCP and never speaks TLS: the pass ends within the timeout."""
    admin = auth(tokens["admin"])
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        client = pki.clients["admin"]
        created = await control.post(f"{API}/key-providers/standard", headers=admin, json={
            "name": "hung", "kms_servers": [{
                "name": "kms1", "address": "127.0.0.1", "port": hung.getsockname()[1],
                "ca_pem": pki.ca.cert.read_text(), "client_cert_pem": client.cert.read_text(),
                "client_key_path": str(client.key)}]})
        assert created.status_code == 201, created.text
        monitor = ProviderMonitor(database, sealing_key=master_key, health=board,
                                  interval=60, timeout=0.3)
        started = time.monotonic()
        [check] = monitor.check_once()
        assert time.monotonic() - started < 5
    assert check.state == "unreachable" and check.changed
    [(severity, message, _details)] = _events(database, "kp.health.changed")
    assert severity is Severity.ERROR and "timed out" in message
