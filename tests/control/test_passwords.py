"""Passwords (salted scrypt), logins, the session cookie and its CSRF rule."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from vmcrypt.control.api import create_app
from vmcrypt.control.api.deps import SESSION_COOKIE
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import User
from vmcrypt.control.db.models.base import now
from vmcrypt.control.db.repo import (
    authenticate_token,
    create_user,
    hash_password,
    issue_token,
    login,
    set_password,
    verify_password,
)
from vmcrypt.control.exceptions import AuthenticationFailed
from vmcrypt.control.privileges import ADMINISTRATOR, READ_ONLY
from vmcrypt.exceptions import UsageError

PASSWORD = "correct horse battery staple"
API = "/api/v1"


def test_hash_is_salted_and_verifies() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second  # a fresh salt each time
    assert first.startswith("scrypt$32768$8$1$")
    assert PASSWORD not in first
    assert verify_password(PASSWORD, first)
    assert verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + "!", first)


@pytest.mark.parametrize("stored", ["", "scrypt$1$2", "bcrypt$1$1$1$AA==$AA==",
                                    "scrypt$x$8$1$AA==$AA==", "scrypt$32768$8$1$!!$??"])
def test_malformed_hashes_never_verify(stored: str) -> None:
    assert not verify_password(PASSWORD, stored)


@pytest.mark.parametrize("bad", ["short", "x" * 11, "x" * 1025])
def test_password_length_is_checked_first(bad: str) -> None:
    with pytest.raises(UsageError, match="12 to 1024"):
        hash_password(bad)


def test_login_issues_an_expiring_token(database: Database) -> None:
    with database.transaction() as session:
        user = create_user(session, name="alice", role=READ_ONLY)
        set_password(session, user_id=user.id, password=PASSWORD)
        issued = login(session, name="alice", password=PASSWORD, ttl=timedelta(minutes=5))
        assert authenticate_token(session, token=issued.token).user_name == "alice"
        with pytest.raises(AuthenticationFailed):  # expired after its TTL
            authenticate_token(session, token=issued.token, at=now() + timedelta(minutes=6))


def test_login_failures_are_one_opaque_error(database: Database) -> None:
    with database.transaction() as session:
        alice = create_user(session, name="alice", role=READ_ONLY)
        create_user(session, name="bob", role=READ_ONLY)  # no password: tokens only
        set_password(session, user_id=alice.id, password=PASSWORD)
        for name, password in (("alice", "wrong password!"), ("nobody", PASSWORD),
                               ("bob", PASSWORD)):
            with pytest.raises(AuthenticationFailed) as caught:
                login(session, name=name, password=password)
            assert str(caught.value) == str(AuthenticationFailed())
        session.get_one(User, alice.id).disabled = True
        with pytest.raises(AuthenticationFailed):
            login(session, name="alice", password=PASSWORD)


# -- over HTTP ----------------------------------------------------------------------------


@pytest.fixture
def app(database: Database) -> FastAPI:
    return create_app(database, master_key=secrets.token_bytes(32))


@pytest.fixture
def users(database: Database) -> Iterator[dict[str, str]]:
    """An administrator and a read-only user with passwords; the admin's API token."""
    with database.transaction() as session:
        admin = create_user(session, name="admin", role=ADMINISTRATOR)
        reader = create_user(session, name="reader", role=READ_ONLY)
        set_password(session, user_id=admin.id, password=PASSWORD)
        set_password(session, user_id=reader.id, password=PASSWORD)
        token = issue_token(session, user_id=admin.id).token
    yield {"admin_token": token, "reader_id": str(reader.id)}


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # https: the session cookie is Secure, so the client sends it back only over TLS.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://control") as c:
        yield c


@pytest.mark.anyio
async def test_login_sets_a_strict_httponly_secure_cookie(
        client: httpx.AsyncClient, users: dict[str, str], database: Database) -> None:
    response = await client.post(f"{API}/sessions", json={"name": "admin", "password": PASSWORD})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user"] == "admin" and body["role"] == ADMINISTRATOR
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={body['token']}")
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/", "Max-Age=28800"):
        assert flag.lower() in cookie.lower()
    # The token also works as a bearer token for scripts.
    listed = await client.get(f"{API}/users",
                              headers={"Authorization": f"Bearer {body['token']}"})
    assert listed.status_code == 200
    events = (await client.get(f"{API}/events", params={"object_type": "sessions"},
                               headers={"Authorization": f"Bearer {users['admin_token']}"}))
    assert [e["details"]["result"] for e in events.json()] == ["succeeded"]
    assert PASSWORD not in events.text and body["token"] not in events.text
    with database.transaction() as session:  # only the hash is stored
        assert all(PASSWORD not in (u.password_hash or "")
                   for u in session.query(User).all())


@pytest.mark.anyio
async def test_a_failed_login_is_401_and_audited(client: httpx.AsyncClient,
                                                 users: dict[str, str]) -> None:
    response = await client.post(f"{API}/sessions",
                                 json={"name": "admin", "password": "not the password"})
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert (await client.post(f"{API}/sessions", json={"name": "admin"})).status_code == 422
    events = await client.get(f"{API}/events", params={"object_type": "sessions"},
                              headers={"Authorization": f"Bearer {users['admin_token']}"})
    [event] = events.json()
    assert event["details"]["result"] == "failed" and event["severity"] == "warning"
    assert "not the password" not in events.text


