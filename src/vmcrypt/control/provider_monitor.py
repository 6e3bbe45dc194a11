"""The key provider monitor: probe every key provider, keep the board, report changes.

An operator must learn that a key server went away *before* a host restart needs a
KEK from it (seeds: "key server connection failed"). :class:`ProviderMonitor` probes
every key provider every few seconds with :meth:`KeyProvider.health` — for a standard
provider each KMS server (KMIP Discover Versions and Query over mutual TLS: reachable,
TLS accepted, latency, the server certificate's expiry), for a native one its backup
state — and:

- writes each result to the health board (:class:`~vmcrypt.control.health.HealthBoard`,
  ``app.state.health``), which the API, the web UI and ``/metrics`` read;
- appends one ``kp.health.changed`` event **when a provider's state or a server's
  reachability changes**, not on every poll: a warning (degraded) or an error
  (unreachable) when it gets worse, info when it recovers. The event names the
  provider, the servers that changed, their latency and the error reason.

Probes run in parallel, with a short timeout, and **outside any transaction** (a hung
key server must not hold the database's write lock); providers are read in one short
transaction and each event is appended in its own. Each pass builds fresh provider
objects from the rows — the probe then includes a fresh TLS handshake, which is what
shows the certificate — and closes them afterwards.

Previous states live on the board, in memory: after a control plane restart a provider
first seen unhealthy gets one event, a healthy one none. Trusted providers are not
probed here (their health is the Trust Authority's, probed by its own client).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import KeyProvider as ProviderRow
from vmcrypt.control.db.models import ProviderKind, Severity
from vmcrypt.control.db.repo import append_event
from vmcrypt.control.health import HealthBoard
from vmcrypt.control.poller import Poller
from vmcrypt.control.services.keys import load_native, load_standard
from vmcrypt.exceptions import VmcryptError
from vmcrypt.providers import KeyProvider, StandardKeyProvider
from vmcrypt.providers.base import ProviderHealth, ServerHealth

__all__ = ["DEFAULT_PROVIDER_INTERVAL", "PROBE_TIMEOUT", "ProviderCheck", "ProviderMonitor"]

logger = logging.getLogger("vmcrypt.control.provider_monitor")

#: Seconds between two probes of every provider (``--provider-check-interval``).
DEFAULT_PROVIDER_INTERVAL: Final = 30.0
#: Seconds one KMS server may take to connect and answer before it counts as down.
PROBE_TIMEOUT: Final = 3.0
#: Providers probed at once.
_MAX_PROBES: Final = 8
#: How bad each state is, to tell "worse" (warning/error) from "recovered" (info).
_RANK: Final = {"healthy": 0, "degraded": 1, "unreachable": 2}
EVENT: Final = "kp.health.changed"


@dataclass(frozen=True)
class ProviderCheck:
    """What one pass found for one provider, and whether it appended an event."""

    provider_id: int
    name: str
    state: str
    changed: bool = False
    error: str | None = None


@dataclass(frozen=True)
class _Target:
    """A provider row read in a short transaction, and the provider built from it."""

    id: int
    name: str
    provider: KeyProvider | None
    error: str | None = None


class ProviderMonitor(Poller):
    """Probes key providers' health, writes it to the board, records changes as events.

    :meth:`check_once` is one synchronous pass (what tests call); :meth:`start` runs it
    every ``interval`` seconds in a daemon thread until :meth:`stop`.
    """

    what = "provider monitor"

    def __init__(self, database: Database, *, sealing_key: bytes, health: HealthBoard,
                 interval: float = DEFAULT_PROVIDER_INTERVAL,
                 timeout: float = PROBE_TIMEOUT,
                 on_check: Callable[[list[ProviderCheck]], None] | None = None) -> None:
        super().__init__(interval)
        if timeout <= 0:
            raise ValueError("the provider probe timeout must be positive")
        self._database = database
        self._sealing_key = sealing_key
        self.health = health
        self.timeout = timeout
        self._on_check = on_check
        self._pass_lock = threading.Lock()

    # --- one pass -----------------------------------------------------------------------

    def check_once(self) -> list[ProviderCheck]:
        """Probe every standard and native provider once, in parallel, outside transactions."""
        with self._pass_lock:
            targets = self._targets()
            names = {t.name for t in targets}
            for probed, _when in self.health.providers():
                if probed.provider_id not in names:  # deleted since the last pass
                    self.health.forget_provider(probed.provider_id)
            if targets:
                with ThreadPoolExecutor(max_workers=min(len(targets), _MAX_PROBES),
                                        thread_name_prefix="vmcrypt-kp-probe") as pool:
                    found = list(pool.map(self._probe, targets))
            else:
                found = []
            results = [self._settle(t, h) for t, h in zip(targets, found, strict=True)]
        if self._on_check is not None:
            self._on_check(results)
        return results

    def _targets(self) -> list[_Target]:
        """Providers to probe, built in one short transaction (no network in it)."""
        targets = []
        with self._database.transaction() as session:
            rows = session.scalars(select(ProviderRow)
                                   .options(selectinload(ProviderRow.kms_servers))
                                   .order_by(ProviderRow.id))
            for row in rows:
                if row.kind is ProviderKind.TRUSTED:
                    continue
                try:
                    provider = self._build(row)
                except VmcryptError as exc:  # a stored row that cannot be used as is
                    targets.append(_Target(row.id, row.name, None, str(exc)))
                else:
                    targets.append(_Target(row.id, row.name, provider))
        return targets

    def _build(self, row: ProviderRow) -> KeyProvider:
        if row.kind is ProviderKind.NATIVE:
            return load_native(row, self._sealing_key)
        # Rebuilt with the monitor's short timeout: a probe must not wait 5 s per server.
        loaded = load_standard(row)
        return StandardKeyProvider(row.name, loaded.servers, product_version="health",
                                   timeout=self.timeout)

    def _probe(self, target: _Target) -> ProviderHealth:
        """The provider's health now (no database access here)."""
        if target.provider is None:
            return ProviderHealth(provider_id=target.name, kind="standard",
                                  state="unreachable", warnings=(target.error or "",))
        try:
            return target.provider.health()
        except Exception as exc:  # a probe must never break the pass
            logger.warning("key provider %s: probe failed (%s)", target.name,
                           type(exc).__name__)
            return ProviderHealth(provider_id=target.name, kind=target.provider.kind,
                                  state="unreachable",
                                  warnings=(f"probe failed ({type(exc).__name__})",))
        finally:
            if isinstance(target.provider, StandardKeyProvider):
                target.provider.close()

    def _settle(self, target: _Target, health: ProviderHealth) -> ProviderCheck:
        """Put the result on the board; append an event in its own transaction on change."""
        before = self.health.set_provider(target.name, health)
        changes = _changed_servers(before, health)
        state_changed = (before.state != health.state if before is not None
                         else health.state != "healthy")
        if not state_changed and not changes:
            return ProviderCheck(target.id, target.name, health.state)
        try:
            with self._database.transaction() as session:
                if session.get(ProviderRow, target.id) is None:  # deleted meanwhile
                    return ProviderCheck(target.id, target.name, health.state)
                append_event(session, type=EVENT, severity=_severity(before, health, changes),
                             object_type="key_provider", object_id=target.id,
                             message=_message(target.name, before, health, changes),
                             details=_details(before, health, changes))
        except Exception as exc:  # one provider must not stop the others
            logger.warning("key provider %s: recording its health change failed (%s)",
                           target.name, type(exc).__name__)
            return ProviderCheck(target.id, target.name, health.state,
                                 error=type(exc).__name__)
        logger.info("key provider %s is %s", target.name, health.state)
        return ProviderCheck(target.id, target.name, health.state, changed=True)


