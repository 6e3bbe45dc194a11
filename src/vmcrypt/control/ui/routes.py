"""The UI's pages: thin routes that read through the REST API's own read functions.

Each page authenticates with the session cookie (no cookie, or a dead token: back to
the log-in page) and renders a template with the caller's :class:`Principal`, so
templates can hide or disable what the role lacks (``can(...)``). Reads call the
``GET`` handlers of :mod:`vmcrypt.control.api.routers` with a session, so a page shows
exactly what the API would answer. Writes never pass through here (see the package
docstring).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from vmcrypt.control import privileges as p
from vmcrypt.control.api.deps import SESSION_COOKIE
from vmcrypt.control.api.routers import clusters, datastores, hosts, vms
from vmcrypt.control.api.routers import storage_policies as policies
from vmcrypt.control.api.schemas import KeyProviderPublic
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import Event, Job, KeyProvider, VirtualDisk
from vmcrypt.control.db.repo import (
    Principal,
    authenticate_token,
    encryption_records,
    list_events,
)
from vmcrypt.control.exceptions import AuthenticationFailed, NotFound
from vmcrypt.control.health import HealthBoard

__all__ = ["UI_PREFIX", "create_ui"]

UI_PREFIX: Final = "/ui"
_HERE = Path(__file__).parent
_EVENT_LIMIT: Final = 200
#: A page's builder: (template name, context) from the request and a read session.
_Build = Callable[[Request, Session], tuple[str, dict[str, Any]]]
_SINCE: Final = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1),
                 "24h": timedelta(days=1), "7d": timedelta(days=7)}


def create_ui(database: Database, health: HealthBoard) -> FastAPI:
    """The UI as its own small app, mounted by ``create_app`` at :data:`UI_PREFIX`.

    A mounted app keeps its pages out of the API's OpenAPI document and route table
    (they are HTML, not API); ``tests/ui`` checks their privilege behaviour.
    """
    ui = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    ui.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")

    def principal_of(request: Request, session: Session) -> Principal | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        try:
            principal = authenticate_token(session, token=token)
        except AuthenticationFailed:
            return None
        return principal if principal.has(p.SYSTEM_READ) else None

    def render(request: Request, name: str, principal: Principal,
               **context: Any) -> HTMLResponse:
        def can(*privileges: str) -> bool:
            return all(principal.has(x) for x in privileges)

        return templates.TemplateResponse(request, name, {
            "me": principal, "can": can, "P": p, **context})

    def page(build: _Build) -> Callable[[Request], Awaitable[Response]]:
        # One page: ``build(request, session)`` names the template and its context; it
        # runs off the event loop in a read transaction. No live session: the log-in page.
        async def endpoint(request: Request) -> Response:
            def run() -> Response:
                with database.transaction() as session:
                    principal = principal_of(request, session)
                    if principal is None:
                        return RedirectResponse(f"{UI_PREFIX}/login", status_code=303)
                    name, context = build(request, session)
                    return render(request, name, principal, **context)
            return await run_in_threadpool(run)
        return endpoint

    @ui.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "login.html", {})

    def inventory(_request: Request, session: Session) -> tuple[str, dict[str, Any]]:
        all_hosts = hosts.list_all(session)
        return "inventory.html", {
            "clusters": clusters.list_all(session), "hosts": all_hosts,
            "vms": vms.list_all(session),
            "datastores": datastores.list_all(session),
            "policies": policies.list_all(session)}

    def vm_page(request: Request, session: Session) -> tuple[str, dict[str, Any]]:
        vm_id = int(request.path_params["vm_id"])
        vm = vms.get(vm_id, session)  # NotFound: 404
        component_provider = {
            ("home" if r.disk_id is None else f"disk-{_disk_index(session, r.disk_id)}"):
            r.key_provider_id for r in encryption_records(session, vm_id=vm_id)}
        jobs = session.scalars(select(Job).where(Job.target_type == "vm",
                                                 Job.target_id == str(vm_id))
                               .order_by(Job.id.desc()).limit(10)).all()
        return "vm.html", {"vm": vm, "component_provider": component_provider,
                           "hosts": hosts.list_all(session), "jobs": jobs,
                           "providers": {x.id: x for x in _providers(session)}}

    def providers_page(_request: Request, session: Session) -> tuple[str, dict[str, Any]]:
        found = _providers(session)
        return "providers.html", {"providers": found, "health": {
            x.name: health.provider(x.name) for x in found},
            "hosts_health": health.hosts()}

    def events_page(request: Request, session: Session) -> tuple[str, dict[str, Any]]:
        query = request.query_params
        since = _SINCE.get(query.get("since", ""))
        rows: list[Event] = list(list_events(
            session, type=query.get("type") or None,
            object_type=query.get("object_type") or None,
            object_id=query.get("object_id") or None,
            since=datetime.now(UTC) - since if since else None, limit=_EVENT_LIMIT))
        name = "events_rows.html" if "rows" in request.url.path else "events.html"
        return name, {"events": rows, "query": query, "since_choices": list(_SINCE)}

    ui.add_api_route("/", page(inventory), methods=["GET"], include_in_schema=False)
    ui.add_api_route("/vms/{vm_id}", page(vm_page), methods=["GET"], include_in_schema=False)
    ui.add_api_route("/key-providers", page(providers_page), methods=["GET"],
                     include_in_schema=False)
    ui.add_api_route("/events", page(events_page), methods=["GET"], include_in_schema=False)
    ui.add_api_route("/events/rows", page(events_page), methods=["GET"],
                     include_in_schema=False)

    @ui.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound) -> Response:
        return HTMLResponse(f"<p>{exc}</p>", status_code=404)

    return ui


def _disk_index(session: Session, disk_id: int) -> int:
    disk = session.get(VirtualDisk, disk_id)
    return -1 if disk is None else disk.index


def _providers(session: Session) -> list[KeyProviderPublic]:
    # As GET /key-providers/{id} shows each one (health comes from the board, above).
    rows = session.scalars(select(KeyProvider).order_by(KeyProvider.id))
    return [KeyProviderPublic.model_validate(row) for row in rows]
