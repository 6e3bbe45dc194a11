"""Real processes: a KMS, the control plane and two enrolled hosts of one cluster.

Everything runs as ``vmcrypt … serve`` child processes over mutual TLS, started and
enrolled with ``vmcrypt up``'s own helpers (:class:`vmcrypt.cli.up.Children`, the same
host command line, the real one-time-token enrolment). Then, over the REST API only:

1. an encrypted VM (standard provider on the KMS) gets data; both hosts hold its KEK;
2. ``kill -9`` of its host and a restart: nobody calls reconnect — the control plane's
   host monitor notices the new boot ID and pushes the KEK again; the data reads back;
3. the KMS stops, the host is killed and restarted again: the VM is locked
   ("kms_unreachable") with its events; the KMS returns, ``unlock`` → data identical;
4. no key at rest: every file under the data folders (databases with WAL/SHM,
   datastore, logs, PKI) is searched for every KEK (fetched from the KMS) and every
   DEK (unwrapped from the keySafes on the datastore), raw, hex and base64.

Ports are free ones and every folder is the test's own, so runs can go in parallel;
every child leads its own process group and the whole group is killed at the end.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from vmcrypt.cli.up import Api, Children, _free_port, _host_args, _register_kms
from vmcrypt.crypto.keysafe import KeySafe, open_keysafe
from vmcrypt.disk.container import read_keysafe
from vmcrypt.host.datastore import CONFIG_NAME, VmRecord
from vmcrypt.pki import cert_files, client_context
from vmcrypt.providers import KekRef, KmsServerConfig, StandardKeyProvider

pytestmark = pytest.mark.slow

CLUSTER_HOSTS = ("esx-1", "esx-2")
DISK = 1 << 20
WAIT = 60.0
T = TypeVar("T")


def _wait(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


class System:
    """The child processes, their folders and ports, and API clients to reach them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.children = Children(root / "logs", own_groups=True)
        self.kms_dir = root / "kms"
        self.kms_port = _free_port()
        self.datastore = root / "datastores" / "cluster-1"
        self.hosts = {name: {"hardware_uuid": str(uuid.uuid4()), "port": _free_port()}
                      for name in CLUSTER_HOSTS}
        self.control: dict[str, Any] = {}
        self.api: Api | None = None

    # -- processes ------------------------------------------------------------------------

    def start_kms(self) -> None:
        self.children.start("kms", ["kms", "serve", "--data-dir", str(self.kms_dir), "--port",
                                    str(self.kms_port), "--json", "--log-level", "warning"])
        self.children.listening("kms")

    def start_control(self) -> Api:
        self.children.start("control", [
            "control", "serve", "--data-dir", str(self.root / "control"), "--port", "0",
            "--json", "--log-level", "info", "--host-check-interval", "0.3"])
        self.control = self.children.listening("control")
        token = Path(self.control["admin_token_file"]).read_text().strip()
        self.api = Api(str(self.control["url"]), Path(self.control["ca"]), token)
        self.children.clients.append(self.api.http)
        return self.api

    def start_host(self, name: str, token: str | None = None) -> None:
        args = _host_args(self.root, name, self.hosts[name], self.datastore,
                          str(self.control["url"]), str(self.control["ca_fingerprint"]))
        self.children.start(name, args, {"VMCRYPT_ENROL_TOKEN": token} if token else None)
        self.children.listening(name)

    # -- reaching hosts directly (as the control plane does) ------------------------------

    def host_kek_ids(self, name: str) -> list[str]:
        """The key IDs in a host's memory (``GET /keys``, IDs only), over mutual TLS."""
        pki = self.root / "control" / "pki"
        context = client_context(ca_file=pki / "ca.pem", cert_file=pki / "control.pem",
                                 key_file=pki / "control.key")
        url = f"https://127.0.0.1:{self.hosts[name]['port']}/api/v1/keys"
        try:
            keys = httpx.get(url, verify=context, timeout=5).json()
        except httpx.HTTPError:
            return []
        return sorted(k["key_id"] for k in keys["keks"])


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    running = System(tmp_path)
    try:
        yield running
    finally:
        running.children.stop()


def _setup(system: System) -> dict[str, int]:
    """The real flow of ``vmcrypt up``: inventory, enrolment tokens, hosts, providers."""
    system.start_kms()
    api = system.start_control()
    cluster = api.call("POST", "/clusters", {"name": "cluster-1"})
    ids = {"cluster": int(cluster["id"])}
    for name, spec in system.hosts.items():
        host = api.call("POST", "/hosts", {
            "name": name, "hardware_uuid": spec["hardware_uuid"], "cluster_id": cluster["id"],
            "api_url": f"https://127.0.0.1:{spec['port']}"})
        ids[name] = int(host["id"])
        token = api.call("POST", "/enrolment-tokens", {"host_id": host["id"]})["token"]
        system.start_host(name, token)
    ids["datastore"] = int(api.call("POST", "/datastores", {
        "name": "ds-cluster-1", "path": str(system.datastore),
        "cluster_id": cluster["id"]})["id"])
    _register_kms(api, system.kms_dir, system.kms_port)
    ids["policy"] = int(api.call("POST", "/storage-policies",
                                 {"name": "enc", "encryption": True})["id"])
    return ids


def _hosts_connected(api: Api) -> bool:
    hosts = api.call("GET", "/hosts")
    return all(h["connection_state"] == "connected" and h["enrolled_at"] for h in hosts)


