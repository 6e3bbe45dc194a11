"""Real processes: the trusted key provider flow of the seeds, step by step.

``vmcrypt kms serve``, ``vmcrypt trust serve``, ``vmcrypt control serve`` and one
``vmcrypt host serve --trust-url …`` (enrolled with a one-time token), over mutual TLS,
each a child process in its own process group (``vmcrypt up``'s helpers). The host runs
from a **copy** of the vmcrypt package (``PYTHONPATH``), the tree it measures, so the
test can tamper with it without touching the repository.

1. The Trust Authority publishes ``tp1`` (its primary key created in the KMS); the
   control plane lists and registers it, and makes it the cluster's default.
2. An encrypted VM is created: the control plane asks the host whether ``tp1`` is
   reachable, then sends the creation; the host attests, gets a KEK from the Key
   Provider Service, wraps its DEKs and stores the KEK ciphertext in the keySafes.
3. Nothing key-bearing reaches the control plane: its database, WAL and logs hold
   neither the KEK nor the DEKs; the KMS holds the primary key and not the KEK.
4. ``kill -9`` of the host and a restart: it re-attests, has the service unwrap the KEK
   ciphertext, and the data reads back.
5. A file of the host's vmcrypt tree changes and the host restarts: attestation fails
   with the reason, the host gets no key, the VM is locked ``host_not_attested``;
   restoring the file and attesting again unlocks it and the data reads back.
6. The Trust Authority process stops and the host restarts: the VM is locked
   ``trusted_provider_unavailable`` with its event; the service starts again, the host
   attests, the VM unlocks and the data reads back.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_control_host_process import _hits, _keysafes, _wait
from vmcrypt.cli.up import Api, Children, _free_port, _host_args
from vmcrypt.crypto.keysafe import open_keysafe
from vmcrypt.kmip.client import KmipClient
from vmcrypt.pki import cert_files, issue_client
from vmcrypt.pki.tls import client_context
from vmcrypt.trust.client import TrustClient
from vmcrypt.trust.measure import (
    build_evidence,
    load_or_create_identity,
    measure_host,
    package_root,
    public_key_pem,
)

pytestmark = pytest.mark.slow

HOST = "esx-t1"
DISK = 1 << 20
WAIT = 30.0


class World:
    """The four kinds of process, their folders, and the host's measured tree."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.children = Children(root / "logs", own_groups=True)
        self.kms_dir, self.trust_dir = root / "kms", root / "trust"
        self.kms_port = _free_port()
        self.trust_port = _free_port()  # fixed: hosts keep its URL across its restarts
        self.datastore = root / "datastores" / "c1"
        self.host: dict[str, Any] = {"hardware_uuid": str(uuid.uuid4()), "port": _free_port()}
        self.site = root / "host-site"
        self.package = self.site / "vmcrypt"
        shutil.copytree(package_root(), self.package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.config = root / f"{HOST}.json"
        self.config.write_text('{"cluster": "c1"}\n')
        self.identity_file = root / f"{HOST}.identity.key"
        self.identity = load_or_create_identity(self.identity_file)
        self.control: dict[str, Any] = {}
        self.trust: dict[str, Any] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None
              ) -> dict[str, Any]:
        self.children.start(name, args, env)
        return self.children.listening(name)

    def start_kms(self) -> None:
        self.start("kms", ["kms", "serve", "--data-dir", str(self.kms_dir), "--port",
                           str(self.kms_port), "--json", "--log-level", "warning"])

    def start_trust(self) -> None:
        self.trust = self.start("trust", ["trust", "serve", "--data-dir", str(self.trust_dir),
                                          "--port", str(self.trust_port), "--json",
                                          "--log-level", "info"])

    def start_control(self) -> Api:
        self.control = self.start("control", [
            "control", "serve", "--data-dir", str(self.root / "control"), "--port", "0",
            "--json", "--log-level", "info", "--host-check-interval", "0.5"])
        token = Path(self.control["admin_token_file"]).read_text().strip()
        api = Api(str(self.control["url"]), Path(self.control["ca"]), token)
        self.children.clients.append(api.http)
        return api

    def start_host(self, token: str | None = None) -> None:
        args = _host_args(self.root, HOST, self.host, self.datastore,
                          str(self.control["url"]), str(self.control["ca_fingerprint"]))
        files = cert_files(self.trust_dir / "pki", HOST)
        args += ["--trust-url", str(self.trust["url"]),
                 "--trust-ca", str(self.trust_dir / "pki" / "ca.pem"),
                 "--trust-cert", str(files.cert), "--trust-key", str(files.key),
                 "--trust-identity", str(self.identity_file),
                 "--trust-config", str(self.config)]
        env = {"PYTHONPATH": str(self.site)}
        if token:
            env["VMCRYPT_ENROL_TOKEN"] = token
        self.start(HOST, args, env)

    def ta(self, cn: str) -> TrustClient:
        files = cert_files(self.trust_dir / "pki", cn)
        return TrustClient(str(self.trust["url"]), ca_file=self.trust_dir / "pki" / "ca.pem",
                           cert_file=files.cert, key_file=files.key)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    running = World(tmp_path)
    try:
        yield running
    finally:
        running.children.stop()


