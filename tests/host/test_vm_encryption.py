"""Encrypt and decrypt VM home and disks, in the seeds' order; data survives each step."""

from __future__ import annotations

import base64
import threading

import pytest

from tests.host.conftest import KMS, MIB, NATIVE, pattern
from vmcrypt.crypto import generate_kek
from vmcrypt.disk import container
from vmcrypt.disk.exceptions import ConversionCancelled
from vmcrypt.host import (
    AlreadyEncrypted,
    Datastore,
    DisksStillEncrypted,
    HomeNotEncrypted,
    KeyCache,
    KeyNotOnHost,
    KeySpec,
    NoSuchDisk,
    NotEncrypted,
    VtpmPresent,
    add_vtpm,
    create_vm,
    decrypt_disk,
    decrypt_home,
    encrypt_disk,
    encrypt_home,
    read_disk,
    read_vm,
    remove_vtpm,
    resume_disk,
    write_disk,
)
from vmcrypt.providers import KekRef

NVRAM = b"NVRAM-PLAINTEXT-CONTENT"


def _snapshot(ds: Datastore, vm_id: str) -> dict[str, bytes]:
    folder = ds.vm_dir(vm_id)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _fill(ds: Datastore, cache: KeyCache, vm_id: str, disks: int) -> list[bytes]:
    data = [pattern(n + 7, MIB) for n in range(disks)]
    for n, blob in enumerate(data):
        write_disk(ds, cache, vm_id, n, offset=0, data=blob)
    return data


def _check(ds: Datastore, cache: KeyCache, vm_id: str, data: list[bytes]) -> None:
    for n, blob in enumerate(data):
        assert read_disk(ds, cache, vm_id, n, offset=0, length=MIB) == blob


