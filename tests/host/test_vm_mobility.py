"""Clone (new keys, same data) and bundles (a VM folder moved between datastores)."""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.host.conftest import KMS, MIB, NATIVE, forms, pattern
from vmcrypt.crypto import generate_kek
from vmcrypt.crypto.keysafe import open_keysafe
from vmcrypt.disk import container
from vmcrypt.disk.exceptions import ConversionCancelled
from vmcrypt.exceptions import UsageError
from vmcrypt.host import Datastore, KeyCache, KeySpec
from vmcrypt.host.api import HostState, create_app
from vmcrypt.host.exceptions import KeyNotOnHost, VmBusy
from vmcrypt.host.vm import (
    BundleReceiver,
    add_vtpm,
    clone_vm,
    create_vm,
    open_bundle,
    read_disk,
    read_vm,
    write_disk,
)
from vmcrypt.host.vm.mobility import BundleError
from vmcrypt.providers import KekRef

DATA = pattern(7, 3 * 4096 + 100)


def _vm(ds: Datastore, cache: KeyCache, key: KeySpec | None, *, disks: int = 2) -> str:
    info = create_vm(ds, cache, name="src", disk_sizes=[MIB] * disks, key=key,
                     extra_config={"guest": "linux"}, nvram=b"nvram-bytes")
    for index in range(disks):
        write_disk(ds, cache, info.instance_uuid, index, offset=8192, data=DATA)
    return info.instance_uuid


def _dek(ds: Datastore, cache: KeyCache, vm_id: str, index: int) -> bytes:
    path = ds.disk_path(vm_id, index)
    keysafe = container.read_keysafe(path)
    assert keysafe is not None
    return open_keysafe(keysafe, cache.resolve(keysafe.provider_id,
                                               KekRef(key_id=keysafe.key_id,
                                                      wrapped_kek=keysafe.wrapped_kek)))


def test_clone_standard_gets_new_keys_and_the_same_data(
    ds: Datastore, cache: KeyCache, std_key: KeySpec, kek: bytes
) -> None:
    src = _vm(ds, cache, std_key)
    add_vtpm(ds, cache, src, state=b"tpm-state")
    new_kek = generate_kek()
    cache.put_kek(KMS, "key-2", new_kek)
    seen: list[tuple[int, int]] = []
    info = clone_vm(ds, cache, src, name="copy", key=KeySpec(KMS, KekRef(key_id="key-2")),
                    progress=lambda d, t: seen.append((d, t)))
    assert info.instance_uuid != src and info.name == "copy"
    assert info.home is not None and info.home.key_id == "key-2"
    assert all(d.encryption is not None and d.encryption.key_id == "key-2" for d in info.disks)
    assert info.extra_config == {"guest": "linux"} and info.nvram == b"nvram-bytes"
    assert info.vtpm_state == b"tpm-state"
    assert seen[-1] == (2 * MIB, 2 * MIB)
    for index in (0, 1):
        assert read_disk(ds, cache, info.instance_uuid, index, offset=8192,
                         length=len(DATA)) == DATA
        assert _dek(ds, cache, info.instance_uuid, index) != _dek(ds, cache, src, index)
        src_bytes = ds.disk_path(src, index).read_bytes()
        assert src_bytes != ds.disk_path(info.instance_uuid, index).read_bytes()
    # The source is untouched; no key in the clear anywhere on the datastore.
    assert read_vm(ds, cache, src).home is not None
    for path in ds.root.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            for secret in (kek, new_kek, _dek(ds, cache, info.instance_uuid, 0)):
                assert not any(f in raw for f in forms(secret)), path
            assert DATA[:64] not in raw


def test_clone_native_and_plain(ds: Datastore, cache: KeyCache, native_key: KeySpec) -> None:
    src = _vm(ds, cache, native_key, disks=1)
    info = clone_vm(ds, cache, src, name="n2", key=native_key)
    assert info.home is not None and info.home.wrapped_kek is not None
    assert info.home.wrapped_kek != read_vm(ds, cache, src).home.wrapped_kek  # type: ignore[union-attr]
    assert read_disk(ds, cache, info.instance_uuid, 0, offset=8192, length=len(DATA)) == DATA

    plain = _vm(ds, cache, None, disks=1)
    copy = clone_vm(ds, cache, plain, name="p2")
    assert copy.home is None and copy.disks[0].encryption is None
    assert read_disk(ds, cache, copy.instance_uuid, 0, offset=8192, length=len(DATA)) == DATA
    with pytest.raises(UsageError):
        clone_vm(ds, cache, plain, name="p3", key=native_key)
    with pytest.raises(UsageError):
        clone_vm(ds, cache, src, name="n3")


