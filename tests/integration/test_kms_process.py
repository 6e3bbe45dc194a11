"""The real ``vmcrypt kms serve`` process: start, serve PyKMIP, stop on SIGTERM, restart.

Each test runs the CLI as a subprocess the way an operator (or ``make up``) does, reads
its one JSON "listening" line, and talks to it over mutual TLS with PyKMIP using the
client identity the first start generated in DATA_DIR/pki.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kmip.core import enums
from kmip.pie.client import ProxyKmipClient

MASTER_ENV = "VMCRYPT_KMS_MASTER_KEY"
START_TIMEOUT = 30.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != MASTER_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _command(data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vmcrypt.cli.main", "kms", "serve", "--data-dir", str(data),
            "--port", "0", "--json", "--log-level", "debug", *extra]


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no output within {timeout} s")
    return proc.stdout.readline()


@contextmanager
def _serve(data: Path, stderr_file: Path) -> Iterator[tuple[subprocess.Popen[bytes],
                                                              dict[str, Any]]]:
    with stderr_file.open("ab") as err:
        proc = subprocess.Popen(_command(data), stdout=subprocess.PIPE, stderr=err,
                                env=_env())
    try:
        line = _read_line(proc, START_TIMEOUT)
        assert line, f"the server exited: {stderr_file.read_text()[-2000:]}"
        listening = json.loads(line)
        assert listening["event"] == "listening"
        yield proc, listening
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _stop(proc: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    return time.monotonic() - started


def _client(data: Path, listening: dict[str, Any]) -> Any:
    pki = data / "pki"
    client = ProxyKmipClient(
        hostname=listening["host"], port=listening["port"], cert=str(pki / "admin.pem"),
        key=str(pki / "admin.key"), ca=listening["ca"], config_file=os.devnull,
        kmip_version=enums.KMIPVersion.KMIP_1_2,
    )
    client.open()
    return client


def test_serve_create_get_stop_restart(tmp_path: Path) -> None:
    data, stderr = tmp_path / "kms", tmp_path / "stderr.log"
    with _serve(data, stderr) as (proc, listening):
        assert listening["host"] == "127.0.0.1" and listening["port"] > 0
        assert Path(listening["ca"]) == data / "pki" / "ca.pem"
        for name in ("ca.pem", "server.pem", "server.key", "admin.pem", "admin.key"):
            assert (data / "pki" / name).is_file()
        assert (data / "master.key").stat().st_mode & 0o777 == 0o600
        assert (data / "kms.db").is_file()
        client = _client(data, listening)
        uid = client.create(enums.CryptographicAlgorithm.AES, 256, name="process-test")
        key = client.get(uid).value
        assert len(key) == 32
        client.close()
        assert _stop(proc) < 5

    with _serve(data, stderr) as (proc, listening):
        client = _client(data, listening)
        assert client.get(uid).value == key
        _, attributes = client.get_attributes(uid, ["Name"])
        assert attributes[0].attribute_value.name_value.value == "process-test"
        client.close()
        _stop(proc)

    log = stderr.read_bytes()
    assert b"Traceback" not in log
    for form in (key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)):
        assert form not in log
    for db in data.glob("kms.db*"):
        assert key not in db.read_bytes()


def test_log_level_debug_reaches_stderr(tmp_path: Path) -> None:
    """The operator's log: the listening line and each request's audit line on stderr."""
    data, stderr = tmp_path / "kms", tmp_path / "stderr.log"
    with _serve(data, stderr) as (proc, listening):
        client = _client(data, listening)
        client.create(enums.CryptographicAlgorithm.AES, 128)
        client.close()
        _stop(proc)
    log = stderr.read_text()
    assert "listening" in log
    assert "Create" in log


@pytest.mark.parametrize("which", ["--cert", "--ca"])
def test_a_bad_certificate_path_is_one_line_and_a_failure(tmp_path: Path, which: str) -> None:
    data = tmp_path / "kms"
    # Real files for the other two options, a missing one for ``which``.
    from vmcrypt.pki.layout import init_pki

    pki = init_pki(tmp_path / "pki", key_type="ec", clients=())
    files = {"--cert": str(pki.server.cert), "--key": str(pki.server.key),
             "--ca": str(pki.ca.cert)}
    files[which] = str(tmp_path / "missing.pem")
    args = [arg for option, path in files.items() for arg in (option, path)]
    result = subprocess.run(_command(data, *args), env=_env(), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "missing.pem" in lines[0]
    assert result.stdout == ""
