"""The host agent's FastAPI application: the routers under ``/api/v1`` and the errors.

:func:`create_app` takes a :class:`HostState` so tests run the same app in-process
(httpx's ASGI transport) that ``vmcrypt host serve`` runs under uvicorn with mutual TLS.
Only the control plane, holding a client certificate from the CA, can reach it; the TLS
layer enforces that, so the routes carry no other authentication.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, FastAPI, Request

from vmcrypt import __version__
from vmcrypt.host.api import data, jobs, keys, moves, vms
from vmcrypt.host.api.errors import install_error_handlers
from vmcrypt.host.api.schemas import Health
from vmcrypt.host.api.state import HostState, StateDep

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX = "/api/v1"

_health = APIRouter(tags=["health"])


@_health.get("/health")
def health(state: StateDep, request: Request) -> Health:
    """Who this host is and how many keys it holds (counts, never keys).

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
    )


def create_app(state: HostState) -> FastAPI:
    """A host API over ``state`` (its datastore, key cache and job table)."""
    app = FastAPI(
        title=f"vmcrypt host {state.name}",
        version=__version__,
        description="The host agent: keys in memory, cryptography on VM data.",
    )
    app.state.host = state
    app.state.boot_id = secrets.token_hex(16)
    for router in (_health, keys.router, vms.router, data.router, jobs.router, moves.router):
        app.include_router(router, prefix=API_PREFIX)
    install_error_handlers(app)
    return app