@pytest.mark.anyio
async def test_repeated_failed_logins_are_throttled(client: httpx.AsyncClient,
                                                    users: dict[str, str]) -> None:
    """Five failures for a name from one address, then 429 — even with the right
    password — with Retry-After and an audit event; another name is not affected."""
    for _ in range(5):
        wrong = await client.post(f"{API}/sessions",
                                  json={"name": "admin", "password": "guess"})
        assert wrong.status_code == 401
    held = await client.post(f"{API}/sessions", json={"name": "admin", "password": PASSWORD})
    assert held.status_code == 429
    assert "too many failed logins" in held.json()["message"]
    assert 0 < int(held.headers["retry-after"]) <= 300
    other = await client.post(f"{API}/sessions", json={"name": "reader", "password": PASSWORD})
    assert other.status_code == 201
    events = await client.get(f"{API}/events", params={"object_type": "sessions"},
                              headers={"Authorization": f"Bearer {users['admin_token']}"})
    assert "throttled" in [e["details"]["result"] for e in events.json()]


def test_the_throttle_forgets_after_its_window_and_on_success() -> None:
    from vmcrypt.control.api.routers.sessions import LoginThrottle

    throttle = LoginThrottle()
    for t in range(5):
        throttle.failed("Admin", "10.0.0.1", now=float(t))
    assert throttle.wait("admin", "10.0.0.1", now=10.0) == pytest.approx(290.0)
    assert throttle.wait("admin", "10.0.0.2", now=10.0) == 0.0  # another address
    assert throttle.wait("admin", "10.0.0.1", now=301.0) == 0.0  # the window passed
    throttle.failed("admin", "10.0.0.1", now=302.0)
    throttle.succeeded("admin", "10.0.0.1")
    assert throttle.wait("admin", "10.0.0.1", now=303.0) == 0.0


@pytest.mark.anyio
async def test_cookie_writes_need_the_htmx_header(client: httpx.AsyncClient,
                                                  users: dict[str, str]) -> None:
    await client.post(f"{API}/sessions", json={"name": "admin", "password": PASSWORD})
    assert (await client.get(f"{API}/clusters")).status_code == 200  # reads: cookie alone
    refused = await client.post(f"{API}/clusters", json={"name": "csrf"})
    assert refused.status_code == 401  # a cross-site form could send this much
    made = await client.post(f"{API}/clusters", json={"name": "ui"},
                             headers={"HX-Request": "true"})
    assert made.status_code == 201


@pytest.mark.anyio
async def test_the_api_refuses_a_read_only_session(client: httpx.AsyncClient,
                                                   users: dict[str, str]) -> None:
    await client.post(f"{API}/sessions", json={"name": "reader", "password": PASSWORD})
    refused = await client.post(f"{API}/clusters", json={"name": "nope"},
                                headers={"HX-Request": "true"})
    assert refused.status_code == 403
    assert refused.json()["privilege"] == "Host.Inventory.CreateCluster"


@pytest.mark.anyio
async def test_logout_revokes_the_login_token_only(client: httpx.AsyncClient,
                                                   users: dict[str, str]) -> None:
    token = (await client.post(f"{API}/sessions",
                               json={"name": "admin", "password": PASSWORD})).json()["token"]
    out = await client.delete(f"{API}/sessions/current", headers={"HX-Request": "true"})
    assert out.status_code == 200 and out.json()["revoked"] is True
    assert 'max-age=0' in out.headers["set-cookie"].lower()
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get(f"{API}/clusters", headers=bearer)).status_code == 401
    # A long-lived API token survives "logging out" with it.
    admin = {"Authorization": f"Bearer {users['admin_token']}"}
    kept = await client.delete(f"{API}/sessions/current", headers=admin)
    assert kept.status_code == 200 and kept.json()["revoked"] is False
    assert (await client.get(f"{API}/clusters", headers=admin)).status_code == 200


@pytest.mark.anyio
async def test_setting_a_password(client: httpx.AsyncClient, users: dict[str, str],
                                  tmp_path: Path) -> None:
    admin = {"Authorization": f"Bearer {users['admin_token']}"}
    path = f"{API}/users/{users['reader_id']}/password"
    assert (await client.put(path, json={"password": "short"}, headers=admin)).status_code == 422
    new = "a brand new password"
    assert (await client.put(path, json={"password": new}, headers=admin)).status_code == 204
    ok = await client.post(f"{API}/sessions", json={"name": "reader", "password": new})
    assert ok.status_code == 201
    # The reader (now logged in by cookie) may not set passwords.
    refused = await client.put(path, json={"password": new + "!"},
                               headers={"HX-Request": "true"})
    assert refused.status_code == 403


# -- the CLI: vmcrypt user passwd -----------------------------------------------------------

from tests.cli.test_control_cli import Control  # noqa: E402
from tests.cli.test_control_cli import control as cli_control  # noqa: E402, F401


def test_cli_user_passwd(cli_control: Control) -> None:  # noqa: F811
    control = cli_control
    control.ok("user", "create", "web-user", "--role", "Read-only")
    run = control.cli.run("user", "passwd", "web-user", "--password-stdin", "--url",
                          control.url, "--token-file", control.token_file,
                          stdin=b"a long enough password\n")
    assert run.returncode == 0, run.err
    assert "a long enough password" not in run.stdout.decode() + run.err
    with httpx.Client(base_url=control.url) as client:
        ok = client.post(f"{API}/sessions",
                         json={"name": "web-user", "password": "a long enough password"})
        assert ok.status_code == 201
    short = control.cli.run("user", "passwd", "web-user", "--password-stdin", "--url",
                            control.url, "--token-file", control.token_file, stdin=b"short\n")
    assert short.returncode != 0 and "password" in short.err
