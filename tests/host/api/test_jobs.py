"""The job table: one active job per VM, progress, cancel, errors by the table."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from vmcrypt.disk.exceptions import ConversionCancelled
from vmcrypt.host.api import HostState, Job, JobTable
from vmcrypt.host.api.runner import Work
from vmcrypt.host.exceptions import VmBusy
from vmcrypt.host.vm import Progress

VM = "00000000-0000-4000-8000-000000000001"


def _until_done(job: Job) -> Job:
    deadline = time.monotonic() + 10
    while job.state in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return job


def _blocking(started: threading.Event) -> Work:
    def work(progress: Progress, cancel: threading.Event) -> None:
        progress(50, 200)
        started.set()
        if not cancel.wait(10):
            raise AssertionError("never cancelled")
        raise ConversionCancelled("encryption of disk-0.img cancelled at 25%")

    return work


def test_progress_cancel_and_one_job_per_vm() -> None:
    table = JobTable()
    started = threading.Event()
    job = table.start("encrypt-disk", VM, _blocking(started))
    assert started.wait(5)
    assert (job.state, job.percent, job.bytes_done) == ("running", 25.0, 50)
    assert table.busy(VM)
    assert table.running() == 1
    with pytest.raises(VmBusy, match="cancel it"):
        table.start("decrypt-disk", VM, _blocking(threading.Event()))
    job.cancel.set()
    assert _until_done(job).state == "cancelled"
    assert job.error is not None and job.error[0] == "cancelled"
    assert not table.busy(VM)
    assert table.get(job.id) is job


def test_unexpected_failure_hides_the_details() -> None:
    def work(_progress: Progress, _cancel: threading.Event) -> None:
        raise RuntimeError("internal detail")

    job = _until_done(JobTable().start("deep-rekey", VM, work))
    assert job.state == "failed"
    assert job.error is not None
    assert job.error[0] == "internal_error"
    assert "internal detail" not in job.error[1]


def test_stop_all_cancels_running_jobs() -> None:
    table = JobTable()
    started = threading.Event()
    job = table.start("encrypt-disk", VM, _blocking(started))
    assert started.wait(5)
    table.stop_all(timeout=5)
    assert job.state == "cancelled"


def test_finished_jobs_are_pruned() -> None:
    table = JobTable(keep=3)
    for n in range(6):
        _until_done(table.start("x", f"{VM[:-1]}{n}", lambda _p, _c: None))
    assert len(table.all()) <= 3


@pytest.mark.anyio
async def test_cancel_route(client: httpx.AsyncClient) -> None:
    r = await client.post("/jobs/nope/cancel")
    assert r.status_code == 404
    assert (await client.get("/jobs")).json() == []


@pytest.mark.anyio
async def test_cancel_a_running_job_through_the_api(client: httpx.AsyncClient,
                                                    state: HostState) -> None:
    started = threading.Event()
    job = state.jobs.start("encrypt-disk", VM, _blocking(started))
    assert started.wait(5)
    r = await client.get(f"/jobs/{job.id}")
    assert r.json()["state"] == "running"
    assert (r.json()["percent"], r.json()["bytes_done"]) == (25.0, 50)
    r = await client.post(f"/jobs/{job.id}/cancel")
    assert r.status_code == 202
    assert _until_done(job).state == "cancelled"
    body = (await client.get(f"/jobs/{job.id}")).json()
    assert body["error"]["error"] == "cancelled"
    assert body["finished_at"] is not None
