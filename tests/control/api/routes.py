"""The table of every API route: what it needs, and a request that succeeds.

One row per route. The privilege matrix, the audit tests and the OpenAPI test are all
generated from it, and a test fails when the app has a route without a row — so adding
a route means adding a row here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmcrypt.control import privileges as p

Ids = dict[str, Any]


@dataclass(frozen=True)
class Route:
    """One route: method, path template, body maker, privileges, status on success."""

    method: str
    path: str
    privileges: frozenset[str]
    ok: int
    body: Callable[[Ids], Any] | None = None

    @property
    def writes(self) -> bool:
        return self.method not in ("GET", "HEAD")

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _r(method: str, path: str, privs: set[str], ok: int,
       body: Callable[[Ids], Any] | None = None) -> Route:
    return Route(method, path, frozenset(privs), ok, body)


READ = {p.SYSTEM_READ}
KEYS = {p.CRYPTO_MANAGE_KEY_SERVERS}

ROUTES: tuple[Route, ...] = (
    _r("POST", "/clusters", {p.HOST_CREATE_CLUSTER}, 201, lambda ids: {"name": f"new-{ids['n']}"}),
    _r("GET", "/clusters", READ, 200),
    _r("GET", "/clusters/{cluster}", READ, 200),
    _r("POST", "/hosts", {p.HOST_ADD_TO_CLUSTER}, 201, lambda ids: {
        "name": f"new-{ids['n']}", "hardware_uuid": str(uuid.uuid4()), "cluster_id": ids["cluster"],
        "api_url": "https://new:8443"}),
    _r("GET", "/hosts", READ, 200),
    _r("GET", "/hosts/{host}", READ, 200),
    _r("POST", "/datastores", {p.DATASTORE_CONFIG}, 201, lambda ids: {
        "name": f"new-{ids['n']}", "path": "/srv/new", "host_id": ids["host"]}),
    _r("GET", "/datastores", READ, 200),
    _r("GET", "/datastores/{datastore}", READ, 200),
    _r("POST", "/key-providers/standard", KEYS, 201, lambda ids: {
        "name": f"new-{ids['n']}", "kms_servers": [{"name": "a", "address": "kms"}]}),
    _r("POST", "/key-providers/native", KEYS, 201, lambda ids: {"name": f"new-{ids['n']}"}),
    _r("GET", "/key-providers", READ, 200),
    _r("GET", "/key-providers/{standard}", READ, 200),
    _r("POST", "/key-providers/{standard}/default", KEYS, 200),
    _r("DELETE", "/key-providers/{standard}", KEYS, 204),
    _r("POST", "/key-providers/{native}/backup", KEYS, 200,
       lambda ids: {"password": "correct horse battery"}),
    _r("POST", "/key-providers/{native}/acknowledge-no-backup", KEYS, 200),
    _r("POST", "/key-providers/restore", KEYS, 200, lambda ids: {
        "backup": ids["backup"], "password": ids["backup_password"], "dry_run": True}),
    _r("POST", "/storage-policies",
       {p.CRYPTO_MANAGE_ENCRYPTION_POLICY, p.STORAGE_PROFILE_UPDATE}, 201,
       lambda ids: {"name": f"new-{ids['n']}", "encryption": True}),
    _r("GET", "/storage-policies", READ, 200),
    _r("GET", "/storage-policies/{policy}", READ, 200),
    _r("POST", "/users", {p.AUTHORIZATION_MODIFY_PERMISSIONS}, 201,
       lambda ids: {"name": f"new-{ids['n']}", "role": p.READ_ONLY}),
    _r("GET", "/users", READ, 200),
    _r("GET", "/users/{user}", READ, 200),
    _r("POST", "/users/{user}/tokens", {p.AUTHORIZATION_MODIFY_PERMISSIONS}, 201,
       lambda ids: {"label": "new"}),
    _r("GET", "/events", READ, 200),
)
