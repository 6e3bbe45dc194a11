"""Sector worker processes: same bytes as in-process, and a lost worker loses nothing."""

from __future__ import annotations

import logging
import os
import signal
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.disk.conftest import interrupt_writes_at
from vmcrypt.crypto import KeySafe, generate_xts_key, seal_keysafe
from vmcrypt.crypto.xts import SectorCipher
from vmcrypt.disk import convert, pipeline, workers
from vmcrypt.disk.container import open_encrypted
from vmcrypt.disk.convert import CHUNK, decrypt_disk, deep_rekey, encrypt_disk

MiB = 1 << 20
SIZE = 5 * CHUNK + 3 * 4096  # a partial last chunk too


@pytest.fixture(autouse=True)
def _workers_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Use the workers for every size here (the default skips small disks)."""
    monkeypatch.setattr(pipeline, "WORKERS_MIN_SIZE", 0)
    monkeypatch.setenv(workers.WORKERS_ENV, "2")
    workers.shutdown()


def _raw(path: Path) -> bytes:
    data = bytearray(os.urandom(SIZE))
    data[CHUNK : CHUNK + 3 * MiB] = bytes(3 * MiB)  # zero sectors: holes after encrypt
    path.write_bytes(data)
    return bytes(data)


def _live_workers() -> list[int]:
    pool = workers._pool
    return [] if pool is None else [w.proc.pid for w in pool.workers if w.proc.poll() is None]


def test_conversions_through_workers_match_the_reference(
    tmp_path: Path, kek: bytes, dek: bytes, keysafe: KeySafe
) -> None:
    path = tmp_path / "d.img"
    data = _raw(path)
    encrypt_disk(path, dek=dek, keysafe=keysafe)
    assert len(_live_workers()) == 2, "the conversion did not start its workers"
    # The stored bytes are exactly per-sector XTS (aes-xts-plain64) of the plaintext.
    expected = SectorCipher(dek, unit_size=4096).encrypt(data, 0)
    assert path.read_bytes() == expected
    new_dek = generate_xts_key()
    deep_rekey(path, old_dek=dek, new_dek=new_dek,
               new_keysafe=seal_keysafe(kek=kek, dek=new_dek, provider_id="t", key_id="k2"))
    with open_encrypted(path, dek=new_dek, writable=False) as disk:
        assert disk.read(0, SIZE) == data
    decrypt_disk(path, dek=new_dek)
    assert path.read_bytes() == data


def test_a_killed_worker_costs_time_not_data(
    tmp_path: Path, dek: bytes, keysafe: KeySafe, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "d.img"
    data = _raw(path)
    killed: list[int] = []

    def kill_workers(done: int, total: int) -> None:
        if not killed:
            for pid in _live_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    with caplog.at_level(logging.WARNING, logger="vmcrypt.disk.workers"):
        encrypt_disk(path, dek=dek, keysafe=keysafe, progress=kill_workers)
    assert killed, "no worker was running to be killed"
    assert "sector workers disabled" in caplog.text
    assert path.read_bytes() == SectorCipher(dek, unit_size=4096).encrypt(data, 0)
    # The next conversion starts a fresh pool.
    decrypt_disk(path, dek=dek)
    assert path.read_bytes() == data
    assert len(_live_workers()) == 2


def test_workers_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(workers.WORKERS_ENV, "0")
    with workers.lease(CHUNK, 6) as lanes:
        assert lanes is None


def test_one_conversion_at_a_time_holds_the_pool() -> None:
    with workers.lease(CHUNK, 6) as first:
        assert first is not None
        seen: list[object] = []

        def other() -> None:
            with workers.lease(CHUNK, 6) as second:
                seen.append(second)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert seen == [None]  # the other conversion runs in-process instead of waiting


def test_workers_exit_with_their_parent_pool() -> None:
    with workers.lease(CHUNK, 6) as lanes:
        assert lanes is not None
    procs = [w.proc for w in workers._pool.workers]  # type: ignore[union-attr]
    workers.shutdown()
    assert all(proc.poll() is not None for proc in procs)


def test_a_malformed_job_is_refused_not_crashed() -> None:
    """The worker answers garbage with an error reply and keeps serving."""
    with workers.lease(CHUNK, 6) as lanes:
        assert lanes is not None
        worker = workers._pool.workers[0]  # type: ignore[union-attr]
        assert worker.poll_ready(timeout=30)
        worker.sock.sendall(b"X" + bytes(40))
        assert worker.sock.recv(64)[:1] == b"E"
        # An out-of-range buffer is refused too.
        head = struct.pack("<cQQQBB", b"J", 1 << 40, 4096, 0, 0, 0)
        worker.sock.sendall(head)
        assert worker.sock.recv(64)[:1] == b"E"
        # And a good job still works.
        buf = lanes.buffers[0]
        buf[:4096] = np.frombuffer(os.urandom(4096), dtype=np.uint8)
        plain = buf[:4096].tobytes()
        key = generate_xts_key()
        job = lanes.submit(buf[:4096], 7, None, key)
        assert job is not None
        assert not job.result().any()
        assert buf[:4096].tobytes() == SectorCipher(key, unit_size=4096).encrypt(plain, 7)


@pytest.mark.parametrize("operation", ["encrypt", "deep-rekey"])
def test_a_chunk_torn_after_worker_compute_is_repaired_by_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kek: bytes, dek: bytes,
    keysafe: KeySafe, operation: str,
) -> None:
    """A write stopped mid-chunk (as a kill between pages would) while workers computed
    the chunks is repaired by resume from the journal's fingerprints."""
    path = tmp_path / "d.img"
    data = _raw(path)
    new_dek = generate_xts_key()
    new_keysafe = seal_keysafe(kek=kek, dek=new_dek, provider_id="t", key_id="k2")
    if operation == "deep-rekey":
        encrypt_disk(path, dek=dek, keysafe=keysafe)
    interrupt_writes_at(monkeypatch, 2 * CHUNK + 1234 * 4096)  # a worker computed it
    with pytest.raises(KeyboardInterrupt):
        if operation == "encrypt":
            encrypt_disk(path, dek=dek, keysafe=keysafe)
        else:
            deep_rekey(path, old_dek=dek, new_dek=new_dek, new_keysafe=new_keysafe)
    monkeypatch.undo()
    assert len(_live_workers()) == 2
    final = dek if operation == "encrypt" else new_dek
    keys = {keysafe.key_id: dek, new_keysafe.key_id: new_dek}
    assert convert.resume(path, resolve_dek=lambda ks: keys[ks.key_id]) == operation
    with open_encrypted(path, dek=final, writable=False) as disk:
        assert disk.read(0, SIZE) == data
