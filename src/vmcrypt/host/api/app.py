"""The host agent's FastAPI application: the routers under ``/api/v1`` and the errors.

:func:`create_app` takes a :class:`HostState` so tests run the same app in-process
(httpx's ASGI transport) that ``vmcrypt host serve`` runs under uvicorn with mutual TLS.
Only the control plane, holding a client certificate from the CA, can reach it; the TLS
layer enforces that, so the routes carry no other authentication.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from vmcrypt import __version__
from vmcrypt.host.api import data, jobs, keys, moves, trusted, vms
from vmcrypt.host.api.errors import install_error_handlers
from vmcrypt.host.api.schemas import Health
from vmcrypt.host.api.state import HostState, StateDep
from vmcrypt.host.trust import HostNotAttested, TrustedProviderUnavailable

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX = "/api/v1"

_health = APIRouter(tags=["health"])


@_health.get("/health")
def health(state: StateDep, request: Request) -> Health:
    """Who this host is, how many keys it holds (counts, never keys), its attestation.

    ``boot_id`` is random per app (per process): the control plane's host monitor
    compares it between polls to notice a restart, i.e. an empty key cache, even when
    the restart was quicker than one poll interval.
    """
    return Health(
        name=state.name,
        hardware_uuid=state.hardware_uuid,
        boot_id=request.app.state.boot_id,
        version=__version__,
        keks=len(state.cache.key_ids()),
        native_providers=len(state.cache.native_provider_ids()),
        vms=len(state.datastore.vm_ids()),
        jobs_running=state.jobs.running(),
        attestation=trusted.attestation_public(state),
    )


async def _untrusted(_request: Request, exc: Exception) -> JSONResponse:
    # Its own codes, so the control plane can lock a VM with the precise reason: an
    # untrusted host (409) is not a Trust Authority that is down (503).
    assert isinstance(exc, HostNotAttested | TrustedProviderUnavailable)
    status = 409 if isinstance(exc, HostNotAttested) else 503
    return JSONResponse({"error": exc.code, "message": str(exc), "reason": exc.reason},
                        status_code=status)


def create_app(state: HostState) -> FastAPI:
    """A host API over ``state`` (its datastore, key cache and job table)."""
    app = FastAPI(
        title=f"vmcrypt host {state.name}",
        version=__version__,
        description="The host agent: keys in memory, cryptography on VM data.",
    )
    app.state.host = state
    app.state.boot_id = secrets.token_hex(16)
    for router in (_health, keys.router, vms.router, data.router, jobs.router, moves.router,
                   trusted.router):
        app.include_router(router, prefix=API_PREFIX)
    install_error_handlers(app)
    app.add_exception_handler(HostNotAttested, _untrusted)
    app.add_exception_handler(TrustedProviderUnavailable, _untrusted)
    return app
