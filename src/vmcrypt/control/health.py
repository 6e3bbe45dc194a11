"""The health board: what the monitors last saw of every host and key provider.

The host monitor and the provider monitor write here; the API (``/hosts``,
``/key-providers`` health), the web UI and ``/metrics`` read from here, so reading
health never waits on a slow host or key server. The board lives in memory, in one
control plane process (``app.state.health``): after a restart it fills again within one
monitor interval. It holds counts, states and latencies — never key material.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vmcrypt.providers.base import ProviderHealth

__all__ = ["HealthBoard", "HostHealth"]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class HostHealth:
    """One host as its last ``/health`` probe found it."""

    name: str
    connected: bool
    keks: int | None = None
    native_providers: int | None = None
    vms: int | None = None
    jobs_running: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    #: The host's attestation with its Trust Authority as its ``/health`` reported it
    #: (state, reason, when; never a token), or None for a host without one.
    attestation: dict[str, object] | None = None
    checked_at: datetime = field(default_factory=_now)


class HealthBoard:
    """Thread-safe latest health per host name and per key provider name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, HostHealth] = {}
        self._providers: dict[str, tuple[ProviderHealth, datetime]] = {}

    def set_host(self, health: HostHealth) -> None:
        with self._lock:
            self._hosts[health.name] = health

    def forget_host(self, name: str) -> None:
        with self._lock:
            self._hosts.pop(name, None)

    def hosts(self) -> list[HostHealth]:
        """Every host seen, by name."""
        with self._lock:
            return [self._hosts[n] for n in sorted(self._hosts)]

    def host(self, name: str) -> HostHealth | None:
        with self._lock:
            return self._hosts.get(name)

    def set_provider(self, name: str, health: ProviderHealth) -> ProviderHealth | None:
        """Record a provider's health; the previous one (None the first time), so a caller
        can tell a change (and append an event) from a repeat."""
        with self._lock:
            before = self._providers.get(name)
            self._providers[name] = (health, _now())
            return None if before is None else before[0]

    def forget_provider(self, name: str) -> None:
        with self._lock:
            self._providers.pop(name, None)

    def providers(self) -> list[tuple[ProviderHealth, datetime]]:
        """Every provider probed, by name, with when it was probed."""
        with self._lock:
            return [self._providers[n] for n in sorted(self._providers)]

    def provider(self, name: str) -> tuple[ProviderHealth, datetime] | None:
        with self._lock:
            return self._providers.get(name)
