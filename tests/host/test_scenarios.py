"""Whole-host scenarios: no key at rest, two hosts on one datastore, native without a
control plane, and the package's public surface."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import vmcrypt.host
from tests.host.conftest import KMS, MIB, NATIVE, pattern, scan
from vmcrypt.crypto import KeySafe, generate_kek, open_keysafe
from vmcrypt.disk import container
from vmcrypt.exceptions import VmcryptError
from vmcrypt.host import (
    Datastore,
    HostError,
    KeyCache,
    KeyNotOnHost,
    KeySpec,
    StateError,
    VmBusy,
    add_disk,
    add_vtpm,
    create_vm,
    decrypt_disk,
    deep_rekey,
    delete_vm,
    encrypt_disk,
    encrypt_home,
    read_disk,
    read_vm,
    remove_vtpm,
    shallow_rekey,
    write_disk,
)
from vmcrypt.host import exceptions as host_exceptions
from vmcrypt.providers import KekRef


def _deks(ds: Datastore, vm_id: str, keks: list[bytes]) -> list[bytes]:
    """Every DEK currently stored for a VM, unwrapped with whichever KEK opens it."""
    found: list[KeySafe] = []
    home = ds.read(vm_id).home_keysafe
    if home is not None:
        found.append(home)
    for disk in ds.read(vm_id).disks:
        path = ds.disk_path(vm_id, disk.index)
        if container.is_encrypted(path):
            ks = container.read_keysafe(path)
            assert ks is not None
            found.append(ks)
    deks = []
    for ks in found:
        for kek in keks:
            try:
                deks.append(open_keysafe(ks, kek))
                break
            except VmcryptError:
                continue
        else:
            raise AssertionError("a keySafe no test KEK opens")
    return deks


def test_no_key_material_at_rest_after_full_scenario(
    ds: Datastore, cache: KeyCache, std_key: KeySpec, kek: bytes, primary_key: bytes
) -> None:
    keks = [kek]
    deks: set[bytes] = set()

    def note(vm_id: str) -> None:
        deks.update(_deks(ds, vm_id, keks))

    # A standard-provider VM through every operation.
    vm_id = create_vm(ds, cache, name="s", disk_sizes=[MIB, MIB], key=std_key).instance_uuid
    note(vm_id)
    data = [pattern(1, MIB), pattern(2, MIB)]
    for n, blob in enumerate(data):
        write_disk(ds, cache, vm_id, n, offset=0, data=blob)
    add_vtpm(ds, cache, vm_id, state=b"tpm")
    add_disk(ds, cache, vm_id, size=MIB)
    note(vm_id)
    kek2 = generate_kek()
    keks.append(kek2)
    cache.put_kek(KMS, "key-2", kek2)
    shallow_rekey(ds, cache, vm_id, key=KeySpec(KMS, KekRef(key_id="key-2")))
    deep_rekey(ds, cache, vm_id)
    note(vm_id)
    decrypt_disk(ds, cache, vm_id, 2)
    encrypt_disk(ds, cache, vm_id, 2)
    note(vm_id)

    # A native VM: its KEKs are born on the host, wrapped under the primary key.
    native_id = create_vm(ds, cache, name="n", disk_sizes=[MIB], key=KeySpec(NATIVE)).instance_uuid
    provider = cache.native_provider(NATIVE)
    record = ds.read(native_id)
    assert record.home_keysafe is not None and record.home_keysafe.wrapped_kek is not None
    native_kek = provider.get_kek(KekRef(wrapped_kek=record.home_keysafe.wrapped_kek))
    keks.append(native_kek)
    note(native_id)
    write_disk(ds, cache, native_id, 0, offset=0, data=pattern(5, MIB))
    deep_rekey(ds, cache, native_id)
    note(native_id)

    for n, blob in enumerate(data):
        assert read_disk(ds, cache, vm_id, n, offset=0, length=MIB) == blob
    assert len(deks) >= 10
    secrets = [*keks, primary_key, *deks]
    assert scan(ds.root, secrets) == []
    # The scan itself finds what it looks for.
    (ds.root / "canary").write_bytes(b"x" + deks.pop().hex().encode())
    assert len(scan(ds.root, secrets)) == 1


def test_two_hosts_share_one_datastore(tmp_path: Path, kek: bytes) -> None:
    folder = tmp_path / "shared"
    host_a, host_b, host_c = KeyCache(), KeyCache(), KeyCache()
    for host in (host_a, host_b):  # the control plane pushes to every host of the cluster
        host.put_kek(KMS, "key-1", kek)
    ds_a, ds_b, ds_c = Datastore(folder), Datastore(folder), Datastore(folder)
    key = KeySpec(KMS, KekRef(key_id="key-1"))
    vm_id = create_vm(ds_a, host_a, name="shared", disk_sizes=[MIB], key=key).instance_uuid
    write_disk(ds_a, host_a, vm_id, 0, offset=0, data=b"from host a")

    assert ds_b.vm_ids() == [vm_id]
    assert read_vm(ds_b, host_b, vm_id).name == "shared"
    assert read_disk(ds_b, host_b, vm_id, 0, offset=0, length=11) == b"from host a"
    write_disk(ds_b, host_b, vm_id, 0, offset=0, data=b"from host b")
    assert read_disk(ds_a, host_a, vm_id, 0, offset=0, length=11) == b"from host b"

    with pytest.raises(KeyNotOnHost, match="key missing on host"):
        read_vm(ds_c, host_c, vm_id)
    with pytest.raises(KeyNotOnHost):
        read_disk(ds_c, host_c, vm_id, 0, offset=0, length=1)

    with ds_a.lock(vm_id), pytest.raises(VmBusy):
        deep_rekey(ds_b, host_b, vm_id)

    delete_vm(ds_a, host_a, vm_id)
    assert not host_a.has(KMS, "key-1")
    assert ds_b.vm_ids() == []


def test_native_flow_with_only_a_pushed_primary_key(tmp_path: Path) -> None:
    """No control plane and no KMS: the host creates, encrypts and opens native VMs."""
    primary = generate_kek()
    ds = Datastore(tmp_path / "ds")
    host = KeyCache()
    host.put_primary_key(NATIVE, primary)
    key = KeySpec(NATIVE)
    vm_id = create_vm(ds, host, name="n", disk_sizes=[MIB], key=key).instance_uuid
    add_vtpm(ds, host, vm_id, state=b"tpm")
    write_disk(ds, host, vm_id, 0, offset=0, data=b"native data")
    plain_id = create_vm(ds, host, name="p", disk_sizes=[MIB]).instance_uuid
    encrypt_home(ds, host, plain_id, key=key)
    encrypt_disk(ds, host, plain_id, 0)
    assert host.key_ids() == []  # no KEK was pushed or cached: all wrapped in keySafes

    # A host restart: the same primary key pushed again opens everything.
    restarted = KeyCache()
    restarted.put_primary_key(NATIVE, primary)
    assert read_vm(ds, restarted, vm_id).vtpm_state == b"tpm"
    assert read_disk(ds, restarted, vm_id, 0, offset=0, length=11) == b"native data"
    assert read_vm(ds, restarted, plain_id).home_encrypted

    with pytest.raises(KeyNotOnHost, match="primary key of native key provider"):
        read_vm(ds, KeyCache(), vm_id)
    remove_vtpm(ds, vm_id)


def test_public_surface() -> None:
    for name in vmcrypt.host.__all__:
        assert getattr(vmcrypt.host, name) is not None
    tree = host_exceptions.__doc__ or ""
    for name in host_exceptions.__all__:
        cls = getattr(host_exceptions, name)
        assert issubclass(cls, HostError)
        assert issubclass(cls, VmcryptError)
        assert name in tree
    assert issubclass(host_exceptions.HomeNotEncrypted, StateError)
    assert str(uuid.uuid4()) not in tree
