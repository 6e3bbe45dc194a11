"""Real processes: native-provider VMs keep working while the control plane is down.

The issue's native-provider rule: once a native provider's primary key is pushed to the
hosts of a cluster, "creating, encrypting and opening such VMs keeps working while the
control plane is down". With the same processes as ``test_control_host_process`` (a KMS,
the control plane, two enrolled hosts of one cluster on a shared datastore, started by
``vmcrypt up``'s helpers):

1. a native provider is created (the "not backed up" alarm), the risk is acknowledged
   (its event) and the primary key reaches both hosts — seen on the health board that
   ``GET /hosts/{id}`` reads (``native_providers``), which the host monitor keeps;
2. the control plane is killed; a host agent is called directly over mutual TLS with
   the control plane's own client certificate (``HostClient.over_tls``, files under its
   data folder): a native VM is created on esx-1, written and read, then opened and read
   on esx-2 from the shared datastore — no control plane anywhere;
3. the control plane starts again on its data folder: the monitors fill the board (host
   health, provider health with the KMS certificate's expiry, shown by ``vmcrypt kp
   health``), and a new native VM is created and read through the API.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tests.integration.test_control_host_process import (
    DISK,
    System,
    _events,
    _hosts_connected,
    _setup,
    _wait,
    system,  # noqa: F401 — the fixture
)
from vmcrypt.cli.up import Api
from vmcrypt.control.hostclient import HostClient
from vmcrypt.pki import client_context
from vmcrypt.pki.tls import certificate_expiry

pytestmark = pytest.mark.slow

NATIVE = "nkp-down"


def _host_client(running: System, name: str) -> HostClient:
    """A host agent reached as the control plane reaches it, minus the control plane."""
    pki = running.root / "control" / "pki"
    context = client_context(ca_file=pki / "ca.pem", cert_file=pki / "control.pem",
                             key_file=pki / "control.key")
    return HostClient.over_tls(name, f"https://127.0.0.1:{running.hosts[name]['port']}",
                               context)


def _host_health(api: Api, host_id: int) -> dict[str, Any] | None:
    health: dict[str, Any] | None = api.call("GET", f"/hosts/{host_id}")["health"]
    return health


def _kp_health_cli(running: System, name: str) -> dict[str, Any]:
    """``vmcrypt kp health NAME --json`` against the running control plane."""
    run = subprocess.run(
        [sys.executable, "-m", "vmcrypt.cli.main", "kp", "health", name, "--json",
         "--url", str(running.control["url"]), "--ca", str(running.control["ca"]),
         "--token-file", str(running.control["admin_token_file"])],
        capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_native_vms_work_with_the_control_plane_down(system: System) -> None:  # noqa: F811
    ids = _setup(system)
    assert system.api is not None
    api: Api = system.api
    _wait("both hosts enrolled and connected", lambda: _hosts_connected(api))

    # 1. A native provider: not backed up (alarm), risk accepted (event), pushed.
    native = api.call("POST", "/key-providers/native", {"name": NATIVE})
    [alarm] = [e for e in _events(api, "native.not.backed.up")
               if e["object_id"] == str(native["id"])]
    assert alarm["severity"] == "warning"
    api.call("POST", f"/key-providers/{native['id']}/acknowledge-no-backup")
    accepted = [e for e in _events(api, "native.not.backed.up")
                if e["object_id"] == str(native["id"])]
    assert len(accepted) == 2 and "accepted the risk" in accepted[0]["message"]
    for name in ("esx-1", "esx-2"):
        def pushed(host_id: int = ids[name]) -> int | None:
            return (_host_health(api, host_id) or {}).get("native_providers")

        _wait(f"{name} to hold the native primary key (health board)", pushed)
    board = _host_health(api, ids["esx-1"])
    assert board is not None and board["connected"] and board["checked_at"]

    # 2. The control plane dies; the hosts carry on with the pushed primary key.
    system.children.kill("control")
    esx1, esx2 = _host_client(system, "esx-1"), _host_client(system, "esx-2")
    try:
        vm_id = str(uuid.uuid4())
        created = esx1.create_vm(vm_id, "offline-vm", [DISK], provider_id=NATIVE)
        assert created["id"] == vm_id
        payload = b"written while the control plane was down " * 100
        assert esx1.write_disk(vm_id, 0, offset=8192, data=payload) == len(payload)
        assert esx1.read_disk(vm_id, 0, offset=8192, length=len(payload)) == payload
        # The other host of the cluster opens it from the shared datastore.
        seen = esx2.get_vm(vm_id)
        assert seen["id"] == vm_id
        assert esx2.read_disk(vm_id, 0, offset=8192, length=len(payload)) == payload
        assert payload not in b"".join(p.read_bytes() for p in system.datastore.rglob("*")
                                       if p.is_file())
    finally:
        esx1.close()
        esx2.close()

    # 3. The control plane comes back on the same data folder and still works.
    api = system.start_control()
    _wait("both hosts reconnected", lambda: _hosts_connected(api))
    providers = {p["name"]: p for p in api.call("GET", "/key-providers")}
    assert set(providers) >= {NATIVE}
    kmip = next(p for p in providers.values() if p["kind"] == "standard")

    def probed() -> dict[str, Any] | None:
        health = _kp_health_cli(system, kmip["name"])
        return health if health["state"] != "unknown" else None

    health = _wait("the first provider probe", probed)
    assert health["state"] == "healthy" and health["checked_at"]
    [server] = health["servers"]
    assert server["reachable"] and server["latency_ms"] > 0
    kms_cert = system.kms_dir / "pki" / "server.pem"
    assert server["certificate_expires_at"].startswith(
        certificate_expiry(kms_cert).strftime("%Y-%m-%dT%H:%M:%S"))
    assert _kp_health_cli(system, NATIVE)["state"] in ("degraded", "unknown")

    policy = api.call("POST", "/storage-policies", {
        "name": "native", "encryption": True, "key_provider_id": native["id"]})
    vm = api.call("POST", "/vms", {"name": "after-restart", "datastore_id": ids["datastore"],
                                   "host_id": ids["esx-2"], "disks": [DISK],
                                   "storage_policy_id": policy["id"]})
    assert vm["encrypted"]
    data = b"back online " * 100
    put = api.http.put(f"/vms/{vm['id']}/disks/0/data", params={"offset": 0}, content=data)
    assert put.status_code == 200, put.text
    got = api.http.get(f"/vms/{vm['id']}/disks/0/data",
                       params={"offset": 0, "length": len(data)})
    assert got.content == data
