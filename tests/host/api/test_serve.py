"""``vmcrypt host serve`` as a real process: mutual TLS, a job, SIGTERM, no key at rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.host.api.conftest import KMS, SIZE, b64
from tests.host.conftest import scan
from vmcrypt.crypto import generate_kek
from vmcrypt.pki.layout import init_pki
from vmcrypt.pki.tls import client_context


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    pki = tmp_path / "pki"
    init_pki(pki, clients=("control",), key_type="ec")
    log = (tmp_path / "host.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmcrypt.cli.main", "host", "serve",
         "--datastore", str(tmp_path / "ds"), "--name", "esx-1",
         "--hardware-uuid", "4c4c4544-0000-1000-8000-000000000001",
         "--cert", str(pki / "server.pem"), "--key", str(pki / "server.key"),
         "--ca", str(pki / "ca.pem"), "--port", "0", "--json", "--log-level", "debug"],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, (tmp_path / "host.log").read_text()
        event = json.loads(line)
        assert event["event"] == "listening"
        assert event["name"] == "esx-1"
        yield proc, int(event["port"]), tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_host_process_over_mutual_tls(
    served: tuple[subprocess.Popen[str], int, Path],
) -> None:
    proc, port, root = served
    pki = root / "pki"
    base = f"https://127.0.0.1:{port}/api/v1"
    control = client_context(ca_file=pki / "ca.pem", cert_file=pki / "control.pem",
                             key_file=pki / "control.key")
    kek = generate_kek()
    data = os.urandom(SIZE)
    with httpx.Client(base_url=base, verify=control, timeout=10) as c:
        health = c.get("/health").json()
        assert health["hardware_uuid"] == "4c4c4544-0000-1000-8000-000000000001"
        assert c.put(f"/keys/{KMS}/key-1", json={"kek": b64(kek)}).status_code == 204
        r = c.post("/vms", json={"name": "vm-a", "disks": [{"size": SIZE, "encrypted": False}],
                                 "encryption": {"provider_id": KMS, "key_id": "key-1"}})
        assert r.status_code == 201, r.text
        url = f"/vms/{r.json()['id']}"
        assert c.put(f"{url}/disks/0/data", content=data).json() == {"written": SIZE}
        r = c.post(f"{url}/encrypt", json={"disk": 0})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 20
        while (job := c.get(r.json()["url"].removeprefix("/api/v1")).json())["state"] in (
            "queued", "running"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert job["state"] == "succeeded", job
        assert c.get(url).json()["disks"][0]["encrypted"] is True
        assert c.get(f"{url}/disks/0/data").content == data

    # No client certificate: the TLS layer refuses before any route runs.
    anonymous = client_context(ca_file=pki / "ca.pem")
    with httpx.Client(base_url=base, verify=anonymous, timeout=10) as c, pytest.raises(
        httpx.TransportError
    ):
        c.get("/health")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    log = (root / "host.log").read_text()
    assert "shutting down" in log
    assert scan(root / "ds", [kek]) == []
    assert scan(root, [kek]) == []
