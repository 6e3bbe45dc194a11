"""``/metrics``: the control plane in the Prometheus text format.

Two sources, neither of which calls a host or a key server at scrape time:

- :class:`OperationsMiddleware` counts finished API writes by operation and result as
  they pass (``vmcrypt_operations_total{operation, result}``), the operation named as the
  audit events name it (``vms.encrypt``, ``key-providers.backup``, …);
- :class:`ControlCollector` reads, when scraped, the database (jobs by state, bytes per
  second of running jobs, locked VMs) and the health board the monitors fill (KMS
  latency per server, KEKs cached per host).

Each app has its own :class:`~prometheus_client.CollectorRegistry`, so several apps in
one process (tests) never share counters. Only counts, rates and latencies are exported:
no key, key ID or token is ever a label.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import Job, JobState, VirtualMachine
from vmcrypt.control.health import HealthBoard

__all__ = ["CONTENT_TYPE", "ControlCollector", "Metrics", "OperationsMiddleware"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_API_PREFIX: Final = "/api/v1/"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


class ControlCollector(Collector):
    """Scrape-time gauges from the database and the health board (no network calls)."""

    def __init__(self, database: Database, health: HealthBoard) -> None:
        self._database = database
        self._health = health

    def collect(self) -> Iterator[Metric]:
        """One family per question an operator asks; empty families when nothing is known."""
        jobs = GaugeMetricFamily("vmcrypt_jobs", "Jobs by state.", labels=["state"])
        rate = GaugeMetricFamily("vmcrypt_job_throughput_bytes_per_second",
                                 "Sum of the data rates of running jobs.")
        locked = GaugeMetricFamily("vmcrypt_vms_locked", "VMs locked (keys unavailable).")
        with self._database.transaction() as session:
            counts: dict[JobState, int] = {
                state: count for state, count in session.execute(
                    select(Job.state, func.count()).group_by(Job.state))}
            running = session.scalar(select(func.sum(Job.rate_bytes_per_second)).where(
                Job.state == JobState.RUNNING))
            locked_count = session.scalar(select(func.count()).select_from(
                VirtualMachine).where(VirtualMachine.locked.is_(True)))
        for state in JobState:
            jobs.add_metric([state.value], float(counts.get(state, 0)))
        rate.add_metric([], float(running or 0.0))
        locked.add_metric([], float(locked_count or 0))
        yield from (jobs, rate, locked)

        latency = GaugeMetricFamily(
            "vmcrypt_kms_latency_seconds", "Last probe's round trip to each KMS server.",
            labels=["provider", "server"])
        reachable = GaugeMetricFamily(
            "vmcrypt_kms_reachable", "Whether the last probe reached the KMS server (1/0).",
            labels=["provider", "server"])
        for health, _when in self._health.providers():
            for server in health.servers:
                labels = [health.provider_id, server.address]
                reachable.add_metric(labels, 1.0 if server.reachable else 0.0)
                if server.latency_ms is not None:
                    latency.add_metric(labels, server.latency_ms / 1000.0)
        keks = GaugeMetricFamily("vmcrypt_host_keys_cached",
                                 "KEKs in each host's memory cache, as last probed.",
                                 labels=["host"])
        connected = GaugeMetricFamily("vmcrypt_host_connected",
                                      "Whether the host answered its last probe (1/0).",
                                      labels=["host"])
        for host in self._health.hosts():
            connected.add_metric([host.name], 1.0 if host.connected else 0.0)
            if host.keks is not None:
                keks.add_metric([host.name], float(host.keks))
        yield from (latency, reachable, keks, connected)


class Metrics:
    """One app's registry: the operations counter and the scrape-time collector."""

    def __init__(self, database: Database, health: HealthBoard) -> None:
        self.registry = CollectorRegistry()
        self.operations = Counter(
            "vmcrypt_operations", "API writes by operation and result.",
            labelnames=["operation", "result"], registry=self.registry)
        self.registry.register(ControlCollector(database, health))

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)

    async def endpoint(self, _request: Request) -> Response:
        """``GET /metrics``; unauthenticated, as Prometheus scrapes are (nothing secret)."""
        return Response(self.render(), media_type=CONTENT_TYPE)


class OperationsMiddleware:
    """Counts each finished API write by its operation and result (pure ASGI)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request through; count it once its status is known."""
        if scope["type"] != "http" or scope["method"] in _SAFE_METHODS or not str(
                scope["path"]).startswith(_API_PREFIX):
            await self.app(scope, receive, send)
            return
        status = 500

        async def remember(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, remember)
        finally:
            self.metrics.operations.labels(
                operation=_operation(scope), result="succeeded" if status < 400 else "failed",
            ).inc()


def _operation(scope: Scope) -> str:
    # As the audit event names it: "<first path segment>.<route name>".
    path = str(scope["path"])[len(_API_PREFIX):]
    route = scope.get("route")
    name = getattr(route, "name", None) or "unknown"
    return f"{path.split('/', 1)[0]}.{name}"