def _set_up_trust_authority(world: World) -> None:
    """The administrator's part: provider tp1 in the KMS, a baseline, the host."""
    kms_client = issue_client(world.kms_dir / "pki", "trust-authority")
    issue_client(world.trust_dir / "pki", HOST)  # the host's TLS client certificate
    issue_client(world.trust_dir / "pki", "vcenter")  # the control plane's
    with world.ta("admin") as admin:
        admin.request("POST", "/key-providers", json={"name": "tp1", "servers": [{
            "host": "127.0.0.1", "port": world.kms_port,
            "ca_file": str(world.kms_dir / "pki" / "ca.pem"),
            "cert_file": str(kms_client.cert), "key_file": str(kms_client.key)}]})
        admin.request("POST", "/baselines", json={"name": "release-1", "measurements":
                      measure_host(config=world.config.read_bytes(), package=world.package)})
        admin.request("POST", "/hosts", json={
            "name": HOST, "hardware_uuid": world.host["hardware_uuid"],
            "public_key_pem": public_key_pem(world.identity)})


def _kek(world: World, ciphertext: bytes) -> bytes:
    """The KEK, got as the host gets it (its certificate, identity and measurements)."""
    with world.ta(HOST) as ta:
        token = ta.attest(build_evidence(
            key=world.identity, host_name=HOST, hardware_uuid=world.host["hardware_uuid"],
            nonce=ta.nonce(), measurements=measure_host(config=world.config.read_bytes(),
                                                        package=world.package)))
        return ta.unwrap("tp1", ciphertext, token["token"])


def _kms_objects(world: World) -> list[str]:
    """IDs of every object in the KMS (KMIP Locate as the KMS's administrator)."""
    pki = world.kms_dir / "pki"
    identity = cert_files(pki, "admin")
    context = client_context(ca_file=pki / "ca.pem", cert_file=identity.cert,
                             key_file=identity.key)
    with KmipClient("127.0.0.1", world.kms_port, ssl_context=context, timeout=5.0) as kmip:
        return list(kmip.locate())


