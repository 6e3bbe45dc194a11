"""``vmcrypt trust`` commands that need no server, and one-line errors through main()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from vmcrypt.cli.trust import app
from vmcrypt.exceptions import EXIT_CODES
from vmcrypt.trust.measure import load_or_create_identity, measure_config, public_key_pem

runner = CliRunner()


def test_identity_creates_once_and_prints_the_public_key(tmp_path: Path) -> None:
    key_file = tmp_path / "host.key"
    first = runner.invoke(app, ["identity", str(key_file)])
    assert first.exit_code == 0, first.output
    assert first.output.startswith("-----BEGIN PUBLIC KEY-----")
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["identity", str(key_file), "--json"])
    assert json.loads(again.output)["public_key_pem"] == first.output
    assert public_key_pem(load_or_create_identity(key_file)) == first.output
    assert "PRIVATE" not in first.output


def test_measure_prints_both_measurements(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x")
    config = tmp_path / "host.json"
    config.write_text("{}")
    result = runner.invoke(app, ["measure", "--config", str(config), "--package",
                                 str(tmp_path / "pkg"), "--json"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    assert measured["config"] == measure_config(b"{}") and len(measured["vmcrypt"]) == 64


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcrypt.cli.main", "trust", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_errors_are_one_line_with_their_exit_code(tmp_path: Path) -> None:
    partial = _run("serve", "--data-dir", str(tmp_path / "t"), "--cert", str(tmp_path / "c"))
    assert partial.returncode == EXIT_CODES["UsageError"], partial.stderr
    assert partial.stderr.strip().count("\n") == 0 and "--cert, --key and --ca" in partial.stderr
    both = _run("baseline", "add", "b", "--from-install", "--vmcrypt", "0" * 64,
                "--pki", str(tmp_path))
    assert both.returncode == EXIT_CODES["UsageError"] and "Traceback" not in both.stderr
    unreachable = _run("baseline", "ls", "--url", "https://127.0.0.1:1", "--pki",
                       str(tmp_path / "missing"))
    assert unreachable.returncode != 0 and "Traceback" not in unreachable.stderr
    assert unreachable.stderr.strip().count("\n") == 0, unreachable.stderr
