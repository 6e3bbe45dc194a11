"""Users, roles, privileges and API tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ForeignKey,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from vmcrypt.control.db.models.base import (
    Base,
    now,
)

__all__ = ["ApiToken", "Role", "RolePrivilege", "User"]


class Role(Base):
    """A named set of privileges; built-in roles are re-synchronised at start."""

    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    builtin: Mapped[bool] = mapped_column(default=False)

    privileges: Mapped[list[RolePrivilege]] = relationship(cascade="all, delete-orphan")


class RolePrivilege(Base):
    """One privilege of one role (see :mod:`vmcrypt.control.privileges`)."""

    __tablename__ = "role_privileges"

    role_id: Mapped[int] = mapped_column(
        ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True
    )
    privilege: Mapped[str] = mapped_column(String(128), primary_key=True)


class User(Base):
    """A user of the API with exactly one role."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"), index=True)
    disabled: Mapped[bool] = mapped_column(default=False)
    #: A salted scrypt hash for web logins (revision 0005); None: API tokens only.
    password_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=now)

    role: Mapped[Role] = relationship()


class ApiToken(Base):
    """An API token for scripts: only its SHA-256 is stored, shown to no one again."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(255), default="")
    #: Hex SHA-256 of the token; tokens carry 256 random bits, so no slow hash is needed.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=now)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()
