"""One table from vmcrypt errors to HTTP answers, and the handlers that use it.

Every error body is ``{"error": code, "message": text}``: ``code`` is stable for
programs (the control plane turns ``key_not_on_host`` into the "key missing on host"
lock reason), ``message`` is the library's own message, which says what to do and never
holds key bytes. Validation errors list field names and reasons only: a request body
may carry a KEK or a primary key, so input values are never echoed back.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from vmcrypt.exceptions import VmcryptError

__all__ = ["ERRORS", "describe", "install_error_handlers"]

log = logging.getLogger("vmcrypt.host.api")

#: By class name, most specific first in the MRO wins: (HTTP status, error code).
ERRORS: dict[str, tuple[int, str]] = {
    "VmcryptError": (400, "error"),
    "UsageError": (422, "invalid_request"),
    "InvalidKey": (422, "invalid_key"),
    "HostError": (500, "host_error"),
    "KeyNotOnHost": (409, "key_not_on_host"),
    "VmNotFound": (404, "vm_not_found"),
    "JobNotFound": (404, "job_not_found"),
    "NoSuchDisk": (404, "no_such_disk"),
    "VmExists": (409, "vm_exists"),
    "VmBusy": (423, "vm_busy"),
    "ConfigError": (500, "config_error"),
    "StateError": (409, "state_error"),
    "HomeNotEncrypted": (409, "home_not_encrypted"),
    "DisksStillEncrypted": (409, "disks_still_encrypted"),
    "VtpmPresent": (409, "vtpm_present"),
    "AlreadyEncrypted": (409, "already_encrypted"),
    "NotEncrypted": (409, "not_encrypted"),
    "IntegrityError": (409, "integrity_error"),
    "KeyMissing": (409, "key_not_on_host"),
    "ForeignWrappedKek": (409, "foreign_wrapped_kek"),
    "DiskError": (500, "disk_error"),
    "ConversionCancelled": (409, "cancelled"),
    "ConversionInProgress": (409, "conversion_in_progress"),
    "NoSpaceError": (507, "no_space"),
}

_INTERNAL = (
    500,
    "internal_error",
    "unexpected failure on the host: this is a bug in vmcrypt; see the host's log",
)


def describe(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, error code, message) for an exception, by its most specific class."""
    if isinstance(exc, VmcryptError):
        for cls in type(exc).__mro__:
            found = ERRORS.get(cls.__name__)
            if found is not None:
                return found[0], found[1], str(exc)
    return _INTERNAL


def _error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def _vmcrypt_error(_request: Request, exc: Exception) -> JSONResponse:
    status, code, message = describe(exc)
    return _error_response(status, code, message)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only where and why: "input" and "ctx" may hold the very key that was sent.
    fields = [
        {"field": ".".join(str(part) for part in err.get("loc", ())), "reason": err.get("msg", "")}
        for err in exc.errors()
    ]
    summary = "; ".join(f"{f['field']}: {f['reason']}" for f in fields)
    return JSONResponse(
        {
            "error": "invalid_request",
            "message": f"the request is invalid ({summary}); fix these fields and retry",
            "fields": fields,
        },
        status_code=422,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers: vmcrypt errors by the table, validation without values."""
    app.add_exception_handler(VmcryptError, _vmcrypt_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
