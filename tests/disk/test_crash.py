"""SIGKILL at random instants of each conversion, on a 256 MiB disk, then resume.

Each kill point runs the real ``vmcrypt disk`` command in its own process, kills it with
SIGKILL after a random delay, and then checks that the logical content (the plaintext a
reader sees, whatever state the disk is in) has the same SHA-256 as before, once
``vmcrypt disk resume`` has completed the job. Every fourth point also kills the resume
itself. A test only counts kills that landed while a conversion was under way (its
journal exists afterwards) and insists on at least 20 of them per conversion.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vmcrypt.crypto import (
    IntegrityError,
    generate_kek,
    generate_xts_key,
    open_keysafe,
    seal_keysafe,
)
from vmcrypt.disk.container import PIECE, is_encrypted, open_encrypted, read_keysafe
from vmcrypt.disk.convert import decrypt_disk, encrypt_disk, pending
from vmcrypt.disk.files import header_path, journal_path

pytestmark = pytest.mark.slow

SIZE = 256 * 1024 * 1024
KILL_POINTS = 20
MAX_ATTEMPTS = 60


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmcrypt.cli.main", "disk", *args]


def _logical_sha256(path: Path, kek: bytes) -> str:
    digest = hashlib.sha256()
    if is_encrypted(path):
        keysafe = read_keysafe(path)
        assert keysafe is not None
        with open_encrypted(path, dek=open_keysafe(keysafe, kek), writable=False) as disk:
            for pos in range(0, disk.size, PIECE):
                digest.update(disk.read(pos, min(PIECE, disk.size - pos)))
    else:
        with path.open("rb") as f:
            while block := f.read(PIECE):
                digest.update(block)
    return digest.hexdigest()


def _make_raw(path: Path) -> None:
    rng = np.random.default_rng(7)
    with path.open("wb") as f:
        for i in range(SIZE // PIECE):
            block = rng.integers(0, 256, PIECE, dtype=np.uint8)
            if i % 4 == 1:
                block[: PIECE // 2] = 0  # zero runs: holes and zero sectors in the mix
            f.write(block.tobytes())


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _run_and_kill(cmd: list[str], delay: float, journal: Path) -> bool:
    """Start ``cmd`` and SIGKILL it ``delay`` s after it first writes the journal (a new
    journal file, or a resume's first update of an old one); True if it was still
    running when killed."""
    before = _inode(journal)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while _inode(journal) in (before, None) and proc.poll() is None:
        time.sleep(0.002)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
    return False


def _conversion_span(cmd: list[str], journal: Path) -> float:
    """Seconds from the journal's creation to its removal in one unkilled run."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not journal.exists() and proc.poll() is None:
        time.sleep(0.002)
    start = time.monotonic()
    while journal.exists():
        time.sleep(0.002)
    span = time.monotonic() - start
    assert proc.wait() == 0
    return span


def _resume(path: Path, kek_file: Path, rng: random.Random, kill_resume: bool, span: float) -> None:
    cmd = _cli("resume", str(path), "-k", str(kek_file), "-q")
    if kill_resume:
        _run_and_kill(cmd, rng.uniform(0.0, span), journal_path(path))
    subprocess.run(cmd, check=True, capture_output=True)
    assert pending(path) is None


@pytest.mark.parametrize("operation", ["encrypt", "decrypt", "deep-rekey"])
def test_sigkill_at_random_points(tmp_path: Path, operation: str) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed {seed}")
    path = tmp_path / "disk.img"
    kek = generate_kek()
    kek_file = tmp_path / "kek"
    kek_file.write_bytes(kek)
    _make_raw(path)
    expected = _logical_sha256(path, kek)

    def to_start_state() -> None:
        """Encrypt or decrypt (not killed) so that ``operation`` can run next."""
        wants_encrypted = operation != "encrypt"
        if is_encrypted(path) == wants_encrypted:
            return
        if wants_encrypted:
            dek = generate_xts_key()
            keysafe = seal_keysafe(kek=kek, dek=dek, provider_id="t", key_id="k")
            encrypt_disk(path, dek=dek, keysafe=keysafe)
        else:
            keysafe = read_keysafe(path)
            assert keysafe is not None
            decrypt_disk(path, dek=open_keysafe(keysafe, kek))

    cmd_args = {
        "encrypt": ["encrypt", str(path), "-k", str(kek_file), "-q"],
        "decrypt": ["decrypt", str(path), "-k", str(kek_file), "-q"],
        "deep-rekey": ["rekey", str(path), "-k", str(kek_file), "--deep", "-q"],
    }[operation]

    to_start_state()
    jp = journal_path(path)
    span = _conversion_span(_cli(*cmd_args), jp)  # calibration run, not killed
    assert _logical_sha256(path, kek) == expected

    # Each kill lands at a uniformly random instant of the conversion proper: the clock
    # starts when the journal appears (process start-up is not a conversion point).
    # A run that finishes before its kill shrinks the window to what the machine needs.
    hits = attempts = 0
    while hits < KILL_POINTS and attempts < MAX_ATTEMPTS:
        attempts += 1
        to_start_state()
        delay = rng.uniform(0.0, span)
        killed = _run_and_kill(_cli(*cmd_args), delay, jp)
        hit = killed and jp.exists()
        hits += hit
        if not killed:
            span = max(0.01, min(span, delay))
        if jp.exists():
            _resume(path, kek_file, rng, kill_resume=hits % 4 == 0, span=span)
            # resume clears what a killed process left (a half-written journal update)
            assert not list(tmp_path.glob(".*tmp*")), "temporary files were left behind"
        assert _logical_sha256(path, kek) == expected, f"content changed (seed {seed})"
        if hit or not killed:  # the conversion ran to the end (through resume)
            assert header_path(path).exists() == (operation != "decrypt")
    assert hits >= KILL_POINTS, f"only {hits} kills landed mid-conversion in {attempts} tries"


def test_sigkill_during_shallow_rekey(tmp_path: Path) -> None:
    """A shallow re-key replaces the header atomically: killed at any of 20 random
    instants, the disk opens with exactly one of the two KEKs and its content is intact."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed {seed}")
    path = tmp_path / "disk.img"
    keks = [generate_kek(), generate_kek()]
    files = [tmp_path / "kek-a", tmp_path / "kek-b"]
    for kek, file in zip(keks, files, strict=True):
        file.write_bytes(kek)
    _make_raw(path)
    expected = _logical_sha256(path, keks[0])
    dek = generate_xts_key()
    encrypt_disk(path, dek=dek, keysafe=seal_keysafe(kek=keks[0], dek=dek, provider_id="t",
                                                     key_id="k"))
    current = 0

    def opener() -> int:
        keysafe = read_keysafe(path)
        assert keysafe is not None
        fits = []
        for i, kek in enumerate(keks):
            try:
                assert open_keysafe(keysafe, kek) == dek
                fits.append(i)
            except IntegrityError:
                pass
        assert len(fits) == 1, f"the keySafe opens with {len(fits)} KEKs (seed {seed})"
        return fits[0]

    cmd = _cli("rekey", str(path), "-k", str(files[0]), "--shallow", "--new-kek-file",
               str(files[1]), "-q")
    start = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)  # calibration, not killed
    full = time.monotonic() - start
    current = opener()
    assert current == 1
    changed = 0
    for _ in range(KILL_POINTS):
        other = 1 - current
        cmd = _cli("rekey", str(path), "-k", str(files[current]), "--shallow",
                   "--new-kek-file", str(files[other]), "-q")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Half the points anywhere in the run, half in its last fifth, where the new
        # header is written, fsync'd and renamed over the old one.
        late = rng.random() < 0.5
        try:
            proc.wait(timeout=rng.uniform(0.8 * full, 1.05 * full) if late else
                      rng.uniform(0.0, full))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        now = opener()
        changed += now != current
        current = now
        assert _logical_sha256(path, keks[current]) == expected, f"content changed (seed {seed})"
    # The next operation that holds the disk's lock clears a killed writer's temp file.
    subprocess.run(_cli("rekey", str(path), "-k", str(files[current]), "--shallow",
                        "--new-kek-file", str(files[1 - current]), "-q"),
                   check=True, capture_output=True)
    assert not list(tmp_path.glob(".*tmp*")), "temporary files were left behind"
    print(f"{changed} of {KILL_POINTS} killed re-keys had completed")
