"""Audit in the pipeline: one event per state-changing request, none for reads,
and a request whose event cannot be written fails and changes nothing."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.control.api.conftest import InProcessHosts, auth
from tests.control.api.routes import ROUTES, Route
from tests.control.api.seed import API, call, for_caller, seed
from tests.control.api.test_privileges import backup  # noqa: F401 — a fixture
from vmcrypt.control.api import bootstrap_administrator
from vmcrypt.control.api import deps as pipeline
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.repo import authenticate_token

pytestmark = pytest.mark.anyio


async def _audit_events(client: httpx.AsyncClient, token: str) -> list[dict[str, object]]:
    response = await client.get(f"{API}/events", params={"type": "audit", "limit": 1000},
                                headers=auth(token))
    assert response.status_code == 200
    return list(response.json())


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_each_route_audits_writes_only(full_client: httpx.AsyncClient,
                                            tokens: dict[str, str],
                                            in_process_hosts: InProcessHosts,
                                            backup: tuple[bytes, str],  # noqa: F811
                                            route: Route) -> None:
    client = full_client
    ids = await seed(client, tokens["admin"], backup, in_process_hosts.datastore)
    before = await _audit_events(client, tokens["admin"])
    mine = for_caller(ids, 3)
    response = await call(client, route, mine, auth(tokens["admin"]))
    assert response.status_code < 400, response.text
    after = await _audit_events(client, tokens["admin"])
    new = after[: len(after) - len(before)]
    if not route.writes:
        assert new == []
        return
    assert len(new) == 1
    event = new[0]
    # A public route (host enrolment) has no user: the host's token is not an API token.
    assert event["user_name"] == (None if route.public else "admin")
    assert event["details"]["result"] == "succeeded"  # type: ignore[index]
    assert event["details"]["status"] == response.status_code  # type: ignore[index]
    assert event["details"]["method"] == route.method
    # A dry run creates nothing; /enrol answers with host_id, not an object id.
    names_nothing = route.path in ("/key-providers/restore", "/enrol")
    assert (event["object_id"] is None) == names_nothing
    assert ids["backup_password"] not in str(event)
    assert "correct horse" not in str(event)
    assert mine["enrol_token"] not in str(event)


async def test_denied_and_failed_writes_are_audited(client: httpx.AsyncClient,
                                                    tokens: dict[str, str]) -> None:
    await client.post(f"{API}/clusters", json={"name": "x"}, headers=auth(tokens["readonly"]))
    await client.post(f"{API}/clusters", json={"name": "x"})
    await client.post(f"{API}/clusters", json={"name": "x"}, headers=auth(tokens["admin"]))
    await client.post(f"{API}/clusters", json={"name": "x"}, headers=auth(tokens["admin"]))
    await client.get(f"{API}/clusters/42", headers=auth(tokens["admin"]))
    events = await _audit_events(client, tokens["admin"])
    summary = [(e["user_name"], e["details"]["status"], e["details"]["result"],  # type: ignore[index]
                e["object_type"]) for e in reversed(events)]
    assert summary == [
        ("readonly", 403, "failed", "clusters"),
        (None, 401, "failed", "clusters"),
        ("admin", 201, "succeeded", "clusters"),
        ("admin", 409, "failed", "clusters"),
    ]


async def test_audit_fails_closed(app: FastAPI, tokens: dict[str, str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the event log is unavailable")

    monkeypatch.setattr(pipeline, "append_event", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
        response = await client.post(f"{API}/clusters", json={"name": "x"},
                                     headers=auth(tokens["admin"]))
        assert response.status_code == 500
        assert response.json()["error"] == "internal_error"
        assert "unavailable" not in response.text
        monkeypatch.undo()
        listed = await client.get(f"{API}/clusters", headers=auth(tokens["admin"]))
        assert listed.json() == []


async def test_event_filters(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    admin = auth(tokens["admin"])
    cluster = (await client.post(f"{API}/clusters", json={"name": "c"}, headers=admin)).json()
    await client.post(f"{API}/clusters", json={"name": "d"}, headers=admin)
    by_object = (await client.get(f"{API}/events", headers=admin, params={
        "object_type": "clusters", "object_id": str(cluster["id"])})).json()
    assert len(by_object) == 1
    newest = (await client.get(f"{API}/events", headers=admin, params={"limit": 1})).json()
    assert newest[0]["object_id"] == str(cluster["id"] + 1)
    since = newest[0]["time"]
    later = (await client.get(f"{API}/events", headers=admin, params={"since": since})).json()
    assert [e["id"] for e in later] == [newest[0]["id"]]
    until = (await client.get(f"{API}/events", headers=admin, params={"until": since})).json()
    assert newest[0]["id"] not in [e["id"] for e in until]
    naive = await client.get(f"{API}/events", headers=admin,
                             params={"since": "2026-01-01T00:00:00"})
    assert naive.status_code == 400
    too_many = await client.get(f"{API}/events", headers=admin, params={"limit": 5000})
    assert too_many.status_code == 422
    assert too_many.json()["fields"][0]["field"] == "query.limit"


def test_bootstrap_creates_one_administrator_once(database: Database) -> None:
    token = bootstrap_administrator(database)
    assert token is not None and token.startswith("vmct_")
    assert bootstrap_administrator(database) is None
    with database.transaction() as session:
        principal = authenticate_token(session, token=token)
    assert principal.role == "Administrator"
