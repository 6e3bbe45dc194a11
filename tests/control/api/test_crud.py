"""Happy paths of every resource, and the error shapes (401/404/409/422)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.control.api.conftest import auth
from tests.control.api.pki import certificate_pem

pytestmark = pytest.mark.anyio
API = "/api/v1"


async def _inventory(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, int]:
    cluster = await client.post(f"{API}/clusters", json={"name": "c1"}, headers=admin)
    assert cluster.status_code == 201, cluster.text
    cid = cluster.json()["id"]
    host = await client.post(f"{API}/hosts", headers=admin, json={
        "name": "esx1", "hardware_uuid": str(uuid.uuid4()), "cluster_id": cid,
        "api_url": "https://esx1:8443"})
    assert host.status_code == 201, host.text
    store = await client.post(f"{API}/datastores", headers=admin, json={
        "name": "ds1", "path": "/srv/ds1", "cluster_id": cid})
    assert store.status_code == 201, store.text
    return {"cluster": cid, "host": host.json()["id"], "datastore": store.json()["id"]}


async def test_inventory_create_list_get(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    admin = auth(tokens["admin"])
    ids = await _inventory(client, admin)
    clusters = (await client.get(f"{API}/clusters", headers=admin)).json()
    assert [c["name"] for c in clusters] == ["c1"]
    host = (await client.get(f"{API}/hosts/{ids['host']}", headers=admin)).json()
    assert host["connection_state"] == "disconnected"
    assert host["cluster_id"] == ids["cluster"]
    assert host["api_url"] == "https://esx1:8443"
    hosts = (await client.get(f"{API}/hosts", params={"cluster_id": ids["cluster"]},
                              headers=admin)).json()
    assert [h["name"] for h in hosts] == ["esx1"]
    store = (await client.get(f"{API}/datastores/{ids['datastore']}", headers=admin)).json()
    assert store["path"] == "/srv/ds1"
    assert len((await client.get(f"{API}/datastores", headers=admin)).json()) == 1


async def test_connection_state_cannot_be_set(client: httpx.AsyncClient,
                                              tokens: dict[str, str]) -> None:
    admin = auth(tokens["admin"])
    cid = (await client.post(f"{API}/clusters", json={"name": "c"}, headers=admin)).json()["id"]
    host = await client.post(f"{API}/hosts", headers=admin, json={
        "name": "h", "hardware_uuid": str(uuid.uuid4()), "cluster_id": cid,
        "api_url": "https://h:1", "connection_state": "connected"})
    assert host.json()["connection_state"] == "disconnected"


async def test_key_providers_standard_default_delete(client: httpx.AsyncClient,
                                                     tokens: dict[str, str]) -> None:
    admin = auth(tokens["admin"])
    ca = certificate_pem("kms-ca")
    created = await client.post(f"{API}/key-providers/standard", headers=admin, json={
        "name": "kmip", "is_default": True, "kms_servers": [
            {"name": "a", "address": "kms-a", "ca_pem": ca, "client_cert_pem": ca,
             "client_key_path": "/etc/vmcrypt/client.key"},
            {"name": "b", "address": "kms-b", "port": 5697}]})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["kind"] == "standard" and body["is_default"]
    assert [(s["name"], s["port"], s["position"]) for s in body["kms_servers"]] == [
        ("a", 5696, 0), ("b", 5697, 1)]
    other = (await client.post(f"{API}/key-providers/standard", headers=admin, json={
        "name": "kmip2", "kms_servers": [{"name": "x", "address": "kms-x"}]})).json()
    made = await client.post(f"{API}/key-providers/{other['id']}/default", headers=admin)
    assert made.status_code == 200 and made.json()["is_default"]
    listed = (await client.get(f"{API}/key-providers", headers=admin)).json()
    assert {p["name"]: p["is_default"] for p in listed} == {"kmip": False, "kmip2": True}
    assert len(listed[0]["kms_servers"]) == 2
    gone = await client.delete(f"{API}/key-providers/{body['id']}", headers=admin)
    assert gone.status_code == 204
    missing = await client.get(f"{API}/key-providers/{body['id']}", headers=admin)
    assert missing.status_code == 404


async def test_kms_servers_added_and_removed_one_by_one(client: httpx.AsyncClient,
                                                        tokens: dict[str, str]) -> None:
    """A server is appended last in failover order; removing one closes the gap; the
    last server stays; natives have none; unknown IDs are 404."""
    admin = auth(tokens["admin"])
    provider = (await client.post(f"{API}/key-providers/standard", headers=admin, json={
        "name": "kmip", "kms_servers": [{"name": "a", "address": "kms-a"}]})).json()
    base = f"{API}/key-providers/{provider['id']}/kms-servers"
    for name in ("b", "c"):
        added = await client.post(base, headers=admin, json={"name": name,
                                                             "address": f"kms-{name}"})
        assert added.status_code == 201, added.text
    servers = (await client.get(f"{API}/key-providers/{provider['id']}",
                                headers=admin)).json()["kms_servers"]
    assert [(s["name"], s["position"]) for s in servers] == [("a", 0), ("b", 1), ("c", 2)]

    gone = await client.delete(f"{base}/{servers[1]['id']}", headers=admin)
    assert gone.status_code == 204
    servers = (await client.get(f"{API}/key-providers/{provider['id']}",
                                headers=admin)).json()["kms_servers"]
    assert [(s["name"], s["position"]) for s in servers] == [("a", 0), ("c", 1)]
    assert (await client.delete(f"{base}/{servers[0]['id']}", headers=admin)).status_code == 204
    last = await client.delete(f"{base}/{servers[1]['id']}", headers=admin)
    assert last.status_code == 409 and "last KMS server" in last.json()["message"]
    unknown = await client.delete(f"{base}/999999", headers=admin)
    assert unknown.status_code == 404

    native = (await client.post(f"{API}/key-providers/native", headers=admin,
                                json={"name": "nkp"})).json()
    refused = await client.post(f"{API}/key-providers/{native['id']}/kms-servers",
                                headers=admin, json={"name": "x", "address": "kms-x"})
    assert refused.status_code == 409 and "standard" in refused.json()["message"]
    bad = await client.post(base, headers=admin, json={"name": "y", "address": "kms-y",
                                                       "port": 70000})
    assert bad.status_code == 422


async def test_a_private_key_pem_is_refused_without_echo(client: httpx.AsyncClient,
                                                         tokens: dict[str, str]) -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nTUlJU0VDUkVUS0VZ\n-----END PRIVATE KEY-----\n"
    response = await client.post(f"{API}/key-providers/standard", headers=auth(tokens["admin"]),
                                 json={"name": "kmip", "kms_servers": [
                                     {"name": "a", "address": "kms", "ca_pem": secret}]})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error"
    assert body["fields"][0]["field"] == "kms_servers.0.ca_pem"
    assert "TUlJU0VDUkVUS0VZ" not in response.text
    listed = await client.get(f"{API}/key-providers", headers=auth(tokens["admin"]))
    assert listed.json() == []


async def test_provider_in_use_cannot_be_deleted(client: httpx.AsyncClient,
                                                 tokens: dict[str, str]) -> None:
    admin = auth(tokens["admin"])
    provider = (await client.post(f"{API}/key-providers/native", headers=admin,
                                  json={"name": "nkp"})).json()
    policy = await client.post(f"{API}/storage-policies", headers=admin, json={
        "name": "encrypted", "encryption": True, "key_provider_id": provider["id"]})
    assert policy.status_code == 201, policy.text
    assert policy.json()["key_provider_id"] == provider["id"]
    refused = await client.delete(f"{API}/key-providers/{provider['id']}", headers=admin)
    assert refused.status_code == 409
    assert refused.json()["error"] == "conflict"
    assert "storage policy" in refused.json()["message"]
    still = await client.get(f"{API}/key-providers/{provider['id']}", headers=admin)
    assert still.status_code == 200
    policies = (await client.get(f"{API}/storage-policies", headers=admin)).json()
    assert [p["name"] for p in policies] == ["encrypted"]
    one = await client.get(f"{API}/storage-policies/{policies[0]['id']}", headers=admin)
    assert one.json()["encryption"] is True


async def test_users_and_tokens(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    admin = auth(tokens["admin"])
    user = await client.post(f"{API}/users", headers=admin,
                             json={"name": "alice", "role": "Read-only"})
    assert user.status_code == 201, user.text
    assert user.json()["role"] == "Read-only"
    issued = await client.post(f"{API}/users/{user.json()['id']}/tokens", headers=admin,
                               json={"label": "script"})
    assert issued.status_code == 201
    token = issued.json()["token"]
    assert token.startswith("vmct_")
    assert (await client.get(f"{API}/clusters", headers=auth(token))).status_code == 200
    denied = await client.post(f"{API}/clusters", headers=auth(token), json={"name": "x"})
    assert denied.status_code == 403
    names = [u["name"] for u in (await client.get(f"{API}/users", headers=admin)).json()]
    assert "alice" in names
    assert (await client.get(f"{API}/users/{user.json()['id']}", headers=admin)).json()[
        "name"] == "alice"
    bad_role = await client.post(f"{API}/users", headers=admin,
                                 json={"name": "bob", "role": "Superuser"})
    assert bad_role.status_code == 422
    assert bad_role.json()["fields"][0]["field"] == "role"


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer vmct_not-a-token"}, {"Authorization": "Basic YTpi"},
    {"Authorization": "Bearer"},
])
async def test_unauthenticated_is_401(client: httpx.AsyncClient, tokens: dict[str, str],
                                      headers: dict[str, str]) -> None:
    response = await client.get(f"{API}/clusters", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "authentication_failed"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_forbidden_names_the_privilege(client: httpx.AsyncClient,
                                             tokens: dict[str, str]) -> None:
    response = await client.post(f"{API}/key-providers/native", json={"name": "n"},
                                 headers=auth(tokens["nocrypto"]))
    assert response.status_code == 403
    body = response.json()
    assert body["privilege"] == "Cryptographer.ManageKeyServers"
    assert "Cryptographer.ManageKeyServers" in body["message"]


async def test_not_found_and_conflict_change_nothing(client: httpx.AsyncClient,
                                                     tokens: dict[str, str]) -> None:
    admin = auth(tokens["admin"])
    missing = await client.get(f"{API}/clusters/999", headers=admin)
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "message": "no cluster with ID 999"}
    orphan = await client.post(f"{API}/hosts", headers=admin, json={
        "name": "h", "hardware_uuid": str(uuid.uuid4()), "cluster_id": 999,
        "api_url": "https://h:1"})
    assert orphan.status_code == 404
    assert (await client.get(f"{API}/hosts", headers=admin)).json() == []
    await client.post(f"{API}/clusters", json={"name": "c1"}, headers=admin)
    again = await client.post(f"{API}/clusters", json={"name": "c1"}, headers=admin)
    assert again.status_code == 409
    assert "cluster 'c1'" in again.json()["message"]
    assert len((await client.get(f"{API}/clusters", headers=admin)).json()) == 1


async def test_validation_reports_fields_not_values(client: httpx.AsyncClient,
                                                    tokens: dict[str, str]) -> None:
    admin = auth(tokens["admin"])
    response = await client.post(f"{API}/datastores", headers=admin,
                                 json={"name": "", "path": "/x", "cluster_id": "zzsecretzz"})
    assert response.status_code == 422
    fields = {f["field"] for f in response.json()["fields"]}
    assert fields == {"name", "cluster_id"}
    assert "zzsecretzz" not in response.text
    malformed = await client.post(f"{API}/clusters", headers={**admin, "Content-Type":
                                  "application/json"}, content=b"{not json zzsecretzz")
    assert malformed.status_code == 422
    assert "zzsecretzz" not in malformed.text
    usage = await client.post(f"{API}/datastores", headers=admin,
                              json={"name": "d", "path": "/x"})
    assert usage.status_code == 400
    assert usage.json()["error"] == "usage_error"
    assert (await client.get(f"{API}/datastores", headers=admin)).json() == []
    cid = (await client.post(f"{API}/clusters", json={"name": "c"}, headers=admin)).json()["id"]
    bad_uuid = await client.post(f"{API}/hosts", headers=admin, json={
        "name": "h", "hardware_uuid": "nope", "cluster_id": cid, "api_url": "https://h:1"})
    assert bad_uuid.status_code == 400
    assert "is not a UUID" in bad_uuid.json()["message"]
