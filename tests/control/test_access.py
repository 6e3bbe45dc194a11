"""Users, roles, API tokens, privilege checks; the built-in roles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control import privileges as p
from vmcrypt.control.db import repo
from vmcrypt.control.db.models import ApiToken
from vmcrypt.control.db.repo.access import TOKEN_PREFIX, token_digest
from vmcrypt.control.exceptions import AuthenticationFailed, Conflict, NotFound, PermissionDenied
from vmcrypt.exceptions import UsageError

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def test_a_token_is_returned_once_and_stored_as_its_digest(session: Session) -> None:
    user = repo.create_user(session, name="alice", role=p.ADMINISTRATOR)
    issued = repo.issue_token(session, user_id=user.id, label="ci")
    assert issued.token.startswith(TOKEN_PREFIX)
    assert len(issued.token) > 40
    row = session.get(ApiToken, issued.token_id)
    assert row is not None
    assert row.token_hash == token_digest(issued.token) != issued.token
    principal = repo.authenticate_token(session, token=issued.token)
    assert (principal.user_name, principal.role) == ("alice", p.ADMINISTRATOR)
    assert principal.privileges == p.ALL_PRIVILEGES


@pytest.mark.parametrize(
    ("role", "allowed", "denied"),
    [
        (p.ADMINISTRATOR, [p.CRYPTO_ENCRYPT, p.VM_CREATE], []),
        (p.NO_CRYPTOGRAPHY_ADMINISTRATOR, [p.VM_CREATE, p.SYSTEM_READ],
         sorted(p.CRYPTOGRAPHIC_PRIVILEGES)),
        (p.READ_ONLY, [p.SYSTEM_READ, p.SYSTEM_VIEW], [p.VM_CREATE, p.CRYPTO_DECRYPT]),
    ],
)
def test_builtin_roles(session: Session, role: str, allowed: list[str], denied: list[str]) -> None:
    user = repo.create_user(session, name="u", role=role)
    principal = repo.authenticate_token(
        session, token=repo.issue_token(session, user_id=user.id).token
    )
    for privilege in allowed:
        assert repo.has_privilege(session, user_id=user.id, privilege=privilege)
        repo.require_privilege(principal, privilege)
    for privilege in denied:
        assert not repo.has_privilege(session, user_id=user.id, privilege=privilege)
        with pytest.raises(PermissionDenied, match=privilege.replace(".", r"\.")):
            repo.require_privilege(principal, privilege)


def test_every_failed_authentication_looks_the_same(session: Session) -> None:
    user = repo.create_user(session, name="bob", role=p.READ_ONLY)
    expiring = repo.issue_token(session, user_id=user.id, expires_at=T0 + timedelta(hours=1))
    revoked = repo.issue_token(session, user_id=user.id)
    repo.revoke_token(session, token_id=revoked.token_id, at=T0)
    repo.authenticate_token(session, token=expiring.token, at=T0)  # still valid

    messages = set()
    for token, at in [
        ("vmct_not-a-token", T0),
        (expiring.token, T0 + timedelta(hours=1)),
        (revoked.token, T0),
    ]:
        with pytest.raises(AuthenticationFailed) as caught:
            repo.authenticate_token(session, token=token, at=at)
        messages.add(str(caught.value))
    user.disabled = True
    with pytest.raises(AuthenticationFailed) as caught:
        repo.authenticate_token(session, token=expiring.token, at=T0)
    messages.add(str(caught.value))
    assert len(messages) == 1
    assert not repo.has_privilege(session, user_id=user.id, privilege=p.SYSTEM_READ)


def test_custom_roles_hold_known_privileges_only(session: Session) -> None:
    role = repo.create_role(session, name="Key admin",
                            privileges=[p.CRYPTO_MANAGE_KEYS, p.SYSTEM_READ])
    user = repo.create_user(session, name="k", role=role.name)
    assert repo.privileges_of(session, user_id=user.id) == {p.CRYPTO_MANAGE_KEYS, p.SYSTEM_READ}
    with pytest.raises(UsageError, match=r"Cryptographer\.Everything"):
        repo.create_role(session, name="bad", privileges=["Cryptographer.Everything"])
    with pytest.raises(Conflict):
        repo.create_role(session, name=p.READ_ONLY, privileges=[])


def test_unknown_users_and_roles(session: Session) -> None:
    with pytest.raises(NotFound, match="no role named"):
        repo.create_user(session, name="x", role="Wizard")
    with pytest.raises(NotFound):
        repo.issue_token(session, user_id=404)
    repo.create_user(session, name="x", role=p.READ_ONLY)
    with pytest.raises(Conflict):
        repo.create_user(session, name="x", role=p.READ_ONLY)
    assert session.scalar(select(ApiToken)) is None
