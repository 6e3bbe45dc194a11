"""Column types shared by the models: aware UTC timestamps and string-valued enums.

SQLite has no time zone type and PostgreSQL's ``timestamptz`` would silently convert,
so every timestamp is stored as naive UTC and handed back as an aware UTC ``datetime``.
Enums are stored as their *values* in a plain string column with a CHECK constraint:
readable in SQL, portable, and a new member does not need ``ALTER TYPE``.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Enum, TypeDecorator

__all__ = ["UtcDateTime", "str_enum"]


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always UTC: refuses naive input, returns aware values."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store naive UTC; a naive ``datetime`` is a bug (whose clock?), so refuse it."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (use datetime.now(UTC))")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Hand back what was stored, marked as UTC."""
        return None if value is None else value.replace(tzinfo=UTC)


def str_enum(enum_class: type[enum.StrEnum], *, name: str) -> Enum:
    """A portable enum column that stores member values (``"kms_unreachable"``)."""
    values: Any = lambda members: [member.value for member in members]  # noqa: E731
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=values,
        validate_strings=True,
    )
