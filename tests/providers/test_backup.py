"""The native key provider backup: a password-protected PKCS#12 that standard tools read."""

from __future__ import annotations

import base64
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import PrivateFormat, pkcs12
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcrypt.exceptions import UsageError
from vmcrypt.providers import BackupError, BackupInfo, NativeKeyProvider
from vmcrypt.providers.backup import write_backup

NOW = datetime(2023, 11, 2, 8, 0, 1, tzinfo=UTC)
PASSWORD = "correct horse battery staple"
OPENSSL = "/usr/bin/openssl"


@pytest.fixture(scope="module")
def sealing_key() -> bytes:
    return os.urandom(32)


@pytest.fixture(scope="module")
def exported(sealing_key: bytes) -> tuple[NativeKeyProvider, bytes]:
    """One provider and its backup, shared because each export costs a PBKDF2 run."""
    provider = NativeKeyProvider.create("nkp-backup", sealing_key=sealing_key, now=NOW)
    return provider, provider.export_backup(PASSWORD)


def plain_pkcs12(password: str, *, with_cert: bool = True) -> bytes:
    """An everyday PKCS#12 (key and self-signed certificate) that is not a vmcrypt backup."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    enc = PrivateFormat.PKCS12.encryption_builder().build(password.encode())
    return pkcs12.serialize_key_and_certificates(b"x", key, cert if with_cert else None, None, enc)


def test_export_restore_round_trip(
    exported: tuple[NativeKeyProvider, bytes], sealing_key: bytes
) -> None:
    provider, p12 = exported
    assert provider.backed_up
    old = provider.new_kek()
    new_sealing_key = os.urandom(32)
    restored = NativeKeyProvider.restore(p12, PASSWORD, sealing_key=new_sealing_key)
    assert restored.provider_id == "nkp-backup"
    assert restored.fingerprint == provider.fingerprint
    assert restored.created_at == NOW
    assert restored.backed_up
    assert restored.health().state == "healthy"
    assert restored.get_kek(old.ref) == old.kek
    # The restored record is sealed under the sealing key given to restore.
    again = NativeKeyProvider.from_record(restored.to_record(), sealing_key=new_sealing_key)
    assert again.get_kek(old.ref) == old.kek


def test_dry_run_reports_facts_and_builds_nothing(
    exported: tuple[NativeKeyProvider, bytes], sealing_key: bytes
) -> None:
    provider, p12 = exported
    info = NativeKeyProvider.restore(p12, PASSWORD, sealing_key=sealing_key, dry_run=True)
    assert info == BackupInfo("nkp-backup", provider.fingerprint, NOW)
    assert not isinstance(info, NativeKeyProvider)
    assert "primary" not in repr(info)


def test_dry_run_fails_like_a_restore(exported: tuple[NativeKeyProvider, bytes]) -> None:
    _, p12 = exported
    with pytest.raises(BackupError, match="password is wrong"):
        NativeKeyProvider.restore(p12, "nope", sealing_key=os.urandom(32), dry_run=True)


def test_backup_holds_no_key_in_the_clear(exported: tuple[NativeKeyProvider, bytes]) -> None:
    provider, p12 = exported
    key = provider.primary_key_for_push()
    for form in (key, key.hex().encode(), base64.b64encode(key), key[:16], key[16:]):
        assert form not in p12


def test_wrong_password(exported: tuple[NativeKeyProvider, bytes]) -> None:
    provider, p12 = exported
    with pytest.raises(BackupError, match="password is wrong") as info:
        NativeKeyProvider.restore(p12, PASSWORD + "!", sealing_key=os.urandom(32))
    assert provider.primary_key_for_push().hex() not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\x30\x82\xff\xff",
        b"\x30\x85\x00\x00\x00\x00\x00",
        b"\x30\x03\x02\x01\x01",
        b"\x00" * 64,
    ],
    ids=["empty", "text", "short-header", "long-length", "tiny-der", "zeros"],
)
def test_garbage(data: bytes) -> None:
    with pytest.raises(BackupError, match=r"not a PKCS#12 file"):
        NativeKeyProvider.restore(data, PASSWORD, sealing_key=os.urandom(32))


@pytest.mark.parametrize("keep", [1, 100, -1])
def test_truncated(exported: tuple[NativeKeyProvider, bytes], keep: int) -> None:
    _, p12 = exported
    with pytest.raises(BackupError, match="truncated"):
        NativeKeyProvider.restore(p12[:keep], PASSWORD, sealing_key=os.urandom(32))


def test_random_bytes_are_not_a_backup() -> None:
    with pytest.raises(BackupError, match=r"not a PKCS#12 file|password is wrong"):
        NativeKeyProvider.restore(os.urandom(2000), PASSWORD, sealing_key=os.urandom(32))


def test_der_that_is_not_a_pfx_fails_at_the_password() -> None:
    # A well-formed PFX header with nothing behind it: only the loader can tell.
    with pytest.raises(BackupError, match="password is wrong"):
        NativeKeyProvider.restore(b"\x30\x03\x02\x01\x03", PASSWORD, sealing_key=os.urandom(32))


def test_altered_byte(exported: tuple[NativeKeyProvider, bytes]) -> None:
    _, p12 = exported
    altered = bytearray(p12)
    altered[len(p12) // 2] ^= 0x01
    with pytest.raises(BackupError, match="altered"):
        NativeKeyProvider.restore(bytes(altered), PASSWORD, sealing_key=os.urandom(32))


@pytest.mark.parametrize("with_cert", [True, False])
def test_foreign_pkcs12(with_cert: bool) -> None:
    data = plain_pkcs12(PASSWORD, with_cert=with_cert)
    with pytest.raises(BackupError, match="not a vmcrypt native key provider backup"):
        NativeKeyProvider.restore(data, PASSWORD, sealing_key=os.urandom(32))


def test_fingerprint_mismatch_is_damage() -> None:
    data = write_backup(
        info=BackupInfo("nkp-x", "0123456789abcdef", NOW),
        primary_key=os.urandom(32),
        password=PASSWORD,
    )
    with pytest.raises(BackupError, match="damaged"):
        NativeKeyProvider.restore(data, PASSWORD, sealing_key=os.urandom(32))


@pytest.mark.parametrize("password", ["", "a\x00b"])
def test_unusable_passwords(
    exported: tuple[NativeKeyProvider, bytes], password: str, sealing_key: bytes
) -> None:
    provider, p12 = exported
    with pytest.raises(UsageError, match="password"):
        provider.export_backup(password)
    with pytest.raises(BackupError, match="password"):
        NativeKeyProvider.restore(p12, password, sealing_key=sealing_key)


def test_failed_export_does_not_mark_backed_up(sealing_key: bytes) -> None:
    provider = NativeKeyProvider.create("nkp-f", sealing_key=sealing_key)
    with pytest.raises(UsageError):
        provider.export_backup("")
    assert not provider.backed_up


@settings(max_examples=8, deadline=None)
@given(password=st.text(min_size=1, max_size=40).filter(lambda p: "\x00" not in p))
def test_arbitrary_passwords_round_trip(password: str) -> None:
    provider = NativeKeyProvider.create("nkp-pw", sealing_key=os.urandom(32), now=NOW)
    p12 = provider.export_backup(password)
    restored = NativeKeyProvider.restore(p12, password, sealing_key=os.urandom(32))
    assert restored.fingerprint == provider.fingerprint


def test_long_provider_id_round_trips() -> None:
    provider = NativeKeyProvider.create("p" * 128, sealing_key=os.urandom(32), now=NOW)
    p12 = provider.export_backup(PASSWORD)
    info = NativeKeyProvider.restore(p12, PASSWORD, sealing_key=os.urandom(32), dry_run=True)
    assert info.provider_id == "p" * 128


def test_openssl_reads_it_with_the_password_only(
    exported: tuple[NativeKeyProvider, bytes], tmp_path: Path
) -> None:
    provider, p12 = exported
    path = tmp_path / "nkp.p12"
    path.write_bytes(p12)
    base = [OPENSSL, "pkcs12", "-in", str(path), "-nokeys", "-info"]

    ok = subprocess.run([*base, "-passin", f"pass:{PASSWORD}"], capture_output=True, check=False)
    assert ok.returncode == 0, ok.stderr
    out = ok.stdout.decode() + ok.stderr.decode()
    assert "BEGIN CERTIFICATE" in out
    assert "UID = nkp-backup" in out and provider.fingerprint in out
    # Both bags are encrypted with PBES2 / AES-256-CBC, so no -legacy is needed.
    assert "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC" in out
    assert "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC" in out

    bad = subprocess.run([*base, "-passin", "pass:wrong"], capture_output=True, check=False)
    assert bad.returncode != 0
    # Even skipping the MAC check, the certificate bag cannot be read without the password.
    nomac = subprocess.run(
        [*base, "-nomacver", "-passin", "pass:wrong"], capture_output=True, check=False
    )
    assert nomac.returncode != 0
    assert b"BEGIN CERTIFICATE" not in nomac.stdout


def test_openssl_sees_the_primary_key_extension(
    exported: tuple[NativeKeyProvider, bytes], tmp_path: Path
) -> None:
    # An operator can find the primary key with standard tools given the password: the
    # backup locks no one into vmcrypt.
    provider, p12 = exported
    path = tmp_path / "nkp.p12"
    path.write_bytes(p12)
    pem = subprocess.run(
        [OPENSSL, "pkcs12", "-in", str(path), "-nokeys", "-passin", f"pass:{PASSWORD}"],
        capture_output=True,
        check=True,
    ).stdout
    cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN") :])
    text = cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("2.25.215969476119267625860554656446906652260.1")
    )
    assert text.critical is False
    assert provider.primary_key_for_push() in text.value.value  # type: ignore[attr-defined]
