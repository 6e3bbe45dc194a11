"""The host monitor, in process: hosts that restart get their keys back by themselves.

Two in-process host agents of one cluster, a real KMS on a local port (the standard
provider), and the control API to set things up; then only
:meth:`HostMonitor.check_once` runs — nobody calls ``/hosts/{id}/reconnect``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.control.api.conftest import InProcessHosts, auth
from tests.control.api.test_vms import KMS_MASTER_KEY, _setup, kms, pki  # noqa: F401 — fixtures
from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import ConnectionState, Host
from vmcrypt.control.db.repo import list_events
from vmcrypt.control.health import HealthBoard
from vmcrypt.control.hostclient import HostClient, HostUnreachable
from vmcrypt.control.monitor import HostCheck, HostMonitor
from vmcrypt.kms.server import KmsServer
from vmcrypt.pki import PkiLayout

pytestmark = pytest.mark.anyio
API = "/api/v1"
DISK = 1 << 16


class Switchable(InProcessHosts):
    """In-process hosts, some of which can be switched off (unreachable)."""

    def __init__(self, datastore: Path) -> None:
        super().__init__(datastore)
        self.down: set[str] = set()
        #: Hosts whose health call hangs until the event is set (and signals ``probing``).
        self.hang: dict[str, threading.Event] = {}
        self.probing = threading.Event()

    def client(self, host: Host) -> HostClient:
        if host.name in self.down:
            raise HostUnreachable(f"host {host.name!r} could not be reached (ConnectError)")
        client = super().client(host)
        gate = self.hang.get(host.name)
        if gate is not None:
            answer = client.health

            def slow_health() -> dict[str, object]:
                self.probing.set()
                assert gate.wait(10), "the test never released the hung host"
                return answer()

            client.health = slow_health  # type: ignore[method-assign]
        return client

    def kek_ids(self, name: str) -> list[str]:
        return sorted(k for _p, k in self.states[name].cache.key_ids())


@pytest.fixture
def hosts(tmp_path: Path) -> Switchable:
    (tmp_path / "ds").mkdir()
    connector = Switchable(tmp_path / "ds")
    connector.start("esx-a")
    connector.start("esx-b")
    return connector


@pytest.fixture
def board() -> HealthBoard:
    return HealthBoard()


@pytest.fixture
def control_app(database: Database, master_key: bytes, hosts: Switchable,
                board: HealthBoard) -> FastAPI:
    return create_app(database, master_key=master_key, hosts=hosts, health=board)


@pytest.fixture
async def control(control_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=control_app),
                                 base_url="http://control") as c:
        yield c


@pytest.fixture
def monitor(database: Database, master_key: bytes, hosts: Switchable,
            board: HealthBoard) -> HostMonitor:
    return HostMonitor(database, hosts, sealing_key=master_key, interval=0.05, health=board)


def _by_name(checks: list[HostCheck]) -> dict[str, HostCheck]:
    return {c.name: c for c in checks}


def _events(database: Database, type: str) -> list[str]:
    with database.transaction() as session:
        return [e.message for e in list_events(session, type=type, limit=100)]


def _state(database: Database, name: str) -> ConnectionState:
    with database.transaction() as session:
        host = session.query(Host).filter_by(name=name).one()
        return host.connection_state


async def test_a_restarted_host_gets_its_keks_back_and_a_kms_outage_locks(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Switchable, monitor: HostMonitor,  # noqa: F811
    database: Database,
) -> None:
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    created = await control.post(f"{API}/vms", headers=admin, json={
        "name": "vm-01", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK], "storage_policy_id": ids["policy"]})
    assert created.status_code == 201, created.text
    vm = created.json()
    key_id = vm["key_ids"]["home"]
    payload = b"monitored" * 100
    put = await control.put(f"{API}/vms/{vm['id']}/disks/0/data?offset=0", content=payload,
                            headers=admin)
    assert put.status_code == 200, put.text

    # First pass: every host is new to this monitor, so each gets a (cheap) reconnect.
    first = _by_name(monitor.check_once())
    assert first["esx-a"].reconnected and first["esx-b"].reconnected
    assert _state(database, "esx-a") is ConnectionState.CONNECTED
    # Nothing changed: the next pass only polls.
    assert not any(c.reconnected for c in monitor.check_once())

    # esx-a restarts between two polls (new boot ID, empty cache): the monitor re-pushes.
    hosts.start("esx-a")
    assert hosts.kek_ids("esx-a") == []
    again = _by_name(monitor.check_once())
    assert again["esx-a"].reconnected and again["esx-a"].pushed == 1
    assert not again["esx-b"].reconnected
    assert hosts.kek_ids("esx-a") == [key_id]
    got = await control.get(f"{API}/vms/{vm['id']}/disks/0/data?offset=0&length={len(payload)}",
                            headers=admin)
    assert got.content == payload
    assert any("restarted" in m for m in _events(database, "host.connected"))

    # The KMS is down when esx-a restarts again: the VM is locked, with its reason.
    kms_port = kms.address[1]
    kms.shutdown()
    hosts.start("esx-a")
    locked = _by_name(monitor.check_once())
    assert locked["esx-a"].locked == (vm["id"],)
    state = (await control.get(f"{API}/vms/{vm['id']}", headers=admin)).json()
    assert state["locked"] and state["lock_reason"] == "kms_unreachable"
    assert _events(database, "kms.connection.failed")
    assert _events(database, "vm.locked")

    # The KMS returns; an unlock fetches the KEK by ID again and the data reads back.
    back = KmsServer(dataclasses.replace(kms.config, port=kms_port), master_key=KMS_MASTER_KEY)
    back.start()
    try:
        unlocked = await control.post(f"{API}/vms/{vm['id']}/unlock", headers=admin)
        assert unlocked.status_code == 200 and unlocked.json()["locked"] is False
        got = await control.get(
            f"{API}/vms/{vm['id']}/disks/0/data?offset=0&length={len(payload)}", headers=admin)
        assert got.content == payload
    finally:
        back.shutdown()


async def test_a_host_that_goes_away_is_not_responding_once_then_reconnected(
    control: httpx.AsyncClient, tokens: dict[str, str], hosts: Switchable,
    monitor: HostMonitor, database: Database,
) -> None:
    admin = auth(tokens["admin"])
    cluster = (await control.post(f"{API}/clusters", json={"name": "c"},
                                  headers=admin)).json()["id"]
    for name in ("esx-a", "esx-b"):
        made = await control.post(f"{API}/hosts", headers=admin, json={
            "name": name, "hardware_uuid": str(uuid.uuid4()), "cluster_id": cluster,
            "api_url": f"https://{name}:8443"})
        assert made.status_code == 201, made.text
    # A native provider made usable: its primary key is what a restarted host lacks.
    native = (await control.post(f"{API}/key-providers/native", json={"name": "nkp"},
                                 headers=admin)).json()["id"]
    await control.post(f"{API}/key-providers/{native}/acknowledge-no-backup", headers=admin)
    monitor.check_once()

    hosts.down.add("esx-b")
    for _ in range(3):  # three polls, one event
        checks = _by_name(monitor.check_once())
        assert not checks["esx-b"].responding and checks["esx-a"].responding
    assert _state(database, "esx-b") is ConnectionState.NOT_RESPONDING
    assert len(_events(database, "host.not_responding")) == 1

    # It comes back as a fresh process: reconnected, the native key pushed again.
    hosts.down.discard("esx-b")
    hosts.start("esx-b")
    assert hosts.states["esx-b"].cache.native_provider_ids() == []
    back = _by_name(monitor.check_once())
    assert back["esx-b"].reconnected
    assert _state(database, "esx-b") is ConnectionState.CONNECTED
    assert hosts.states["esx-b"].cache.native_provider_ids() == ["nkp"]
    assert any("(back)" in m for m in _events(database, "host.connected"))


async def test_the_thread_polls_until_stopped(
    control: httpx.AsyncClient, tokens: dict[str, str], database: Database,
    hosts: Switchable, master_key: bytes,
) -> None:
    admin = auth(tokens["admin"])
    cluster = (await control.post(f"{API}/clusters", json={"name": "c"},
                                  headers=admin)).json()["id"]
    made = await control.post(f"{API}/hosts", headers=admin, json={
        "name": "esx-a", "hardware_uuid": str(uuid.uuid4()), "cluster_id": cluster,
        "api_url": "https://esx-a:8443"})
    assert made.status_code == 201, made.text
    passes: list[list[HostCheck]] = []
    two = threading.Event()

    def seen(checks: list[HostCheck]) -> None:
        passes.append(checks)
        if len(passes) >= 2:
            two.set()

    monitor = HostMonitor(database, hosts, sealing_key=master_key, interval=0.02,
                          on_check=seen)
    monitor.start()
    try:
        assert two.wait(10), "the monitor did not poll twice"
        with pytest.raises(RuntimeError):
            monitor.start()
    finally:
        monitor.stop()
    count = len(passes)
    assert passes[0][0].reconnected and not passes[1][0].reconnected
    two.clear()
    assert not two.wait(0.1) and len(passes) == count  # stopped: no more passes


def test_the_interval_must_be_positive(database: Database, master_key: bytes,
                                       hosts: Switchable) -> None:
    with pytest.raises(ValueError, match="positive"):
        HostMonitor(database, hosts, sealing_key=master_key, interval=0)


async def test_a_hung_host_holds_no_database_lock(
    control: httpx.AsyncClient, tokens: dict[str, str], hosts: Switchable,
    monitor: HostMonitor, database: Database,
) -> None:
    """Probes run outside transactions: the API can write while a host hangs."""
    admin = auth(tokens["admin"])
    cluster = (await control.post(f"{API}/clusters", json={"name": "c"},
                                  headers=admin)).json()["id"]
    for name in ("esx-a", "esx-b"):
        await control.post(f"{API}/hosts", headers=admin, json={
            "name": name, "hardware_uuid": str(uuid.uuid4()), "cluster_id": cluster,
            "api_url": f"https://{name}:8443"})
    monitor.check_once()
    hosts.start("esx-b")  # restarted: the pass below reconnects it
    release = threading.Event()
    hosts.hang["esx-a"] = release
    results: list[HostCheck] = []
    worker = threading.Thread(target=lambda: results.extend(monitor.check_once()))
    worker.start()
    try:
        assert hosts.probing.wait(10)
        started = time.monotonic()
        written = await control.post(f"{API}/clusters", json={"name": "meanwhile"},
                                     headers=admin)
        assert written.status_code == 201, written.text
        assert time.monotonic() - started < 2.0  # not waiting for the hung probe
    finally:
        release.set()
        worker.join(30)
    checks = _by_name(results)
    assert checks["esx-a"].responding and not checks["esx-a"].reconnected
    assert checks["esx-b"].reconnected


async def test_every_probe_puts_the_host_on_the_health_board(
    control: httpx.AsyncClient, tokens: dict[str, str], pki: PkiLayout,  # noqa: F811
    kms: KmsServer, hosts: Switchable, monitor: HostMonitor,  # noqa: F811
    board: HealthBoard,
) -> None:
    admin = auth(tokens["admin"])
    ids = await _setup(control, tokens["admin"], pki, kms.address[1], hosts.datastore)
    before = await control.get(f"{API}/hosts/{ids['esx-a']}", headers=admin)
    assert before.status_code == 200 and before.json()["health"] is None
    created = await control.post(f"{API}/vms", headers=admin, json={
        "name": "vm-01", "datastore_id": ids["datastore"], "host_id": ids["esx-a"],
        "disks": [DISK], "storage_policy_id": ids["policy"]})
    assert created.status_code == 201, created.text

    monitor.check_once()
    seen = board.host("esx-a")
    assert seen is not None and seen.connected and seen.error is None
    assert seen.keks == len(hosts.kek_ids("esx-a")) == 1
    assert seen.vms == 1 and seen.jobs_running == 0 and seen.native_providers == 0
    assert seen.latency_ms is not None and seen.latency_ms >= 0
    body = (await control.get(f"{API}/hosts/{ids['esx-a']}", headers=admin)).json()
    assert body["health"]["connected"] and body["health"]["keks"] == 1
    assert body["health"]["checked_at"]
    # A host without a Trust Authority reports its attestation as unset.
    assert body["health"]["attestation"]["state"] == "unset"
    # Counts only: the host page never shows which keys a host holds.
    assert vm_key_id(created.json()) not in str(body)

    # Down: the board says so at once, every poll (checked_at moves), with the reason.
    hosts.down.add("esx-a")
    monitor.check_once()
    first = board.host("esx-a")
    monitor.check_once()
    down = board.host("esx-a")
    assert down is not None and first is not None
    assert not down.connected and down.error == "HostUnreachable" and down.keks is None
    assert down.checked_at >= first.checked_at
    body = (await control.get(f"{API}/hosts/{ids['esx-a']}", headers=admin)).json()
    assert body["health"]["connected"] is False
    other = board.host("esx-b")
    assert other is not None and other.connected


def vm_key_id(vm: dict[str, object]) -> str:
    keys = vm["key_ids"]
    assert isinstance(keys, dict)
    return str(keys["home"])
