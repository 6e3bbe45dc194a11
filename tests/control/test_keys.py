"""Key providers, KMS servers, storage policies and encryption records with their order rules."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from vmcrypt.control.db import repo
from vmcrypt.control.db.models import ComponentKind, ProviderKind
from vmcrypt.control.exceptions import Conflict, NotFound
from vmcrypt.exceptions import UsageError

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _vm_with_disks(session: Session, disks: int = 2) -> tuple[int, list[int]]:
    host = repo.create_host(session, name="h", hardware_uuid="00000000-0000-0000-0000-000000000001")
    store = repo.create_datastore(session, name="local", path="/d", host_id=host.id)
    vm = repo.create_vm(session, name="vm", datastore_id=store.id, host_id=host.id)
    ids = [repo.add_disk(session, vm_id=vm.id, size_bytes=4096).id for _ in range(disks)]
    return vm.id, ids


def test_one_default_provider_at_a_time(session: Session) -> None:
    with pytest.raises(NotFound, match="no default key provider"):
        repo.default_provider(session)
    kmip = repo.create_key_provider(session, name="kmip", kind=ProviderKind.STANDARD,
                                    is_default=True)
    native = repo.create_key_provider(session, name="nkp", kind=ProviderKind.NATIVE,
                                      sealed_primary_key=b"sealed", is_default=True)
    assert repo.default_provider(session).id == native.id
    assert not kmip.is_default
    repo.set_default_provider(session, provider_id=kmip.id)
    assert repo.default_provider(session).id == kmip.id
    assert not native.is_default


def test_only_a_native_provider_has_a_sealed_primary_key(session: Session) -> None:
    with pytest.raises(UsageError):
        repo.create_key_provider(session, name="n", kind=ProviderKind.NATIVE)
    with pytest.raises(UsageError):
        repo.create_key_provider(session, name="s", kind=ProviderKind.STANDARD,
                                 sealed_primary_key=b"x")


def test_kms_servers_keep_failover_order_and_public_material_only(session: Session) -> None:
    provider = repo.create_key_provider(session, name="kmip", kind=ProviderKind.STANDARD)
    repo.add_kms_server(session, provider_id=provider.id, name="a", address="kms-a",
                        ca_pem=CA, client_key_path="/etc/vmcrypt/client.key")
    repo.add_kms_server(session, provider_id=provider.id, name="b", address="kms-b", port=5697)
    assert [(s.name, s.position) for s in provider.kms_servers] == [("a", 0), ("b", 1)]
    with pytest.raises(UsageError, match="private key"):
        repo.add_kms_server(session, provider_id=provider.id, name="c", address="c",
                            client_cert_pem="-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(UsageError, match="TCP port"):
        repo.add_kms_server(session, provider_id=provider.id, name="d", address="d", port=0)
    native = repo.create_key_provider(session, name="nkp", kind=ProviderKind.NATIVE,
                                      sealed_primary_key=b"sealed")
    with pytest.raises(UsageError, match="only standard"):
        repo.add_kms_server(session, provider_id=native.id, name="x", address="x")


def test_storage_policies(session: Session) -> None:
    provider = repo.create_key_provider(session, name="kmip", kind=ProviderKind.STANDARD)
    policy = repo.create_storage_policy(session, name="VM Encryption Policy", encryption=True)
    assert policy.key_provider_id is None  # the default provider, at the time of use
    named = repo.create_storage_policy(session, name="kmip only", encryption=True,
                                       key_provider_id=provider.id)
    assert named.key_provider_id == provider.id
    with pytest.raises(UsageError):
        repo.create_storage_policy(session, name="odd", encryption=False,
                                   key_provider_id=provider.id)
    with pytest.raises(Conflict):
        repo.create_storage_policy(session, name="kmip only", encryption=False)


def test_standard_records_key_ids_and_native_records_wrapped_keks(session: Session) -> None:
    vm_id, (disk_id, _) = _vm_with_disks(session)
    kmip = repo.create_key_provider(session, name="kmip", kind=ProviderKind.STANDARD)
    native = repo.create_key_provider(session, name="nkp", kind=ProviderKind.NATIVE,
                                      sealed_primary_key=b"sealed")
    with pytest.raises(UsageError, match="key ID only"):
        repo.record_encryption(session, vm_id=vm_id, key_provider_id=kmip.id,
                               key_id="k", wrapped_kek=b"w")
    with pytest.raises(UsageError, match="wrapped KEK"):
        repo.record_encryption(session, vm_id=vm_id, key_provider_id=native.id, key_id="k")
    home = repo.record_encryption(session, vm_id=vm_id, key_provider_id=kmip.id, key_id="k-1")
    disk = repo.record_encryption(session, vm_id=vm_id, disk_id=disk_id,
                                  key_provider_id=native.id, wrapped_kek=b"\x01" * 40)
    assert (home.component, home.key_id, home.wrapped_kek) == (ComponentKind.VM_HOME, "k-1", None)
    assert (disk.component, disk.key_id) == (ComponentKind.DISK, None)
    assert [r.id for r in repo.encryption_records(session, vm_id=vm_id)] == [home.id, disk.id]


def test_a_disk_is_encrypted_only_after_its_vm_home(session: Session) -> None:
    vm_id, (disk_id, _) = _vm_with_disks(session)
    kmip = repo.create_key_provider(session, name="kmip", kind=ProviderKind.STANDARD)
    with pytest.raises(Conflict, match="VM home first"):
        repo.record_encryption(session, vm_id=vm_id, disk_id=disk_id,
                               key_provider_id=kmip.id, key_id="k")


def test_decrypt_disks_first_then_the_vm_home(session: Session) -> None:
    vm_id, disk_ids = _vm_with_disks(session)
    kmip = repo.create_key_provider(session, name="kmip", kind=ProviderKind.STANDARD)
    repo.record_encryption(session, vm_id=vm_id, key_provider_id=kmip.id, key_id="home")
    for index, disk_id in enumerate(disk_ids):
        repo.record_encryption(session, vm_id=vm_id, disk_id=disk_id,
                               key_provider_id=kmip.id, key_id=f"disk-{index}")
    with pytest.raises(Conflict, match="decrypt every disk first"):
        repo.clear_encryption(session, vm_id=vm_id)
    for disk_id in disk_ids:
        repo.clear_encryption(session, vm_id=vm_id, disk_id=disk_id)
    repo.clear_encryption(session, vm_id=vm_id)
    assert repo.encryption_records(session, vm_id=vm_id) == []
    with pytest.raises(Conflict, match="not encrypted"):
        repo.clear_encryption(session, vm_id=vm_id)


def test_rekey_replaces_the_record_and_foreign_disks_are_not_found(session: Session) -> None:
    vm_id, (disk_id, _) = _vm_with_disks(session)
    kmip = repo.create_key_provider(session, name="kmip", kind=ProviderKind.STANDARD)
    repo.record_encryption(session, vm_id=vm_id, key_provider_id=kmip.id, key_id="old")
    repo.record_encryption(session, vm_id=vm_id, key_provider_id=kmip.id, key_id="new")
    assert [r.key_id for r in repo.encryption_records(session, vm_id=vm_id)] == ["new"]
    with pytest.raises(NotFound):
        repo.record_encryption(session, vm_id=vm_id, disk_id=disk_id + 100,
                               key_provider_id=kmip.id, key_id="k")
