"""The native provider through the API: sealed at rest, backup and restore, no leaks.

The primary key is recovered from the password-protected backup (the one place it is
meant to be), then searched for — raw, hex and base64 — in the database files (WAL
included), in every other response and in the event log: it must be nowhere.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.control.api.conftest import auth
from tests.control.api.seed import API
from vmcrypt.providers.backup import read_backup

pytestmark = pytest.mark.anyio
PASSWORD = "a long backup password"


def _forms(key: bytes) -> list[bytes]:
    return [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key),
            base64.urlsafe_b64encode(key), base64.b64encode(key).rstrip(b"=")]


async def test_primary_key_only_in_the_backup(client: httpx.AsyncClient,
                                              tokens: dict[str, str], db_path: Path) -> None:
    admin = auth(tokens["admin"])
    seen: list[bytes] = []

    async def request(method: str, path: str, **kwargs: object) -> httpx.Response:
        response = await client.request(method, f"{API}{path}", headers=admin, **kwargs)  # type: ignore[arg-type]
        seen.append(response.content)
        return response

    created = await request("POST", "/key-providers/native",
                            json={"name": "nkp", "is_default": True})
    assert created.status_code == 201, created.text
    provider = created.json()
    assert provider["kind"] == "native" and provider["is_default"]
    assert provider["backed_up"] is False
    assert "sealed_primary_key" not in created.text and "fingerprint" not in created.text
    await request("GET", "/key-providers")
    await request("GET", f"/key-providers/{provider['id']}")

    backup = await client.post(f"{API}/key-providers/{provider['id']}/backup",
                               json={"password": PASSWORD}, headers=admin)
    assert backup.status_code == 200
    assert backup.headers["content-type"] == "application/x-pkcs12"
    assert 'filename="nkp.p12"' in backup.headers["content-disposition"]
    opened = read_backup(backup.content, PASSWORD)
    key = opened.primary_key
    assert opened.info.provider_id == "nkp"

    after = await request("GET", f"/key-providers/{provider['id']}")
    assert after.json()["backed_up"] is True
    await request("GET", "/events", params={"limit": 1000})

    short = await request("POST", f"/key-providers/{provider['id']}/backup",
                          json={"password": "short"})
    assert short.status_code == 422
    assert "short" not in short.json()["message"].replace("at least", "")

    dry = await request("POST", "/key-providers/restore", json={
        "backup": base64.b64encode(backup.content).decode(), "password": PASSWORD,
        "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["provider_id"] == "nkp"
    assert dry.json()["fingerprint"] == opened.info.fingerprint
    taken = await request("POST", "/key-providers/restore", json={
        "backup": base64.b64encode(backup.content).decode(), "password": PASSWORD})
    assert taken.status_code == 409
    wrong = await request("POST", "/key-providers/restore", json={
        "backup": base64.b64encode(backup.content).decode(), "password": "wrong password"})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "backup_error"
    garbage = await request("POST", "/key-providers/restore", json={
        "backup": "not base64!", "password": PASSWORD})
    assert garbage.status_code == 400

    deleted = await request("DELETE", f"/key-providers/{provider['id']}")
    assert deleted.status_code == 204
    restored = await request("POST", "/key-providers/restore", json={
        "backup": base64.b64encode(backup.content).decode(), "password": PASSWORD})
    assert restored.status_code == 200, restored.text
    assert restored.json()["name"] == "nkp" and restored.json()["backed_up"] is True
    second = await client.post(f"{API}/key-providers/{restored.json()['id']}/backup",
                               json={"password": PASSWORD}, headers=admin)
    assert read_backup(second.content, PASSWORD).primary_key == key
    await request("GET", "/events", params={"limit": 1000})

    stored = b"".join(path.read_bytes() for path in db_path.parent.iterdir()
                      if path.name.startswith(db_path.name))
    assert b"nkp" in stored  # the scan sees the data it looks through
    for form in _forms(key):
        assert form not in stored
        for body in seen:
            assert form not in body


async def test_backup_of_a_standard_provider_is_refused(client: httpx.AsyncClient,
                                                        tokens: dict[str, str]) -> None:
    admin = auth(tokens["admin"])
    provider = (await client.post(f"{API}/key-providers/standard", headers=admin, json={
        "name": "kmip", "kms_servers": [{"name": "a", "address": "kms"}]})).json()
    response = await client.post(f"{API}/key-providers/{provider['id']}/backup",
                                 json={"password": PASSWORD}, headers=admin)
    assert response.status_code == 400
    assert "only native" in response.json()["message"]
    ack = await client.post(f"{API}/key-providers/{provider['id']}/acknowledge-no-backup",
                            headers=admin)
    assert ack.status_code == 400


async def test_acknowledge_no_backup(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    admin = auth(tokens["admin"])
    provider = (await client.post(f"{API}/key-providers/native", headers=admin,
                                  json={"name": "nkp"})).json()
    assert provider["backup_acknowledged"] is False
    ack = await client.post(f"{API}/key-providers/{provider['id']}/acknowledge-no-backup",
                            headers=admin)
    assert ack.status_code == 200
    assert ack.json()["backup_acknowledged"] is True
    assert ack.json()["backed_up"] is False