def test_encrypt_then_decrypt_whole_vm(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    vm = create_vm(
        ds, cache, name="v", disk_sizes=[MIB, MIB], extra_config={"k": "v"}, nvram=NVRAM
    )
    vm_id = vm.instance_uuid
    data = _fill(ds, cache, vm_id, 2)

    facts = encrypt_home(ds, cache, vm_id, key=std_key)
    assert facts.key_id == "key-1"
    stored = ds.config_path(vm_id).read_bytes()
    assert b'"k": "v"' not in stored
    assert base64.b64encode(NVRAM) not in stored
    _check(ds, cache, vm_id, data)

    progress: list[tuple[int, int]] = []
    for n in range(2):
        disk_facts = encrypt_disk(
            ds, cache, vm_id, n, progress=lambda d, t: progress.append((d, t))
        )
        assert disk_facts.key_id == "key-1"
        assert container.is_encrypted(ds.disk_path(vm_id, n))
        assert ds.disk_path(vm_id, n).read_bytes() != data[n]
        _check(ds, cache, vm_id, data)
    assert progress[-1] == (MIB, MIB)
    info = read_vm(ds, cache, vm_id)
    assert all(d.encryption is not None for d in info.disks)
    assert info.extra_config == {"k": "v"} and info.nvram == NVRAM

    for n in range(2):
        decrypt_disk(ds, cache, vm_id, n)
        assert ds.disk_path(vm_id, n).read_bytes() == data[n]
    decrypt_home(ds, cache, vm_id)
    info = read_vm(ds, KeyCache(), vm_id)
    assert not info.home_encrypted
    assert info.extra_config == {"k": "v"} and info.nvram == NVRAM
    assert all(d.encryption is None for d in info.disks)
    _check(ds, KeyCache(), vm_id, data)


def test_order_rules_refuse_and_change_nothing(
    ds: Datastore, cache: KeyCache, std_key: KeySpec
) -> None:
    vm_id = create_vm(ds, cache, name="v", disk_sizes=[MIB, MIB]).instance_uuid
    _fill(ds, cache, vm_id, 2)
    before = _snapshot(ds, vm_id)
    with pytest.raises(HomeNotEncrypted, match="encrypt VM home first"):
        encrypt_disk(ds, cache, vm_id, 0, key=std_key)
    with pytest.raises(NotEncrypted):
        decrypt_home(ds, cache, vm_id)
    with pytest.raises(NotEncrypted):
        decrypt_disk(ds, cache, vm_id, 1)
    with pytest.raises(NoSuchDisk):
        encrypt_disk(ds, cache, vm_id, 5)
    assert _snapshot(ds, vm_id) == before

    encrypt_home(ds, cache, vm_id, key=std_key)
    encrypt_disk(ds, cache, vm_id, 1)
    add_vtpm(ds, cache, vm_id, state=b"tpm")
    before = _snapshot(ds, vm_id)
    with pytest.raises(DisksStillEncrypted, match=r"disks \[1\].*decrypt the disks first"):
        decrypt_home(ds, cache, vm_id)
    with pytest.raises(AlreadyEncrypted):
        encrypt_home(ds, cache, vm_id, key=std_key)
    with pytest.raises(AlreadyEncrypted):
        encrypt_disk(ds, cache, vm_id, 1)
    assert _snapshot(ds, vm_id) == before

    decrypt_disk(ds, cache, vm_id, 1)
    before = _snapshot(ds, vm_id)
    with pytest.raises(VtpmPresent, match="remove the vTPM first"):
        decrypt_home(ds, cache, vm_id)
    assert _snapshot(ds, vm_id) == before
    remove_vtpm(ds, vm_id)
    decrypt_home(ds, cache, vm_id)


def test_missing_key_refuses_before_any_change(
    ds: Datastore, cache: KeyCache, std_key: KeySpec
) -> None:
    vm_id = create_vm(ds, cache, name="v", disk_sizes=[MIB], key=std_key).instance_uuid
    other = KeyCache()
    before = _snapshot(ds, vm_id)
    with pytest.raises(KeyNotOnHost):
        decrypt_disk(ds, other, vm_id, 0)
    with pytest.raises(KeyNotOnHost):
        read_disk(ds, other, vm_id, 0, offset=0, length=16)
    assert _snapshot(ds, vm_id) == before
    plain = create_vm(ds, cache, name="p", disk_sizes=[MIB]).instance_uuid
    with pytest.raises(KeyNotOnHost):
        encrypt_home(ds, cache, plain, key=KeySpec(KMS, KekRef(key_id="not-pushed")))
    assert not read_vm(ds, cache, plain).home_encrypted


def test_disk_under_another_kek(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    vm = create_vm(ds, cache, name="v", disk_sizes=[MIB], key=std_key, encrypt_disks=[False])
    cache.put_kek(KMS, "key-2", generate_kek())
    data = _fill(ds, cache, vm.instance_uuid, 1)
    facts = encrypt_disk(ds, cache, vm.instance_uuid, 0, key=KeySpec(KMS, KekRef(key_id="key-2")))
    assert facts.key_id == "key-2"
    _check(ds, cache, vm.instance_uuid, data)


def test_native_home_and_disks(ds: Datastore, cache: KeyCache, native_key: KeySpec) -> None:
    vm_id = create_vm(ds, cache, name="n", disk_sizes=[MIB]).instance_uuid
    data = _fill(ds, cache, vm_id, 1)
    facts = encrypt_home(ds, cache, vm_id, key=native_key)
    assert facts.provider_id == NATIVE and facts.key_id is None and facts.wrapped_kek
    disk_facts = encrypt_disk(ds, cache, vm_id, 0)
    assert disk_facts.wrapped_kek == facts.wrapped_kek  # one KEK per VM
    _check(ds, cache, vm_id, data)


def test_cancelled_encrypt_resumes(ds: Datastore, cache: KeyCache, std_key: KeySpec) -> None:
    vm = create_vm(ds, cache, name="v", disk_sizes=[MIB], key=std_key, encrypt_disks=[False])
    vm_id_s = vm.instance_uuid
    data = _fill(ds, cache, vm_id_s, 1)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ConversionCancelled):
        encrypt_disk(ds, cache, vm_id_s, 0, cancel=cancel)
    assert read_vm(ds, cache, vm_id_s).disks[0].encryption is None
    assert resume_disk(ds, cache, vm_id_s, 0) == "encrypt"
    assert read_vm(ds, cache, vm_id_s).disks[0].encryption is not None
    _check(ds, cache, vm_id_s, data)
    assert resume_disk(ds, cache, vm_id_s, 0) is None
