"""The event log: filters, newest first, time ranges, limits; append-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from vmcrypt.control.db import repo
from vmcrypt.control.db.models import Event, Severity
from vmcrypt.control.db.repo.events import MAX_EVENTS
from vmcrypt.exceptions import UsageError

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _log(session: Session) -> None:
    entries = [
        ("vm.encrypted", Severity.INFO, "vm", 1, "alice"),
        ("kms.unreachable", Severity.ERROR, "key_provider", 3, None),
        ("vm.locked", Severity.WARNING, "vm", 1, None),
        ("vm.encrypted", Severity.INFO, "vm", 2, "bob"),
    ]
    for minute, (kind, severity, object_type, object_id, user) in enumerate(entries):
        repo.append_event(session, type=kind, severity=severity, message=kind,
                          object_type=object_type, object_id=object_id, user_name=user,
                          details={"key_id": f"key-{minute}"},
                          at=T0 + timedelta(minutes=minute))


def test_newest_first_with_details(session: Session) -> None:
    _log(session)
    events = repo.list_events(session)
    assert [e.time.minute for e in events] == [3, 2, 1, 0]
    assert events[0].details == {"key_id": "key-3"}
    assert events[0].time.tzinfo is UTC


def test_filters_combine(session: Session) -> None:
    _log(session)
    assert [e.object_id for e in repo.list_events(session, type="vm.encrypted")] == ["2", "1"]
    assert [e.type for e in repo.list_events(session, object_type="vm", object_id=1)] == [
        "vm.locked", "vm.encrypted"]
    assert [e.type for e in repo.list_events(session, severity=Severity.ERROR)] == [
        "kms.unreachable"]
    assert [e.user_name for e in repo.list_events(session, user_name="bob")] == ["bob"]
    window = repo.list_events(session, since=T0 + timedelta(minutes=1),
                              until=T0 + timedelta(minutes=3))
    assert [e.time.minute for e in window] == [2, 1]
    assert len(repo.list_events(session, limit=2)) == 2


def test_same_instant_orders_by_arrival(session: Session) -> None:
    for n in range(3):
        repo.append_event(session, type="t", message=str(n), at=T0)
    assert [e.message for e in repo.list_events(session)] == ["2", "1", "0"]


def test_limit_is_bounded(session: Session) -> None:
    with pytest.raises(UsageError):
        repo.list_events(session, limit=0)
    with pytest.raises(UsageError):
        repo.list_events(session, limit=MAX_EVENTS + 1)


def test_events_cannot_be_changed_or_deleted(session: Session) -> None:
    event = repo.append_event(session, type="vm.encrypted", message="done")
    event.message = "never happened"
    with pytest.raises(TypeError, match="append-only"):
        session.flush()
    session.rollback()
    event = repo.append_event(session, type="vm.encrypted", message="done")
    session.delete(event)
    with pytest.raises(TypeError, match="append-only"):
        session.flush()
    session.rollback()
    assert isinstance(event, Event)
