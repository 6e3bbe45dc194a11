#!/usr/bin/env python3
"""Control plane benchmark: encrypted VM creation rate, and unlock time after a host restart.

What is measured (issue 4, "Benchmark bench/control.py"):

1. **Create** ``--vms`` (default 200) encrypted VMs one after the other through
   ``POST /api/v1/vms`` (one 1 MiB disk each, the encryption storage policy whose
   provider is the standard KMIP provider), timing every request: VMs per second, p50
   and p99 latency. Each request makes a KEK on the KMS, records its ID, pushes the KEK
   to both hosts of the cluster and has the VM's host create its home and its disk.
2. **Restart** a host of the cluster once ``--registered`` (default 1,000) encrypted VMs
   are registered on it (the VMs of part 1 count; the rest are created through the same
   API route, untimed). The host is replaced by a fresh host agent with an empty key
   cache on the same datastore (what a restarted process is), then
   ``POST /api/v1/hosts/{id}/reconnect`` is timed: the control plane fetches every KEK
   by ID from the KMS (the provider batches the Gets) and pushes each to the host. The
   figure is the time until the reply says every VM is unlocked (no VM locked, one KEK
   pushed per VM, and the host's cache holds them all). The KMIP messages the re-push
   sent are counted by wrapping ``KmipClient.send`` in this process, and the time spent
   fetching (``StandardKeyProvider.get_keks``) is shown apart from the total.

The pieces, all on this machine in this process:

- a real KMS: :class:`vmcrypt.kms.server.KmsServer` on a local port, mutual TLS with an
  EC PKI from :func:`vmcrypt.pki.init_pki`, its SQLite store in the work folder;
- the control plane app (``vmcrypt.control.api.create_app``) on SQLite in the work
  folder, served by uvicorn in a thread on 127.0.0.1 and called over **real HTTP** with
  keep-alive (plain HTTP, not TLS: a benchmark of the control plane's own work; ``vmcrypt
  control serve`` adds TLS in front);
- two host agents of one cluster sharing one datastore folder, reached **in process**
  through the connector the API tests use (``vmcrypt.host.api.app.create_app`` behind
  Starlette's TestClient). Real ``vmcrypt host serve`` processes would need the
  enrolment flow and a host PKI for each; the in-process agents run the same host code
  (key cache, datastore, disk encryption) without the mutual-TLS hop to the host, so
  the figures leave out one loopback TLS request per host call.

The work folder is a temporary folder (``--dir`` puts it elsewhere) removed at the end,
Ctrl-C included, after the servers stop. ``--json`` prints the figures for scripts.
Run with ``make bench`` or ``.venv/bin/python bench/control.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

DISK = 1 << 20
API = "/api/v1"
TARGET_UNLOCK_S = 5.0
HOST_NAMES = ("esx-a", "esx-b")


class Hosts:
    """The connector: host name → an in-process host app (replaceable: a restart)."""

    def __init__(self, datastore: Path) -> None:
        self.datastore = datastore
        self.apps: dict[str, Any] = {}
        self.states: dict[str, Any] = {}

    def start(self, name: str) -> None:
        """A host agent with an empty key cache on the shared datastore (a fresh process)."""
        from vmcrypt.host.api.app import create_app as create_host_app
        from vmcrypt.host.api.state import HostState
        from vmcrypt.host.datastore import Datastore

        state = HostState(name=name, hardware_uuid=str(uuid.uuid4()),
                          datastore=Datastore(self.datastore))
        self.states[name] = state
        self.apps[name] = create_host_app(state)

    def client(self, host: Any) -> Any:
        from starlette.testclient import TestClient

        from vmcrypt.control.hostclient import HostClient

        return HostClient(host.name, TestClient(self.apps[host.name], base_url="http://h"))

    def kek_count(self, name: str) -> int:
        return len(list(self.states[name].cache.key_ids()))


class KmipCounter:
    """Counts KMIP request messages sent by ``KmipClient`` in this process."""

    def __init__(self) -> None:
        self.messages = 0
        self.fetch_s = 0.0  # time in StandardKeyProvider.get_keks (batched KMIP Gets)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[KmipCounter]:
        from vmcrypt.kmip.client import KmipClient
        from vmcrypt.providers import StandardKeyProvider

        original, original_get = KmipClient.send, StandardKeyProvider.get_keks
        counter = self

        def send(self: Any, *args: Any, **kwargs: Any) -> Any:
            with counter._lock:
                counter.messages += 1
            return original(self, *args, **kwargs)

        def get_keks(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original_get(self, *args, **kwargs)
            finally:
                with counter._lock:
                    counter.fetch_s += time.perf_counter() - t0

        KmipClient.send = send  # type: ignore[method-assign]
        StandardKeyProvider.get_keks = get_keks  # type: ignore[method-assign]
        try:
            yield self
        finally:
            KmipClient.send = original  # type: ignore[method-assign]
            StandardKeyProvider.get_keks = original_get  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def kms_server(work: Path, pki: Any) -> Iterator[Any]:
    from vmcrypt.kms.server import KmsConfig, KmsServer

    config = KmsConfig(database=work / "kms.db", cert_file=pki.server.cert,
                       key_file=pki.server.key, ca_file=pki.ca.cert, port=0)
    server = KmsServer(config, master_key=os.urandom(32))
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


@contextlib.contextmanager
def control_server(work: Path, hosts: Hosts) -> Iterator[tuple[str, str]]:
    """The control app under uvicorn in a thread: (base URL, admin token)."""
    import uvicorn

    from vmcrypt.control.api import create_app
    from vmcrypt.control.db.engine import open_database
    from vmcrypt.control.db.repo import create_user, issue_token
    from vmcrypt.control.privileges import ADMINISTRATOR

    database = open_database(work / "control.db")
    try:
        with database.transaction() as session:
            user = create_user(session, name="bench", role=ADMINISTRATOR)
            token = issue_token(session, user_id=user.id).token
        app = create_app(database, master_key=secrets.token_bytes(32), hosts=hosts)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning", access_log=False,
                                               lifespan="off"))
        thread = threading.Thread(target=server.run, name="control-api", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the control plane did not start")
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}", token
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    finally:
        database.close()


def post(http: httpx.Client, path: str, body: object | None = None,
         expect: int = 201) -> dict[str, Any]:
    response = http.post(API + path, json=body)
    if response.status_code != expect:
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")
    result: dict[str, Any] = response.json()
    return result


def setup(http: httpx.Client, pki: Any, kms_port: int, datastore: Path) -> dict[str, int]:
    """The cluster, its two hosts, the datastore, the standard provider, the policy."""
    ids = {"cluster": int(post(http, "/clusters", {"name": "c1"})["id"])}
    for name in HOST_NAMES:
        ids[name] = int(post(http, "/hosts", {
            "name": name, "hardware_uuid": str(uuid.uuid4()), "cluster_id": ids["cluster"],
            "api_url": f"https://{name}:8443"})["id"])
    ids["datastore"] = int(post(http, "/datastores", {
        "name": "ds", "path": str(datastore), "cluster_id": ids["cluster"]})["id"])
    client = pki.clients["admin"]
    ids["provider"] = int(post(http, "/key-providers/standard", {
        "name": "kmip", "is_default": True, "kms_servers": [{
            "name": "kms1", "address": "127.0.0.1", "port": kms_port,
            "ca_pem": pki.ca.cert.read_text(), "client_cert_pem": client.cert.read_text(),
            "client_key_path": str(client.key)}]})["id"])
    ids["policy"] = int(post(http, "/storage-policies",
                             {"name": "enc", "encryption": True})["id"])
    return ids


def create_vm(http: httpx.Client, ids: dict[str, int], index: int) -> None:
    host = HOST_NAMES[index % len(HOST_NAMES)]
    vm = post(http, "/vms", {"name": f"vm-{index:05d}", "datastore_id": ids["datastore"],
                             "host_id": ids[host], "disks": [DISK],
                             "storage_policy_id": ids["policy"]})
    if not vm["encrypted"]:
        raise RuntimeError(f"VM {vm['name']} was created unencrypted")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from vmcrypt.pki import init_pki

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    pki = init_pki(work / "pki", key_type="ec")
    datastore = work / "ds"
    datastore.mkdir()
    hosts = Hosts(datastore)
    for name in HOST_NAMES:
        hosts.start(name)
    counter = KmipCounter()
    with kms_server(work, pki) as kms, control_server(work, hosts) as (url, token), \
            httpx.Client(base_url=url, timeout=300,
                         headers={"Authorization": f"Bearer {token}"}) as http, \
            counter.installed():
        ids = setup(http, pki, kms.address[1], datastore)
        for index in range(min(3, args.vms)):  # warm-up: connections, caches, imports
            create_vm(http, ids, 1_000_000 + index)
        warm = min(3, args.vms)

        say(f"creating {args.vms} encrypted VMs through POST {API}/vms …")
        latencies = []
        start = time.perf_counter()
        for index in range(args.vms):
            t0 = time.perf_counter()
            create_vm(http, ids, index)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        create = {"vms": args.vms, "seconds": elapsed, "vms_per_s": args.vms / elapsed,
                  "p50_ms": percentile(latencies, 50) * 1000,
                  "p99_ms": percentile(latencies, 99) * 1000,
                  "max_ms": max(latencies) * 1000}

        more = max(0, args.registered - args.vms - warm)
        say(f"registering {more} more encrypted VMs (untimed) …")
        for index in range(args.vms, args.vms + more):
            create_vm(http, ids, index)
        registered = args.vms + warm + more

        restarted = HOST_NAMES[0]
        say(f"restarting {restarted} (empty key cache) and timing POST /hosts/{{id}}/reconnect …")
        hosts.start(restarted)
        if hosts.kek_count(restarted):
            raise RuntimeError("the restarted host's key cache is not empty")
        before, fetch_before = counter.messages, counter.fetch_s
        t0 = time.perf_counter()
        report = post(http, f"/hosts/{ids[restarted]}/reconnect", expect=200)
        unlock_s = time.perf_counter() - t0
        messages = counter.messages - before
        fetch_s = counter.fetch_s - fetch_before
        cached = hosts.kek_count(restarted)
        all_unlocked = (report["connected"] and not report["locked"]
                        and report["pushed"] == registered and cached == registered)
        if not all_unlocked:
            raise RuntimeError(f"reconnect left VMs locked or keys missing: pushed "
                               f"{report['pushed']}, cached {cached}, locked "
                               f"{len(report['locked'])} of {registered}")
        restart = {"registered_vms": registered, "seconds": unlock_s,
                   "keys_pushed": report["pushed"], "keys_cached": cached,
                   "locked": len(report["locked"]), "kmip_messages": messages,
                   "kms_fetch_s": fetch_s}
    return {"create": create, "restart": restart,
            "targets": {"unlock_s": {"target": TARGET_UNLOCK_S, "value": unlock_s,
                                     "pass": unlock_s < TARGET_UNLOCK_S}}}


def report(results: dict[str, Any]) -> None:
    c, r = results["create"], results["restart"]
    ok = "PASS" if results["targets"]["unlock_s"]["pass"] else "MISS"
    print(f"""
