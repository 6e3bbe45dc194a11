"""The real processes: ``vmcrypt kms serve`` and ``vmcrypt trust serve`` over mutual TLS.

One KMS and one Trust Authority per test, on free ports in a temporary folder; hosts
are this test process with client certificates issued from the Trust Authority's CA and
identity keys made by :func:`load_or_create_identity`. What a host measures is a copy of
the installed vmcrypt tree (so edits elsewhere in the repository cannot race the test).
Child processes run in their own process groups and are killed on any failure.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from vmcrypt.exceptions import EXIT_CODES
from vmcrypt.kmip.client import KmipClient
from vmcrypt.pki.layout import cert_files, issue_client
from vmcrypt.pki.tls import client_context
from vmcrypt.trust.client import TrustClient
from vmcrypt.trust.exceptions import (
    AttestationFailed,
    KekCiphertextInvalid,
    KeyProviderUnavailable,
    TokenInvalid,
    TrustObjectNotFound,
)
from vmcrypt.trust.measure import (
    build_evidence,
    load_or_create_identity,
    measure_host,
    package_root,
    public_key_pem,
)

START_TIMEOUT = 30.0
TOKEN_TTL = 3


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VMCRYPT_KMS_MASTER_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _vmcrypt(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmcrypt.cli.main", *args]


@contextmanager
def _process(args: list[str], stderr_file: Path) -> Iterator[tuple[subprocess.Popen[bytes],
                                                                     dict[str, Any]]]:
    with stderr_file.open("ab") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=_env(),
                                start_new_session=True)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT):
                raise TimeoutError(f"no listening line: {stderr_file.read_text()[-2000:]}")
        line = proc.stdout.readline()
        assert line, f"the server exited: {stderr_file.read_text()[-2000:]}"
        listening = json.loads(line)
        assert listening["event"] == "listening"
        yield proc, listening
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


class Host:
    """A host as the Trust Authority sees it: certificate, identity key, measured tree."""

    def __init__(self, root: Path, name: str, pki: Path, url: str) -> None:
        self.name = name
        self.uuid = f"uuid-{name}"
        self.package = root / f"{name}-vmcrypt"
        shutil.copytree(package_root(), self.package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.config = root / f"{name}.json"
        self.config.write_text(json.dumps({"datastore": "/srv/ds", "cluster": "c1"}))
        self.key = load_or_create_identity(root / f"{name}.identity.key")
        self.public_key = root / f"{name}.pub.pem"
        self.public_key.write_text(public_key_pem(self.key))
        files = issue_client(pki, name)
        self.client = TrustClient(url, ca_file=pki / "ca.pem", cert_file=files.cert,
                                  key_file=files.key)

    def evidence(self, nonce: str | None = None) -> dict[str, str]:
        return build_evidence(
            key=self.key, host_name=self.name, hardware_uuid=self.uuid,
            nonce=nonce or self.client.nonce(),
            measurements=measure_host(config=self.config.read_bytes(), package=self.package))

    def token(self) -> str:
        return str(self.client.attest(self.evidence())["token"])


def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode(),
            base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]


def _hits(secret: bytes, paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        data = path.read_bytes()
        found += [f"{path}: {form[:8]!r}…" for form in _forms(secret) if form in data]
    return found


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _cli(*args: str) -> Any:
    result = subprocess.run(_vmcrypt("trust", *args, "--json"), env=_env(),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.timeout(120)
def test_attest_create_unwrap_and_every_refusal(tmp_path: Path) -> None:
    kms_dir, trust_dir = tmp_path / "kms", tmp_path / "trust"
    kms_log, trust_log = tmp_path / "kms.log", tmp_path / "trust.log"
    with ExitStack() as stack:
        kms, kms_listening = stack.enter_context(_process(
            _vmcrypt("kms", "serve", "--data-dir", str(kms_dir), "--port", "0", "--json"),
            kms_log))
        trust, listening = stack.enter_context(_process(
            _vmcrypt("trust", "serve", "--data-dir", str(trust_dir), "--port", "0", "--json",
                     "--token-ttl", str(TOKEN_TTL), "--kms-timeout", "2",
                     "--log-level", "debug"),
            trust_log))
        url, pki = listening["url"], trust_dir / "pki"
        admin_args = ["--url", url, "--pki", str(pki)]
        assert (trust_dir / "token-signing.key").stat().st_mode & 0o777 == 0o600

        # -- the administrator: provider (primary key made in the KMS), host, baseline --
        kms_pki = kms_dir / "pki"
        service = issue_client(kms_pki, "trust-authority")  # its own KMS identity
        provider = _cli("provider", "add", "tp1", "--kms", f"127.0.0.1:{kms_listening['port']}",
                        "--kms-ca", str(kms_pki / "ca.pem"), "--kms-cert", str(service.cert),
                        "--kms-key", str(service.key), *admin_args)
        key_id = provider["key_id"]
        a = Host(tmp_path, "host-a", pki, url)
        b = Host(tmp_path, "host-b", pki, url)
        _cli("host", "add", a.name, "--hardware-uuid", a.uuid,
             "--public-key", str(a.public_key), *admin_args)
        with TrustClient(url, ca_file=pki / "ca.pem", cert_file=pki / "admin.pem",
                         key_file=pki / "admin.key") as admin:
            admin.request("POST", "/hosts", json={
                "name": b.name, "hardware_uuid": b.uuid,
                "public_key_pem": b.public_key.read_text()})
        baseline = _cli("baseline", "add", "release-1", "--from-install", "--package",
                        str(a.package), "--config", str(a.config), *admin_args)
        assert baseline["measurements"] == measure_host(config=a.config.read_bytes(),
                                                        package=a.package)
        assert (trust_dir / "trust.json").stat().st_mode & 0o777 == 0o600
        assert [b["name"] for b in _cli("baseline", "ls", *admin_args)] == ["release-1"]
        assert _cli("provider", "ls", *admin_args)[0]["key_id"] == key_id
        again = subprocess.run(
            _vmcrypt("trust", "baseline", "add", "release-1", "--vmcrypt", "0" * 64,
                     "--config-hash", "0" * 64, *admin_args),
            env=_env(), capture_output=True, text=True, timeout=60, check=False)
        assert again.returncode == EXIT_CODES["TrustConflict"], again.stderr
        assert "already exists" in again.stderr and "Traceback" not in again.stderr
        assert [p["name"] for p in a.client.request("GET", "/key-providers")] == ["tp1"]

        # -- attest, create a KEK, unwrap it again -----------------------------------------
        token = a.token()
        token_issued = time.monotonic()
        kek, ciphertext, got_key_id = a.client.new_kek("tp1", token)
        assert len(kek) == 32 and got_key_id == key_id and len(ciphertext) == 1 + 12 + 16 + 32
        assert a.client.unwrap("tp1", ciphertext, token) == kek
        second, _, _ = a.client.new_kek("tp1", token)
        assert second != kek

        # -- refusals ----------------------------------------------------------------------
        evidence = a.evidence()
        a.client.attest(evidence)
        with pytest.raises(AttestationFailed, match="nonce reused"):
            a.client.attest(evidence)
        with pytest.raises(AttestationFailed, match="bad signature"):
            a.client.attest(build_evidence(key=b.key, host_name=a.name, hardware_uuid=a.uuid,
                                           nonce=a.client.nonce(),
                                           measurements=baseline["measurements"]))
        with pytest.raises(AttestationFailed, match="unknown host"):
            a.client.attest(build_evidence(key=a.key, host_name="host-z", hardware_uuid="z",
                                           nonce=a.client.nonce(),
                                           measurements=baseline["measurements"]))
        with pytest.raises(TokenInvalid, match="another host"):
            b.client.new_kek("tp1", token)
        with pytest.raises(TrustObjectNotFound, match="no-such"):
            a.client.new_kek("no-such", token)
        tampered = bytearray(ciphertext)
        tampered[-1] ^= 1
        with pytest.raises(KekCiphertextInvalid):
            a.client.unwrap("tp1", bytes(tampered), token)
        with pytest.raises(TokenInvalid):
            a.client.new_kek("tp1", "not-a-token")
        malformed = a.client._http.post("/attestation/token", content=b"{not json",
                                        headers={"content-type": "application/json"})
        assert malformed.status_code == 422 and "invalid request" in malformed.json()["detail"]
        refused = a.client._http.get("/baselines")
        assert refused.status_code == 403 and "not an administrator" in refused.json()["detail"]

        # -- a changed file fails attestation with the reason; restoring passes -----------
        target = a.package / "trust" / "measure.py"
        original = target.read_bytes()
        target.write_bytes(original + b"\n# tampered\n")
        with pytest.raises(AttestationFailed,
                           match="measurement 'vmcrypt' does not match any approved baseline"):
            a.token()
        target.write_bytes(original)
        a.token()
        a.config.write_text(a.config.read_text() + " ")
        with pytest.raises(AttestationFailed, match="measurement 'config'"):
            a.token()

        # -- the primary key is in the KMS (read by the test, never by the service) -------
        files = cert_files(kms_pki, "admin")
        context = client_context(ca_file=kms_pki / "ca.pem", cert_file=files.cert,
                                 key_file=files.key)
        with KmipClient("127.0.0.1", kms_listening["port"], ssl_context=context) as client:
            primary = client.get_key(key_id)
        assert len(primary) == 32

        # -- expiry ------------------------------------------------------------------------
        time.sleep(max(0.0, token_issued + TOKEN_TTL + 1.1 - time.monotonic()))
        with pytest.raises(TokenInvalid, match="expired"):
            a.client.unwrap("tp1", ciphertext, token)

        # -- the key server goes away: 503 and an event -----------------------------------
        fresh = b.token()
        _stop(kms)
        with pytest.raises(KeyProviderUnavailable, match="key provider unavailable"):
            b.client.new_kek("tp1", fresh)

        events = _cli("events", "--limit", "100", *admin_args)
        types = [e["type"] for e in events]
        assert "key_provider.unavailable" in types
        failed = [e for e in events if e["type"] == "attestation.failed"]
        reasons = {e["reason"] for e in failed}
        assert {"nonce reused", "bad signature", "unknown host",
                "measurement 'vmcrypt' does not match any approved baseline",
                "measurement 'config' does not match any approved baseline"} <= reasons
        assert any(e["type"] == "attestation.passed" and e["host"] == "host-a"
                   for e in events)
        hosts = {h["name"]: h for h in _cli("host", "ls", *admin_args)}
        assert hosts["host-a"]["last_attestation"]["type"] == "attestation.failed"
        _stop(trust)

    # -- where keys are, and are not ---------------------------------------------------------
    kms_db = sorted(kms_dir.glob("kms.db*"))
    assert kms_db
    assert _hits(kek, kms_db) == [], "the KMS never sees the KEK in the clear"
    trust_files = [*_files(trust_dir), trust_log]
    assert _hits(kek, trust_files) == []
    assert _hits(second, trust_files) == []
    assert b"Traceback" not in trust_log.read_bytes()
    assert _hits(primary, trust_files) == [], "the primary key never leaves the KMS"
    audit = kms_log.read_text()
    assert f"Encrypt {key_id} by trust-authority: success" in audit
    assert f"Decrypt {key_id} by trust-authority: success" in audit
    assert f"Get {key_id} by trust-authority" not in audit, "the service never reads the key"
    assert f"Get {key_id} by admin: success" in audit
