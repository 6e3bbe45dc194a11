"""``vmcrypt up``: the whole system on one machine, as real child processes.

An embedded KMS, the control plane and three hosts (two sharing a datastore folder as
a cluster, one standalone), each a ``vmcrypt … serve`` child process. Hosts enrol
through the real enrolment flow (one-time token, CA pinned by fingerprint), and the
inventory, the key providers and a default encryption policy are registered through
the control plane's REST API with the Administrator's token — the same calls an
operator makes, so ``up`` exercises the product rather than a shortcut around it.

It opens with a small demo — an encrypted VM with a vTPM (``demo-vm``) — and gives the
Administrator a password for the web UI (``/ui``) on the first start: generated, set
through the API, printed once and kept in ``DIR/control/admin.password`` (0600).

Registration is idempotent (everything is looked up by name first) and the ports are
remembered in ``DIR/up.json``, so a second ``vmcrypt up`` on the same folder restarts
the same system with its state. Ctrl-C or SIGTERM stops every child (SIGTERM, then
SIGKILL after a grace period); children also get SIGTERM if ``up`` itself dies.
See ``docs/up.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Final

import httpx
import typer

from vmcrypt.exceptions import UsageError, VmcryptError

__all__ = ["up"]

CLUSTER: Final = "cluster-1"
CLUSTER_HOSTS: Final = ("esx-1", "esx-2")
STANDALONE_HOST: Final = "esx-3"
STANDARD_PROVIDER: Final = "embedded-kms"
NATIVE_PROVIDER: Final = "native-1"
POLICY: Final = "vm-encryption"
DEMO_VM: Final = "demo-vm"  # the seeded demo: an encrypted VM with a vTPM on esx-1
DEMO_DISK_BYTES: Final = 4 * 1024 * 1024
ADMIN_USER: Final = "administrator"  # the control plane's bootstrap user
KMS_CLIENT: Final = "vmcrypt-control"  # the control plane's identity at the KMS
_START_TIMEOUT: Final = 60.0
_STOP_GRACE: Final = 10.0


class _Stopped(Exception):
    """A signal arrived while the system was still starting."""


class ChildFailed(VmcryptError):
    """A child process exited or never said it was listening."""


def _free_port() -> int:
    """A free port *below* Linux's ephemeral range (32768-60999 by default).

    The port is remembered and bound again on every later start; a port from the
    ephemeral range could by then be the local end of some outgoing connection.
    """
    for _ in range(200):
        port = secrets.randbelow(32768 - 20000) + 20000
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise UsageError("found no free TCP port between 20000 and 32767 on 127.0.0.1")


def _die_with_parent() -> None:
    # Linux prctl(PR_SET_PDEATHSIG, SIGTERM): no orphans even if `up` is killed -9.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class Plan:
    """The remembered shape of the system: ports and host identities (``DIR/up.json``)."""

    control_port: int
    kms_port: int
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, control_port: int | None) -> Plan:
        """The plan of an earlier run, or a new one with free ports."""
        if path.exists():
            data = json.loads(path.read_text())
            plan = cls(data["control_port"], data["kms_port"], data["hosts"])
        else:
            plan = cls(0, _free_port(), {
                name: {"hardware_uuid": str(uuid.uuid4()), "port": _free_port()}
                for name in (*CLUSTER_HOSTS, STANDALONE_HOST)})
        if control_port:
            plan.control_port = control_port
        elif not plan.control_port:
            # --port 0: a free port now, remembered like every other port.
            plan.control_port = 8440 if control_port is None else _free_port()
        path.write_text(json.dumps({"control_port": plan.control_port, "kms_port": plan.kms_port,
                                    "hosts": plan.hosts}, indent=2) + "\n")
        return plan


class Children:
    """The child processes, started in order and stopped in reverse.

    With ``own_groups`` each child leads its own process group (a new session), and
    :meth:`kill` and :meth:`stop` signal the whole group, so nothing a child spawned
    outlives it; integration tests use that to ``kill -9`` one host cleanly. ``up``
    keeps the default so a terminal's Ctrl-C reaches it and it stops the children.
    """

    def __init__(self, logs: Path, *, own_groups: bool = False) -> None:
        self.logs = logs
        self.own_groups = own_groups
        self.running: dict[str, subprocess.Popen[str]] = {}
        #: Closed before the children stop: an idle keep-alive connection would make
        #: uvicorn wait for it during its graceful shutdown.
        self.clients: list[httpx.Client] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``vmcrypt ARGS`` as child ``name``; its stderr goes to ``logs/NAME.log``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("a") as log:
            self.running[name] = subprocess.Popen(
                [sys.executable, "-m", "vmcrypt.cli.main", *args], stdout=subprocess.PIPE,
                stderr=log, text=True, preexec_fn=_die_with_parent,  # noqa: PLW1509
                start_new_session=self.own_groups,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def listening(self, name: str) -> dict[str, Any]:
        """The child's JSON listening line; a clear error quoting its log if none comes."""
        process = self.running[name]
        assert process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if selector.select(timeout=0.2):
                line = process.stdout.readline()
                if not line:
                    break
                with contextlib.suppress(ValueError):
                    event: dict[str, Any] = json.loads(line)
                    if event.get("event") == "listening":
                        return event
        raise ChildFailed(f"{name} did not start: {self.last_error(name)}")

    def last_error(self, name: str) -> str:
        """The last line of a child's log, where its one-line error is."""
        log = self.logs / f"{name}.log"
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        return f"{lines[-1] if lines else 'no output'} (log: {log})"

    def dead(self) -> str | None:
        """The name of a child that has exited, if any."""
        return next((n for n, p in self.running.items() if p.poll() is not None), None)

    def _signal(self, process: subprocess.Popen[str], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.own_groups:
                os.killpg(process.pid, signum)
            elif process.poll() is None:
                process.send_signal(signum)

    def kill(self, name: str) -> None:
        """SIGKILL child ``name`` (its group with ``own_groups``), as a crash would."""
        process = self.running.pop(name)
        self._signal(process, signal.SIGKILL)
        process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def stop(self) -> None:
        """SIGTERM every child (newest first), then SIGKILL whoever outlives the grace."""
        for client in self.clients:
            client.close()
        for process in reversed(self.running.values()):
            if process.poll() is None:
                self._signal(process, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for process in reversed(self.running.values()):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGKILL)
                process.wait()
            if self.own_groups:  # the leader is gone; leave nothing of its group behind
                self._signal(process, signal.SIGKILL)
            if process.stdout is not None:
                process.stdout.close()


class Api:
    """A small client of the control plane API, for idempotent registration."""

    def __init__(self, url: str, ca: Path, token: str) -> None:
        self.http = httpx.Client(base_url=f"{url}/api/v1", timeout=30.0,
                                 verify=ssl.create_default_context(cafile=str(ca)),
                                 headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; a failure becomes one line naming the call."""
        response = self.http.request(method, path, json=body)
        if response.status_code >= 400:
            raise UsageError(f"{method} {path} failed (HTTP {response.status_code}): "
                             f"{response.text[:300]}")
        return response.json() if response.content else None

    def ensure(self, path: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """The object called ``name`` under ``path``, created with ``body`` if missing."""
        for item in self.call("GET", path):
            if item["name"] == name:
                return dict(item)
        return dict(self.call("POST", path, {"name": name, **body}))


def _register_kms(api: Api, kms_dir: Path, kms_port: int) -> None:
    from vmcrypt.pki import cert_files, issue_client

    pki = kms_dir / "pki"
    identity = cert_files(pki, KMS_CLIENT)
    if not identity.cert.exists():
        issue_client(pki, KMS_CLIENT)
    server = {"name": "kms-1", "address": "127.0.0.1", "port": kms_port,
              "ca_pem": (pki / "ca.pem").read_text(),
              "client_cert_pem": identity.cert.read_text(),
              "client_key_path": str(identity.key)}
    _ensure_provider(api, "standard", STANDARD_PROVIDER,
                     {"is_default": True, "kms_servers": [server]})


def _ensure_provider(api: Api, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    for item in api.call("GET", "/key-providers"):
        if item["name"] == name:
            return dict(item)
    return dict(api.call("POST", f"/key-providers/{kind}", {"name": name, **body}))


def _host_args(data: Path, name: str, spec: dict[str, Any], datastore: Path, url: str,
               fingerprint: str) -> list[str]:
    pki = data / "hosts" / name / "pki"
    return ["host", "serve", "--datastore", str(datastore), "--name", name,
            "--hardware-uuid", spec["hardware_uuid"], "--port", str(spec["port"]),
            "--cert", str(pki / "host.pem"), "--key", str(pki / "host.key"),
            "--ca", str(pki / "ca.pem"), "--enrol", url, "--ca-fingerprint", fingerprint,
            "--json", "--log-level", "warning"]


def _start(data: Path, plan: Plan, children: Children) -> dict[str, Any]:
    """Start and register everything; returns what the ready line reports."""
    kms_dir, control_dir = data / "kms", data / "control"
    children.start("kms", ["kms", "serve", "--data-dir", str(kms_dir), "--port",
                           str(plan.kms_port), "--json", "--log-level", "warning"])
    children.listening("kms")
    children.start("control", ["control", "serve", "--data-dir", str(control_dir), "--port",
                               str(plan.control_port), "--json", "--log-level", "warning"])
    control = children.listening("control")
    url, ca = str(control["url"]), Path(control["ca"])
    token_file = Path(control["admin_token_file"])
    api = Api(url, ca, token_file.read_text().strip())
    children.clients.append(api.http)
    cluster = api.ensure("/clusters", CLUSTER, {})
    registered = {h["name"]: h for h in api.call("GET", "/hosts")}
    for name in CLUSTER_HOSTS:
        if name not in registered:
            spec = plan.hosts[name]
            registered[name] = api.call("POST", "/hosts", {
                "name": name, "hardware_uuid": spec["hardware_uuid"],
                "cluster_id": cluster["id"], "api_url": f"https://127.0.0.1:{spec['port']}"})
    shared = data / "datastores" / CLUSTER
    for name, spec in plan.hosts.items():
        datastore = shared if name in CLUSTER_HOSTS else data / "datastores" / name
        env: dict[str, str] = {}
        if not (data / "hosts" / name / "pki" / "host.pem").exists():
            bound = ({"host_id": registered[name]["id"]} if name in registered
                     else {"host_name": name})
            env["VMCRYPT_ENROL_TOKEN"] = api.call("POST", "/enrolment-tokens", bound)["token"]
        children.start(name, _host_args(data, name, spec, datastore, url,
                                        str(control["ca_fingerprint"])), env)
    for name in plan.hosts:
        children.listening(name)
    hosts = {h["name"]: h for h in api.call("GET", "/hosts")}
    api.ensure("/datastores", f"ds-{CLUSTER}", {"path": str(shared), "cluster_id": cluster["id"]})
    api.ensure("/datastores", f"ds-{STANDALONE_HOST}", {
        "path": str(data / "datastores" / STANDALONE_HOST),
        "host_id": hosts[STANDALONE_HOST]["id"]})
    _register_kms(api, kms_dir, plan.kms_port)
    native = _ensure_provider(api, "native", NATIVE_PROVIDER, {})
    if not (native["backed_up"] or native["backup_acknowledged"]):
        api.call("POST", f"/key-providers/{native['id']}/acknowledge-no-backup")
    api.ensure("/storage-policies", POLICY, {
        "description": "encrypt VM home and disks with the default key provider",
        "encryption": True})
    # Hosts start with no keys: the control plane pushes what each needs (by key ID,
    # and native primary keys), as after any host restart.
    for host in hosts.values():
        report = api.call("POST", f"/hosts/{host['id']}/reconnect")
        if not report.get("connected"):
            raise ChildFailed(f"the control plane cannot reach host {host['name']}")
    _seed_demo_vm(api, hosts[CLUSTER_HOSTS[0]]["id"])
    password_file = control_dir / "admin.password"
    password = _ensure_admin_password(api, password_file)
    return {"event": "ready", "api": f"{url}/api/v1", "docs": f"{url}/api/v1/docs",
            "ui": f"{url}/ui/", "admin_user": ADMIN_USER,
            "admin_password": password, "admin_password_file": str(password_file),
            "admin_token_file": str(token_file), "ca": str(ca),
            "children": {n: p.pid for n, p in children.running.items()}}


def _seed_demo_vm(api: Api, host_id: int) -> None:
    """``demo-vm``: encrypted by the default policy (home and a disk), with a vTPM."""
    found = {vm["name"]: vm for vm in api.call("GET", "/vms")}
    vm = found.get(DEMO_VM)
    if vm is None:
        datastore = next(d for d in api.call("GET", "/datastores")
                         if d["name"] == f"ds-{CLUSTER}")
        policy = next(p for p in api.call("GET", "/storage-policies") if p["name"] == POLICY)
        vm = api.call("POST", "/vms", {
            "name": DEMO_VM, "datastore_id": datastore["id"], "host_id": host_id,
            "disks": [DEMO_DISK_BYTES], "storage_policy_id": policy["id"]})
    if not vm["vtpm"]:
        api.call("POST", f"/vms/{vm['id']}/vtpm")


def _ensure_admin_password(api: Api, path: Path) -> str | None:
    """Give the Administrator a web password on the first start; None on later ones.

    The password is random, set through the API (only its scrypt hash is stored), and
    kept in ``path`` (0600) beside ``admin.token`` so the operator can find it again;
    ``vmcrypt user passwd administrator`` replaces it.
    """
    if path.exists():
        return None
    from vmcrypt.control.db.repo.passwords import generate_password

    password = generate_password()
    admin = next(u for u in api.call("GET", "/users") if u["name"] == ADMIN_USER)
    api.call("PUT", f"/users/{admin['id']}/password", {"password": password})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def up(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Folder for every process's state (kept).")
    ] = Path("vmcrypt-up"),
    port: Annotated[
        int | None,
        typer.Option("--port", min=0, max=65535, help="Control plane API port (default "
                     "8440; 0 picks a free one). Remembered in DATA_DIR/up.json."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the 'ready' line as JSON for scripts.")
    ] = False,
) -> None:
    """Start the whole system on this machine until Ctrl-C or SIGTERM.

    An embedded KMS, the control plane and three hosts (a cluster of two sharing a
    datastore, one standalone), enrolled and registered with a standard and a native
    key provider, a default encryption policy and a demo VM (encrypted, with a vTPM).
    Prints the web UI's URL and the Administrator's user name and password. Run it
    again on the same folder to get the same system back.
    """
    data = data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    plan = Plan.load(data / "up.json", port)
    children = Children(data / "logs")
    ready = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        if not ready:
            raise _Stopped
        stopping.append(_signum)

    stopping: list[int] = []
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        event = _start(data, plan, children)
        ready = True
        if json_output:
            sys.stdout.write(json.dumps(event) + "\n")
        else:
            sys.stdout.write(_ready_text(event))
        sys.stdout.flush()
        while not stopping:
            dead = children.dead()
            if dead is not None:
                raise ChildFailed(f"{dead} exited: {children.last_error(dead)}")
            time.sleep(0.2)
    except _Stopped:
        pass
    finally:
        children.stop()


def _ready_text(event: dict[str, Any]) -> str:
    """What a person needs next: the URLs, the admin token, and the CLI set up to use."""
    base = str(event["api"]).removesuffix("/api/v1")
    token_file = Path(str(event["admin_token_file"]))
    token = token_file.read_text().strip() if token_file.exists() else "(see the file)"
    # The command as this interpreter's environment installed it (``.venv/bin/vmcrypt``
    # under `make up`), so the lines work without activating the venv.
    installed = Path(sys.executable).parent / "vmcrypt"
    cli = str(installed) if installed.exists() else "vmcrypt"
    if event["admin_password"]:
        password = f"{event['admin_password']}  (shown once; saved in " \
                   f"{event['admin_password_file']})"
    else:
        password = f"see {event['admin_password_file']}"
    return (
        f"vmcrypt up: ready — web UI {event['ui']}\n"
        f"  log in as:    {event['admin_user']}\n"
        f"  password:     {password}\n"
        f"  API:          {event['api']}\n"
        f"  OpenAPI docs: {event['docs']}\n"
        f"  admin token:  {token}  (saved in {token_file})\n"
        f"  CA:           {event['ca']}\n"
        "  try it from another shell:\n"
        f"    export VMCRYPT_URL={base} VMCRYPT_CA={event['ca']} "
        f"VMCRYPT_TOKEN_FILE={token_file}\n"
        f"    {cli} vm create vm1 --host esx-1 --datastore ds-cluster-1 --disk 64M "
        "--policy vm-encryption\n"
        f"    {cli} vm ls; {cli} events --limit 10\n"
        "  Ctrl-C stops everything.\n"
    )
