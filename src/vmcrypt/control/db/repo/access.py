"""Users, roles, API tokens and privilege checks.

API tokens are 256 random bits shown to their owner exactly once; the database keeps
only their SHA-256. A slow password hash (scrypt) buys nothing against a 256-bit
secret, while a plain digest lets a token be found by an indexed lookup. Lookup is by
digest, so comparing the presented token never leaks it through timing.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import ApiToken, Role, RolePrivilege, User
from vmcrypt.control.db.models.base import now as _now
from vmcrypt.control.db.repo._common import fetch, insert
from vmcrypt.control.exceptions import AuthenticationFailed, NotFound, PermissionDenied
from vmcrypt.control.privileges import ALL_PRIVILEGES, BUILTIN_ROLES
from vmcrypt.exceptions import UsageError

__all__ = [
    "TOKEN_PREFIX",
    "IssuedToken",
    "Principal",
    "authenticate_token",
    "create_role",
    "create_user",
    "has_privilege",
    "issue_token",
    "privileges_of",
    "require_privilege",
    "revoke_token",
    "sync_builtin_roles",
    "token_digest",
]

#: Every token starts with this, so a leaked one is recognisable in logs and scanners.
TOKEN_PREFIX: Final = "vmct_"  # noqa: S105 — a public marker, not a secret
_TOKEN_BYTES: Final = 32


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token: ``token`` is the secret, never retrievable again."""

    token_id: int
    token: str


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the API's privilege checks see it."""

    user_id: int
    user_name: str
    role: str
    privileges: frozenset[str]

    def has(self, privilege: str) -> bool:
        """Whether this principal's role grants ``privilege``."""
        return privilege in self.privileges


def token_digest(token: str) -> str:
    """The stored form of a token: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def sync_builtin_roles(session: Session) -> None:
    """Create the built-in roles, or bring their privileges in line with this release."""
    for name, privileges in BUILTIN_ROLES.items():
        role = session.scalar(select(Role).where(Role.name == name))
        if role is None:
            role = Role(name=name, builtin=True)
            session.add(role)
        role.builtin = True
        held = {grant.privilege for grant in role.privileges}
        role.privileges = [g for g in role.privileges if g.privilege in privileges]
        role.privileges.extend(
            RolePrivilege(privilege=p) for p in sorted(privileges - held)
        )


def create_role(session: Session, *, name: str, privileges: Iterable[str]) -> Role:
    """A custom role; every privilege must be one vmcrypt knows."""
    wanted = set(privileges)
    unknown = wanted - ALL_PRIVILEGES
    if unknown:
        raise UsageError(f"unknown privileges: {', '.join(sorted(unknown))}")
    role = Role(name=name, privileges=[RolePrivilege(privilege=p) for p in sorted(wanted)])
    return insert(session, role, what=f"role {name!r}")


def create_user(session: Session, *, name: str, role: str) -> User:
    """A user holding the role named ``role``."""
    found = session.scalar(select(Role).where(Role.name == role))
    if found is None:
        raise NotFound(f"no role named {role!r}")
    return insert(session, User(name=name, role=found), what=f"user {name!r}")


def issue_token(
    session: Session,
    *,
    user_id: int,
    label: str = "",
    expires_at: datetime | None = None,
) -> IssuedToken:
    """Issue an API token for a user; the returned secret is the only copy there is."""
    fetch(session, User, user_id)
    token = TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
    row = insert(
        session,
        ApiToken(user_id=user_id, label=label, token_hash=token_digest(token),
                 expires_at=expires_at),
        what="API token",
    )
    return IssuedToken(token_id=row.id, token=token)


def revoke_token(session: Session, *, token_id: int, at: datetime | None = None) -> None:
    """Revoke a token from ``at`` (default: now); later use fails authentication."""
    fetch(session, ApiToken, token_id).revoked_at = at or _now()
    session.flush()


def authenticate_token(
    session: Session, *, token: str, at: datetime | None = None
) -> Principal:
    """The principal a token stands for, or one opaque :class:`AuthenticationFailed`.

    Unknown, revoked and expired tokens and disabled users all fail alike.
    """
    moment = at or _now()
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(token)))
    if (
        row is None
        or (row.revoked_at is not None and row.revoked_at <= moment)
        or (row.expires_at is not None and row.expires_at <= moment)
        or row.user.disabled
    ):
        raise AuthenticationFailed
    user = row.user
    return Principal(
        user_id=user.id,
        user_name=user.name,
        role=user.role.name,
        privileges=privileges_of(session, user_id=user.id),
    )


def privileges_of(session: Session, *, user_id: int) -> frozenset[str]:
    """Every privilege the user's role grants."""
    user = fetch(session, User, user_id)
    rows = session.scalars(
        select(RolePrivilege.privilege).where(RolePrivilege.role_id == user.role_id)
    )
    return frozenset(rows)


def has_privilege(session: Session, *, user_id: int, privilege: str) -> bool:
    """Whether the user's role grants ``privilege`` (a disabled user has none)."""
    user = fetch(session, User, user_id)
    if user.disabled:
        return False
    found = session.scalar(
        select(RolePrivilege.privilege).where(
            RolePrivilege.role_id == user.role_id, RolePrivilege.privilege == privilege
        )
    )
    return found is not None


def require_privilege(principal: Principal, privilege: str) -> None:
    """Raise :class:`PermissionDenied` unless ``principal`` holds ``privilege``."""
    if not principal.has(privilege):
        raise PermissionDenied(privilege)

