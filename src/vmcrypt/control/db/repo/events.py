"""The event log: append, and list with filters, newest first.

There is no update and no delete here, and the ORM refuses both for
:class:`~vmcrypt.control.db.models.Event` (see ``models/log.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import Event, Severity
from vmcrypt.control.db.models.base import now as _now
from vmcrypt.exceptions import UsageError

__all__ = ["MAX_EVENTS", "append_event", "list_events"]

#: The most events one listing returns; callers page with ``until``.
MAX_EVENTS = 1000


def append_event(
    session: Session,
    *,
    type: str,
    message: str,
    severity: Severity = Severity.INFO,
    object_type: str | None = None,
    object_id: str | int | None = None,
    user_name: str | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> Event:
    """Append one event; ``details`` must be JSON and must never hold key bytes."""
    entry = Event(
        time=at or _now(), type=type, severity=severity, object_type=object_type,
        object_id=None if object_id is None else str(object_id), user_name=user_name,
        message=message, details=dict(details or {}),
    )
    session.add(entry)
    session.flush()
    return entry


def list_events(
    session: Session,
    *,
    type: str | None = None,
    severity: Severity | None = None,
    object_type: str | None = None,
    object_id: str | int | None = None,
    user_name: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[Event]:
    """Events matching every filter given, newest first; ``since`` ≤ time < ``until``."""
    if not 0 < limit <= MAX_EVENTS:
        raise UsageError(f"limit must be between 1 and {MAX_EVENTS}, not {limit}")
    query = select(Event).order_by(Event.time.desc(), Event.id.desc()).limit(limit)
    if type is not None:
        query = query.where(Event.type == type)
    if severity is not None:
        query = query.where(Event.severity == severity)
    if object_type is not None:
        query = query.where(Event.object_type == object_type)
    if object_id is not None:
        query = query.where(Event.object_id == str(object_id))
    if user_name is not None:
        query = query.where(Event.user_name == user_name)
    if since is not None:
        query = query.where(Event.time >= since)
    if until is not None:
        query = query.where(Event.time < until)
    return list(session.scalars(query))
