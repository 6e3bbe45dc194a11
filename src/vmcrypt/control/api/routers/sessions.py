"""Web sessions: log in with a password, log out, and set a user's password.

``POST /api/v1/sessions`` ``{name, password}`` checks the password (salted scrypt,
:mod:`vmcrypt.control.db.repo.passwords`) and answers a short-lived API token — in the
body for scripts, and in the HttpOnly, Secure, SameSite=Strict cookie
:data:`~vmcrypt.control.api.deps.SESSION_COOKIE` for the web UI. Every failure is one
opaque 401. Its credential is the password in the body, so — like host enrolment — it
takes no bearer token; unlike enrolment it is a plain route (:data:`login_route`) outside
the privilege table of ``tests/control/api/routes.py``, whose seeded users have no
password: it writes its own audit event (``sessions.login``, the user name, the result;
never the password) and has its own tests (``tests/control/test_passwords.py``).

``DELETE /api/v1/sessions/current`` ends the caller's web session: a token made by a
login is revoked and the cookie cleared; a long-lived API token is left alone (revoke
those through ``/users``). ``PUT /api/v1/users/{id}/password`` sets a password
(``Authorization.ModifyPermissions``, as issuing tokens is).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Final

from fastapi import APIRouter, Request, Response
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import Match, Route
from starlette.types import Scope

from vmcrypt.control.api.deps import (
    SESSION_COOKIE,
    AuditedRoute,
    CurrentUser,
    SessionDep,
    requires,
)
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import ApiToken, Severity
from vmcrypt.control.db.models.base import now
from vmcrypt.control.db.repo import append_event, login, set_password
from vmcrypt.control.db.repo.access import token_digest
from vmcrypt.control.db.repo.passwords import LOGIN_LABEL, MIN_PASSWORD_LENGTH, SESSION_TTL
from vmcrypt.control.exceptions import AuthenticationFailed
from vmcrypt.control.privileges import AUTHORIZATION_MODIFY_PERMISSIONS, SYSTEM_ANONYMOUS

__all__ = ["LoginThrottle", "PasswordSet", "SessionCreate", "SessionEnded", "login_route",
           "router"]

_PATH: Final = "/api/v1/sessions"

router = APIRouter(tags=["sessions"], route_class=AuditedRoute)


class SessionCreate(BaseModel):
    """A user name and password."""

    name: str = Field(min_length=1, max_length=255)
    password: str = Field(min_length=1, max_length=1024)


class SessionEnded(BaseModel):
    """A logout's answer: the session's token ID and whether it was revoked."""

    id: int
    revoked: bool


class PasswordSet(BaseModel):
    """A new password (at least 12 characters)."""

    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)


class LoginThrottle:
    """Failed logins per (user name, client address): after :data:`MAX_FAILURES` within
    :data:`WINDOW` seconds, that pair is refused (429) until the window has passed.

    Keyed by the pair, not the name alone, so a stranger cannot lock a user out from
    another address. Refused attempts are not checked (no scrypt work for a guesser)
    and do not extend the lock. In memory, per control plane process.
    """

    MAX_FAILURES: Final = 5
    WINDOW: Final = 300.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def wait(self, name: str, address: str, now: float | None = None) -> float:
        """Seconds this pair must still wait (0 when it may try)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._failures.get((name.lower(), address))
            if seen is None:
                return 0.0
            while seen and now - seen[0] >= self.WINDOW:
                seen.popleft()
            if len(seen) < self.MAX_FAILURES:
                return 0.0
            return self.WINDOW - (now - seen[0])

    def failed(self, name: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._failures.setdefault((name.lower(), address), deque()).append(now)

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._failures.pop((name.lower(), address), None)


def _throttle(request: Request) -> LoginThrottle:
    throttle = getattr(request.app.state, "login_throttle", None)
    if throttle is None:
        throttle = request.app.state.login_throttle = LoginThrottle()
    return throttle


def _set_cookie(response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, token, max_age=int(SESSION_TTL.total_seconds()), path="/",
        httponly=True, secure=True, samesite="strict",
    )


def _audit_login(session: Session, name: str, *, failed: bool) -> None:
    append_event(
        session, type="audit", severity=Severity.WARNING if failed else Severity.INFO,
        object_type="sessions", user_name=None if failed else name,
        message=f"sessions.login {'failed' if failed else 'succeeded'} for {name!r}",
        details={"operation": "sessions.login", "method": "POST", "path": _PATH,
                 "status": 401 if failed else 201,
                 "result": "failed" if failed else "succeeded"},
    )


def _audit_throttled(database: Database, name: str) -> None:
    with database.transaction() as session:
        append_event(
            session, type="audit", severity=Severity.WARNING, object_type="sessions",
            message=f"sessions.login refused for {name!r}: too many failed logins",
            details={"operation": "sessions.login", "method": "POST", "path": _PATH,
                     "status": 429, "result": "throttled"})


def _login(database: Database, body: SessionCreate) -> dict[str, object]:
    """Check the password; audited either way (a success in the token's own transaction,
    so no session exists unaudited; a failure in a fresh one after the rollback)."""
    try:
        with database.transaction() as session:
            issued = login(session, name=body.name, password=body.password)
            row = session.get_one(ApiToken, issued.token_id)
            _audit_login(session, body.name, failed=False)
            return {"token": issued.token, "expires_at": row.expires_at,
                    "user": row.user.name, "role": row.user.role.name}
    except AuthenticationFailed:
        with database.transaction() as session:
            _audit_login(session, body.name, failed=True)
        raise


async def _login_endpoint(request: Request) -> Response:
    """``POST /api/v1/sessions``: a password in, a short-lived token out (body and cookie)."""
    try:
        body = SessionCreate.model_validate_json(await request.body())
    except ValidationError:
        return JSONResponse({"error": "validation_failed",
                             "message": "send {\"name\": …, \"password\": …}"}, status_code=422)
    database: Database = request.app.state.database
    throttle = _throttle(request)
    address = request.client.host if request.client else "unknown"
    wait = throttle.wait(body.name, address)
    if wait > 0:
        await run_in_threadpool(_audit_throttled, database, body.name)
        return JSONResponse(
            {"error": "too_many_failed_logins",
             "message": f"too many failed logins for {body.name!r} from this address: try "
                        f"again in {int(wait) + 1} s"},
            status_code=429, headers={"Retry-After": str(int(wait) + 1)})
    try:
        result = await run_in_threadpool(_login, database, body)
    except AuthenticationFailed:
        throttle.failed(body.name, address)
        return JSONResponse({"error": "authentication_failed",
                             "message": "wrong user name or password"}, status_code=401)
    throttle.succeeded(body.name, address)
    response = JSONResponse(jsonable_encoder(result), status_code=201)
    _set_cookie(response, str(result["token"]))
    return response


class _LoginRoute(Route):
    """A plain route that, like FastAPI's, names itself in ``scope["route"]`` (read by
    the metrics middleware, which counts ``sessions.login`` like any API write)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """Starlette's match, plus ``scope["route"]``."""
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


#: Mounted by :func:`vmcrypt.control.api.app.create_app` beside the routers.
login_route = _LoginRoute(_PATH, _login_endpoint, methods=["POST"], name="login")


@router.delete("/sessions/current", dependencies=[requires(SYSTEM_ANONYMOUS)])
def logout(request: Request, response: Response, session: SessionDep,
           principal: CurrentUser) -> SessionEnded:
    """End this web session: revoke a login's token and clear the cookie.

    Answers the token's ID (the session's, for the audit event) and whether it was
    revoked: a long-lived API token is not.
    """
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(
        SESSION_COOKIE, "")
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(token)))
    if row is None or row.user_id != principal.user_id:  # authenticated just now: cannot be
        raise AuthenticationFailed
    revoked = row.label == LOGIN_LABEL
    if revoked:
        row.revoked_at = now()
        session.flush()
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True,
                           samesite="strict")
    return SessionEnded(id=row.id, revoked=revoked)


@router.put("/users/{user_id}/password", status_code=204,
            dependencies=[requires(AUTHORIZATION_MODIFY_PERMISSIONS)])
def put_password(user_id: int, body: PasswordSet, session: SessionDep) -> None:
    """Set a user's password for web logins; only its salted scrypt hash is kept."""
    set_password(session, user_id=user_id, password=body.password)
