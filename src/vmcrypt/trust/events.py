"""The Trust Authority's event log: one JSON object per line, appended, never rewritten.

Event types: ``attestation.passed`` (host, baseline), ``attestation.failed`` (host as
claimed, reason), ``key_provider.unavailable`` (provider, reason), and the
administrator's changes (``baseline.added``, ``baseline.removed``, ``host.added``,
``host.removed``, ``key_provider.added``). Fields are names and reasons only: the
service never passes key bytes, tokens or KEK ciphertexts here, and :meth:`EventLog.
record` refuses fields it does not know so that nobody starts to by accident.

Each line is written with one ``write`` on an ``O_APPEND`` descriptor and flushed, so
concurrent writers never interleave within a line and a crash loses at most the line
being written; a torn last line is skipped when reading.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["EVENT_FIELDS", "EVENT_TYPES", "EventLog"]

EVENT_TYPES = frozenset({
    "attestation.passed", "attestation.failed", "key_provider.unavailable",
    "baseline.added", "baseline.removed", "host.added", "host.removed",
    "key_provider.added",
})
#: The only fields an event may carry besides ``time`` and ``type``.
EVENT_FIELDS = frozenset({"host", "hardware_uuid", "baseline", "provider", "reason",
                          "by", "key_id"})


class EventLog:
    """Append events to ``path`` (0600) and read the latest back."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        #: The latest ``attestation.*`` event per host: one scan of the file on first
        #: use, then kept up to date by :meth:`record` (a cache, not state).
        self._last_attestation: dict[str, dict[str, Any]] | None = None

    def record(self, type_: str, **fields: str | None) -> dict[str, Any]:
        """Append one event and return it."""
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        unknown = set(fields) - EVENT_FIELDS
        if unknown:
            raise ValueError(f"events carry no field {sorted(unknown)}")
        event: dict[str, Any] = {"time": self._clock(), "type": type_}
        event.update({k: v for k, v in fields.items() if v is not None})
        line = (json.dumps(event, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # end a line torn by a crash, keep ours whole
                os.write(fd, line)
            finally:
                os.close(fd)
            if self._last_attestation is not None and _is_attestation(event):
                self._last_attestation[event["host"]] = event
        return event

    def last_attestations(self) -> dict[str, dict[str, Any]]:
        """The latest attestation event of every host that has one (its status)."""
        with self._lock:
            if self._last_attestation is None:
                latest: dict[str, dict[str, Any]] = {}
                for event in self._scan():
                    if _is_attestation(event):
                        latest[event["host"]] = event
                self._last_attestation = latest
            return dict(self._last_attestation)

    def read(self, *, limit: int = 100, type_prefix: str | None = None,
             host: str | None = None) -> list[dict[str, Any]]:
        """The last ``limit`` events (oldest first), optionally filtered."""
        events: list[dict[str, Any]] = []
        for event in self._scan():
            if type_prefix and not str(event.get("type", "")).startswith(type_prefix):
                continue
            if host and event.get("host") != host:
                continue
            events.append(event)
        return events[-limit:] if limit > 0 else []

    def _scan(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        events: list[dict[str, Any]] = []
        for raw in lines:
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # a line torn by a crash
            if isinstance(event, dict):
                events.append(event)
        return events


def _is_attestation(event: dict[str, Any]) -> bool:
    return (str(event.get("type", "")).startswith("attestation.")
            and isinstance(event.get("host"), str))
