"""Clusters, hosts, datastores, VMs and disks; lock state and registration."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vmcrypt.control.db import repo
from vmcrypt.control.db.models import ConnectionState, LockReason
from vmcrypt.control.exceptions import Conflict, NotFound
from vmcrypt.exceptions import UsageError

HW1 = "4c4c4544-0042-3510-8052-b4c04f4b4d31"
HW2 = "4c4c4544-0042-3510-8052-b4c04f4b4d32"


def _cluster_with_vm(session: Session) -> tuple[int, int, int]:
    cluster = repo.create_cluster(session, name="prod")
    host = repo.create_host(session, name="esx-1", hardware_uuid=HW1, cluster_id=cluster.id)
    store = repo.create_datastore(session, name="shared", path="/data/shared",
                                  cluster_id=cluster.id)
    vm = repo.create_vm(session, name="web-1", datastore_id=store.id, host_id=host.id)
    return cluster.id, host.id, vm.id


def test_a_vm_takes_its_hosts_cluster_and_gets_an_instance_uuid(session: Session) -> None:
    cluster_id, host_id, vm_id = _cluster_with_vm(session)
    vm = repo.list_vms(session, cluster_id=cluster_id)[0]
    assert (vm.id, vm.host_id, vm.registered, vm.locked) == (vm_id, host_id, True, False)
    assert uuid.UUID(vm.instance_uuid).version == 4


def test_duplicate_names_and_uuids_conflict_and_leave_the_session_usable(
    session: Session,
) -> None:
    repo.create_cluster(session, name="prod")
    with pytest.raises(Conflict):
        repo.create_cluster(session, name="prod")
    repo.create_host(session, name="esx-1", hardware_uuid=HW1)
    with pytest.raises(Conflict):
        repo.create_host(session, name="esx-2", hardware_uuid=HW1.upper())
    assert repo.create_cluster(session, name="dev").id > 0


def test_unknown_references_are_not_found(session: Session) -> None:
    with pytest.raises(NotFound, match="no cluster with ID 42"):
        repo.create_host(session, name="h", hardware_uuid=HW1, cluster_id=42)
    with pytest.raises(NotFound):
        repo.create_vm(session, name="v", datastore_id=7)
    with pytest.raises(NotFound):
        repo.set_lock_state(session, vm_id=9, reason=None)


def test_invalid_arguments_are_usage_errors(session: Session) -> None:
    with pytest.raises(UsageError, match="not a UUID"):
        repo.create_host(session, name="h", hardware_uuid="nope")
    cluster = repo.create_cluster(session, name="c")
    host = repo.create_host(session, name="h", hardware_uuid=HW1)
    with pytest.raises(UsageError, match="exactly one"):
        repo.create_datastore(session, name="d", path="/d", cluster_id=cluster.id,
                              host_id=host.id)
    with pytest.raises(UsageError, match="exactly one"):
        repo.create_datastore(session, name="d", path="/d")
    with pytest.raises(UsageError, match="64 hex"):
        repo.enroll_host(session, host_id=host.id, certificate_fingerprint="ab")


def test_enrolment_and_connection_state(session: Session) -> None:
    host = repo.create_host(session, name="h", hardware_uuid=HW2, api_url="https://h:8443")
    assert host.connection_state is ConnectionState.DISCONNECTED
    when = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    repo.enroll_host(session, host_id=host.id, certificate_fingerprint="AB" * 32, at=when)
    repo.set_connection_state(session, host_id=host.id, state=ConnectionState.CONNECTED)
    session.commit()
    session.expire_all()
    assert host.enrolled_at == when
    assert host.certificate_fingerprint == "ab" * 32
    assert host.connection_state is ConnectionState.CONNECTED


def test_disks_get_the_next_free_index_and_a_positive_size(session: Session) -> None:
    _, _, vm_id = _cluster_with_vm(session)
    first = repo.add_disk(session, vm_id=vm_id, size_bytes=1 << 20)
    second = repo.add_disk(session, vm_id=vm_id, size_bytes=2 << 20)
    assert (first.index, second.index, first.encrypted) == (0, 1, False)
    with pytest.raises(Conflict):
        repo.add_disk(session, vm_id=vm_id, size_bytes=1, index=1)
    with pytest.raises(UsageError):
        repo.add_disk(session, vm_id=vm_id, size_bytes=0)


def test_lock_state_always_carries_its_reason(session: Session) -> None:
    _, _, vm_id = _cluster_with_vm(session)
    vm = repo.set_lock_state(session, vm_id=vm_id, reason=LockReason.KMS_UNREACHABLE)
    assert (vm.locked, vm.lock_reason) == (True, LockReason.KMS_UNREACHABLE)
    assert [v.id for v in repo.list_vms(session, locked=True)] == [vm_id]
    stored = session.execute(text("SELECT lock_reason FROM virtual_machines")).scalar()
    assert stored == "kms_unreachable"
    vm = repo.set_lock_state(session, vm_id=vm_id, reason=None)
    assert (vm.locked, vm.lock_reason) == (False, None)
    with pytest.raises(IntegrityError):  # the CHECK constraint, below the repository
        session.execute(text("UPDATE virtual_machines SET locked = :locked"), {"locked": True})


def test_unregister_and_register_elsewhere(session: Session) -> None:
    cluster_id, _, vm_id = _cluster_with_vm(session)
    other = repo.create_host(session, name="esx-9", hardware_uuid=HW2)
    vm = repo.set_registration(session, vm_id=vm_id, host_id=None)
    assert (vm.registered, vm.host_id, vm.cluster_id) == (False, None, None)
    vm = repo.set_registration(session, vm_id=vm_id, host_id=other.id)
    assert (vm.registered, vm.host_id, vm.cluster_id) == (True, other.id, None)
    assert repo.list_vms(session, cluster_id=cluster_id) == []
    assert [v.id for v in repo.list_vms(session, host_id=other.id)] == [vm_id]


def test_naive_timestamps_are_refused(session: Session) -> None:
    host = repo.create_host(session, name="h", hardware_uuid=HW1)
    with pytest.raises(Exception, match="timezone-aware"):
        repo.enroll_host(session, host_id=host.id, certificate_fingerprint="0" * 64,
                         at=datetime(2026, 1, 1))  # naive: the point of the test
