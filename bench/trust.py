#!/usr/bin/env python3
"""Trust Authority benchmark: attestations and KEK creations per second (issue 5).

Both servers run as real subprocesses on this machine, over mutual TLS, in one run:
``vmcrypt kms serve`` and ``vmcrypt trust serve`` (in a temporary folder, on tmpfs when
there is one). One host — this process, with a client certificate from the Trust
Authority's CA and an ECDSA P-256 identity key — is registered with a baseline made
from this install. What is measured, each for ``--seconds`` after a warm-up, one
request at a time on one keep-alive connection:

- **attestations/s**: a nonce (``POST /attestation/nonce``), the evidence signed with
  the host's identity key, a token (``POST /attestation/token``: signature, nonce and
  baseline checked, an ES256 token signed). The host's measurements are taken once
  (a real host measures at start, then signs each nonce).
- **KEK creations/s**: ``POST /key-providers/{name}/keks`` — 32 random bytes wrapped
  by the provider's primary key **inside the KMS** (one KMIP Encrypt, AES-GCM).
- **unwraps/s**: ``POST /key-providers/{name}/unwrap`` (one KMIP Decrypt).

The limits they are compared with, measured in the same run on the same machine:

- **HTTPS floor**: ``GET /key-providers`` on the same connection (a request that does
  no work): an attestation is two requests, so its ceiling is half this rate;
- **KMIP floor**: KMIP Encrypt with the same kind of key, sent straight to the KMS with
  vmcrypt's ``KmipClient``. A KEK creation (or unwrap) is one HTTPS request plus one
  KMIP Encrypt (or Decrypt) done one after the other, so its ceiling is
  ``1 / (1/https + 1/kmip)``.

The ratios say how close each service gets to what it is built on. Run with ``make
bench`` or ``.venv/bin/python bench/trust.py``; ``--json`` prints the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vmcrypt.kmip.client import KmipClient
from vmcrypt.kmip.messages import ProtocolVersion
from vmcrypt.pki.layout import issue_client
from vmcrypt.pki.tls import client_context
from vmcrypt.trust.client import TrustClient
from vmcrypt.trust.measure import (
    build_evidence,
    load_or_create_identity,
    measure_host,
    public_key_pem,
)

START_TIMEOUT = 60.0
PROVIDER = "bench-tp"


def _vmcrypt(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmcrypt.cli.main", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VMCRYPT_KMS_MASTER_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def _server(args: list[str], log: Path) -> Iterator[dict[str, Any]]:
    """Start a ``serve`` command; its JSON listening line; killed (group) on exit."""
    with log.open("ab") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=_env(),
                                start_new_session=True)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT):
                raise SystemExit(f"{args[3]} did not start:\n{log.read_text()[-2000:]}")
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{args[3]} exited:\n{log.read_text()[-2000:]}")
        yield json.loads(line)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _cli(*args: str) -> Any:
    result = subprocess.run(_vmcrypt("trust", *args, "--json"), env=_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise SystemExit(f"vmcrypt trust {' '.join(args[:2])} failed: {result.stderr}")
    return json.loads(result.stdout)


def rate(fn: Callable[[], object], *, warmup: float, seconds: float) -> float:
    """Calls per second of ``fn`` over ``seconds``, after ``warmup`` seconds."""
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        fn()
    count, start = 0, time.perf_counter()
    end = start + seconds
    while (now := time.perf_counter()) < end:
        fn()
        count += 1
    return count / (now - start)


def measure(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    base = args.dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    work = Path(tempfile.mkdtemp(prefix="vmcrypt-trust-bench-", dir=base))
    try:
        with contextlib.ExitStack() as stack:
            log("starting vmcrypt kms serve and vmcrypt trust serve…")
            kms = stack.enter_context(_server(
                _vmcrypt("kms", "serve", "--data-dir", str(work / "kms"), "--port", "0",
                         "--json", "--log-level", "warning"), work / "kms.log"))
            trust = stack.enter_context(_server(
                _vmcrypt("trust", "serve", "--data-dir", str(work / "trust"), "--port", "0",
                         "--json", "--log-level", "warning"), work / "trust.log"))
            url, pki, kms_pki = trust["url"], work / "trust" / "pki", work / "kms" / "pki"
            admin = ["--url", url, "--pki", str(pki)]
            service = issue_client(kms_pki, "trust-authority")
            _cli("provider", "add", PROVIDER, "--kms", f"127.0.0.1:{kms['port']}",
                 "--kms-ca", str(kms_pki / "ca.pem"), "--kms-cert", str(service.cert),
                 "--kms-key", str(service.key), *admin)
            config = work / "host.json"
            config.write_text(json.dumps({"datastore": "/srv/ds"}))
            key = load_or_create_identity(work / "host.identity.key")
            public = work / "host.pub.pem"
            public.write_text(public_key_pem(key))
            _cli("host", "add", "bench-host", "--hardware-uuid", "uuid-bench",
                 "--public-key", str(public), *admin)
            _cli("baseline", "add", "bench", "--from-install", "--config", str(config),
                 *admin)
            files = issue_client(pki, "bench-host")
            host = stack.enter_context(TrustClient(url, ca_file=pki / "ca.pem",
                                                   cert_file=files.cert, key_file=files.key))
            measurements = measure_host(config=config.read_bytes())

            def attest() -> str:
                evidence = build_evidence(key=key, host_name="bench-host",
                                          hardware_uuid="uuid-bench", nonce=host.nonce(),
                                          measurements=measurements)
                return str(host.attest(evidence)["token"])

            token = attest()
            ciphertext = host.new_kek(PROVIDER, token)[1]
            figures: dict[str, float] = {}
            timing = {"warmup": args.warmup, "seconds": args.seconds}
            log("HTTPS floor (GET /key-providers)…")
            figures["https_requests_per_s"] = rate(
                lambda: host.request("GET", "/key-providers"), **timing)
            log("attestations…")
            figures["attestations_per_s"] = rate(attest, **timing)
            token = attest()
            log("KEK creations…")
            figures["kek_creations_per_s"] = rate(lambda: host.new_kek(PROVIDER, token),
                                                  **timing)
            log("unwraps…")
            figures["unwraps_per_s"] = rate(lambda: host.unwrap(PROVIDER, ciphertext, token),
                                            **timing)
            log("KMIP floor (KMIP Encrypt straight to the KMS)…")
            admin_kms = kms_pki / "admin.pem"
            context = client_context(ca_file=kms_pki / "ca.pem", cert_file=admin_kms,
                                     key_file=kms_pki / "admin.key")
            with KmipClient("127.0.0.1", int(kms["port"]), ssl_context=context,
                            version=ProtocolVersion(1, 4)) as kmip:
                uid = kmip.create_symmetric_key()
                kmip.activate(uid)
                kek = os.urandom(32)
                figures["kmip_encrypts_per_s"] = rate(
                    lambda: kmip.encrypt(uid, kek, aad=PROVIDER.encode()), **timing)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["attestation_vs_https_floor"] = figures["attestations_per_s"] / (
        figures["https_requests_per_s"] / 2)
    figures["kek_ceiling_per_s"] = 1 / (1 / figures["https_requests_per_s"]
                                        + 1 / figures["kmip_encrypts_per_s"])
    figures["kek_creation_vs_ceiling"] = (figures["kek_creations_per_s"]
                                          / figures["kek_ceiling_per_s"])
    figures["unwrap_vs_ceiling"] = figures["unwraps_per_s"] / figures["kek_ceiling_per_s"]
    return {"machine_cpus": os.cpu_count(), "storage": "tmpfs" if base == "/dev/shm"
            else str(base or tempfile.gettempdir()), **timing, **figures}


def report(result: dict[str, Any]) -> None:
    print(f"Trust Authority, one host, one connection ({result['machine_cpus']} CPUs, "
          f"{result['storage']}, {result['seconds']} s per figure)")
    print(f"{'':34}{'per s':>10}{'ceiling':>10}{'ratio':>9}")
    half = result["https_requests_per_s"] / 2
    kmip = result["kmip_encrypts_per_s"]
    kek = result["kek_ceiling_per_s"]
    rows = [
        ("attestations (nonce + token)", result["attestations_per_s"], half,
         result["attestation_vs_https_floor"]),
        ("KEK creations (KMIP Encrypt)", result["kek_creations_per_s"], kek,
         result["kek_creation_vs_ceiling"]),
        ("KEK unwraps (KMIP Decrypt)", result["unwraps_per_s"], kek,
         result["unwrap_vs_ceiling"]),
    ]
    for name, value, ceiling, ratio in rows:
        print(f"{name:34}{value:>10.0f}{ceiling:>10.0f}{ratio:>8.2f}×")
    print(f"ceilings: HTTPS floor {result['https_requests_per_s']:.0f} requests/s (an "
          f"attestation is two requests); KMIP Encrypt {kmip:.0f}/s straight to the KMS (a "
          "KEK is one request plus one Encrypt)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--dir", type=Path, default=None,
                        help="work folder (default: a temporary folder on tmpfs)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    result = measure(args, log)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
