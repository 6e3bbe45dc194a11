"""``vmcrypt cluster|host|datastore|kp|policy|user|token|events`` against a real server.

The control plane API runs in this process, served by uvicorn on a free port in a
background thread (plain HTTP on 127.0.0.1); the CLI runs as a child process, exactly
as an operator runs it. Every run is kept, and the last test checks that the
administrator's token never appeared in any output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.testclient import TestClient

from tests.cli.conftest import Cli, Run, assert_one_line_error, child_env, parallel
from tests.control.api.pki import certificate_pem
from vmcrypt.control.api.app import create_app
from vmcrypt.control.api.bootstrap import bootstrap_administrator
from vmcrypt.control.db.engine import open_database
from vmcrypt.control.db.models import Host
from vmcrypt.control.hostclient import HostClient
from vmcrypt.control.services.keys import HostConnector
from vmcrypt.exceptions import EXIT_CODES
from vmcrypt.host.api.app import create_app as create_host_app
from vmcrypt.host.api.state import HostState
from vmcrypt.host.datastore import Datastore

PASSWORD = "correct horse battery"


@dataclass
class Control:
    """A running control plane and a CLI wired to it."""

    url: str
    token: str
    token_file: Path
    cli: Cli
    tmp: Path

    def run(self, *args: str | Path, token_file: Path | None = None) -> Run:
        return self.cli.run(*args, "--url", self.url, "--token-file",
                            token_file or self.token_file)

    def ok(self, *args: str | Path, token_file: Path | None = None) -> Run:
        run = self.run(*args, token_file=token_file)
        assert run.returncode == 0, f"vmcrypt {' '.join(run.args)} failed:\n{run.err}"
        assert "Traceback" not in run.err
        return run

    def fails(self, *args: str | Path, code: str, phrase: str,
              token_file: Path | None = None) -> Run:
        run = self.run(*args, token_file=token_file)
        assert_one_line_error(run, code=EXIT_CODES[code], phrase=phrase)
        return run


class Hosts:
    """The control plane's host connector: host ``esx1`` as an in-process host agent."""

    def __init__(self, datastore: Path) -> None:
        datastore.mkdir()
        state = HostState(name="esx1", hardware_uuid=str(uuid.uuid4()),
                          datastore=Datastore(datastore))
        self.apps: dict[str, FastAPI] = {"esx1": create_host_app(state)}

    def client(self, host: Host) -> HostClient:
        return HostClient(host.name, TestClient(self.apps[host.name], base_url="http://h"))


