"""``init_pki`` and ``issue_client``: the files, their modes, and what they refuse."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import vmcrypt.pki
from vmcrypt.exceptions import UsageError
from vmcrypt.pki import (
    CertificateError,
    PkiExistsError,
    PkiLayout,
    cert_files,
    describe_certificate,
    init_pki,
    issue_client,
    load_certificate,
    load_private_key,
)

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def scratch(pki: PkiLayout, tmp_path: Path) -> PkiLayout:
    """A private copy of the session PKI, for tests that add files to it."""
    directory = Path(shutil.copytree(pki.directory, tmp_path / "pki"))
    return PkiLayout(directory=directory, ca=cert_files(directory, "ca"),
                     server=cert_files(directory, "server"),
                     clients={name: cert_files(directory, name) for name in pki.clients})


def test_public_names() -> None:
    assert set(vmcrypt.pki.__all__) == {n for n in dir(vmcrypt.pki) if not n.startswith("_")
                                        and n not in {"ca", "exceptions", "layout", "tls"}}


def test_init_writes_the_layout(pki: PkiLayout) -> None:
    d = pki.directory
    assert sorted(p.name for p in d.iterdir()) == [
        "admin.key", "admin.pem", "ca.key", "ca.pem", "kms-client.key", "kms-client.pem",
        "server.key", "server.pem"]
    assert (pki.ca.cert, pki.ca.key) == (d / "ca.pem", d / "ca.key")
    assert (pki.server.cert, pki.server.key) == (d / "server.pem", d / "server.key")
    assert pki.clients["admin"].cert == d / "admin.pem"
    for key in d.glob("*.key"):
        assert mode(key) == 0o600, key
    for cert in d.glob("*.pem"):
        assert mode(cert) == 0o644, cert
    assert mode(d) == 0o700


def test_init_certificates(pki: PkiLayout) -> None:
    ca = load_certificate(pki.ca.cert)
    server = describe_certificate(load_certificate(pki.server.cert))
    assert server["subject"] == "CN=localhost"
    assert server["dns_names"] == ["localhost"]
    assert server["ip_addresses"] == ["127.0.0.1"]
    assert server["extended_key_usage"] == ["serverAuth", "clientAuth"]
    admin = describe_certificate(load_certificate(pki.clients["admin"].cert))
    assert admin["subject"] == "CN=admin"
    assert admin["extended_key_usage"] == ["clientAuth"]
    for files in (pki.server, *pki.clients.values()):
        load_certificate(files.cert).verify_directly_issued_by(ca)
        assert isinstance(load_private_key(files.key), ec.EllipticCurvePrivateKey)


def test_openssl_verifies_the_chain(pki: PkiLayout) -> None:
    run = subprocess.run(
        [OPENSSL, "verify", "-CAfile", pki.ca.cert, "-purpose", "sslserver", pki.server.cert],
        capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{pki.server.cert}: OK"
    run = subprocess.run(
        [OPENSSL, "verify", "-CAfile", pki.ca.cert, "-purpose", "sslclient",
         pki.clients["admin"].cert], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr


def test_default_init_is_rsa(tmp_path: Path) -> None:
    layout = init_pki(tmp_path / "pki")
    assert list(layout.clients) == ["admin"]
    for files in (layout.ca, layout.server, layout.clients["admin"]):
        key = load_private_key(files.key)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = init_pki(tmp_path, key_type="ec", clients=())
    before = first.ca.cert.read_bytes()
    with pytest.raises(PkiExistsError, match=r"ca\.pem.*--force"):
        init_pki(tmp_path, key_type="ec", clients=())
    assert first.ca.cert.read_bytes() == before
    second = init_pki(tmp_path, key_type="ec", clients=(), force=True)
    assert second.ca.cert.read_bytes() != before


@pytest.mark.parametrize(("clients", "phrase"), [
    (["../evil"], "cannot name a certificate"),
    (["ca"], "layout's own ca.pem"),
    (["server"], "layout's own server.pem"),
    (["a", "a"], "repeat"),
])
def test_init_refuses_bad_client_names(tmp_path: Path, clients: list[str], phrase: str) -> None:
    with pytest.raises(UsageError, match=phrase):
        init_pki(tmp_path / "pki", key_type="ec", clients=clients)
    assert not (tmp_path / "pki").exists()  # checked before anything is written


def test_init_refuses_a_bad_server_address_before_writing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not an IP address"):
        init_pki(tmp_path / "pki", key_type="ec", server_ips=["kms.example"])
    assert not (tmp_path / "pki").exists()


def test_issue_client_reuses_the_ca(scratch: PkiLayout) -> None:
    pki = scratch
    files = issue_client(pki.directory, "host-17", dns_names=["esx17.example"],
                         ip_addresses=["10.0.0.17"], server=True)
    cert = load_certificate(files.cert)
    cert.verify_directly_issued_by(load_certificate(pki.ca.cert))
    info = describe_certificate(cert)
    assert info["subject"] == "CN=host-17"
    assert info["dns_names"] == ["esx17.example"]
    assert info["ip_addresses"] == ["10.0.0.17"]
    assert info["extended_key_usage"] == ["serverAuth", "clientAuth"]
    assert mode(files.key) == 0o600
    assert isinstance(load_private_key(files.key), ec.EllipticCurvePrivateKey)  # the CA's type
    assert isinstance(
        load_private_key(issue_client(pki.directory, "rsa-one", key_type="rsa").key),
        rsa.RSAPrivateKey)


def test_issue_client_refuses_to_replace_a_key(scratch: PkiLayout) -> None:
    pki = scratch
    before = pki.clients["admin"].key.read_bytes()
    with pytest.raises(PkiExistsError, match=r"admin\.pem"):
        issue_client(pki.directory, "admin")
    assert pki.clients["admin"].key.read_bytes() == before
    with pytest.raises(UsageError, match=r"layout's own ca\.pem"):
        issue_client(pki.directory, "ca", force=True)


def test_issue_client_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="vmcrypt pki init"):
        issue_client(tmp_path, "bob")
    assert list(tmp_path.iterdir()) == []


def test_issue_client_force_replaces(tmp_path: Path) -> None:
    layout = init_pki(tmp_path, key_type="ec", clients=("bob",))
    old = load_certificate(layout.clients["bob"].cert)
    new = load_certificate(issue_client(tmp_path, "bob", force=True).cert)
    assert new.serial_number != old.serial_number
