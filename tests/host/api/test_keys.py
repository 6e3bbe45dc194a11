"""Pushing and removing KEKs and native primary keys; never echoing them."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.host.api.conftest import KMS, NATIVE, b64, push
from vmcrypt.host.api import HostState

pytestmark = pytest.mark.anyio


async def test_health_counts_keys_never_shows_them(
    client: httpx.AsyncClient, state: HostState, kek: bytes
) -> None:
    await push(client, kek)
    r = await client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "esx-1"
    assert body["hardware_uuid"] == state.hardware_uuid
    assert body["keks"] == 1
    assert body["native_providers"] == 0
    assert b64(kek) not in r.text
    assert kek.hex() not in r.text


async def test_push_list_delete_kek(client: httpx.AsyncClient, state: HostState,
                                    kek: bytes) -> None:
    await push(client, kek)
    assert state.cache.get_kek(KMS, "key-1") == kek
    r = await client.get("/keys")
    assert r.json() == {"keks": [{"provider_id": KMS, "key_id": "key-1"}],
                        "native_providers": []}
    assert b64(kek) not in r.text
    assert (await client.delete(f"/keys/{KMS}/key-1")).status_code == 204
    assert not state.cache.has(KMS, "key-1")
    r = await client.delete(f"/keys/{KMS}/key-1")
    assert r.status_code == 409
    assert r.json()["error"] == "key_not_on_host"


@pytest.mark.parametrize(
    "value",
    [
        base64.b64encode(b"S3CR3T-KEY-MATERIAL-31-BYTES!!!").decode(),  # 31 bytes
        base64.b64encode(b"S3CR3T-KEY-MATERIAL-33-BYTES!!!!!").decode(),  # 33 bytes
        "S3CR3T-KEY-MATERIAL not base64 at all ***",
        12345,
    ],
)
async def test_bad_kek_is_422_without_echo(client: httpx.AsyncClient, state: HostState,
                                           value: object) -> None:
    r = await client.put(f"/keys/{KMS}/key-1", json={"kek": value})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_request"
    assert body["fields"][0]["field"] == "body.kek"
    assert "S3CR3T" not in r.text
    assert str(value) not in r.text
    assert state.cache.key_ids() == []


async def test_malformed_json_is_422_without_echo(client: httpx.AsyncClient) -> None:
    r = await client.put(f"/keys/{KMS}/key-1", content=b'{"kek": "S3CR3T',
                         headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "S3CR3T" not in r.text


async def test_unknown_field_is_refused(client: httpx.AsyncClient, kek: bytes) -> None:
    r = await client.put(f"/keys/{KMS}/key-1", json={"kek": b64(kek), "extra": b64(kek)})
    assert r.status_code == 422
    assert b64(kek) not in r.text


async def test_native_primary_key(client: httpx.AsyncClient, state: HostState,
                                  kek: bytes) -> None:
    r = await client.put(f"/native-providers/{NATIVE}", json={"primary_key": b64(kek)})
    assert r.status_code == 204, r.text
    assert state.cache.has_primary_key(NATIVE)
    assert (await client.get("/keys")).json()["native_providers"] == [NATIVE]
    assert (await client.delete(f"/native-providers/{NATIVE}")).status_code == 204
    assert not state.cache.has_primary_key(NATIVE)
    r = await client.delete(f"/native-providers/{NATIVE}")
    assert r.status_code == 409
    assert r.json()["error"] == "key_not_on_host"
