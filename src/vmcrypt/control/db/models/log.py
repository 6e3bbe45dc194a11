"""The append-only event log and jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    event,
)
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from vmcrypt.control.db.models.base import (
    Base,
    JobState,
    Severity,
    now,
)
from vmcrypt.control.db.types import str_enum

__all__ = ["Event", "Job"]


class Event(Base):
    """One entry of the append-only event log (the ORM refuses updates and deletes).

    ``user_name`` is a name, not a foreign key, so the log outlives deleted users.
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_object", "object_type", "object_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[datetime] = mapped_column(default=now, index=True)
    type: Mapped[str] = mapped_column(String(128), index=True)
    severity: Mapped[Severity] = mapped_column(
        str_enum(Severity, name="severity"), default=Severity.INFO
    )
    object_type: Mapped[str | None] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(64))
    user_name: Mapped[str | None] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Job(Base):
    """A long operation (encrypt, re-key, clone…) with progress a client can poll.

    ``type`` is the operation (``vm.encrypt``). A job that follows a host job names the
    component it changes (``home``, ``disk-0``, ``all``), the host and the host's own
    job ID (revision 0004); the host holds the live progress, the row the last poll.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(128), index=True)
    component: Mapped[str | None] = mapped_column(String(32))
    host_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("hosts.id", ondelete="SET NULL"), index=True
    )
    host_job_id: Mapped[str | None] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[JobState] = mapped_column(
        str_enum(JobState, name="job_state"), default=JobState.QUEUED, index=True
    )
    user_name: Mapped[str | None] = mapped_column(String(255))
    progress_percent: Mapped[float] = mapped_column(Float, default=0.0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger)
    rate_bytes_per_second: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


def _refuse_rewriting_history(mapper: Mapper[Event], connection: Any, target: Event) -> None:
    """The event log is evidence (who did what with which key): it is only appended to."""
    raise TypeError(f"event {target.id} is append-only: it cannot be changed or deleted")


event.listen(Event, "before_update", _refuse_rewriting_history)
event.listen(Event, "before_delete", _refuse_rewriting_history)