def test_cancelled_or_failed_clone_leaves_nothing(
    ds: Datastore, cache: KeyCache, std_key: KeySpec
) -> None:
    src = _vm(ds, cache, std_key)
    before = set(ds.vm_ids())
    stop = threading.Event()
    stop.set()
    with pytest.raises(ConversionCancelled):
        clone_vm(ds, cache, src, name="c", key=std_key, cancel=stop)
    with pytest.raises(KeyNotOnHost):
        clone_vm(ds, cache, src, name="c", key=KeySpec(KMS, KekRef(key_id="absent")))
    assert set(ds.vm_ids()) == before
    assert sorted(p.name for p in ds.root.iterdir()) == sorted(before)
    with ds.lock(src), pytest.raises(VmBusy):
        clone_vm(ds, cache, src, name="c", key=std_key)


def test_bundle_round_trip_to_another_datastore(
    ds: Datastore, cache: KeyCache, std_key: KeySpec, tmp_path: Path, kek: bytes
) -> None:
    src = _vm(ds, cache, std_key)
    add_vtpm(ds, cache, src, state=b"tpm")
    bundle = open_bundle(ds, src)
    stream = b"".join(bundle.chunks(chunk=5000))
    assert len(stream) == bundle.size and DATA[:64] not in stream
    assert not any(f in stream for f in forms(kek))

    # The other cluster's host holds the KEK (pushed first) and receives in odd pieces.
    other = Datastore(tmp_path / "other")
    there = KeyCache()
    there.put_kek(KMS, "key-1", kek)
    receiver = BundleReceiver(other, src)
    for at in range(0, len(stream), 777):
        receiver.feed(stream[at:at + 777])
    receiver.commit(there)
    assert other.vm_ids() == [src]
    assert read_disk(other, there, src, 1, offset=8192, length=len(DATA)) == DATA
    assert read_vm(other, there, src).vtpm_state == b"tpm"
    assert [p.name for p in other.root.iterdir()] == [src]  # no staging left


