"""The control plane's REST API: :func:`create_app` builds it around an open database.

Everything lives under ``/api/v1``; the OpenAPI document is ``/api/v1/openapi.json``
and the interactive docs ``/api/v1/docs``. The app keeps no state of its own beyond
the database handle and the master key (``app.state``), so several replicas can serve
one database.
"""

from __future__ import annotations

from typing import Final

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse

from vmcrypt.control.api.errors import install_error_handlers
from vmcrypt.control.api.routers import ROUTERS, enrolment, jobs, sessions, vms
from vmcrypt.control.db.engine import Database
from vmcrypt.control.health import HealthBoard
from vmcrypt.control.jobrunner import JobRunner
from vmcrypt.control.metrics import Metrics, OperationsMiddleware
from vmcrypt.control.services import mobility
from vmcrypt.control.services.keys import HostConnector
from vmcrypt.crypto.keys import AEAD_KEY_SIZE
from vmcrypt.exceptions import UsageError

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX: Final = "/api/v1"


def create_app(
    database: Database, *, master_key: bytes, hosts: HostConnector | None = None,
    health: HealthBoard | None = None,
) -> FastAPI:
    """The API app over ``database``; ``master_key`` seals native primary keys.

    ``master_key`` is the control plane's 32-byte master key. It is a parameter for
    now; the settings of ``vmcrypt control serve`` will load it from its key file.
    ``hosts`` reaches host agents; without it the VM routes (which need hosts) are
    not mounted. ``health`` is the board the monitors write (a fresh one if None), read
    by the health routes, the web UI (``/ui``) and ``/metrics``.
    """
    if len(master_key) != AEAD_KEY_SIZE:
        raise UsageError(f"the control plane master key is {AEAD_KEY_SIZE} bytes")
    app = FastAPI(
        title="vmcrypt control plane",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.database = database
    app.state.master_key = bytes(master_key)
    app.state.health = health if health is not None else HealthBoard()
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(enrolment.router, prefix=API_PREFIX)
    app.include_router(sessions.router, prefix=API_PREFIX)
    app.router.routes.append(sessions.login_route)  # a password, not a token: see sessions.py
    _add_ui_and_metrics(app, database, app.state.health)
    if hosts is not None:
        app.state.hosts = hosts
        # Relays of VM files between datastores (docs/mobility.md); jobs a dead process
        # left running end as failed now. The server stops it after uvicorn.
        app.state.jobrunner = JobRunner(database, orphaned=mobility.ORPHANED)
        app.state.jobrunner.recover()
        for vm_router in vms.ROUTERS:
            app.include_router(vm_router, prefix=API_PREFIX)
        app.include_router(jobs.router, prefix=API_PREFIX)
    return app


def _add_ui_and_metrics(app: FastAPI, database: Database, health: HealthBoard) -> None:
    """``/ui`` (the web UI, its own mounted app) and ``/metrics`` (Prometheus)."""
    from vmcrypt.control.ui import create_ui  # Jinja2 loads only with the app

    metrics = Metrics(database, health)
    app.state.metrics = metrics
    app.add_middleware(OperationsMiddleware, metrics=metrics)
    app.add_route("/metrics", metrics.endpoint, methods=["GET"], include_in_schema=False)
    app.mount("/ui", create_ui(database, health), name="ui")
    app.add_route("/", _to_ui, methods=["GET"], include_in_schema=False)


async def _to_ui(request: Request) -> Response:
    """A browser pointed at the control plane's address lands on the web client."""
    return RedirectResponse("/ui/", status_code=307)