# --- what changed, and how to say it -----------------------------------------------------


def _changed_servers(before: ProviderHealth | None,
                     now: ProviderHealth) -> list[tuple[ServerHealth | None, ServerHealth]]:
    """Servers whose reachability differs from the last probe (or new and down).

    A server is matched by address, else by its place in the failover order (an
    operator who edits a server's address still has "the first server").
    """
    earlier = before.servers if before is not None else ()
    known = {s.address: s for s in earlier}
    changed = []
    for index, server in enumerate(now.servers):
        was = known.get(server.address) or (earlier[index] if index < len(earlier) else None)
        up = server.error is None
        if (was is None and not up) or (was is not None and (was.error is None) != up):
            changed.append((was, server))
    return changed


def _severity(before: ProviderHealth | None, now: ProviderHealth,
              changes: list[tuple[ServerHealth | None, ServerHealth]]) -> Severity:
    was = _RANK.get(before.state, 0) if before is not None else 0
    rank = _RANK.get(now.state, 2)
    if rank > was or (rank == was and any(s.error is not None for _w, s in changes)):
        return Severity.ERROR if now.state == "unreachable" else Severity.WARNING
    return Severity.INFO


def _message(name: str, before: ProviderHealth | None, now: ProviderHealth,
             changes: list[tuple[ServerHealth | None, ServerHealth]]) -> str:
    head = (f"key provider {name!r} is {now.state}" if before is None
            else f"key provider {name!r} is {now.state} (was {before.state})")
    parts = [f"key server {s.address} is "
             + ("reachable" + (f" ({s.latency_ms:g} ms)" if s.latency_ms is not None else "")
                if s.error is None else f"down: {s.error}")
             for _was, s in changes]
    if not parts and now.warnings:
        parts = list(now.warnings)
    return head + ("; " + "; ".join(parts) if parts else "")


def _details(before: ProviderHealth | None, now: ProviderHealth,
             changes: list[tuple[ServerHealth | None, ServerHealth]]) -> dict[str, Any]:
    return {
        "provider": now.provider_id, "kind": now.kind, "state": now.state,
        "previous_state": before.state if before is not None else None,
        "servers": [{"address": s.address, "reachable": s.error is None,
                     "previously_reachable": None if was is None else was.error is None,
                     "latency_ms": s.latency_ms, "error": s.error} for was, s in changes],
        "warnings": list(now.warnings),
    }