def test_bundle_refused_without_key_truncated_or_tampered(
    ds: Datastore, cache: KeyCache, std_key: KeySpec, tmp_path: Path
) -> None:
    src = _vm(ds, cache, std_key, disks=1)
    stream = b"".join(open_bundle(ds, src).chunks())
    other = Datastore(tmp_path / "other")
    cases: list[tuple[bytes, KeyCache, type[Exception]]] = [
        (stream, KeyCache(), KeyNotOnHost),
        (stream[: len(stream) // 2], cache, BundleError),
        (b"x" * 1024, cache, BundleError),
    ]
    for data, keys, error in cases:
        receiver = BundleReceiver(other, src)
        with pytest.raises(error):
            receiver.feed(data)
            receiver.commit(keys)
        receiver.abort()
        assert not other.root.exists() or list(other.root.iterdir()) == []


def test_open_bundle_holds_the_lock(ds: Datastore, cache: KeyCache) -> None:
    src = _vm(ds, cache, None, disks=1)
    bundle = open_bundle(ds, src)
    with pytest.raises(VmBusy):
        write_disk(ds, cache, src, 0, offset=0, data=b"x")
    bundle.close()
    write_disk(ds, cache, src, 0, offset=0, data=b"x")


# -- the host API ---------------------------------------------------------------------
def _host(root: Path, name: str) -> tuple[HostState, TestClient]:
    state = HostState(name=name, hardware_uuid=str(uuid.uuid4()), datastore=Datastore(root))
    return state, TestClient(create_app(state), base_url="http://h/api/v1")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_api_clone_job_and_bundle_move(tmp_path: Path) -> None:
    kek, new = generate_kek(), generate_kek()
    a, api_a = _host(tmp_path / "ds-a", "esx-a")
    b, api_b = _host(tmp_path / "ds-b", "esx-b")
    assert api_a.put(f"/keys/{KMS}/k1", json={"kek": _b64(kek)}).status_code == 204
    made = api_a.post("/vms", json={"name": "v", "disks": [{"size": MIB}],
                                    "encryption": {"provider_id": KMS, "key_id": "k1"}})
    vm_id = made.json()["id"]
    api_a.put(f"/vms/{vm_id}/disks/0/data?offset=0", content=DATA)

    # Refusals first: no key for the clone's KEK, a key for a plain clone, bad names.
    missing = api_a.post(f"/vms/{vm_id}/clone", json={"name": "c",
                                                      "key": {"provider_id": KMS,
                                                              "key_id": "k2"}})
    assert missing.status_code == 409 and missing.json()["error"] == "key_not_on_host"
    assert api_a.post(f"/vms/{vm_id}/clone", json={"name": "c"}).status_code == 422
    assert api_a.post(f"/vms/{uuid.uuid4()}/clone", json={"name": "c"}).status_code == 404

    api_a.put(f"/keys/{KMS}/k2", json={"kek": _b64(new)})
    started = api_a.post(f"/vms/{vm_id}/clone", json={"name": "c", "key": {
        "provider_id": KMS, "key_id": "k2"}})
    assert started.status_code == 202, started.text
    clone_id = started.json()["vm_id"]
    job = started.json()["job_id"]
    for _ in range(200):
        state = api_a.get(f"/jobs/{job}").json()
        if state["state"] not in ("queued", "running"):
            break
        time.sleep(0.02)
    assert state["state"] == "succeeded", state
    assert api_a.get(f"/vms/{clone_id}").json()["home"]["key_id"] == "k2"
    got = api_a.get(f"/vms/{clone_id}/disks/0/data?offset=0&length={len(DATA)}")
    assert got.content == DATA

    # Move the clone to host b's datastore: refused until b holds the KEK.
    bundle = api_a.get(f"/vms/{clone_id}/bundle")
    assert bundle.status_code == 200 and DATA[:64] not in bundle.content
    refused = api_b.put(f"/vms/{clone_id}/bundle", content=bundle.content)
    assert refused.status_code == 409 and refused.json()["error"] == "key_not_on_host"
    assert list(b.datastore.root.iterdir()) == []
    api_b.put(f"/keys/{KMS}/k2", json={"kek": _b64(new)})
    moved = api_b.put(f"/vms/{clone_id}/bundle", content=bundle.content)
    assert moved.status_code == 201, moved.text
    assert moved.json()["home"]["key_on_host"] is True
    again = api_b.put(f"/vms/{clone_id}/bundle", content=bundle.content)
    assert again.status_code == 409 and again.json()["error"] == "vm_exists"
    got = api_b.get(f"/vms/{clone_id}/disks/0/data?offset=0&length={len(DATA)}")
    assert got.content == DATA
    bad = api_b.put(f"/vms/{uuid.uuid4()}/bundle", content=b"not a tar" * 100)
    assert bad.status_code == 422
    assert a.cache.has(KMS, "k1") and NATIVE not in a.cache.native_provider_ids()


def test_bundle_refused_when_sizes_or_sealed_blobs_do_not_match(
    ds: Datastore, cache: KeyCache, std_key: KeySpec, tmp_path: Path
) -> None:
    import json

    from vmcrypt.crypto.exceptions import IntegrityError

    src = _vm(ds, cache, std_key, disks=1)
    other = Datastore(tmp_path / "other")
    config = ds.config_path(src)
    doc = json.loads(config.read_bytes())
    sealed = bytearray(base64.b64decode(doc["home"]["blobs"]["nvram"]))
    sealed[-1] ^= 1
    doc["home"]["blobs"]["nvram"] = base64.b64encode(bytes(sealed)).decode()
    config.write_text(json.dumps(doc))
    receiver = BundleReceiver(other, src)
    receiver.feed(b"".join(open_bundle(ds, src).chunks()))
    with pytest.raises(IntegrityError):
        receiver.commit(cache)
    receiver.abort()

    os.truncate(ds.disk_path(src, 0), MIB // 2)
    receiver = BundleReceiver(other, src)
    receiver.feed(b"".join(open_bundle(ds, src).chunks()))
    with pytest.raises(BundleError, match="sizes"):
        receiver.commit(cache)
    receiver.abort()
    assert list(other.root.iterdir()) == []