@contextmanager
def serve_control(tmp: Path, hosts: HostConnector) -> Iterator[Control]:
    """A control plane app (SQLite in ``tmp``, ``hosts`` as its connector) under uvicorn
    on a free port in a thread, with the CLI wired to it; stopped on exit."""
    database = open_database(tmp / "control.db")
    token = bootstrap_administrator(database)
    assert token is not None
    config = uvicorn.Config(create_app(database, master_key=os.urandom(32), hosts=hosts),
                            host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    token_file = tmp / "admin.token"
    token_file.write_text(token + "\n")
    try:
        yield Control(f"http://127.0.0.1:{port}", token, token_file, Cli(tmp), tmp)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        database.close()


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    tmp = tmp_path_factory.mktemp("control")
    with serve_control(tmp, Hosts(tmp / "ds")) as running:
        yield running


# One control plane per module: its tests run on one xdist worker, in file order.
pytestmark = pytest.mark.xdist_group("control-cli")


def test_help_teaches() -> None:
    add_kmip, host = parallel(*(lambda a=args: Cli(Path.cwd()).run(*a) for args in (
        ["kp", "add-kmip", "--help"], ["host", "--help"])))
    assert add_kmip.returncode == host.returncode == 0
    text = add_kmip.stdout.decode()
    assert "Example" in text and "VMCRYPT_TOKEN" in text and "--kms-ca" in text
    assert all(word in host.stdout.decode() for word in ("serve", "add", "ls", "info"))


def test_inventory(control: Control) -> None:
    cluster = control.ok("cluster", "create", "prod", "--json").json
    assert cluster["name"] == "prod"
    host = control.ok("host", "add", "esx1", "--cluster", "prod", "--hardware-uuid",
                      "4c4c4544-0000-1000-8000-000000000001", "--api-url",
                      "https://esx1:8443", "--json").json
    assert host["cluster_id"] == cluster["id"]
    assert host["connection_state"] == "disconnected"
    store = control.ok("datastore", "add", "shared1", "--path", "/srv/shared1",
                       "--cluster", "prod", "--json").json
    assert store["cluster_id"] == cluster["id"]
    ls, info, hosts, host_info, stores, table = parallel(
        lambda: control.ok("cluster", "ls", "--json"),
        lambda: control.ok("cluster", "info", "prod", "--json"),
        lambda: control.ok("host", "ls", "--cluster", "prod", "--json"),
        lambda: control.ok("host", "info", "esx1"),
        lambda: control.ok("datastore", "ls", "--json"),
        lambda: control.ok("cluster", "info", "prod"),
    )
    assert [c["name"] for c in ls.json] == ["prod"]
    assert info.json["hosts"] == ["esx1"] and info.json["datastores"] == ["shared1"]
    assert [h["name"] for h in hosts.json] == ["esx1"]
    assert "4c4c4544-0000-1000-8000-000000000001" in host_info.stdout.decode()
    assert [d["path"] for d in stores.json] == ["/srv/shared1"]
    assert "esx1" in table.stdout.decode() and "shared1" in table.stdout.decode()
    control.fails("cluster", "create", "prod", code="Conflict", phrase="prod")


def test_key_providers_and_policies(control: Control) -> None:
    ca = control.tmp / "kms-ca.pem"
    ca.write_text(certificate_pem("kms-ca"))
    password = control.tmp / "pw.txt"
    password.write_text(PASSWORD + "\n")
    corp = control.ok("kp", "add-kmip", "corp", "--server", "kms1:5696", "--server",
                      "kms2:5697", "--kms-ca", ca, "--json").json
    assert [(s["address"], s["port"]) for s in corp["kms_servers"]] == [
        ("kms1", 5696), ("kms2", 5697)]
    assert corp["kind"] == "standard"
    native = control.ok("kp", "add-native", "nkp", "--json").json
    assert native["backed_up"] is False
    control.ok("kp", "add-native", "risky")
    p12 = control.tmp / "nkp.p12"
    backed = control.ok("kp", "backup", "nkp", "--out", p12, "--password-file", password,
                        "--json").json
    assert backed["bytes"] == p12.stat().st_size > 0
    assert p12.stat().st_mode & 0o777 == 0o600
    dry, _, _ = parallel(
        lambda: control.ok("kp", "restore", p12, "--dry-run", "--password-file", password,
                           "--json"),
        lambda: control.ok("kp", "ack-no-backup", "risky"),
        lambda: control.ok("kp", "default", "corp"),
    )
    assert dry.json["provider_id"] == "nkp" and dry.json["fingerprint"]
    providers = {p["name"]: p for p in control.ok("kp", "ls", "--json").json}
    assert providers["nkp"]["backed_up"] is True
    assert providers["risky"]["backup_acknowledged"] is True
    assert providers["corp"]["is_default"] is True
    table = control.ok("kp", "info", "corp").stdout.decode()
    assert "kms1:5696" in table and "BEGIN CERTIFICATE" not in table
    added = control.ok("kp", "add-server", "corp", "--server", "kms3:5698", "--kms-ca", ca,
                       "--json").json
    assert (added["name"], added["address"], added["port"], added["position"]) == (
        "kms3", "kms3", 5698, 2)
    control.ok("kp", "rm-server", "corp", "kms2")
    servers = control.ok("kp", "info", "corp", "--json").json["kms_servers"]
    assert [(s["name"], s["position"]) for s in servers] == [("kms1", 0), ("kms3", 1)]
    control.fails("kp", "rm-server", "corp", "kms9", code="UsageError", phrase="kms1, kms3")
    policy = control.ok("policy", "create", "VM Encryption", "--provider", "corp",
                        "--json").json
    assert policy["key_provider_id"] == corp["id"] and policy["encryption"] is True
    assert "VM Encryption" in control.ok("policy", "ls").stdout.decode()
    control.fails("kp", "rm", "corp", code="Conflict", phrase="still used")
    assert control.ok("kp", "rm", "risky", "--json").json["removed"] is True
    parallel(
        lambda: control.fails("kp", "info", "nope", code="NotFound",
                              phrase="no key provider named 'nope'"),
        lambda: control.fails("kp", "backup", "corp", "--out", control.tmp / "c.p12",
                              "--password-file", password, code="UsageError",
                              phrase="only native"),
        lambda: control.fails("kp", "restore", p12, "--password-file", password,
                              code="Conflict", phrase="nkp"),
        lambda: control.fails("kp", "add-kmip", "bad", "--server", "nohostport",
                              "--kms-ca", ca, code="UsageError", phrase="HOST:PORT"),
    )


def test_users_tokens_and_refusals(control: Control) -> None:
    user = control.ok("user", "create", "auditor", "--role", "Read-only", "--json").json
    assert user["role"] == "Read-only"
    issued = control.ok("token", "issue", "auditor", "--label", "ci", "--json").json
    assert issued["token"].startswith("vmct_") and issued["user"] == "auditor"
    plain = control.ok("token", "issue", "auditor").stdout.decode().strip()
    assert plain.startswith("vmct_") and plain != issued["token"]
    reader = control.tmp / "auditor.token"
    reader.write_text(issued["token"])
    bad = control.tmp / "bad.token"
    bad.write_text("vmct_not-a-real-token")
    users, *_ = parallel(
        lambda: control.ok("user", "ls", "--json"),
        lambda: control.ok("cluster", "ls", token_file=reader),
        lambda: control.fails("cluster", "create", "x", token_file=reader,
                              code="PermissionDenied", phrase="Host.Inventory.CreateCluster"),
        lambda: control.fails("kp", "add-native", "x", token_file=reader,
                              code="PermissionDenied",
                              phrase="Cryptographer.ManageKeyServers"),
        lambda: control.fails("cluster", "ls", token_file=bad,
                              code="AuthenticationFailed", phrase="authentication failed"),
        lambda: control.fails("user", "create", "bob", "--role", "Nobody",
                              code="UsageError", phrase="role"),
        lambda: control.fails("host", "info", "esx9", code="NotFound", phrase="esx9"),
    )
    assert {"administrator", "auditor"} <= {u["name"] for u in users.json}
    down = control.cli.run("cluster", "ls", "--url", "http://127.0.0.1:9",
                           "--token-file", control.token_file)
    assert_one_line_error(down, code=EXIT_CODES["ControlError"],
                          phrase="cannot connect to the control plane at http://127.0.0.1:9")
    https = control.url.replace("http://", "https://")
    not_tls, no_ca = parallel(
        lambda: control.cli.run("cluster", "ls", "--url", https, "--token-file",
                                control.token_file),
        lambda: control.cli.run("cluster", "ls", "--url", https, "--token-file",
                                control.token_file, "--ca", control.tmp / "missing.pem"),
    )
    assert_one_line_error(not_tls, code=EXIT_CODES["ControlError"], phrase="TLS handshake")
    assert_one_line_error(no_ca, code=EXIT_CODES["UsageError"], phrase="--ca")
    missing = control.cli.run("cluster", "ls", "--url", control.url)
    assert_one_line_error(missing, code=EXIT_CODES["UsageError"], phrase="no API token")


def test_events(control: Control) -> None:
    control.ok("cluster", "create", "events-test")
    audit = control.ok("events", "--type", "audit", "--since", "1h", "--limit", "5",
                       "--json").json
    assert 0 < len(audit) <= 5
    assert all(e["type"] == "audit" for e in audit)
    table = control.ok("events", "--object", "users").stdout.decode()
    assert "first start" in table
    control.fails("events", "--since", "yesterday", code="UsageError", phrase="--since")
    follow = subprocess.Popen(
        [sys.executable, "-m", "vmcrypt.cli.main", "events", "-f", "--json", "--limit", "1",
         "--interval", "0.2", "--url", control.url, "--token-file", control.token_file],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
    )
    try:
        time.sleep(1.5)  # the first poll has happened
        response = httpx.post(f"{control.url}/api/v1/clusters", json={"name": "followed"},
                              headers={"Authorization": f"Bearer {control.token}"})
        assert response.status_code == 201
        time.sleep(1.0)
    finally:
        follow.terminate()
        stdout, stderr = follow.communicate(timeout=10)
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    assert len(lines) >= 2, stderr.decode()
    assert any(e["object_type"] == "clusters" and e["type"] == "audit"
               and e["details"].get("status") == 201 for e in lines[1:]), lines
    control.cli.runs.append(Run(("events", "-f"), 0, stdout, stderr))


def _ensure_inventory(control: Control) -> None:
    """The cluster, host and datastore ``test_inventory`` makes, when it has not run (the
    server is shared by the module, but a test must not depend on another's order)."""
    if "esx1" not in [h["name"] for h in control.ok("host", "ls", "--json").json]:
        control.ok("cluster", "create", "prod")
        control.ok("host", "add", "esx1", "--cluster", "prod", "--hardware-uuid",
                   "4c4c4544-0000-1000-8000-000000000001", "--api-url", "https://esx1:8443")
        control.ok("datastore", "add", "shared1", "--path", "/srv/shared1", "--cluster", "prod")
    if "nkp" not in [p["name"] for p in control.ok("kp", "ls", "--json").json]:
        control.ok("kp", "add-native", "nkp")
        control.ok("kp", "ack-no-backup", "nkp")  # usable: its primary key goes to esx1


def test_vms(control: Control) -> None:
    """A plain VM and a native-provider one; a standard provider's would need a real KMS."""
    _ensure_inventory(control)
    created = control.ok("vm", "create", "web1", "--host", "esx1", "--datastore", "shared1",
                         "--disk", "1M", "--json").json
    assert created["name"] == "web1" and created["encrypted"] is False
    data = os.urandom(10_000)
    source = control.tmp / "data.bin"
    source.write_bytes(data)
    wrote = control.ok("vm", "disk", "write", "web1", "0", source, "--offset", "8192",
                       "--json").json
    assert wrote["written"] == len(data)
    back, listed, info = parallel(
        lambda: control.ok("vm", "disk", "read", "web1", "0", "--offset", "8192",
                           "--length", str(len(data))),
        lambda: control.ok("vm", "ls", "--json"),
        lambda: control.ok("vm", "info", "web1"),
    )
    assert back.stdout == data
    assert [v["name"] for v in listed.json] == ["web1"]
    assert created["instance_uuid"] in info.stdout.decode()
    parallel(
        lambda: control.fails("vm", "info", "web9", code="NotFound", phrase="no vm named"),
        lambda: control.fails("vm", "create", "web2", "--host", "esx1", "--datastore",
                              "shared1", "--disk", "1M", "--policy", "native-policy",
                              code="NotFound", phrase="native-policy"),
    )
    assert control.ok("vm", "rm", "web1", "--json").json["deleted"] is True
    assert control.ok("vm", "ls", "--json").json == []
    # nkp is usable (backed up in test_key_providers_and_policies, or acknowledged by
    # _ensure_inventory), so its primary key was pushed to esx1.
    control.ok("policy", "create", "native-enc", "--provider", "nkp")
    secret = control.ok("vm", "create", "web2", "--host", "esx1", "--datastore", "shared1",
                        "--disk", "1M", "--policy", "native-enc", "--json").json
    assert secret["encrypted"] is True
    control.ok("vm", "disk", "write", "web2", "0", source)
    assert control.ok("vm", "disk", "read", "web2", "0", "--length",
                      str(len(data))).stdout == data


def test_vm_crypto_jobs(control: Control) -> None:
    """Deep re-key and decrypt (disk, then home) as jobs followed by the CLI; data survives
    each step, and the order rule is refused with one line."""
    _ensure_inventory(control)
    if "native-jobs" not in [p["name"] for p in control.ok("policy", "ls", "--json").json]:
        control.ok("policy", "create", "native-jobs", "--provider", "nkp")
    # (Re)push nkp's primary key: whether it is on esx1 yet depends on what ran before.
    control.ok("kp", "ack-no-backup", "nkp")
    control.ok("vm", "create", "jobs1", "--host", "esx1", "--datastore", "shared1",
               "--disk", "1M", "--policy", "native-jobs")
    data = os.urandom(50_000)
    source = control.tmp / "jobs.bin"
    source.write_bytes(data)
    control.ok("vm", "disk", "write", "jobs1", "0", source)

    def read_back() -> bytes:
        return control.ok("vm", "disk", "read", "jobs1", "0", "--length",
                          str(len(data))).stdout

    deep = control.ok("vm", "rekey", "jobs1", "--deep", "--json").json
    assert deep["state"] == "succeeded", deep
    assert read_back() == data
    control.fails("vm", "decrypt", "jobs1", code="Conflict", phrase="disk")
    assert control.ok("vm", "decrypt", "jobs1", "--disk", "0", "--json").json[
        "state"] == "succeeded"
    assert control.ok("vm", "decrypt", "jobs1", "--json").json["state"] == "succeeded"
    assert read_back() == data
    info = control.ok("vm", "info", "jobs1", "--json").json
    assert info["encrypted"] is False
    jobs = control.ok("vm", "jobs", "jobs1", "--json").json
    assert len(jobs) >= 3 and all(job["state"] == "succeeded" for job in jobs)
    # Cancelling a job that already ended is refused in one line, and changes nothing.
    control.fails("vm", "cancel", str(jobs[0]["id"]), code="Conflict",
                  phrase="already succeeded")
    control.fails("vm", "cancel", "999999", code="NotFound", phrase="999999")
    control.ok("vm", "rm", "jobs1")


def test_vm_components(control: Control) -> None:
    """add-disk, add-vtpm/rm-vtpm and per-component re-key (shallow and deep) of a
    native-provider VM; the data survives each step; refusals are one line."""
    _ensure_inventory(control)
    if "native-parts" not in [p["name"] for p in control.ok("policy", "ls", "--json").json]:
        control.ok("policy", "create", "native-parts", "--provider", "nkp")
    control.ok("kp", "ack-no-backup", "nkp")  # (re)push nkp's primary key to esx1
    control.ok("vm", "create", "parts1", "--host", "esx1", "--datastore", "shared1",
               "--disk", "1M", "--policy", "native-parts")
    data = os.urandom(30_000)
    source = control.tmp / "parts.bin"
    source.write_bytes(data)

    def read_back(disk: int) -> bytes:
        return control.ok("vm", "disk", "read", "parts1", str(disk), "--length",
                          str(len(data))).stdout

    control.ok("vm", "disk", "write", "parts1", "0", source)
    added = control.ok("vm", "add-disk", "parts1", "--size", "4M", "--json").json
    assert added["disks"][1] == {"index": 1, "size_bytes": 4 << 20, "encrypted": True}
    control.ok("vm", "disk", "write", "parts1", "1", source)
    clear = control.ok("vm", "add-disk", "parts1", "--size", "1M", "--no-encrypt")
    assert "added disk 2 (clear)" in clear.stdout.decode()
    parallel(
        lambda: control.fails("vm", "add-disk", "parts1", "--size", "1000",
                              code="UsageError", phrase="size"),
        lambda: control.fails("vm", "rekey", "parts1", "--disk", "2", code="Conflict",
                              phrase="not encrypted"),
        lambda: control.fails("vm", "rekey", "parts1", "--home", "--disk", "0",
                              code="UsageError", phrase="not both"),
    )
    assert control.ok("vm", "add-vtpm", "parts1", "--json").json["vtpm"] is True
    control.fails("vm", "add-vtpm", "parts1", code="Conflict", phrase="already has a vTPM")

    shallow = control.ok("vm", "rekey", "parts1", "--disk", "1", "--json").json
    assert shallow["component"] == "disk-1" and shallow["key_id"] is None
    assert "re-keyed VM home of parts1" in control.ok("vm", "rekey", "parts1",
                                                      "--home").stdout.decode()
    deep = control.ok("vm", "rekey", "parts1", "--deep", "--disk", "0", "--json").json
    assert (deep["state"], deep["type"], deep["component"]) == ("succeeded",
                                                                "vm.rekey-deep", "disk-0")
    assert read_back(0) == data and read_back(1) == data

    assert control.ok("vm", "rm-vtpm", "parts1", "--json").json["vtpm"] is False
    events = control.ok("events", "--type", "crypto.add-vtpm", "--json").json
    assert [e["details"]["vm"] for e in events] == ["parts1"]
    assert control.ok("events", "--type", "crypto.rekey-deep", "--json").json[0][
        "details"]["result"] == "succeeded"
    control.ok("vm", "rm", "parts1")


def test_token_never_printed(control: Control) -> None:
    assert control.cli.runs, "run the other tests of this module first"
    secret = control.token.encode()
    for run in control.cli.runs:
        assert secret not in run.stdout and secret not in run.stderr, run.args


def test_vm_register(control: Control) -> None:
    """Unregister, then register again (keys back on the host); register a VM found on the
    datastore by its instance UUID; refusals are one line each."""
    from vmcrypt.host.keycache import KeyCache
    from vmcrypt.host.vm import create_vm

    _ensure_inventory(control)
    if "native-reg" not in [p["name"] for p in control.ok("policy", "ls", "--json").json]:
        control.ok("policy", "create", "native-reg", "--provider", "nkp")
    control.ok("vm", "create", "reg1", "--host", "esx1", "--datastore", "shared1",
               "--disk", "1M", "--policy", "native-reg")
    data = os.urandom(5000)
    source = control.tmp / "reg.bin"
    source.write_bytes(data)
    control.ok("vm", "disk", "write", "reg1", "0", source)
    control.ok("vm", "unregister", "reg1")
    back = control.ok("vm", "register", "reg1", "--host", "esx1", "--json").json
    assert back["registered"] and not back["locked"] and back["encrypted"]
    control.ok("vm", "unregister", "reg1")
    said = control.ok("vm", "register", "reg1", "--host", "esx1").stdout.decode()
    assert "registered reg1 with esx1" in said
    assert control.ok("vm", "disk", "read", "reg1", "0", "--length",
                      str(len(data))).stdout == data

    found = create_vm(Datastore(control.tmp / "ds"), KeyCache(), name="elsewhere",
                      disk_sizes=[1 << 20]).instance_uuid
    parallel(
        lambda: control.fails("vm", "register", "reg1", "--host", "esx1",
                              code="Conflict", phrase="already registered"),
        lambda: control.fails("vm", "register", "--uuid", found, "--host", "esx1",
                              code="UsageError", phrase="--datastore"),
        lambda: control.fails("vm", "register", "--datastore", "shared1", "--uuid",
                              str(uuid.uuid4()), "--host", "esx1",
                              code="NotFound", phrase="no vm"),
    )
    made = control.ok("vm", "register", "--datastore", "shared1", "--uuid", found,
                      "--host", "esx1", "--name", "found1", "--json").json
    assert made["name"] == "found1" and made["instance_uuid"] == found
    assert not made["encrypted"] and made["registered"]
    events = control.ok("events", "--type", "crypto.register", "--json").json
    assert {e["details"]["vm"] for e in events} >= {"reg1", "found1"}
    control.ok("vm", "rm", "found1")
    control.ok("vm", "rm", "reg1")
