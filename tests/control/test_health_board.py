"""The health board keeps the latest probe per host and provider, and tells changes."""

from __future__ import annotations

import threading

from vmcrypt.control.health import HealthBoard, HostHealth
from vmcrypt.providers.base import HealthState, ProviderHealth


def _provider(state: HealthState) -> ProviderHealth:
    return ProviderHealth(provider_id="kmip", kind="standard", state=state)


def test_latest_probe_wins_and_changes_are_visible() -> None:
    board = HealthBoard()
    board.set_host(HostHealth("esx-b", connected=True, keks=3))
    board.set_host(HostHealth("esx-a", connected=False, error="timed out"))
    board.set_host(HostHealth("esx-b", connected=True, keks=4))
    assert [(h.name, h.keks) for h in board.hosts()] == [("esx-a", None), ("esx-b", 4)]
    board.forget_host("esx-a")
    assert board.host("esx-a") is None

    assert board.set_provider("kmip", _provider("healthy")) is None
    before = board.set_provider("kmip", _provider("unreachable"))
    assert before is not None and before.state == "healthy"
    latest = board.provider("kmip")
    assert latest is not None and latest[0].state == "unreachable"


def test_concurrent_writers_lose_nothing() -> None:
    board = HealthBoard()

    def write(n: int) -> None:
        for i in range(200):
            board.set_host(HostHealth(f"h{n}-{i}", connected=True))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(board.hosts()) == 800
