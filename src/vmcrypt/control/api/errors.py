"""One table from vmcrypt's errors to HTTP: status, error code, and a safe body.

Every error response has the same shape, ``{"error": code, "message": text}``. The
message is the exception's own, which the error classes write to say what failed and
what to do next, and never to carry key bytes. Validation errors (422) list each field
and the reason only: the rejected *values* are never echoed, since a request body may
carry a backup password or a certificate someone pasted by mistake.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vmcrypt.control.exceptions import (
    AuthenticationFailed,
    Conflict,
    ControlError,
    NotFound,
    PermissionDenied,
)
from vmcrypt.exceptions import UsageError, VmcryptError
from vmcrypt.providers.exceptions import BackupError, ProviderError

__all__ = ["ERROR_TABLE", "error_body", "install_error_handlers", "status_of"]

_log = logging.getLogger(__name__)

#: Exception class → (HTTP status, error code); the most specific class in the MRO wins.
ERROR_TABLE: Final[dict[type[Exception], tuple[int, str]]] = {
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    PermissionDenied: (403, "permission_denied"),
    AuthenticationFailed: (401, "authentication_failed"),
    ControlError: (400, "control_error"),
    UsageError: (400, "usage_error"),
    # A wrong backup password or a damaged .p12 is the caller's mistake, not ours.
    BackupError: (400, "backup_error"),
    ProviderError: (502, "provider_error"),
    VmcryptError: (500, "internal_error"),
}


def _lookup(exc: BaseException) -> tuple[int, str] | None:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return None


def status_of(exc: BaseException) -> int:
    """The HTTP status a request ending in ``exc`` is answered with."""
    if isinstance(exc, RequestValidationError):
        return 422
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    found = _lookup(exc)
    return found[0] if found is not None else 500


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The one shape of every error response."""
    return {"error": code, "message": message, **extra}


def _validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    # Only the location and pydantic's reason; "input" and "ctx" may hold the value.
    return [
        {
            "field": ".".join(str(part) for part in err.get("loc", ()) if part != "body")
            or "body",
            "reason": str(err.get("msg", "invalid")),
        }
        for err in exc.errors()
    ]


async def _on_vmcrypt_error(_request: Request, exc: Exception) -> JSONResponse:
    status, code = _lookup(exc) or (500, "internal_error")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    message = str(exc) if status < 500 else "internal error: see the control plane's log"
    extra: dict[str, Any] = {}
    if isinstance(exc, PermissionDenied):
        extra["privilege"] = exc.privilege
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = _validation_errors(exc)
    summary = "; ".join(f"{f['field']}: {f['reason']}" for f in fields)
    return JSONResponse(
        error_body("validation_error", f"invalid request: {summary}", fields=fields),
        status_code=422,
    )


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    # A bug or an outage, not the caller's doing: logged here, opaque to the caller.
    _log.error("unhandled error in the control plane API", exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "internal error: see the control plane's log"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn the table above into responses."""
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_exception_handler(VmcryptError, _on_vmcrypt_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
