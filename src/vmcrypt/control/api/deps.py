"""The request pipeline: one transaction, the caller, privilege checks and audit.

Every route of the control plane API is an :class:`AuditedRoute`. For each request it

1. opens **one** database session and transaction (:data:`SessionDep` hands it out);
2. runs FastAPI's dependencies — :data:`CurrentUser` authenticates the bearer token,
   :func:`requires` checks privileges — then the handler;
3. for a state-changing request (any method but GET, HEAD, OPTIONS) appends an audit
   event — who, what, which object, result — **in the same transaction** as the
   change, then commits. If the event cannot be written the change is rolled back and
   the request fails: audit fails closed, as Vault's core does;
4. on any error rolls the change back and, for a state-changing request, records the
   failure in a fresh transaction (again failing the request if that is impossible).

Handlers never check privileges and never write audit events themselves; a route
without :func:`requires` is a bug a test looks for.

The web UI authenticates with the same API tokens, carried in the HttpOnly, Secure,
SameSite=Strict cookie :data:`SESSION_COOKIE` that ``POST /api/v1/sessions`` sets. An
``Authorization`` header wins over the cookie. Against cross-site request forgery a
state-changing request authenticated by the cookie must also carry the header
``HX-Request`` (htmx sends it; the UI's own fetches set it): a cross-site form cannot
set a header, and a cross-site script that tries needs a CORS preflight the API never
grants. SameSite=Strict alone would keep the cookie off cross-site requests already;
the header is a second, independent lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Final

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from vmcrypt.control.api.errors import status_of
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import Severity
from vmcrypt.control.db.repo import Principal, append_event, authenticate_token
from vmcrypt.control.exceptions import AuthenticationFailed, PermissionDenied

__all__ = [
    "AUDIT_EVENT_TYPE",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "AuditedRoute",
    "CurrentUser",
    "SessionDep",
    "current_user",
    "get_session",
    "requires",
]

#: The type of every audit event the pipeline writes.
AUDIT_EVENT_TYPE: Final = "audit"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_API_PREFIX: Final = "/api/v1/"
#: The web UI's cookie: an API token from ``POST /api/v1/sessions``.
SESSION_COOKIE: Final = "vmcrypt_session"
#: The header a cookie-authenticated write must carry (see the module docstring).
CSRF_HEADER: Final = "HX-Request"
_bearer = HTTPBearer(auto_error=False, description="An API token: `Bearer vmct_…`")


def get_session(request: Request) -> Session:
    """The request's session, opened by :class:`AuditedRoute` around the handler."""
    session: Session = request.state.session
    return session


SessionDep = Annotated[Session, Depends(get_session)]


def current_user(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller named by the ``Authorization: Bearer`` token (else the session cookie), or 401."""
    if credentials is not None:
        if credentials.scheme.lower() != "bearer":
            raise AuthenticationFailed
        token = credentials.credentials
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None:
            raise AuthenticationFailed
        if request.method not in _SAFE_METHODS and CSRF_HEADER not in request.headers:
            raise AuthenticationFailed  # a cookie alone never authorises a write (CSRF)
        token = cookie
    principal = authenticate_token(session, token=token)
    request.state.principal = principal  # for the audit event, written by the pipeline
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def requires(*privileges: str) -> Any:
    """The one privilege check: a dependency that needs every privilege named.

    Use it in a route's ``dependencies=[requires(...)]``. The first missing privilege
    is named in the 403, so the caller knows what to ask an administrator for.
    """
    if not privileges:
        raise ValueError("requires() needs at least one privilege")

    def check(principal: CurrentUser) -> Principal:
        for privilege in privileges:
            if not principal.has(privilege):
                raise PermissionDenied(privilege)
        return principal

    check.required_privileges = privileges  # type: ignore[attr-defined]  # read by tests
    return Depends(check)


class AuditedRoute(APIRoute):
    """An API route whose requests run in one transaction and are audited when writes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler with the transaction and the audit event."""
        handler = super().get_route_handler()
        name = self.name

        async def audited(request: Request) -> Response:
            database: Database = request.app.state.database
            session = database.sessions()
            request.state.session = session
            writes = request.method not in _SAFE_METHODS
            try:
                try:
                    response = await handler(request)
                    if writes:
                        await run_in_threadpool(
                            _audit, session, request, name, response.status_code,
                            _object_id(request, response),
                        )
                    await run_in_threadpool(session.commit)
                except Exception as exc:
                    await run_in_threadpool(session.rollback)
                    if writes:
                        await run_in_threadpool(_audit_failure, database, request, name,
                                                status_of(exc))
                    raise
            finally:
                await run_in_threadpool(session.close)
            return response

        return audited


def _object_type(request: Request) -> str:
    path = request.url.path
    rest = path[len(_API_PREFIX):] if path.startswith(_API_PREFIX) else path
    return rest.split("/", 1)[0]


def _object_id(request: Request, response: Response) -> str | None:
    # The object a request acted on: the first path parameter, or the ID it created.
    for value in request.path_params.values():
        return str(value)
    if response.media_type == "application/json":
        try:
            body = json.loads(bytes(response.body))
        except ValueError:
            return None
        if isinstance(body, dict) and "id" in body:
            return str(body["id"])
    return None


def _audit(
    session: Session,
    request: Request,
    operation: str,
    status: int,
    object_id: str | None,
) -> None:
    principal: Principal | None = getattr(request.state, "principal", None)
    user = principal.user_name if principal is not None else None
    result = "succeeded" if status < 400 else "failed"
    object_type = _object_type(request)
    operation = f"{object_type}.{operation}"  # e.g. "key-providers.backup"
    append_event(
        session,
        type=AUDIT_EVENT_TYPE,
        severity=Severity.INFO if result == "succeeded" else Severity.WARNING,
        object_type=object_type,
        object_id=object_id,
        user_name=user,
        message=f"{operation} {result} (HTTP {status}) by {user or 'an unauthenticated caller'}",
        # Method, path and status only: bodies may hold passwords and are never logged.
        details={"operation": operation, "method": request.method,
                 "path": request.url.path, "status": status, "result": result},
    )
    session.flush()


def _audit_failure(database: Database, request: Request, operation: str, status: int) -> None:
    object_id = next((str(v) for v in request.path_params.values()), None)
    with database.transaction() as session:
        _audit(session, request, operation, status, object_id)
