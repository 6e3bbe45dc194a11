"""First start: create the Administrator user and its first API token, once.

``make up`` and ``vmcrypt control serve`` call :func:`bootstrap_administrator` after
opening the database. On a fresh database it returns the new token, which the caller
prints once; on any later start (some user exists) it returns ``None`` and changes
nothing, so a restart never mints a second administrator token.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import func, select

from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import User
from vmcrypt.control.db.repo import append_event, create_user, issue_token
from vmcrypt.control.privileges import ADMINISTRATOR

__all__ = ["BOOTSTRAP_USER", "bootstrap_administrator"]

BOOTSTRAP_USER: Final = "administrator"


def bootstrap_administrator(database: Database, *, name: str = BOOTSTRAP_USER) -> str | None:
    """The new Administrator's API token on a database with no users, else ``None``."""
    with database.transaction() as session:
        if session.scalar(select(func.count()).select_from(User)):
            return None
        user = create_user(session, name=name, role=ADMINISTRATOR)
        issued = issue_token(session, user_id=user.id, label="bootstrap")
        append_event(
            session, type="bootstrap", object_type="users", object_id=user.id,
            user_name=name, message=f"first start: created the Administrator user {name!r}",
        )
        return issued.token
