#!/usr/bin/env python3
"""KMS benchmark: ``vmcrypt kms serve`` against PyKMIP's own server, in one run, over TLS.

Both servers run as real subprocesses on this machine, in the same run: ``vmcrypt kms
serve`` and the peer, PyKMIP 0.11's demo server ``pykmip-server`` (auth suite TLS1.2).
What is measured:

- Create+Get round trips per second (Create an AES-256 key, then Get it back by its
  UID), one client on one connection;
- KMIP operations per second with 8 concurrent clients, each on its own connection;
- the time to fetch 1,000 KEKs (AES-256 keys) by ID one by one (1,000 Get messages) and
  in batched messages (``KmipClient.get_keys``: 500 Get batch items per message).

How the comparison is kept fair:

- Same client against both servers. Server throughput is measured with vmcrypt's
  ``KmipClient`` against ours *and* against pykmip-server; PyKMIP's own
  ``ProxyKmipClient`` is also measured against both, for reference (it shows how much of
  a figure is the client). The target ratio uses the same-client figures.
- Same transport: one PKI (a CA, an RSA 2048 server certificate for both servers, an
  RSA 2048 client certificate), mutual TLS on both, loopback, persistent connections;
  the handshake and a warm-up (``--warmup`` seconds) happen before the clock starts.
  TLS is what each server negotiates: 1.3 for ours, 1.2 for pykmip-server (its TLS1.2
  suite pins it); with ~100-byte messages the record protection is noise either way.
- Same storage: each server keeps its keys in its own SQLite file, and both files live
  in one work folder, on tmpfs (/dev/shm) by default. Our store commits in WAL mode with
  synchronous=NORMAL, PyKMIP's in rollback-journal mode with synchronous=FULL, so on a
  real disk PyKMIP would also pay for two or more fsyncs per Create; tmpfs takes the disk
  out and compares the servers' code. ``--dir`` puts the work folder elsewhere.
- Same clock: each figure runs ``--seconds`` (default 3) after its warm-up, in
  ``--rounds`` (default 2) rounds that alternate the servers; the best round counts.
- One "operation" is one KMIP operation: a Create+Get pair counts as 2.
- 8 clients are 8 processes by default (``--processes``), each with its own connection.
  ``--threads`` runs them as 8 threads of this process instead; a KMIP client spends most
  of its time encoding, decoding and in TLS under the GIL, so 8 threads cannot drive
  more than one core's worth of requests and would measure the client, not the server.
  The machine is shared: clients and server compete for the same cores.

Run with ``make bench`` (after the disk benchmark) or ``.venv/bin/python bench/kms.py``.
``--json`` prints the figures for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from vmcrypt.pki import client_context, init_pki

OPS_PER_PAIR = 2  # Create + Get
TARGET_RATIO = 5.0
TARGET_OPS_8 = 1000.0
TARGET_BATCH_S = 1.0
OURS, PEER = "vmcrypt", "pykmip"
CLIENT_OURS, CLIENT_PYKMIP = "KmipClient", "ProxyKmipClient"
CLIENT_TITLES = {CLIENT_OURS: "vmcrypt KmipClient", CLIENT_PYKMIP: "PyKMIP ProxyKmipClient"}


@dataclass(frozen=True)
class Identity:
    """The client's PKI files (shared by both servers) and an empty PyKMIP config file."""

    ca: Path
    cert: Path
    key: Path
    pykmip_conf: Path


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    port: int


class PairClient(Protocol):
    def pair(self) -> None: ...
    def close(self) -> None: ...


def have_our_client() -> bool:
    """Whether ``vmcrypt.kmip.client`` (vmcrypt's KMIP client) is installed."""
    return importlib.util.find_spec("vmcrypt.kmip.client") is not None


def quiet() -> None:
    """PyKMIP and SQLAlchemy print deprecation warnings on import: not our figures."""
    warnings.simplefilter("ignore")


class OurPairClient:
    def __init__(self, ep: Endpoint, ident: Identity) -> None:
        from vmcrypt.kmip.client import KmipClient

        context = client_context(ca_file=ident.ca, cert_file=ident.cert, key_file=ident.key)
        self.client = KmipClient(ep.host, ep.port, ssl_context=context)

    def pair(self) -> None:
        uid = self.client.create_symmetric_key(length=256)
        if len(self.client.get_key(uid)) != 32:
            raise RuntimeError(f"Get {uid} did not return a 256-bit key")

    def close(self) -> None:
        self.client.close()


