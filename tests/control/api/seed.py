"""Objects every route of the table can act on, created through the API as admin."""

from __future__ import annotations

import base64
import uuid

import httpx

from tests.control.api.conftest import auth
from tests.control.api.routes import Ids, Route

API = "/api/v1"


async def seed(client: httpx.AsyncClient, admin_token: str, backup: tuple[bytes, str]) -> Ids:
    admin = auth(admin_token)

    async def post(path: str, body: object) -> int:
        response = await client.post(f"{API}{path}", json=body, headers=admin)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    ids: Ids = {}
    ids["cluster"] = await post("/clusters", {"name": "seed"})
    ids["host"] = await post("/hosts", {
        "name": "seed", "hardware_uuid": str(uuid.uuid4()), "cluster_id": ids["cluster"],
        "api_url": "https://seed:8443"})
    ids["datastore"] = await post("/datastores", {
        "name": "seed", "path": "/srv/seed", "cluster_id": ids["cluster"]})
    ids["standard"] = await post("/key-providers/standard", {
        "name": "seed-kmip", "kms_servers": [{"name": "a", "address": "kms"}]})
    ids["native"] = await post("/key-providers/native", {"name": "seed-native"})
    ids["policy"] = await post("/storage-policies", {"name": "seed", "encryption": False})
    ids["user"] = await post("/users", {"name": "seed", "role": "Read-only"})
    ids["backup"] = base64.b64encode(backup[0]).decode("ascii")
    ids["backup_password"] = backup[1]
    return ids


async def call(client: httpx.AsyncClient, route: Route, ids: Ids,
               headers: dict[str, str]) -> httpx.Response:
    path = API + route.path.format(**ids)
    body = route.body(ids) if route.body is not None else None
    return await client.request(route.method, path, json=body, headers=headers)
