"""The host monitor: notice hosts that stop answering or restart, and reconnect them.

A host keeps KEKs in memory only, so a restarted host (a crash, ``kill -9``, a reboot)
comes back with an empty key cache and cannot open its VMs. Nobody tells the control
plane; it has to notice. :class:`HostMonitor` polls every host's ``/health`` every few
seconds and, per host:

- health fails → the host is ``not_responding`` (one ``host.not_responding`` event
  when that changes, not one per poll);
- health answers and the host was not connected, or its ``boot_id`` differs from the
  last one seen (it restarted between two polls), or it was never seen by this process
  → :func:`~vmcrypt.control.services.keys.reconnect_host`: native primary keys and
  every KEK pushed again **by ID**, VMs whose keys cannot be had are locked with their
  reason (the seeds' key events come from there), and a ``host.connected`` event.

"Never seen by this process" includes every host after a control plane restart: a
reconnect is idempotent (it pushes what the host should hold), so doing one too many
is cheap while missing one leaves VMs unusable. Boot IDs are kept in memory only; with
several control plane replicas each reconnects once, which is harmless.

Every probe is also written to the health board (:class:`~vmcrypt.control.health.
HealthBoard`, ``app.state.health``) — connected or not, the counts the host reported
(KEKs, native providers, VMs, running jobs) and the probe's latency — so the API, the
web UI and ``/metrics`` read host health without calling a host.

Hosts are probed in parallel and outside any transaction (a hung host must not hold
the database's write lock); a host whose state changes is then handled in its own
transaction, so one host's failure changes nothing for the others. An unexpected error
is logged (type only — messages may carry provider details) and the host is retried at
the next poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import ConnectionState, Host, Severity
from vmcrypt.control.db.repo import append_event
from vmcrypt.control.health import HealthBoard, HostHealth
from vmcrypt.control.pinning import HostCertificateMismatch, HostNotEnrolled
from vmcrypt.control.poller import Poller
from vmcrypt.control.services.keys import HostConnector, reconnect_host
from vmcrypt.exceptions import VmcryptError

__all__ = ["DEFAULT_INTERVAL", "HostCheck", "HostMonitor"]

logger = logging.getLogger("vmcrypt.control.monitor")

#: Seconds between two polls of every host (``--host-check-interval``).
DEFAULT_INTERVAL: Final = 5.0


#: Hosts probed at once; more wait for a free probe (a hung host costs one slot).
_MAX_PROBES: Final = 16


@dataclass(frozen=True)
class _Target:
    """What a probe needs of a host row, read in a short transaction and then used
    without one."""

    id: int
    name: str
    api_url: str | None
    certificate_fingerprint: str | None
    state: ConnectionState

    @classmethod
    def of(cls, host: Host) -> _Target:
        return cls(host.id, host.name, host.api_url, host.certificate_fingerprint,
                   host.connection_state)

    def detached(self) -> Host:
        """A transient ``Host`` (in no session) for the connector: it reads these fields."""
        return Host(id=self.id, name=self.name, api_url=self.api_url,
                    certificate_fingerprint=self.certificate_fingerprint)


@dataclass(frozen=True)
class HostCheck:
    """What one poll found for one host, and what it did about it."""

    host_id: int
    name: str
    responding: bool
    reconnected: bool = False
    pushed: int = 0
    locked: tuple[int, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class _Answer:
    """A host's ``/health`` answer and how long it took."""

    body: dict[str, Any]
    latency_ms: float

    @property
    def boot_id(self) -> str:
        return str(self.body.get("boot_id") or "")


