"""Run the real ``vmcrypt`` command in a child process, in a scratch directory.

The child is ``sys.executable -m vmcrypt.cli.main`` with this checkout's ``src`` first on
``PYTHONPATH``, so the tests exercise the same code they import, from a fresh ``make test``
as well as from an editable install. Rich sees no terminal, no colour and a wide screen,
so every message is plain text on one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

import vmcrypt
from vmcrypt.cli.keyfiles import kek_key_id
from vmcrypt.crypto import generate_kek, generate_xts_key, seal_keysafe
from vmcrypt.disk import container

T = TypeVar("T")
SRC = Path(vmcrypt.__file__).resolve().parents[1]
MiB = 1024 * 1024


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(
        COLUMNS="200",
        NO_COLOR="1",
        TERM="dumb",
        PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")])),
    )
    return env


@dataclass
class Run:
    """One finished ``vmcrypt`` invocation."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


class Cli:
    """Runs ``vmcrypt`` in ``cwd`` and remembers every run (for the key-leak scans)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.runs: list[Run] = []

    def run(self, *args: str | Path, stdin: bytes | None = None, prefix: list[str] | None = None
            ) -> Run:
        argv = [str(a) for a in args]
        command = prefix or [sys.executable, "-m", "vmcrypt.cli.main"]
        proc = subprocess.run(
            [*command, *argv], cwd=self.cwd, input=stdin if stdin is not None else b"",
            capture_output=True, env=child_env(), timeout=120, check=False,
        )
        run = Run(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        self.runs.append(run)
        return run

    def ok(self, *args: str | Path, stdin: bytes | None = None) -> Run:
        """Run ``vmcrypt disk ARGS``; it must succeed."""
        run = self.run("disk", *args, stdin=stdin)
        assert run.returncode == 0, f"vmcrypt disk {' '.join(run.args)} failed:\n{run.err}"
        assert "Traceback" not in run.err
        return run

    def fails(self, *args: str | Path, code: int, phrase: str, stdin: bytes | None = None) -> Run:
        """Run ``vmcrypt disk ARGS``; it must fail with ``code`` and one helpful line."""
        run = self.run("disk", *args, stdin=stdin)
        assert_one_line_error(run, code=code, phrase=phrase)
        return run

    def fails_all(self, cases: list[tuple[list[str | Path], int, str]]) -> list[Run]:
        """:meth:`fails` for independent ``(args, code, phrase)`` cases, run concurrently."""
        return parallel(
            *(lambda c=case: self.fails(*c[0], code=c[1], phrase=c[2]) for case in cases)
        )


def parallel(*calls: Callable[[], T]) -> list[T]:
    """Run independent commands at once: start-up time, not work, dominates these tests."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def assert_one_line_error(run: Run, *, code: int, phrase: str) -> None:
    """Exit code, exactly one line on stderr, holding ``phrase``; no traceback, no stdout."""
    where = f"vmcrypt {' '.join(run.args)}"
    assert run.returncode == code, f"{where}: exit {run.returncode}, wanted {code}:\n{run.err}"
    assert "Traceback" not in run.err, f"{where} printed a traceback:\n{run.err}"
    lines = run.err.strip("\n").splitlines()
    assert len(lines) == 1, f"{where}: wanted one line on stderr, got:\n{run.err}"
    assert lines[0].startswith("error: "), lines[0]
    assert phrase.lower() in lines[0].lower(), f"{where}: {phrase!r} not in {lines[0]!r}"
    assert run.stdout == b"", f"{where} printed on stdout on error: {run.stdout!r}"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@dataclass
class DiskFixture:
    """An encrypted 4 MiB disk with known content, made in-process (fast)."""

    path: Path
    kek_file: Path
    kek: bytes
    dek: bytes
    plaintext: bytes


@pytest.fixture
def enc_disk(tmp_path: Path) -> DiskFixture:
    kek, dek = generate_kek(), generate_xts_key()
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(kek)
    kek_file.chmod(0o600)
    keysafe = seal_keysafe(kek=kek, dek=dek, provider_id="kek-file", key_id=kek_key_id(kek))
    path = tmp_path / "disk.img"
    plaintext = bytearray(4 * MiB)
    plaintext[5000:5000 + 300_000] = os.urandom(300_000)
    with container.create_encrypted(path, size=len(plaintext), dek=dek, keysafe=keysafe) as disk:
        disk.write(0, plaintext)
    return DiskFixture(path, kek_file, kek, dek, bytes(plaintext))
