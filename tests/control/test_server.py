"""The real ``vmcrypt control serve`` process: first start, restart, errors, SIGTERM.

:class:`ControlProcess` runs the CLI as a subprocess the way an operator does, reads
its JSON "listening" line and talks HTTPS to it, trusting the CA it generated.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT = 60.0


def command(data_dir: Path, *extra: str) -> list[str]:
    """The ``vmcrypt control serve`` command line for ``data_dir`` on a free port."""
    return [sys.executable, "-m", "vmcrypt.cli.main", "control", "serve", "--data-dir",
            str(data_dir), "--port", "0", "--json", *extra]


def read_listening(process: subprocess.Popen[str], timeout: float = START_TIMEOUT
                   ) -> dict[str, Any]:
    """The JSON listening line, or a failure quoting stderr."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.2):
            line = process.stdout.readline()
            if not line:
                break
            event: dict[str, Any] = json.loads(line)
            if event.get("event") == "listening":
                return event
    process.kill()
    _, err = process.communicate()
    raise AssertionError(f"no listening line; stderr:\n{err}")


@dataclass
class ControlProcess:
    """A running control plane and what its listening line said."""

    process: subprocess.Popen[str]
    event: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.event["url"])

    @property
    def ca(self) -> Path:
        return Path(self.event["ca"])

    @property
    def ca_fingerprint(self) -> str:
        return str(self.event["ca_fingerprint"])

    def tls(self) -> ssl.SSLContext:
        """A client context trusting the control plane's CA (hostname checked)."""
        return ssl.create_default_context(cafile=str(self.ca))

    def auth(self) -> dict[str, str]:
        token = Path(self.event["admin_token_file"]).read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    @classmethod
    @contextmanager
    def start(cls, data_dir: Path, *extra: str) -> Iterator[ControlProcess]:
        process = subprocess.Popen(command(data_dir, *extra), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            yield cls(process, read_listening(process))
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()


def test_first_start_creates_the_data_folder_and_the_token_once(tmp_path: Path) -> None:
    data = tmp_path / "control"
    with ControlProcess.start(data) as control:
        assert control.event["admin_token_created"] is True
        for name in ("master.key", "admin.token", "pki/ca.key", "pki/control.key"):
            assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600, name
        assert (data / "control.db").exists()
        response = httpx.get(f"{control.url}/api/v1/hosts", headers=control.auth(),
                             verify=control.tls())
        assert response.status_code == 200 and response.json() == []
        assert httpx.get(f"{control.url}/api/v1/hosts",
                         verify=control.tls()).status_code == 401
        assert httpx.get(f"{control.url}/api/v1/docs", verify=control.tls()).status_code == 200
        token = (data / "admin.token").read_text()
        fingerprint = control.ca_fingerprint
        assert control.stop() == 0
    with ControlProcess.start(data) as control:
        assert control.event["admin_token_created"] is False
        assert (data / "admin.token").read_text() == token
        assert control.ca_fingerprint == fingerprint
        assert httpx.get(f"{control.url}/api/v1/hosts", headers=control.auth(),
                         verify=control.tls()).status_code == 200
        assert control.stop() == 0


def _one_line_error(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "vmcrypt.cli.main", "control", "serve",
                             *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_a_bad_database_url_is_one_line(tmp_path: Path) -> None:
    line = _one_line_error("--data-dir", str(tmp_path), "--db", "mysql://u:secret@h/db")
    assert "not supported" in line and "secret" not in line
    line = _one_line_error("--data-dir", str(tmp_path), "--db",
                           "postgresql://u:secret@127.0.0.1:1/db", "--log-level", "error")
    assert "cannot open the database" in line and "secret" not in line


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = _one_line_error("--data-dir", str(tmp_path), "--port", str(port),
                               "--log-level", "error")
    assert f"127.0.0.1:{port} is already in use" in line