def _count(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class HostMonitor(Poller):
    """Polls hosts' health and reconnects the ones that (re)appear.

    :meth:`check_once` is one synchronous pass (what tests call); :meth:`start` runs it
    every ``interval`` seconds in a daemon thread until :meth:`stop`. ``on_check`` is
    called with each pass's results (tests and logs use it). Each probe is written to
    ``health`` (the app's board in ``control serve``; a private one when not given).
    """

    what = "host monitor"

    def __init__(self, database: Database, hosts: HostConnector, *, sealing_key: bytes,
                 interval: float = DEFAULT_INTERVAL,
                 on_check: Callable[[list[HostCheck]], None] | None = None,
                 health: HealthBoard | None = None) -> None:
        super().__init__(interval)
        self._database = database
        self._hosts = hosts
        self._sealing_key = sealing_key
        self._on_check = on_check
        self.health = health if health is not None else HealthBoard()
        self._boot_ids: dict[int, str] = {}
        self._last_error: dict[int, str] = {}
        self._pass_lock = threading.Lock()

    # --- one pass -----------------------------------------------------------------------

    def check_once(self) -> list[HostCheck]:
        """Poll every host with an API URL once; reconnect those that need it.

        The probes run in parallel and **outside** any transaction: every SQLite
        transaction here takes the write lock (``BEGIN IMMEDIATE``), so holding one
        across a slow or hung host would stall every API write. A transaction is opened
        only for a host whose state changes or that needs a reconnect.
        """
        with self._pass_lock:
            with self._database.transaction() as session:
                targets = [_Target.of(h) for h in session.scalars(
                    select(Host).where(Host.api_url.is_not(None)).order_by(Host.id))]
            for gone in set(self._boot_ids) - {t.id for t in targets}:
                del self._boot_ids[gone]
            names = {t.name for t in targets}
            for seen in self.health.hosts():
                if seen.name not in names:  # deleted, or its URL removed
                    self.health.forget_host(seen.name)
            if not targets:
                results: list[HostCheck] = []
            else:
                with ThreadPoolExecutor(max_workers=min(len(targets), _MAX_PROBES),
                                        thread_name_prefix="vmcrypt-host-probe") as pool:
                    probes = list(pool.map(self._probe, targets))
                for target, probe in zip(targets, probes, strict=True):
                    self._post(target, probe)
                results = [self._settle(target, probe)
                           for target, probe in zip(targets, probes, strict=True)]
        if self._on_check is not None:
            self._on_check(results)
        return results

    def _probe(self, target: _Target) -> _Answer | VmcryptError:
        """The host's health answer, or why it did not answer (no database access here)."""
        started = time.perf_counter()
        try:
            body = self._hosts.client(target.detached()).health()
        except VmcryptError as exc:
            return exc
        return _Answer(body, round((time.perf_counter() - started) * 1000, 2))

    def _post(self, target: _Target, probe: _Answer | VmcryptError) -> None:
        """Write one probe to the health board (counts only, never key IDs)."""
        if isinstance(probe, VmcryptError):
            self.health.set_host(HostHealth(name=target.name, connected=False,
                                            error=type(probe).__name__))
            return
        body = probe.body
        self.health.set_host(HostHealth(
            name=target.name, connected=True, keks=_count(body, "keks"),
            native_providers=_count(body, "native_providers"), vms=_count(body, "vms"),
            jobs_running=_count(body, "jobs_running"), latency_ms=probe.latency_ms,
            attestation=_attestation(body)))

    def _settle(self, target: _Target, probe: _Answer | VmcryptError) -> HostCheck:
        """Act on one probe in the host's own transaction, when anything must change."""
        if isinstance(probe, _Answer):
            self._last_error.pop(target.id, None)
            known = self._boot_ids.get(target.id)
            if (target.state is ConnectionState.CONNECTED and known is not None
                    and known == probe.boot_id):
                return HostCheck(target.id, target.name, responding=True)
        elif (target.state is ConnectionState.NOT_RESPONDING
              and self._last_error.get(target.id) == type(probe).__name__):
            return HostCheck(target.id, target.name, responding=False,
                             error=type(probe).__name__)  # still down: nothing to write
        try:
            with self._database.transaction() as session:
                host = session.get(Host, target.id)
                if host is None:  # deleted since the list was read
                    self._boot_ids.pop(target.id, None)
                    return HostCheck(target.id, target.name, responding=False)
                if isinstance(probe, VmcryptError):
                    self._not_responding(session, host, probe)
                    return HostCheck(target.id, target.name, responding=False,
                                     error=type(probe).__name__)
                return self._reconnect(session, host, probe.boot_id)
        except Exception as exc:  # one host must not stop the others
            logger.warning("host %s: check failed (%s); retrying at the next poll",
                           target.name, type(exc).__name__)
            return HostCheck(target.id, target.name, responding=False,
                             error=type(exc).__name__)

    def _reconnect(self, session: Session, host: Host, boot_id: str) -> HostCheck:
        known = self._boot_ids.get(host.id)
        restarted = known is not None and known != boot_id
        was = host.connection_state
        report = reconnect_host(session, self._hosts, host, sealing_key=self._sealing_key)
        if not report.connected:  # it went away between the probe and now
            return HostCheck(host.id, host.name, responding=False)
        self._boot_ids[host.id] = boot_id
        why = ("restarted" if restarted else
               "back" if was is not ConnectionState.CONNECTED else "first seen")
        locked = tuple(sorted(report.locked))
        append_event(
            session, type="host.connected",
            severity=Severity.WARNING if locked else Severity.INFO,
            object_type="host", object_id=host.id,
            message=f"host {host.name!r} connected ({why}): {report.pushed} key(s) pushed"
                    + (f", {len(locked)} VM(s) locked" if locked else ""),
            details={"reason": why, "pushed": report.pushed,
                     "locked": {str(k): v for k, v in report.locked.items()},
                     "unlocked": report.unlocked})
        logger.info("host %s connected (%s): %d key(s) pushed, %d VM(s) locked",
                    host.name, why, report.pushed, len(locked))
        return HostCheck(host.id, host.name, responding=True, reconnected=True,
                         pushed=report.pushed, locked=locked)

    def _not_responding(self, session: Session, host: Host, exc: VmcryptError) -> None:
        # Forget the boot ID: whatever comes back next gets a full reconnect.
        self._boot_ids.pop(host.id, None)
        kind = type(exc).__name__
        if (host.connection_state is ConnectionState.NOT_RESPONDING
                and self._last_error.get(host.id) == kind):
            return  # one event per change, not one per poll
        self._last_error[host.id] = kind
        host.connection_state = ConnectionState.NOT_RESPONDING
        # A wrong certificate or a host never enrolled is a security matter with its own
        # event type; anything else (down, timeout) is the host not responding.
        # A host registered but not enrolled yet is expected for a moment (a warning);
        # a wrong certificate is someone else answering at its address (an error).
        event = (exc.event if isinstance(exc, HostCertificateMismatch | HostNotEnrolled)
                 else None)
        append_event(session, type=event or "host.not_responding",
                     severity=(Severity.ERROR if isinstance(exc, HostCertificateMismatch)
                               else Severity.WARNING),
                     object_type="host", object_id=host.id,
                     message=f"host {host.name!r} is not responding: {exc}",
                     details={"error": kind})
        logger.warning("host %s is not responding (%s)", host.name, kind)
        session.flush()


def _attestation(body: dict[str, Any]) -> dict[str, object] | None:
    """The host's reported attestation (a plain mapping of short fields), if any."""
    value = body.get("attestation")
    if not isinstance(value, dict):
        return None
    return {str(k): v for k, v in value.items() if isinstance(v, str | int | float | bool)
            or v is None}
