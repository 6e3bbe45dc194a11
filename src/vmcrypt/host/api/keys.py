"""``/api/v1/keys`` and ``/api/v1/native-providers``: what the control plane pushes.

KEKs of standard providers and primary keys of native providers go into the host's
memory-only :class:`~vmcrypt.host.keycache.KeyCache`. Answers and log lines carry IDs,
never key bytes.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response

from vmcrypt.host.api.schemas import KekPush, KeyIdPublic, KeyList, PrimaryKeyPush, decode_key
from vmcrypt.host.api.state import StateDep
from vmcrypt.host.exceptions import KeyNotOnHost

__all__ = ["router"]

log = logging.getLogger("vmcrypt.host.api")
router = APIRouter(tags=["keys"])


@router.get("/keys")
def list_keys(state: StateDep) -> KeyList:
    """The IDs of every cached KEK and native provider (the control plane diffs these)."""
    return KeyList(
        keks=[KeyIdPublic(provider_id=p, key_id=k) for p, k in state.cache.key_ids()],
        native_providers=state.cache.native_provider_ids(),
    )


@router.put("/keys/{provider_id}/{key_id}", status_code=204)
def put_kek(provider_id: str, key_id: str, body: KekPush, state: StateDep) -> Response:
    """Hold a pushed KEK in memory (replacing one with the same IDs)."""
    kek = decode_key(body.kek)
    if not body.vm_ids:
        state.cache.put_kek(provider_id, key_id, kek)
    for vm_id in body.vm_ids:
        state.cache.put_kek(provider_id, key_id, kek, vm_id=str(vm_id))
    log.info("KEK %s of provider %s pushed", key_id, provider_id)
    return Response(status_code=204)


@router.delete("/keys/{provider_id}/{key_id}", status_code=204)
def delete_kek(provider_id: str, key_id: str, state: StateDep) -> Response:
    """Drop a KEK; 409 key_not_on_host when it was not cached (nothing to do)."""
    if not state.cache.remove_kek(provider_id, key_id):
        raise KeyNotOnHost(provider_id, key_id)
    log.info("KEK %s of provider %s removed", key_id, provider_id)
    return Response(status_code=204)


@router.put("/native-providers/{provider_id}", status_code=204)
def put_primary_key(provider_id: str, body: PrimaryKeyPush, state: StateDep) -> Response:
    """Hold a native provider's primary key: the host then makes and opens its KEKs."""
    state.cache.put_primary_key(
        provider_id, decode_key(body.primary_key), fingerprint=body.fingerprint
    )
    log.info("primary key of native provider %s pushed", provider_id)
    return Response(status_code=204)


@router.delete("/native-providers/{provider_id}", status_code=204)
def delete_native_provider(provider_id: str, state: StateDep) -> Response:
    """Drop a native provider's primary key (and any KEK cached under its ID)."""
    if not state.cache.has_primary_key(provider_id):
        raise KeyNotOnHost(provider_id)
    state.cache.remove_provider(provider_id)
    log.info("native provider %s removed", provider_id)
    return Response(status_code=204)