create encrypted VMs via POST {API}/vms (1 MiB disk, standard provider)
  VMs created                      {c['vms']:>10,}
  VMs per second                   {c['vms_per_s']:>10.1f}
  latency p50                      {c['p50_ms']:>10.1f} ms
  latency p99                      {c['p99_ms']:>10.1f} ms
  latency max                      {c['max_ms']:>10.1f} ms

host restart: POST {API}/hosts/{{id}}/reconnect
  registered encrypted VMs         {r['registered_vms']:>10,}
  KEKs pushed / in host cache      {r['keys_pushed']:>5,} / {r['keys_cached']:,}
  VMs left locked                  {r['locked']:>10,}
  KMIP messages for the re-push    {r['kmip_messages']:>10,}
  time until all unlocked          {r['seconds']:>10.3f} s
  of which: KEK fetch from the KMS {r['kms_fetch_s']:>9.3f} s

targets
  {r['registered_vms']:,} VMs unlocked after a host restart < {TARGET_UNLOCK_S:g} s \
{r['seconds']:>12.3f} s  {ok}""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--vms", type=int, default=200,
                        help="encrypted VMs to create, timed (default 200)")
    parser.add_argument("--registered", type=int, default=1000,
                        help="encrypted VMs registered when the host restarts (default 1000)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="parent of the temporary work folder (default: the system's)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.vms < 1 or args.registered < 1:
        parser.error("--vms and --registered must be at least 1")
    logging.getLogger("vmcrypt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Using `httpx` with")  # starlette TestClient

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    work = Path(tempfile.mkdtemp(prefix="vmcrypt-bench-control-", dir=args.dir))
    try:
        results = run(args, work)
    except KeyboardInterrupt:
        print("interrupted: servers stopped, work folder removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
