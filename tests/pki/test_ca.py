"""The CA and the certificates it issues: extensions, key types, expiry, PEM files."""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from vmcrypt.exceptions import UsageError
from vmcrypt.pki import (
    CertificateAuthority,
    CertificateError,
    describe_certificate,
    load_certificate,
    load_private_key,
    write_pem,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("Test CA", key_type="ec", days=365, now=T0)


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]
        ) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def test_ca_certificate_is_a_self_signed_ca(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.private_key.public_key())
    cert.verify_directly_issued_by(cert)
    assert cert.not_valid_after_utc == T0 + timedelta(days=365)
    assert cert.not_valid_before_utc < T0  # back-dated for peers whose clock lags


def test_default_ca_names_are_unique() -> None:
    names = {CertificateAuthority.create(key_type="ec").certificate.subject for _ in range(2)}
    assert len(names) == 2


def test_issued_certificate_for_a_kms(ca: CertificateAuthority) -> None:
    issued = ca.issue("kms.example", dns_names=["kms.example", "localhost"],
                      ip_addresses=["127.0.0.1", ipaddress.ip_address("::1")], now=T0)
    cert = issued.certificate
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.subject.rfc4514_string() == "CN=kms.example"
    eku = ext(cert, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH,
                        ExtendedKeyUsageOID.CLIENT_AUTH}
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kms.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert not ext(cert, x509.BasicConstraints).value.ca
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    ca_ski = ext(ca.certificate, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert isinstance(issued.private_key, ec.EllipticCurvePrivateKey)
    assert issued.private_key.curve.name == "secp256r1"


@pytest.mark.parametrize(("server", "client", "wanted"), [
    (True, False, {ExtendedKeyUsageOID.SERVER_AUTH}),
    (False, True, {ExtendedKeyUsageOID.CLIENT_AUTH}),
])
def test_extended_key_usage_follows_the_role(
        ca: CertificateAuthority, server: bool, client: bool, wanted: set[x509.ObjectIdentifier]
) -> None:
    cert = ca.issue("x", server=server, client=client, now=T0).certificate
    assert set(ext(cert, x509.ExtendedKeyUsage).value) == wanted
    with pytest.raises(x509.ExtensionNotFound):  # no SANs asked: no (invalid) empty SAN
        ext(cert, x509.SubjectAlternativeName)


def test_rsa_is_the_default_and_can_encipher_keys() -> None:
    ca = CertificateAuthority.create()
    issued = ca.issue("vcenter")
    for key in (ca.private_key, issued.private_key):
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size == 2048
    assert ext(issued.certificate, x509.KeyUsage).value.key_encipherment
    issued.certificate.verify_directly_issued_by(ca.certificate)
    # The key really belongs to the certificate.
    public = issued.certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    secret = issued.private_key.decrypt(
        public.encrypt(b"kek", padding.PKCS1v15()), padding.PKCS1v15())
    assert secret == b"kek"


def test_serials_are_random(ca: CertificateAuthority) -> None:
    serials = {ca.issue("x", now=T0).certificate.serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


def test_expiry_follows_now(ca: CertificateAuthority) -> None:
    cert = ca.issue("x", days=30, now=T0).certificate
    assert cert.not_valid_after_utc == T0 + timedelta(days=30)
    assert not describe_certificate(cert, now=T0)["expired"]
    assert describe_certificate(cert, now=T0 + timedelta(days=31))["expired"]


def test_a_certificate_never_outlives_its_ca(ca: CertificateAuthority) -> None:
    cert = ca.issue("x", days=5000, now=T0).certificate
    assert cert.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_an_expired_ca_issues_nothing(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match=r"expired on 2031-01-01.*pki init --force"):
        ca.issue("x", now=T0 + timedelta(days=365))


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"server": False, "client": False}, "server, a client or both"),
    ({"ip_addresses": ["localhost"]}, "not an IP address"),
    ({"dns_names": ["bad name"]}, "not a DNS name"),
    ({"days": 0}, "at least one day"),
    ({"now": datetime(2030, 1, 1)}, "timezone-aware"),
])
def test_bad_requests_are_usage_errors(ca: CertificateAuthority, kwargs: dict[str, object],
                                       phrase: str) -> None:
    with pytest.raises(UsageError, match=phrase):
        ca.issue("x", **kwargs)


def test_common_name_length_is_checked(ca: CertificateAuthority) -> None:
    with pytest.raises(UsageError, match="1 to 64"):
        ca.issue("a" * 65, now=T0)
    with pytest.raises(UsageError, match="'rsa' or 'ec'"):
        CertificateAuthority.create(key_type="dsa")


def test_pem_round_trip_and_modes(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue("x", now=T0)
    issued.write(tmp_path / "x.pem", tmp_path / "x.key")
    assert (tmp_path / "x.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "x.pem").stat().st_mode & 0o777 == 0o644
    assert load_certificate(tmp_path / "x.pem") == issued.certificate
    loaded = load_private_key(tmp_path / "x.key")
    assert loaded.private_numbers() == issued.private_key.private_numbers()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.key", "x.pem"]  # no temp files


def test_rewriting_a_loose_key_file_makes_it_private(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_pem(path, b"new", private=True)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == b"new"


def test_ca_round_trip(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.as_issued().write(tmp_path / "ca.pem", tmp_path / "ca.key")
    loaded = CertificateAuthority.load(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert loaded.certificate == ca.certificate
    loaded.issue("y", now=T0).certificate.verify_directly_issued_by(ca.certificate)


def test_load_errors_name_the_file(ca: CertificateAuthority, tmp_path: Path) -> None:
    key_pem = ca.as_issued().private_key_pem()
    (tmp_path / "key.pem").write_bytes(key_pem)
    (tmp_path / "junk").write_bytes(b"hello")
    missing = tmp_path / "missing.pem"
    with pytest.raises(CertificateError, match=re.escape(f"{missing}: no such certificate file")):
        load_certificate(missing)
    with pytest.raises(CertificateError, match="is a directory"):
        load_certificate(tmp_path)
    with pytest.raises(CertificateError, match="not a PEM certificate") as info:
        load_certificate(tmp_path / "key.pem")
    assert "PRIVATE" not in str(info.value)
    with pytest.raises(CertificateError, match="junk is not a PEM private key"):
        load_private_key(tmp_path / "junk")
    encrypted = ca.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"))
    (tmp_path / "enc.key").write_bytes(encrypted)
    with pytest.raises(CertificateError, match="encrypted with a passphrase"):
        load_private_key(tmp_path / "enc.key")


def test_load_refuses_mismatched_or_non_ca_files(ca: CertificateAuthority, tmp_path: Path) -> None:
    leaf = ca.issue("leaf", now=T0)
    leaf.write(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    ca.as_issued().write(tmp_path / "ca.pem", tmp_path / "ca.key")
    with pytest.raises(CertificateError, match=r"leaf\.key is not the key of .*ca\.pem"):
        CertificateAuthority.load(tmp_path / "ca.pem", tmp_path / "leaf.key")
    with pytest.raises(CertificateError, match="not a CA certificate"):
        CertificateAuthority.load(tmp_path / "leaf.pem", tmp_path / "leaf.key")


def test_loose_key_permissions_are_warned_about(
        ca: CertificateAuthority, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "loose.key"
    path.write_bytes(ca.as_issued().private_key_pem())
    os.chmod(path, 0o640)
    load_private_key(path)
    assert "chmod 600" in caplog.text
