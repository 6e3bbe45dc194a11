"""Interop tests run the real ``cryptsetup`` (Debian cryptsetup-bin, installed by make test)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

#: Fast, deterministic PBKDF for test keyslots (the default argon2id costs ~1 s and 1 GiB).
FAST_PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


@pytest.fixture(scope="session")
def cryptsetup() -> str:
    found = shutil.which("cryptsetup") or (
        "/usr/sbin/cryptsetup" if Path("/usr/sbin/cryptsetup").exists() else None
    )
    if found is None:
        pytest.fail("cryptsetup is not installed: run `make test`, which installs cryptsetup-bin")
    return found


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=120)
