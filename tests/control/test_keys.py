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


def test_key_ids_a_host_needs_after_a_restart(session: Session) -> None:
    cluster = repo.create_cluster(session, name="prod")
    hosts = [
        repo.create_host(session, name=f"esx-{n}", cluster_id=cluster.id,
                         hardware_uuid=f"00000000-0000-0000-0000-00000000010{n}")
        for n in (1, 2)
    ]
    alone = repo.create_host(session, name="esx-3",
                             hardware_uuid="00000000-0000-0000-0000-000000000103")
    shared = repo.create_datastore(session, name="shared", path="/s", cluster_id=cluster.id)
    local = repo.create_datastore(session, name="local", path="/l", host_id=alone.id)
    kmip = repo.create_key_provider(session, name="kmip", kind=ProviderKind.STANDARD)
    native = repo.create_key_provider(session, name="nkp", kind=ProviderKind.NATIVE,
                                      sealed_primary_key=b"sealed")
    in_cluster = repo.create_vm(session, name="a", datastore_id=shared.id, host_id=hosts[0].id)
    disk = repo.add_disk(session, vm_id=in_cluster.id, size_bytes=4096)
    repo.record_encryption(session, vm_id=in_cluster.id, key_provider_id=kmip.id, key_id="k-a")
    repo.record_encryption(session, vm_id=in_cluster.id, disk_id=disk.id,
                           key_provider_id=kmip.id, key_id="k-a")
    on_alone = repo.create_vm(session, name="b", datastore_id=local.id, host_id=alone.id)
    repo.record_encryption(session, vm_id=on_alone.id, key_provider_id=kmip.id, key_id="k-b")
    nat = repo.create_vm(session, name="c", datastore_id=shared.id, host_id=hosts[1].id)
    repo.record_encryption(session, vm_id=nat.id, key_provider_id=native.id, wrapped_kek=b"w")
    gone = repo.create_vm(session, name="d", datastore_id=shared.id, host_id=hosts[1].id)
    repo.record_encryption(session, vm_id=gone.id, key_provider_id=kmip.id, key_id="k-d")
    repo.set_registration(session, vm_id=gone.id, host_id=None)

    # Both cluster hosts need the cluster's KEK, whichever host the VM runs on.
    for host in hosts:
        assert repo.key_ids_for_host(session, host_id=host.id) == [("kmip", "k-a")]
    assert repo.key_ids_for_host(session, host_id=alone.id) == [("kmip", "k-b")]