def _events(api: Api, type: str) -> list[dict[str, Any]]:
    return list(api.call("GET", f"/events?type={type}&limit=1000"))


def _read(api: Api, vm_id: int, length: int) -> bytes:
    response = api.http.get(f"/vms/{vm_id}/disks/0/data", params={"offset": 4096,
                                                                  "length": length})
    assert response.status_code == 200, response.text
    return response.content


def _kek(system: System, key_id: str) -> bytes:
    """A KEK fetched from the KMS by ID with the KMS's own admin client certificate."""
    pki = system.kms_dir / "pki"
    identity = cert_files(pki, "admin")
    reader = StandardKeyProvider("reader", [KmsServerConfig(
        "127.0.0.1", system.kms_port, ca_file=pki / "ca.pem", cert_file=identity.cert,
        key_file=identity.key)], product_version="test")
    try:
        return reader.get_kek(KekRef(key_id=key_id))
    finally:
        reader.close()


def _keysafes(datastore: Path) -> list[KeySafe]:
    """Every keySafe on the datastore: VM homes (vm.json) and disks (LUKS2 headers)."""
    found = []
    for config in datastore.rglob(CONFIG_NAME):
        record = VmRecord.from_json(config.read_bytes(), config)
        if record.home_keysafe is not None:
            found.append(record.home_keysafe)
        for disk in config.parent.glob("disk-*.img"):
            keysafe = read_keysafe(disk)
            if keysafe is not None:
                found.append(keysafe)
    return found


def _hits(root: Path, secrets: list[bytes]) -> list[str]:
    """Files under ``root`` holding any secret raw, in hex or in base64."""
    needles = [form for s in secrets
               for form in (s, s.hex().encode(), s.hex().upper().encode(), base64.b64encode(s),
                            base64.urlsafe_b64encode(s))]
    return [str(path) for path in root.rglob("*") if path.is_file()
            and any(n in path.read_bytes() for n in needles)]


def test_restarts_kms_outage_and_no_plaintext_keys_at_rest(system: System) -> None:
    ids = _setup(system)
    api = system.api
    assert api is not None
    _wait("both hosts enrolled and connected", lambda: _hosts_connected(api))

    # 1. An encrypted VM on esx-1 with data; both cluster hosts hold its KEK, by ID.
    vm = api.call("POST", "/vms", {"name": "vm-01", "datastore_id": ids["datastore"],
                                   "host_id": ids["esx-1"], "disks": [DISK],
                                   "storage_policy_id": ids["policy"]})
    key_id = vm["key_ids"]["home"]
    assert vm["encrypted"] and vm["key_ids"]["disk-0"] == key_id
    payload = b"vmcrypt process test " * 500
    put = api.http.put(f"/vms/{vm['id']}/disks/0/data", params={"offset": 4096},
                       content=payload)
    assert put.json() == {"written": len(payload)}
    assert system.host_kek_ids("esx-1") == system.host_kek_ids("esx-2") == [key_id]

    # 2. kill -9 esx-1 and start it again: the monitor alone pushes the KEK back.
    system.children.kill("esx-1")
    system.start_host("esx-1")
    _wait("the monitor to push the KEK to the restarted esx-1",
          lambda: system.host_kek_ids("esx-1") == [key_id])
    assert _read(api, vm["id"], len(payload)) == payload
    assert any(e["object_id"] == str(ids["esx-1"]) for e in _events(api, "host.connected"))

    # 3. The KMS stops; esx-1 crashes and restarts: the VM is locked with the reason.
    system.children.kill("kms")
    system.children.kill("esx-1")
    system.start_host("esx-1")

    def locked() -> dict[str, Any] | None:
        state = api.call("GET", f"/vms/{vm['id']}")
        return state if state["locked"] else None

    state = _wait("the VM to be locked", locked)
    assert state["lock_reason"] == "kms_unreachable"
    assert system.host_kek_ids("esx-1") == []
    assert [e for e in _events(api, "vm.locked") if e["object_id"] == str(vm["id"])]
    assert _events(api, "kms.connection.failed")

    # The KMS is back (same port, data and master key): unlock → data identical.
    system.start_kms()
    unlocked = api.call("POST", f"/vms/{vm['id']}/unlock")
    assert unlocked["locked"] is False and unlocked["lock_reason"] is None
    assert system.host_kek_ids("esx-1") == [key_id]
    assert _read(api, vm["id"], len(payload)) == payload

    # 4. No key at rest, while running (WAL/SHM present) and after a clean stop.
    keks = {key_id: _kek(system, key_id)}
    keysafes = _keysafes(system.datastore)
    assert len(keysafes) == 2  # VM home and disk-0
    assert {ks.key_id for ks in keysafes} == set(keks)
    deks = [open_keysafe(ks, keks[str(ks.key_id)]) for ks in keysafes]
    secrets = [*keks.values(), *deks]
    assert all(len(s) >= 32 for s in secrets)
    assert list(system.root.rglob("*-wal")), "expected SQLite WAL files to scan"
    assert _hits(system.root / "control", [key_id.encode()])  # the scan sees DB contents
    assert _hits(system.root, secrets) == []
    assert _hits(system.datastore, [payload[:64]]) == []  # the data is ciphertext too
    system.children.stop()
    assert _hits(system.root, secrets) == []
    logs = sorted(p.name for p in (system.root / "logs").iterdir() if p.stat().st_size)
    assert "control.log" in logs  # the logs were there to be scanned
