"""Jobs: progress, cancellation requests, final states."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from vmcrypt.control.db import repo
from vmcrypt.control.db.models import JobState
from vmcrypt.control.exceptions import Conflict, NotFound
from vmcrypt.control.services.crypto_ops import JobRef, job_ref
from vmcrypt.exceptions import UsageError

T0 = datetime(2026, 2, 2, tzinfo=UTC)


def test_progress_then_success(session: Session) -> None:
    job = repo.create_job(session, type="vm.encrypt", target_type="vm", target_id=7,
                          user_name="alice", bytes_total=4096)
    assert (job.state, job.progress_percent) == (JobState.QUEUED, 0.0)
    repo.report_progress(session, job_id=job.id, bytes_done=1024,
                         rate_bytes_per_second=512.0, at=T0)
    assert (job.state, job.started_at, job.progress_percent) == (JobState.RUNNING, T0, 25.0)
    repo.finish_job(session, job_id=job.id, state=JobState.SUCCEEDED)
    assert job.progress_percent == 100.0
    with pytest.raises(Conflict):
        repo.report_progress(session, job_id=job.id, bytes_done=4096)
    with pytest.raises(UsageError):
        repo.report_progress(
            session,
            job_id=repo.create_job(session, type="t", target_type="vm", target_id=1,
                                   bytes_total=10).id,
            bytes_done=11,
        )


def test_cancel_is_a_request_the_worker_sees(session: Session) -> None:
    job = repo.create_job(session, type="disk.rekey", target_type="disk", target_id=3)
    repo.request_cancel(session, job_id=job.id)
    assert repo.report_progress(session, job_id=job.id, bytes_done=0).cancel_requested
    repo.finish_job(session, job_id=job.id, state=JobState.CANCELLED)
    with pytest.raises(Conflict):
        repo.request_cancel(session, job_id=job.id)


def test_failures_carry_their_error_and_listing_filters(session: Session) -> None:
    failed = repo.create_job(session, type="vm.encrypt", target_type="vm", target_id=1)
    with pytest.raises(UsageError):
        repo.finish_job(session, job_id=failed.id, state=JobState.FAILED)
    with pytest.raises(UsageError):
        repo.finish_job(session, job_id=failed.id, state=JobState.RUNNING)
    repo.finish_job(session, job_id=failed.id, state=JobState.FAILED, error="KMS unreachable")
    queued = repo.create_job(session, type="vm.clone", target_type="vm", target_id=2)
    assert [j.id for j in repo.list_jobs(session)] == [queued.id, failed.id]
    assert [j.id for j in repo.list_jobs(session, state=JobState.FAILED)] == [failed.id]
    assert [j.id for j in repo.list_jobs(session, target_type="vm", target_id=2)] == [queued.id]
    with pytest.raises(NotFound):
        repo.request_cancel(session, job_id=999)


def test_a_job_following_a_host_job_names_it_in_columns(session: Session) -> None:
    host = repo.create_host(session, name="esx1",
                            hardware_uuid="4c4c4544-0000-1000-8000-000000000001")
    job = repo.create_job(session, type="vm.encrypt", target_type="vm", target_id=1,
                          component="disk-0", host_id=host.id, host_job_id="abc")
    assert (job.type, job.component, job.host_id, job.host_job_id) == (
        "vm.encrypt", "disk-0", host.id, "abc")
    with pytest.raises(UsageError, match="together"):
        repo.create_job(session, type="vm.encrypt", target_type="vm", target_id=1,
                        host_id=host.id)
    with pytest.raises(UsageError, match="operation"):
        repo.create_job(session, type="vm.encrypt:home@1:x", target_type="vm", target_id=1)


def test_listing_filters_by_operation(session: Session) -> None:
    encrypt = repo.create_job(session, type="vm.encrypt", target_type="vm", target_id=1)
    repo.create_job(session, type="vm.decrypt", target_type="vm", target_id=1)
    assert [j.id for j in repo.list_jobs(session, type="vm.encrypt")] == [encrypt.id]


def test_job_ref_reads_the_columns(session: Session) -> None:
    """``JobRef``/``job_ref`` keep their shape; the reference now lives in columns."""
    host = repo.create_host(session, name="esx2",
                            hardware_uuid="4c4c4544-0000-1000-8000-000000000002")
    job = repo.create_job(session, type="vm.rekey-deep", target_type="vm", target_id=1,
                          component="home", host_id=host.id, host_job_id="j-1")
    ref = job_ref(job)
    assert ref == JobRef("vm.rekey-deep", "home", host.id, "j-1")
    assert ref.type() == job.type == "vm.rekey-deep"
    plain = repo.create_job(session, type="disk.rekey", target_type="disk", target_id=3)
    assert job_ref(plain) is None
