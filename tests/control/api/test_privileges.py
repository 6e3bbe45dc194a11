"""Every route by (no credentials, and each built-in role) → the expected status.

Generated from :data:`routes.ROUTES`: a role holding every privilege of the row gets
the row's success status, any other role 403 naming a missing privilege, no
credentials 401. The table is checked against the app itself, so it cannot drift.
"""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.control.api.conftest import ROLES, auth
from tests.control.api.routes import ROUTES, Route
from tests.control.api.seed import API, call, seed
from vmcrypt.control.api.routers import ROUTERS
from vmcrypt.control.privileges import BUILTIN_ROLES
from vmcrypt.providers import NativeKeyProvider

BACKUP_PASSWORD = "a backup password for tests"


@pytest.fixture(scope="module")
def backup() -> tuple[bytes, str]:
    native = NativeKeyProvider.create("restored", sealing_key=bytes(32))
    return native.export_backup(BACKUP_PASSWORD), BACKUP_PASSWORD


def _expected(route: Route, who: str | None) -> int:
    if who is None:
        return 401
    return route.ok if route.privileges <= BUILTIN_ROLES[ROLES[who]] else 403


CALLERS = (None, "readonly", "nocrypto", "admin")


@pytest.mark.anyio
@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_privilege_matrix(client: httpx.AsyncClient, tokens: dict[str, str],
                                backup: tuple[bytes, str], route: Route) -> None:
    """One route, every caller in turn (denied ones change nothing, so order is free)."""
    ids = await seed(client, tokens["admin"], backup)
    got, missing = {}, {}
    for n, who in enumerate(CALLERS):
        headers = auth(tokens[who]) if who is not None else {}
        response = await call(client, route, {**ids, "n": n}, headers)
        got[who] = response.status_code
        if response.status_code == 403:
            missing[who] = response.json()["privilege"]
    assert got == {who: _expected(route, who) for who in CALLERS}
    for who, privilege in missing.items():
        assert privilege in route.privileges
        assert privilege not in BUILTIN_ROLES[ROLES[who]]  # type: ignore[index]


def _template(method: str, path: str) -> str:
    return re.sub(r"\{\w+\}", "{}", f"{method} {path}")


def test_every_route_has_a_row_with_its_privileges() -> None:
    """Every route of every router uses requires() once, with the table's privileges."""
    found: dict[str, APIRoute] = {}
    for router in ROUTERS:
        for api_route in router.routes:
            assert isinstance(api_route, APIRoute)
            for method in api_route.methods:
                found[_template(method, API + api_route.path)] = api_route
    table = {_template(route.method, API + route.path): route for route in ROUTES}
    assert set(found) == set(table)
    for key, api_route in found.items():
        checks = [dep.call for dep in api_route.dependant.dependencies
                  if hasattr(dep.call, "required_privileges")]
        assert len(checks) == 1, f"{key} must use requires() exactly once"
        assert frozenset(checks[0].required_privileges) == table[key].privileges, key


@pytest.mark.anyio
async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    document = (await client.get(f"{API}/openapi.json")).json()
    listed = {_template(method.upper(), path) for path, item in document["paths"].items()
              for method in item}
    assert {_template(route.method, API + route.path) for route in ROUTES} == listed
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    docs = await client.get(f"{API}/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
