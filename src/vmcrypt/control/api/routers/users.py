"""``/users``: users with a built-in role, and their API tokens (shown once).

Creating users and issuing tokens is ``Authorization.ModifyPermissions``: whoever can
do it can hand out any role, so the No cryptography administrator role — which holds
it — is trusted not to mint an Administrator; per-object permissions come later.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from vmcrypt.control.api.deps import AuditedRoute, SessionDep, requires
from vmcrypt.control.api.schemas import TokenCreate, TokenIssued, UserCreate, UserPublic
from vmcrypt.control.db.models import User
from vmcrypt.control.db.repo import create_user, issue_token
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.privileges import AUTHORIZATION_MODIFY_PERMISSIONS, SYSTEM_READ

__all__ = ["router"]

router = APIRouter(prefix="/users", tags=["users"], route_class=AuditedRoute)


def _public(user: User) -> UserPublic:
    return UserPublic(id=user.id, name=user.name, role=user.role.name, disabled=user.disabled)


@router.post("", status_code=201, dependencies=[requires(AUTHORIZATION_MODIFY_PERMISSIONS)])
def create(body: UserCreate, session: SessionDep) -> UserPublic:
    """Create a user holding one of the built-in roles."""
    return _public(create_user(session, name=body.name, role=body.role))


@router.get("", dependencies=[requires(SYSTEM_READ)])
def list_all(session: SessionDep) -> list[UserPublic]:
    """Every user, oldest first."""
    return [_public(row) for row in session.scalars(select(User).order_by(User.id))]


@router.get("/{user_id}", dependencies=[requires(SYSTEM_READ)])
def get(user_id: int, session: SessionDep) -> UserPublic:
    """One user."""
    return _public(fetch(session, User, user_id))


@router.post(
    "/{user_id}/tokens", status_code=201,
    dependencies=[requires(AUTHORIZATION_MODIFY_PERMISSIONS)],
)
def issue(user_id: int, body: TokenCreate, session: SessionDep) -> TokenIssued:
    """Issue an API token; the response is the only time the token is ever shown."""
    issued = issue_token(session, user_id=user_id, label=body.label, expires_at=body.expires_at)
    return TokenIssued(id=issued.token_id, token=issued.token)
