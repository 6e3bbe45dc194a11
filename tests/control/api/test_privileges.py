"""Every route by (no credentials, and each built-in role) → the expected status.

Generated from :data:`routes.ROUTES`: a role holding every privilege of the row gets
the row's success status, any other role 403 naming a missing privilege, no
credentials 401; a public row (host enrolment) succeeds for everyone. The table is
checked against the app with every route mounted (hosts and a CA), so it cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from tests.control.api.conftest import ROLES, InProcessHosts, auth
from tests.control.api.routes import ROUTES, Route
from tests.control.api.seed import API, call, for_caller, seed
from vmcrypt.control.privileges import BUILTIN_ROLES
from vmcrypt.providers import NativeKeyProvider

BACKUP_PASSWORD = "a backup password for tests"


@pytest.fixture(scope="module")
def backup() -> tuple[bytes, str]:
    native = NativeKeyProvider.create("restored", sealing_key=bytes(32))
    return native.export_backup(BACKUP_PASSWORD), BACKUP_PASSWORD


def _expected(route: Route, who: str | None) -> int:
    if route.public:
        return route.ok
    if who is None:
        return 401
    return route.ok if route.privileges <= BUILTIN_ROLES[ROLES[who]] else 403


CALLERS = (None, "readonly", "nocrypto", "admin")


@pytest.mark.anyio
@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_privilege_matrix(full_client: httpx.AsyncClient, tokens: dict[str, str],
                                in_process_hosts: InProcessHosts,
                                backup: tuple[bytes, str], route: Route) -> None:
    """One route, every caller in turn (denied ones change nothing, so order is free)."""
    client = full_client
    ids = await seed(client, tokens["admin"], backup, in_process_hosts.datastore)
    got, missing = {}, {}
    for n, who in enumerate(CALLERS):
        headers = auth(tokens[who]) if who is not None else {}
        response = await call(client, route, for_caller(ids, n), headers)
        got[who] = response.status_code
        if response.status_code == 403:
            missing[who] = response.json()["privilege"]
    assert got == {who: _expected(route, who) for who in CALLERS}
    for who, privilege in missing.items():
        assert privilege in route.privileges
        assert privilege not in BUILTIN_ROLES[ROLES[who]]  # type: ignore[index]


def _template(method: str, path: str) -> str:
    return re.sub(r"\{\w+\}", "{}", f"{method} {path.split('?', 1)[0]}")


def _app_routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every (path, APIRoute) the app serves, hidden ones included.

    FastAPI ≥ 0.163 keeps an included router as one wrapper route (``_IncludedRouter``:
    its ``original_router`` and ``include_context.prefix``); older ones copy the routes.
    """
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
            continue
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _app_routes(included.routes, prefix + route.include_context.prefix)


def test_every_route_has_a_row_with_its_privileges(full_app: FastAPI) -> None:
    """Every route of the app has one row, and uses requires() once with its privileges.

    Public rows (enrolment) must have no requires() at all: their credential is the
    one-time token in the body.
    """
    found: dict[str, APIRoute] = {}
    for path, api_route in _app_routes(full_app.routes):
        for method in api_route.methods:
            found[_template(method, path)] = api_route
    table: dict[str, Route] = {}
    for route in ROUTES:
        key = _template(route.method, API + route.path)
        assert key not in table, f"two rows for {key}"
        table[key] = route
    assert sorted(set(found) - set(table)) == [], "routes without a row in routes.py"
    assert sorted(set(table) - set(found)) == [], "rows for routes the app does not have"
    for key, api_route in found.items():
        checks = [dep.call for dep in api_route.dependant.dependencies
                  if hasattr(dep.call, "required_privileges")]
        if table[key].public:
            assert checks == [], f"{key} is public in the table but checks privileges"
            continue
        assert len(checks) == 1, f"{key} must use requires() exactly once"
        assert frozenset(checks[0].required_privileges) == table[key].privileges, key


def test_a_route_without_a_row_is_caught(full_app: FastAPI) -> None:
    """The check above really sees the app's routes: one more route is one more key."""
    before = {path for path, _ in _app_routes(full_app.routes)}
    extra = APIRouter()

    @extra.get("/not-in-the-table", include_in_schema=False)
    def _extra() -> None: ...

    full_app.include_router(extra, prefix=API)
    after = {path for path, _ in _app_routes(full_app.routes)}
    assert after - before == {f"{API}/not-in-the-table"}
    with pytest.raises(AssertionError, match="without a row"):
        test_every_route_has_a_row_with_its_privileges(full_app)


@pytest.mark.anyio
async def test_openapi_lists_every_route(full_client: httpx.AsyncClient) -> None:
    """Every route is documented, enrolment included; /enrol* declare no bearer token."""
    client = full_client
    document = (await client.get(f"{API}/openapi.json")).json()
    listed = {_template(method.upper(), path) for path, item in document["paths"].items()
              for method in item}
    assert {_template(route.method, API + route.path) for route in ROUTES} == listed
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    by_template = {_template(method.upper(), path): operation
                   for path, item in document["paths"].items()
                   for method, operation in item.items()}
    for route in ROUTES:
        operation = by_template[_template(route.method, API + route.path)]
        assert ("security" not in operation) == route.public, str(route)
    docs = await client.get(f"{API}/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