def test_trusted_flow_restart_and_tampering(world: World) -> None:
    world.start_kms()
    world.start_trust()
    _set_up_trust_authority(world)
    api = world.start_control()
    tls = {"url": str(world.trust["url"]), "ca_file": str(world.trust_dir / "pki" / "ca.pem"),
           "cert_file": str(world.trust_dir / "pki" / "vcenter.pem"),
           "key_file": str(world.trust_dir / "pki" / "vcenter.key")}

    # 1. Inventory, the enrolled host, and the published provider made the cluster default.
    cluster = api.call("POST", "/clusters", {"name": "c1"})["id"]
    host = api.call("POST", "/hosts", {
        "name": HOST, "hardware_uuid": world.host["hardware_uuid"], "cluster_id": cluster,
        "api_url": f"https://127.0.0.1:{world.host['port']}"})["id"]
    token = api.call("POST", "/enrolment-tokens", {"host_id": host})["token"]
    world.start_host(token)
    datastore = api.call("POST", "/datastores", {"name": "ds", "path": str(world.datastore),
                                                 "cluster_id": cluster})["id"]
    published = api.http.get("/key-providers/trusted/published", params=tls).json()
    assert [(p["name"], p["registered"]) for p in published] == [("tp1", False)]
    primary_key_id = published[0]["key_id"]
    provider = api.call("POST", "/key-providers/trusted", {"name": "tp1", **tls})
    assert provider["kind"] == "trusted"
    api.call("PUT", f"/clusters/{cluster}/default-key-provider",
             {"key_provider_id": provider["id"]})
    policy = api.call("POST", "/storage-policies", {"name": "enc", "encryption": True})["id"]

    # 2. The VM: checked on the host, created there; the keySafes hold the KEK ciphertext.
    vm = api.call("POST", "/vms", {"name": "vm-t", "datastore_id": datastore,
                                   "host_id": host, "disks": [DISK],
                                   "storage_policy_id": policy})
    assert vm["encrypted"] and vm["key_ids"] == {"home": None, "disk-0": None}
    payload = b"trusted flow " * 300
    put = api.http.put(f"/vms/{vm['id']}/disks/0/data", params={"offset": 4096},
                       content=payload)
    assert put.status_code == 200, put.text
    keysafes = _keysafes(world.datastore)
    assert len(keysafes) == 2
    assert {ks.provider_id for ks in keysafes} == {"tp1"}
    assert all(ks.key_id is None and ks.wrapped_kek for ks in keysafes)
    ciphertext = keysafes[0].wrapped_kek
    assert ciphertext is not None and len(ciphertext) == 61
    status = api.call("GET", f"/hosts/{host}/attestation")
    assert status["state"] == "attested" and status["baseline"] == "release-1"

    # 3. No KEK or DEK reaches the control plane or the KMS; the KMS holds the primary key.
    kek = _kek(world, ciphertext)
    deks = [open_keysafe(ks, kek) for ks in keysafes]
    assert _kms_objects(world) == [primary_key_id]
    assert _hits(world.root / "control", [kek, *deks]) == []
    assert _hits(world.kms_dir, [kek, *deks]) == []
    assert _hits(world.root / "logs", [kek, *deks]) == []

    def read() -> Any:
        return api.http.get(f"/vms/{vm['id']}/disks/0/data",
                            params={"offset": 4096, "length": len(payload)})

    def connected() -> int:
        return sum(e["object_id"] == str(host) for e in
                   api.call("GET", "/events?type=host.connected&limit=1000"))

    def restart() -> None:
        # kill -9, start, and wait for the host monitor's reconnect (standard keys; it
        # leaves the trusted provider's locks to the host's attestation).
        before = connected()
        world.children.kill(HOST)
        world.start_host()
        _wait("the monitor to reconnect the host", lambda: connected() > before,
              timeout=WAIT)

    # 4. kill -9 and a restart: the host re-attests and has the KEK ciphertext unwrapped.
    restart()
    answer = read()
    assert answer.status_code == 200 and answer.content == payload

    # 5. A changed file in the measured tree: no key, the VM locked with the reason.
    intruder = world.package / "intruder.py"
    intruder.write_text("# not part of any approved release\n")
    restart()
    refused = read()
    assert refused.status_code >= 400
    assert "'vmcrypt' does not match any approved baseline" in refused.text
    status = api.call("POST", f"/hosts/{host}/attestation")
    assert status["state"] == "failed" and status["code"] == "host_not_attested"
    locked = api.call("GET", f"/vms/{vm['id']}")
    assert locked["locked"] and locked["lock_reason"] == "host_not_attested"
    passed = api.call("GET", "/events?type=trust.attestation.passed&limit=100")
    failed = api.call("GET", "/events?type=trust.attestation.failed&limit=100")
    assert len(passed) == 1 and len(failed) == 1
    assert "'vmcrypt' does not match" in failed[0]["message"]
    intruder.unlink()  # restored
    assert api.call("POST", f"/hosts/{host}/attestation")["state"] == "attested"
    assert not api.call("GET", f"/vms/{vm['id']}")["locked"]
    answer = read()
    assert answer.status_code == 200 and answer.content == payload

    # 6. The Trust Authority stops while the host restarts: the VM is locked (the
    #    provider is unavailable, with its event); the service's return unlocks it.
    world.children.kill("trust")
    restart()
    assert read().status_code >= 400
    status = api.call("POST", f"/hosts/{host}/attestation")
    assert status["state"] == "failed" and status["code"] == "trusted_provider_unavailable"
    locked = api.call("GET", f"/vms/{vm['id']}")
    assert locked["locked"] and locked["lock_reason"] == "trusted_provider_unavailable"
    assert api.call("GET", "/events?type=trust.provider.unavailable&limit=10")
    world.start_trust()
    assert api.call("POST", f"/hosts/{host}/attestation")["state"] == "attested"
    assert not api.call("GET", f"/vms/{vm['id']}")["locked"]
    answer = read()
    assert answer.status_code == 200 and answer.content == payload

    # Deleting the VM drops its KEK from the host's cache.
    assert _host_keks(world) == 1
    assert api.http.delete(f"/vms/{vm['id']}").status_code == 204
    assert _host_keks(world) == 0
    world.children.stop()
    assert _hits(world.root / "control", [kek, *deks]) == []
    assert _hits(world.root / "logs", [kek, *deks]) == []


def _host_keks(world: World) -> int:
    """How many KEKs the host holds (its ``/health``, as the control plane reaches it)."""
    pki = world.root / "control" / "pki"
    context = client_context(ca_file=pki / "ca.pem", cert_file=pki / "control.pem",
                             key_file=pki / "control.key")
    url = f"https://127.0.0.1:{world.host['port']}/api/v1/health"
    return int(httpx.get(url, verify=context, timeout=5).json()["keks"])
