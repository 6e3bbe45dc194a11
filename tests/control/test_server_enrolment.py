"""Enrolment: one-time, expiring tokens; a CSR signed by the control plane CA.

The token rules run in process against a migrated database (time is a parameter);
the last tests enrol a real host-side key against a real ``vmcrypt control serve``
and check the private key never left the host's folder.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.control.test_server import ControlProcess
from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import Cluster, Host
from vmcrypt.control.enrolment import create_enrolment_token, enrol
from vmcrypt.control.exceptions import AuthenticationFailed, Conflict
from vmcrypt.exceptions import UsageError
from vmcrypt.host.enrol import EnrolFiles, EnrolmentFailed
from vmcrypt.host.enrol import enrol as host_enrol
from vmcrypt.pki import CertificateAuthority, generate_private_key

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(key_type="ec")


def _csr(name: str = "esx-1") -> tuple[str, object]:
    key = generate_private_key("ec")
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def _redeem(database: Database, ca: CertificateAuthority, token: str, *,
            hw: str = "11111111-1111-1111-1111-111111111111", at: datetime = T0) -> str:
    csr, _key = _csr()
    with database.transaction() as session:
        done = enrol(session, ca=ca, token=token, csr_pem=csr, hardware_uuid=hw,
                     address="127.0.0.1", api_url="https://127.0.0.1:9443", at=at)
        return done.certificate_pem


def test_a_token_enrols_once(database: Database, ca: CertificateAuthority) -> None:
    with database.transaction() as session:
        issued = create_enrolment_token(session, host_name="esx-1", at=T0)
    pem = _redeem(database, ca, issued.token)
    with pytest.raises(AuthenticationFailed):
        _redeem(database, ca, issued.token, hw="22222222-2222-2222-2222-222222222222")
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.issuer == ca.certificate.subject
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    with database.transaction() as session:
        host = session.query(Host).one()
        assert host.name == "esx-1" and host.cluster_id is None
        assert host.enrolled_at is not None
        assert host.certificate_fingerprint == cert.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize(("offset", "accepted"), [
    (timedelta(minutes=59), True), (timedelta(hours=1), False), (timedelta(days=2), False)])
def test_a_token_expires(database: Database, ca: CertificateAuthority, offset: timedelta,
                         accepted: bool) -> None:
    with database.transaction() as session:
        issued = create_enrolment_token(session, host_name="esx-1", ttl=timedelta(hours=1),
                                        at=T0)
    if accepted:
        _redeem(database, ca, issued.token, at=T0 + offset)
    else:
        with pytest.raises(AuthenticationFailed):
            _redeem(database, ca, issued.token, at=T0 + offset)


@pytest.mark.parametrize("token", ["", "vmce_wrong", "vmct_an-api-token"])
def test_a_wrong_token_is_refused_opaquely(database: Database, ca: CertificateAuthority,
                                           token: str) -> None:
    with database.transaction() as session:
        create_enrolment_token(session, host_name="esx-1", at=T0)
    with pytest.raises(AuthenticationFailed) as caught:
        _redeem(database, ca, token)
    assert "vmce_" not in str(caught.value)
    with database.transaction() as session:
        assert session.query(Host).count() == 0


def test_a_bound_token_admits_only_its_host(database: Database,
                                            ca: CertificateAuthority) -> None:
    hw = str(uuid.uuid4())
    with database.transaction() as session:
        cluster = Cluster(name="c1")
        session.add(cluster)
        session.flush()
        host = Host(name="esx-2", hardware_uuid=hw, cluster_id=cluster.id,
                    api_url="https://127.0.0.1:9443")
        session.add(host)
        session.flush()
        issued = create_enrolment_token(session, host_id=host.id, at=T0)
    with pytest.raises(UsageError):
        _redeem(database, ca, issued.token, hw=str(uuid.uuid4()))
    _redeem(database, ca, issued.token, hw=hw)
    with database.transaction() as session, pytest.raises(Conflict):
        create_enrolment_token(session, host_id=host.id, at=T0)


def test_a_bad_csr_is_a_usage_error(database: Database, ca: CertificateAuthority) -> None:
    with database.transaction() as session:
        issued = create_enrolment_token(session, host_name="esx-1", at=T0)
    with database.transaction() as session, pytest.raises(UsageError):
        enrol(session, ca=ca, token=issued.token, csr_pem="not a csr", hardware_uuid="x",
              address="127.0.0.1", api_url="https://127.0.0.1:1", at=T0)


def _new_token(control: ControlProcess, **body: object) -> dict[str, object]:
    response = httpx.post(f"{control.url}/api/v1/enrolment-tokens", json=body,
                          headers=control.auth(), verify=control.tls())
    assert response.status_code == 201, response.text
    result: dict[str, object] = response.json()
    return result


def test_the_host_key_never_leaves_the_host(tmp_path: Path) -> None:
    with ControlProcess.start(tmp_path / "control") as control:
        issued = _new_token(control, host_name="esx-9", ttl_seconds=600)
        assert issued["ca_fingerprint"] == control.ca_fingerprint
        files = EnrolFiles(cert=tmp_path / "host" / "host.pem",
                           key=tmp_path / "host" / "host.key", ca=tmp_path / "host" / "ca.pem")
        host_enrol(url=control.url, token=str(issued["token"]),
                   ca_fingerprint=control.ca_fingerprint.upper(), files=files, name="esx-9",
                   hardware_uuid=str(uuid.uuid4()), address="127.0.0.1",
                   api_url="https://127.0.0.1:9443")
        with pytest.raises(EnrolmentFailed, match="HTTP 401"):
            host_enrol(url=control.url, token=str(issued["token"]),
                       ca_fingerprint=control.ca_fingerprint,
                       files=EnrolFiles(cert=tmp_path / "h2.pem", key=tmp_path / "h2.key",
                                        ca=tmp_path / "ca2.pem"),
                       name="esx-9", hardware_uuid=str(uuid.uuid4()), address="127.0.0.1",
                       api_url="https://127.0.0.1:9443")
        hosts = httpx.get(f"{control.url}/api/v1/hosts", headers=control.auth(),
                          verify=control.tls()).json()
    assert [h["name"] for h in hosts] == ["esx-9"]
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, public) == \
        key.public_key().public_bytes(serialization.Encoding.DER, public)
    assert files.ca.read_bytes() == control.ca.read_bytes()
    # The private key's bytes are nowhere in the control plane's folder (DB, WAL, logs).
    secret = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    for path in (tmp_path / "control").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret not in data and secret.hex().encode() not in data, path
    assert files.key.read_bytes() not in json.dumps(hosts).encode()


def test_a_wrong_pin_sends_nothing(tmp_path: Path) -> None:
    with ControlProcess.start(tmp_path / "control") as control:
        issued = _new_token(control, host_name="esx-8")
        files = EnrolFiles(cert=tmp_path / "h.pem", key=tmp_path / "h.key", ca=tmp_path / "c.pem")
        with pytest.raises(EnrolmentFailed, match="does not match"):
            host_enrol(url=control.url, token=str(issued["token"]), ca_fingerprint="00" * 32,
                       files=files, name="esx-8", hardware_uuid=str(uuid.uuid4()),
                       address="127.0.0.1", api_url="https://127.0.0.1:9443")
        assert not files.key.exists() and not files.cert.exists()
        # The token is still unused: a host with the right pin can enrol with it.
        host_enrol(url=control.url, token=str(issued["token"]),
                   ca_fingerprint=control.ca_fingerprint, files=files, name="esx-8",
                   hardware_uuid=str(uuid.uuid4()), address="127.0.0.1",
                   api_url="https://127.0.0.1:9443")
        assert files.cert.exists()


def test_host_serve_without_a_token_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VMCRYPT_ENROL_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "vmcrypt.cli.main", "host", "serve", "--datastore",
         str(tmp_path / "ds"), "--cert", str(tmp_path / "h.pem"), "--key",
         str(tmp_path / "h.key"), "--ca", str(tmp_path / "ca.pem"), "--port", "0",
         "--enrol", "https://127.0.0.1:1", "--ca-fingerprint", "00" * 32],
        capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--token" in lines[0], result.stderr
    assert not (tmp_path / "h.key").exists()
