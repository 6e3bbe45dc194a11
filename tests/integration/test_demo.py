"""``make demo`` runs ``scripts/demo-disk``: it must keep working end to end.

The demo starts the key server, takes KEKs from it, and walks the disk data path; it is
the documented tour of the low-level tools, so a broken step is a broken product.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, VMCRYPT_DEMO_DIR=str(tmp_path / "demo"), NO_COLOR="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo-disk"), sys.executable],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "read back: identical" in output
    assert "verify" in output and ": OK" in output
    assert "destroyed" in output
    assert "Traceback" not in output
    # The key server the demo started is gone with it.
    assert "listening" in (tmp_path / "demo" / "kms.out").read_text()