class PyKmipPairClient:
    def __init__(self, ep: Endpoint, ident: Identity) -> None:
        quiet()
        from kmip.pie.client import ProxyKmipClient  # type: ignore[import-untyped]

        self.client = ProxyKmipClient(hostname=ep.host, port=ep.port, cert=str(ident.cert),
                                      key=str(ident.key), ca=str(ident.ca),
                                      config_file=str(ident.pykmip_conf))
        self.client.open()

    def pair(self) -> None:
        from kmip import enums  # type: ignore[import-untyped]

        uid = self.client.create(enums.CryptographicAlgorithm.AES, 256)
        if len(self.client.get(uid).value) != 32:
            raise RuntimeError(f"Get {uid} did not return a 256-bit key")

    def close(self) -> None:
        self.client.close()


def make_client(kind: str, ep: Endpoint, ident: Identity) -> PairClient:
    return OurPairClient(ep, ident) if kind == CLIENT_OURS else PyKmipPairClient(ep, ident)


# --- one client's loop (also the body of each of the 8 threads or processes) ----------

def pair_loop(kind: str, ep: Endpoint, ident: Identity, warmup: float, seconds: float,
              barrier: Any) -> tuple[int, float]:
    """Connect, warm up, wait for the others, then count Create+Get pairs for ``seconds``."""
    try:
        client = make_client(kind, ep, ident)
    except BaseException:
        barrier.abort()
        raise
    try:
        try:
            end = time.perf_counter() + warmup
            while time.perf_counter() < end:
                client.pair()
        except BaseException:
            barrier.abort()
            raise
        barrier.wait(timeout=300)
        count = 0
        start = time.perf_counter()
        end = start + seconds
        while time.perf_counter() < end:
            client.pair()
            count += 1
        return count, time.perf_counter() - start
    finally:
        client.close()


