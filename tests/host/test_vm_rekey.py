"""Shallow and deep re-key of VM home and disks; data and home blobs survive."""

from __future__ import annotations

import pytest

from tests.host.conftest import KMS, MIB, NATIVE, pattern
from vmcrypt.crypto import IntegrityError, KeySafe, generate_kek, open_keysafe
from vmcrypt.disk import container
from vmcrypt.host import (
    Datastore,
    KeyCache,
    KeySpec,
    NotEncrypted,
    add_vtpm,
    create_vm,
    deep_rekey,
    read_disk,
    read_vm,
    shallow_rekey,
    write_disk,
)
from vmcrypt.providers import KekRef


def _vm(ds: Datastore, cache: KeyCache, key: KeySpec) -> tuple[str, list[bytes]]:
    vm = create_vm(
        ds, cache, name="r", disk_sizes=[MIB, 2 * MIB], key=key, extra_config={"a": "1"}
    )
    add_vtpm(ds, cache, vm.instance_uuid, state=b"tpm-state")
    data = [pattern(3, MIB), pattern(4, 2 * MIB)]
    for n, blob in enumerate(data):
        write_disk(ds, cache, vm.instance_uuid, n, offset=0, data=blob)
    return vm.instance_uuid, data


def _check(ds: Datastore, cache: KeyCache, vm_id: str, data: list[bytes]) -> None:
    info = read_vm(ds, cache, vm_id)
    assert info.extra_config == {"a": "1"} and info.vtpm_state == b"tpm-state"
    for n, blob in enumerate(data):
        assert read_disk(ds, cache, vm_id, n, offset=0, length=len(blob)) == blob


def _keysafes(ds: Datastore, vm_id: str) -> list[KeySafe]:
    home = ds.read(vm_id).home_keysafe
    assert home is not None
    disks = [container.read_keysafe(ds.disk_path(vm_id, n)) for n in range(2)]
    return [home, *(ks for ks in disks if ks is not None)]


def test_shallow_rekey_to_new_kms_key(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    vm_id, data = _vm(ds, cache, std_key)
    old_kek = cache.get_kek(KMS, "key-1")
    before = [open_keysafe(ks, old_kek) for ks in _keysafes(ds, vm_id)]
    disk_bytes = ds.disk_path(vm_id, 1).read_bytes()
    new_kek = generate_kek()
    cache.put_kek(KMS, "key-2", new_kek)

    facts = shallow_rekey(ds, cache, vm_id, key=KeySpec(KMS, KekRef(key_id="key-2")))
    assert facts.key_id == "key-2"
    after = _keysafes(ds, vm_id)
    assert [ks.key_id for ks in after] == ["key-2"] * 3
    assert [open_keysafe(ks, new_kek) for ks in after] == before  # same DEKs
    for ks in after:
        with pytest.raises(IntegrityError):
            open_keysafe(ks, old_kek)
    assert ds.disk_path(vm_id, 1).read_bytes() == disk_bytes  # O(1): data untouched
    assert [d.encryption.key_id for d in read_vm(ds, cache, vm_id).disks if d.encryption] == [
        "key-2",
        "key-2",
    ]
    cache.remove_kek(KMS, "key-1")
    _check(ds, cache, vm_id, data)


def test_shallow_rekey_native_makes_a_new_kek(
    ds: Datastore, cache: KeyCache, native_key: KeySpec
) -> None:
    vm_id, data = _vm(ds, cache, native_key)
    old = _keysafes(ds, vm_id)[0].wrapped_kek
    facts = shallow_rekey(ds, cache, vm_id, key=native_key)
    assert facts.provider_id == NATIVE and facts.wrapped_kek not in (None, old)
    assert {ks.wrapped_kek for ks in _keysafes(ds, vm_id)} == {facts.wrapped_kek}
    _check(ds, cache, vm_id, data)


def test_deep_rekey_new_deks_same_kek(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    vm_id, data = _vm(ds, cache, std_key)
    kek = cache.get_kek(KMS, "key-1")
    before = [open_keysafe(ks, kek) for ks in _keysafes(ds, vm_id)]
    ciphertext = ds.disk_path(vm_id, 0).read_bytes()
    progress: list[tuple[int, int]] = []
    deep_rekey(ds, cache, vm_id, progress=lambda d, t: progress.append((d, t)))
    after = [open_keysafe(ks, kek) for ks in _keysafes(ds, vm_id)]
    assert all(a != b for a, b in zip(after, before, strict=True))
    assert ds.disk_path(vm_id, 0).read_bytes() != ciphertext
    assert progress[-1] == (3 * MIB, 3 * MIB)
    assert all(d <= t for d, t in progress)
    _check(ds, cache, vm_id, data)


def test_deep_rekey_with_new_kek_one_disk(
    ds: Datastore, cache: KeyCache, std_key: KeySpec
) -> None:
    vm_id, data = _vm(ds, cache, std_key)
    cache.put_kek(KMS, "key-2", generate_kek())
    deep_rekey(ds, cache, vm_id, key=KeySpec(KMS, KekRef(key_id="key-2")), home=False, disks=[1])
    assert [ks.key_id for ks in _keysafes(ds, vm_id)] == ["key-1", "key-1", "key-2"]
    _check(ds, cache, vm_id, data)


def test_rekey_refuses_unencrypted_components(
    ds: Datastore, cache: KeyCache, std_key: KeySpec
) -> None:
    plain = create_vm(ds, cache, name="p", disk_sizes=[MIB]).instance_uuid
    with pytest.raises(NotEncrypted, match="VM home is not encrypted"):
        shallow_rekey(ds, cache, plain, key=std_key)
    with pytest.raises(NotEncrypted):
        deep_rekey(ds, cache, plain)
    mixed = create_vm(
        ds, cache, name="m", disk_sizes=[MIB, MIB], key=std_key, encrypt_disks=[True, False]
    ).instance_uuid
    before = ds.config_path(mixed).read_bytes()
    with pytest.raises(NotEncrypted, match="disk 1 is not encrypted"):
        deep_rekey(ds, cache, mixed, disks=[0, 1])
    assert ds.config_path(mixed).read_bytes() == before
    # By default only the encrypted disks are re-keyed.
    shallow_rekey(ds, cache, mixed, key=std_key)
    deep_rekey(ds, cache, mixed)
