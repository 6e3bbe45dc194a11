"""Helpers shared by the repository modules: fetch-or-NotFound, insert-or-Conflict."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import Base
from vmcrypt.control.exceptions import Conflict, NotFound

__all__ = ["fetch", "insert"]

_Model = TypeVar("_Model", bound=Base)


def fetch(session: Session, model: type[_Model], object_id: int) -> _Model:
    """The row of ``model`` with this primary key, or :class:`NotFound`."""
    found = session.get(model, object_id)
    if found is None:
        raise NotFound(f"no {_label(model)} with ID {object_id}")
    return found


def insert(session: Session, row: _Model, *, what: str) -> _Model:
    """Add and flush ``row`` inside a savepoint; a uniqueness clash becomes Conflict.

    The savepoint keeps the caller's transaction usable after a Conflict, so an API
    handler can report it and carry on (or roll back) as it chooses.
    """
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError as exc:
        raise Conflict(f"{what} clashes with an existing one (name or ID already used)") from exc
    return row


def _label(model: type[Base]) -> str:
    return str(model.__tablename__).rstrip("s").replace("_", " ")