def _process_main(queue: Any, kind: str, ep: Endpoint, ident: Identity, warmup: float,
                  seconds: float, barrier: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent cleans up
    quiet()
    try:
        queue.put(("ok", pair_loop(kind, ep, ident, warmup, seconds, barrier)))
    except threading.BrokenBarrierError:
        queue.put(("error", "another client failed"))
    except Exception as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def concurrent_pairs(kind: str, ep: Endpoint, ident: Identity, *, clients: int,
                     processes: bool, warmup: float, seconds: float) -> float:
    """Create+Get pairs/s summed over ``clients`` clients, one connection each."""
    results: list[tuple[int, float]] = []
    errors: list[str] = []
    if processes:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        mp_barrier = ctx.Barrier(clients)
        procs = [ctx.Process(target=_process_main, daemon=True,
                             args=(queue, kind, ep, ident, warmup, seconds, mp_barrier))
                 for _ in range(clients)]
        try:
            for proc in procs:
                proc.start()
            for _ in procs:
                status, value = queue.get(timeout=warmup + seconds + 300)
                (results if status == "ok" else errors).append(value)
            for proc in procs:
                proc.join(timeout=30)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                    proc.join()
    else:
        barrier = threading.Barrier(clients)
        lock = threading.Lock()

        def run() -> None:
            try:
                outcome = pair_loop(kind, ep, ident, warmup, seconds, barrier)
            except threading.BrokenBarrierError:
                with lock:
                    errors.append("another client failed")
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            else:
                with lock:
                    results.append(outcome)

        threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    real = [e for e in errors if e != "another client failed"] or errors
    if real:
        raise RuntimeError(real[0])
    return sum(count / elapsed for count, elapsed in results)


def single_pairs(kind: str, ep: Endpoint, ident: Identity, *, warmup: float,
                 seconds: float) -> float:
    count, elapsed = pair_loop(kind, ep, ident, warmup, seconds, threading.Barrier(1))
    return count / elapsed


def fetch_keys(ep: Endpoint, ident: Identity, *, keys: int, rounds: int,
               batch_size: int) -> tuple[float, float]:
    """Best seconds to Get ``keys`` keys one by one, and in batched messages (ours only)."""
    from vmcrypt.kmip.client import KmipClient

    context = client_context(ca_file=ident.ca, cert_file=ident.cert, key_file=ident.key)
    with KmipClient(ep.host, ep.port, ssl_context=context) as client:
        uids = [client.create_symmetric_key(length=256, name=f"bench-kek-{i}")
                for i in range(keys)]
        client.get_keys(uids[:10], batch_size=batch_size)  # warm-up
        one = batched = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            singles = [client.get_key(uid) for uid in uids]
            one = min(one, time.perf_counter() - start)
            start = time.perf_counter()
            together = client.get_keys(uids, batch_size=batch_size)
            batched = min(batched, time.perf_counter() - start)
            if together != singles or any(len(k) != 32 for k in singles):
                raise RuntimeError(f"{ep.name}: batched Get returned other keys than single Gets")
    return one, batched


# --- the two servers -------------------------------------------------------------------

def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the server's process group (pykmip-server forks a policy manager), then kill."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left in the group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def venv_tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is missing: run `make bench`, which installs the venv")
    return found


def start_ours(work: Path, pki: Path, procs: list[subprocess.Popen[Any]]) -> Endpoint:
    log = work / "vmcrypt-kms.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [venv_tool("vmcrypt"), "kms", "serve", "--data-dir", str(work / "vmcrypt-kms"),
             "--port", "0", "--json", "--log-level", "warning", "--cert",
             str(pki / "server.pem"), "--key", str(pki / "server.key"), "--ca",
             str(pki / "ca.pem")],
            stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    procs.append(proc)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else b""
    if not line:
        raise SystemExit(f"vmcrypt kms serve did not start:\n{_tail(log)}")
    info = json.loads(line)
    return Endpoint(OURS, info["host"], int(info["port"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_peer(work: Path, pki: Path, procs: list[subprocess.Popen[Any]]) -> Endpoint:
    """pykmip-server with mutual TLS (TLS1.2 suite), its own SQLite file, no policies."""
    port = free_port()  # pykmip-server refuses port 0
    (work / "pykmip-policies").mkdir()
    conf = work / "pykmip-server.conf"
    conf.write_text(
        "[server]\n"
        "hostname=127.0.0.1\n"
        f"port={port}\n"
        f"certificate_path={pki / 'server.pem'}\n"
        f"key_path={pki / 'server.key'}\n"
        f"ca_path={pki / 'ca.pem'}\n"
        "auth_suite=TLS1.2\n"
        "enable_tls_client_auth=True\n"
        f"policy_path={work / 'pykmip-policies'}\n"
        "logging_level=WARNING\n"
        f"database_path={work / 'pykmip.db'}\n")
    log = work / "pykmip-server.log"
    with (work / "pykmip-server.stderr").open("wb") as err:
        proc = subprocess.Popen([venv_tool("pykmip-server"), "-f", str(conf), "-l", str(log)],
                                stdout=err, stderr=err, start_new_session=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
    procs.append(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pykmip-server exited ({proc.returncode}):\n{_tail(log)}\n"
                             f"{_tail(work / 'pykmip-server.stderr')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return Endpoint(PEER, "127.0.0.1", port)
        time.sleep(0.1)
    raise SystemExit(f"pykmip-server did not listen on port {port}:\n{_tail(log)}")


def tls_version(ep: Endpoint, ident: Identity) -> str:
    """The TLS version the server negotiates with our client context (handshake only)."""
    context = client_context(ca_file=ident.ca, cert_file=ident.cert, key_file=ident.key)
    with socket.create_connection((ep.host, ep.port), 10) as raw, \
            context.wrap_socket(raw, server_hostname=ep.host) as tls:
        version = tls.version() or "?"
        with contextlib.suppress(OSError, ssl.SSLError):
            tls.unwrap()
        return version


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so the ``finally`` blocks stop servers and clean up."""
    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the run -------------------------------------------------------------------------------

def store_fetch(fetch: dict[str, dict[str, float]], name: str,
                times: tuple[float, float]) -> None:
    fetch[name] = {"one_by_one_s": times[0], "batched_s": times[1]}


def best(values: list[float]) -> float | None:
    return max(values) if values else None


def measure(args: argparse.Namespace, log: Callable[..., None]) -> dict[str, Any]:
    base = args.dir if args.dir else ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    work = Path(tempfile.mkdtemp(prefix="vmcrypt-kms-bench-", dir=base))
    procs: list[subprocess.Popen[Any]] = []
    try:
        pki = work / "pki"
        init_pki(pki, key_type="rsa", clients=("bench",))
        (work / "pykmip-client.conf").write_text("")
        ident = Identity(pki / "ca.pem", pki / "bench.pem", pki / "bench.key",
                         work / "pykmip-client.conf")
        log(f"work folder {work}; starting vmcrypt kms serve and pykmip-server…")
        servers = [start_ours(work, pki, procs), start_peer(work, pki, procs)]
        tls = {ep.name: tls_version(ep, ident) for ep in servers}
        log("listening: " + ", ".join(f"{ep.name} {ep.host}:{ep.port} ({tls[ep.name]})"
                                      for ep in servers))
        kinds = ([CLIENT_OURS] if have_our_client() else []) + [CLIENT_PYKMIP]
        if CLIENT_OURS not in kinds:
            log("vmcrypt.kmip.client is not installed yet: PyKMIP's client only")
        mode = "processes" if args.processes else "threads"
        single: dict[str, dict[str, list[float]]] = {k: {OURS: [], PEER: []} for k in kinds}
        multi: dict[str, dict[str, list[float]]] = {k: {OURS: [], PEER: []} for k in kinds}
        failures: dict[str, str] = {}
        def attempt(what: str, fn: Callable[[], Any], sink: Callable[[Any], None],
                    prefix: str = "") -> None:
            """Run one measurement; a failure is reported, and that measurement not repeated."""
            if what in failures:
                return
            log(f"{prefix}{what}…")
            try:
                sink(fn())
            except Exception as exc:
                failures[what] = f"{type(exc).__name__}: {exc}"
                log(f"  failed: {failures[what]}")

        for round_no in range(1, args.rounds + 1):
            for kind in kinds:
                for ep in servers:
                    attempt(f"{kind} → {ep.name}, one client",
                            partial(single_pairs, kind, ep, ident, warmup=args.warmup,
                                    seconds=args.seconds),
                            single[kind][ep.name].append, f"round {round_no}: ")
                    attempt(f"{kind} → {ep.name}, {args.clients} clients ({mode})",
                            partial(concurrent_pairs, kind, ep, ident, clients=args.clients,
                                    processes=args.processes, warmup=args.warmup,
                                    seconds=args.seconds),
                            multi[kind][ep.name].append, f"round {round_no}: ")
        fetch: dict[str, dict[str, float]] = {}
        if CLIENT_OURS in kinds:
            for ep in servers:
                attempt(f"fetching {args.keys} keys from {ep.name} one by one and batched",
                        partial(fetch_keys, ep, ident, keys=args.keys, rounds=args.rounds,
                                batch_size=args.batch_size),
                        partial(store_fetch, fetch, ep.name))
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    storage = "tmpfs" if base == "/dev/shm" else str(base or tempfile.gettempdir())
    return {
        "machine_cpus": os.cpu_count(),
        "storage": storage,
        "tls": tls,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "clients": args.clients,
        "client_mode": mode,
        "keys": args.keys,
        "batch_size": args.batch_size,
        "single_pairs_per_s": {k: {s: best(v) for s, v in d.items()} for k, d in single.items()},
        "concurrent_ops_per_s": {k: {s: (b * OPS_PER_PAIR if (b := best(v)) else None)
                                     for s, v in d.items()} for k, d in multi.items()},
        "fetch": fetch,
        "failures": failures,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def judge(result: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target; met is None when not measured."""
    kind = CLIENT_OURS if CLIENT_OURS in result["single_pairs_per_s"] else None
    single = result["single_pairs_per_s"].get(kind or "", {})
    r = ratio(single.get(OURS), single.get(PEER))
    ops = result["concurrent_ops_per_s"].get(kind or "", {}).get(OURS)
    batched = result["fetch"].get(OURS, {}).get("batched_s")
    return [
        (f"≥ {TARGET_RATIO:g}× pykmip-server's Create+Get/s, one client (same client)",
         f"{r:.2f}×" if r is not None else "—", None if r is None else r >= TARGET_RATIO),
        (f"≥ {TARGET_OPS_8:,.0f} KMIP ops/s with {result['clients']} clients on vmcrypt",
         f"{ops:,.0f}/s" if ops is not None else "—",
         None if ops is None else ops >= TARGET_OPS_8),
        (f"{result['keys']:,} keys in batched messages < {TARGET_BATCH_S:g} s",
         f"{batched:.3f} s" if batched is not None else "—",
         None if batched is None else batched < TARGET_BATCH_S),
    ]


def fmt(value: float | None, spec: str = ">9.0f") -> str:
    return format(value, spec) if value is not None else f"{'—':>9}"


def report(result: dict[str, Any]) -> None:
    tls = result["tls"]
    print(f"\nservers  vmcrypt kms serve ({tls[OURS]}) and pykmip-server 0.11 ({tls[PEER]}), "
          f"mutual TLS, one RSA 2048 PKI, SQLite on {result['storage']}; "
          f"{result['machine_cpus']} CPUs")
    print(f"figures  best of {result['rounds']} rounds of {result['seconds']:g} s each, "
          "warm-up excluded; one KMIP operation = one Create or one Get\n")
    print(f"{'Create+Get pairs/s, 1 client':<34}{'vmcrypt':>9}{'pykmip':>9}{'ratio':>9}")
    for kind, by_server in result["single_pairs_per_s"].items():
        r = ratio(by_server[OURS], by_server[PEER])
        print(f"{'client ' + CLIENT_TITLES[kind]:<34}{fmt(by_server[OURS])}"
              f"{fmt(by_server[PEER])}{fmt(r, '>8.2f')}×")
    n, mode = result["clients"], result["client_mode"]
    print(f"\n{f'KMIP ops/s, {n} clients ({mode})':<34}{'vmcrypt':>9}{'pykmip':>9}{'ratio':>9}")
    for kind, by_server in result["concurrent_ops_per_s"].items():
        r = ratio(by_server[OURS], by_server[PEER])
        print(f"{'client ' + CLIENT_TITLES[kind]:<34}{fmt(by_server[OURS])}"
              f"{fmt(by_server[PEER])}{fmt(r, '>8.2f')}×")
    if result["fetch"]:
        keys, size = result["keys"], result["batch_size"]
        print(f"\n{f'fetch {keys:,} keys by ID (s)':<34}{'vmcrypt':>9}{'pykmip':>9}")
        rows = [("one by one (Get per message)", "one_by_one_s"),
                (f"batched ({size} Gets per message)", "batched_s")]
        for title, key in rows:
            print(f"{title:<34}" + "".join(fmt(result["fetch"].get(s, {}).get(key), ">9.3f")
                                           for s in (OURS, PEER)))
        speed = [ratio(result["fetch"].get(s, {}).get("one_by_one_s"),
                       result["fetch"].get(s, {}).get("batched_s")) for s in (OURS, PEER)]
        print(f"{'speed-up of batching':<34}" + "".join(
            (fmt(v, ">8.1f") + "×") if v is not None else f"{'—':>9}" for v in speed))
    for what, error in result["failures"].items():
        print(f"\nfailed: {what}: {error}")
    print("\ntargets")
    for target, measured, met in judge(result):
        verdict = "not measured" if met is None else ("PASS" if met else "MISS")
        print(f"  {target:<64}{measured:>11}  {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="seconds per measurement, after the warm-up (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of warm-up per connection, not counted (default 1)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of each measurement, alternating the servers; the best "
                             "counts (default 2)")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent clients, one connection each (default 8)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--processes", dest="processes", action="store_true", default=True,
                      help="run the concurrent clients as processes (default)")
    mode.add_argument("--threads", dest="processes", action="store_false",
                      help="run the concurrent clients as threads of this process")
    parser.add_argument("--keys", type=int, default=1000,
                        help="keys to fetch by ID (default 1000)")
    parser.add_argument("--batch-size", type=int, default=500,
                        help="Get batch items per message in the batched fetch (default 500)")
    parser.add_argument("--dir", default=None,
                        help="work folder for the PKI and both databases "
                             "(default: a temp folder on /dev/shm)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    quiet()

    def log(*parts: object) -> None:
        if not args.json:
            print(*parts, file=sys.stderr, flush=True)

    try:
        with interrupts_raise():
            result = measure(args, log)
    except KeyboardInterrupt:
        print("interrupted: servers stopped, work folder removed", file=sys.stderr)
        return 130
    result["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in judge(result)]
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
