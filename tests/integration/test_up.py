"""``vmcrypt up`` as an operator runs it: the whole system, stopped, and started again.

One subprocess (``vmcrypt up``) starts the KMS, the control plane and three hosts as
its children; the test reads its JSON ready line, checks the registered inventory
through the API with the admin token, stops it with SIGTERM (no child left behind)
and runs it again on the same folder to find the same state.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

READY_TIMEOUT = 120.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; /proc says whether it is one.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def _run_up(data: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "vmcrypt.cli.main", "up", "--data-dir", str(data),
         "--port", "0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if selector.select(timeout=0.2):
            line = process.stdout.readline()
            if not line:
                break
            event: dict[str, Any] = json.loads(line)
            if event.get("event") == "ready":
                return process, event
    process.kill()
    _, err = process.communicate()
    raise AssertionError(f"vmcrypt up never got ready; stderr:\n{err}")


def _state(event: dict[str, Any]) -> dict[str, list[Any]]:
    token = Path(event["admin_token_file"]).read_text().strip()
    with httpx.Client(base_url=event["api"], headers={"Authorization": f"Bearer {token}"},
                      verify=ssl.create_default_context(cafile=event["ca"])) as client:
        state = {}
        for resource in ("clusters", "hosts", "datastores", "key-providers",
                         "storage-policies", "vms"):
            response = client.get(f"/{resource}")
            assert response.status_code == 200, response.text
            state[resource] = response.json()
        for provider in state["key-providers"]:
            provider.pop("health", None)  # the monitor's latest probe: changes by the second
        assert client.get(event["docs"].removeprefix(event["api"])).status_code == 200
    return state


def _log_in(event: dict[str, Any], password: str) -> None:
    """The printed credentials open the web UI; its pages and /metrics answer."""
    base = event["ui"].removesuffix("/ui/")
    with httpx.Client(base_url=base,
                      verify=ssl.create_default_context(cafile=event["ca"])) as client:
        assert client.get("/ui/").headers.get("location") == "/ui/login"
        login = client.post("/api/v1/sessions",
                            json={"name": event["admin_user"], "password": password})
        assert login.status_code == 201, login.text
        for page in ("/ui/", "/ui/key-providers", "/ui/events"):
            response = client.get(page)
            assert response.status_code == 200, page
        assert "demo-vm" in client.get("/ui/").text
        metrics = client.get("/metrics").text
        assert "vmcrypt_vms_locked 0.0" in metrics


def _stop(process: subprocess.Popen[str], event: dict[str, Any]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    process.communicate()
    pids = event["children"].values()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)], "vmcrypt up left children behind"


@pytest.mark.slow
def test_up_starts_registers_stops_and_restarts_with_its_state(tmp_path: Path) -> None:
    data = tmp_path / "up"
    process, event = _run_up(data)
    try:
        assert set(event["children"]) == {"kms", "control", "esx-1", "esx-2", "esx-3"}
        state = _state(event)
        _log_in(event, event["admin_password"])
    finally:
        _stop(process, event)
    hosts = {h["name"]: h for h in state["hosts"]}
    assert len(hosts) == 3
    assert all(h["enrolled_at"] is not None for h in hosts.values())
    assert {h["connection_state"] for h in hosts.values()} == {"connected"}
    assert hosts["esx-1"]["cluster_id"] == hosts["esx-2"]["cluster_id"] is not None
    assert hosts["esx-3"]["cluster_id"] is None
    providers = {p["name"]: p for p in state["key-providers"]}
    assert len(providers) == 2
    assert {p["kind"] for p in providers.values()} == {"standard", "native"}
    assert providers["embedded-kms"]["is_default"]
    assert providers["native-1"]["backup_acknowledged"]
    assert [p["encryption"] for p in state["storage-policies"]] == [True]
    assert len(state["datastores"]) == 2
    # The demo: one encrypted VM (home and its disk, standard provider) with a vTPM.
    [demo] = state["vms"]
    assert demo["name"] == "demo-vm" and demo["vtpm"] and not demo["locked"]
    assert demo["encrypted"] and [d["encrypted"] for d in demo["disks"]] == [True]
    assert set(demo["key_ids"]) == {"home", "disk-0"} and all(demo["key_ids"].values())
    # The Administrator's web password: printed on the first start only, kept 0600.
    password = event["admin_password"]
    assert event["admin_user"] == "administrator" and len(password) >= 16
    password_file = Path(event["admin_password_file"])
    assert password_file.read_text().strip() == password
    assert password_file.stat().st_mode & 0o077 == 0
    for name in ("esx-1", "esx-2", "esx-3"):
        key = data / "hosts" / name / "pki" / "host.key"
        assert key.stat().st_mode & 0o077 == 0

    process, again = _run_up(data)
    try:
        assert again["api"] == event["api"]  # the port is remembered
        assert again["admin_password"] is None  # printed once; the same one still works
        state_again = _state(again)
        _log_in(again, password)
    finally:
        _stop(process, again)
    assert state_again == state
