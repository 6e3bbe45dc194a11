"""``/events``: the event log, filtered, newest first (read-only: it is append-only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from vmcrypt.control.api.deps import AuditedRoute, SessionDep, requires
from vmcrypt.control.api.schemas import EventPublic
from vmcrypt.control.db.models import Severity
from vmcrypt.control.db.repo import list_events
from vmcrypt.control.db.repo.events import MAX_EVENTS
from vmcrypt.control.privileges import SYSTEM_READ
from vmcrypt.exceptions import UsageError

__all__ = ["router"]

router = APIRouter(prefix="/events", tags=["events"], route_class=AuditedRoute)


@router.get("", dependencies=[requires(SYSTEM_READ)])
def list_all(
    session: SessionDep,
    type: str | None = None,
    severity: Severity | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    user_name: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 100,
) -> list[EventPublic]:
    """Events matching every filter given, newest first; ``since`` ≤ time < ``until``."""
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise UsageError(f"{name} needs a time zone (for example 2026-01-01T00:00:00Z)")
    rows = list_events(
        session, type=type, severity=severity, object_type=object_type,
        object_id=object_id, user_name=user_name, since=since, until=until, limit=limit,
    )
    return [EventPublic.model_validate(row) for row in rows]
