"""The native key provider backup file: a password-protected PKCS#12 (``.p12``).

vSphere exports a Native Key Provider as a ``.p12`` file, so vmcrypt does too: standard
tools (``openssl pkcs12 -info``, keystores) recognise and open it with the password, and
an operator is never locked into vmcrypt to look at one.

PKCS#12 has a ``secretBag`` for raw keys, but pyca/cryptography writes only private
keys and certificates, and hand-writing the PFX/SafeContents/MAC structure would be a
large ASN.1 encoder of our own in security-critical code. So the file is an ordinary
key-and-certificate PKCS#12 made entirely by cryptography:

- a throw-away P-256 private key (it protects nothing; it signs the certificate, and its
  presence makes the file an everyday "identity" every tool imports);
- a self-signed certificate whose subject names the provider (``CN=vmcrypt native key
  provider``, ``UID=<provider ID>``, ``serialNumber=<fingerprint>``), valid from the
  provider's creation time to 9999-12-31T23:59:59Z ("no well-defined expiration date",
  RFC 5280 — 4.1.2.5);
- the 256-bit primary key in a **non-critical private extension**,
  :data:`PRIMARY_KEY_OID`, whose value is the DER ``OCTET STRING`` of the key. The OID
  sits under ``2.25`` (a UUID-derived OID, ITU-T X.667), which needs no registration and
  squats on nobody's enterprise number; the trailing ``.1`` is the format version.

The whole file is encrypted with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and
MAC-protected with HMAC-SHA256. With an encryption builder, cryptography puts the
certificate bag inside an ``EncryptedData`` SafeContents and the key in a shrouded key
bag, so *both* bags — and thus the extension carrying the primary key — are encrypted;
only the friendly name (public facts) is readable without the password.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import PrivateFormat, pkcs12
from cryptography.x509.oid import NameOID, ObjectIdentifier

from vmcrypt.crypto.keys import KEK_SIZE
from vmcrypt.exceptions import UsageError
from vmcrypt.providers.exceptions import BackupError

__all__ = [
    "KDF_ROUNDS",
    "PRIMARY_KEY_OID",
    "BackupInfo",
    "OpenedBackup",
    "key_fingerprint",
    "read_backup",
    "write_backup",
]

#: vmcrypt native key provider primary key, format 1 (``2.25.<UUID>.1``, ITU-T X.667).
PRIMARY_KEY_OID = ObjectIdentifier("2.25.215969476119267625860554656446906652260.1")
#: PBKDF2-HMAC-SHA256 iterations: OWASP's 2023 figure; about 0.15 s per export or open.
KDF_ROUNDS = 600_000

_SUBJECT_CN = "vmcrypt native key provider"
_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_FINGERPRINT_LABEL = b"vmcrypt native key provider fingerprint v1\x00"
# DER OCTET STRING header for a 32-byte value (X.690 — 8.7, short-form length).
_OCTET_STRING_32 = bytes([0x04, KEK_SIZE])

_DO_WHAT = "choose the .p12 file exported from this native key provider and its password"


def key_fingerprint(primary_key: bytes) -> str:
    """A public name for a primary key, so an operator can match a backup to a provider.

    64 bits of a labelled SHA-256: enough to tell providers apart, and recovering a
    256-bit random key from it is a preimage search, i.e. infeasible.
    """
    return hashlib.sha256(_FINGERPRINT_LABEL + primary_key).hexdigest()[:16]


@dataclass(frozen=True)
class BackupInfo:
    """The public facts a backup carries; what a dry-run restore reports."""

    provider_id: str
    fingerprint: str
    created_at: datetime


@dataclass(frozen=True)
class OpenedBackup:
    """A backup opened with its password: the facts and the primary key."""

    info: BackupInfo
    primary_key: bytes = field(repr=False)


def write_backup(*, info: BackupInfo, primary_key: bytes, password: str) -> bytes:
    """Export ``primary_key`` as a password-protected PKCS#12 file."""
    pw = _password_bytes(password, UsageError)
    signer = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, _SUBJECT_CN),
            x509.NameAttribute(NameOID.USER_ID, info.provider_id),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, info.fingerprint),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signer.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(info.created_at)
        .not_valid_after(_NOT_AFTER)
        .add_extension(
            x509.UnrecognizedExtension(PRIMARY_KEY_OID, _OCTET_STRING_32 + primary_key),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    encryption = (
        PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(pw)
    )
    friendly = f"{_SUBJECT_CN} {info.provider_id}".encode()
    return pkcs12.serialize_key_and_certificates(friendly, signer, cert, None, encryption)


def read_backup(data: bytes, password: str) -> OpenedBackup:
    """Open a backup; every failure is a :class:`BackupError` saying what to do."""
    pw = _password_bytes(password, BackupError)
    if not isinstance(data, bytes | bytearray | memoryview) or not _looks_like_pfx(bytes(data)):
        raise BackupError(
            "the backup is not a PKCS#12 file, or it is truncated or damaged; " + _DO_WHAT
        )
    try:
        p12 = pkcs12.load_pkcs12(bytes(data), pw)
    except (ValueError, UnsupportedAlgorithm):
        # The MAC check fails the same way for a wrong password and altered bytes.
        raise BackupError(
            "cannot open the backup: the password is wrong, or the file was altered; "
            "retry with the password given when the backup was exported"
        ) from None
    cert = p12.cert.certificate if p12.cert is not None else None
    ext = _primary_key_extension(cert) if cert is not None else None
    if cert is None or ext is None:
        raise BackupError(
            "the file is a PKCS#12 file but not a vmcrypt native key provider backup "
            "(it carries no vmcrypt primary key); " + _DO_WHAT
        )
    primary_key = _parse_primary_key(ext)
    info = BackupInfo(
        provider_id=_subject_value(cert, NameOID.USER_ID),
        fingerprint=_subject_value(cert, NameOID.SERIAL_NUMBER),
        created_at=cert.not_valid_before_utc,
    )
    if not info.provider_id or key_fingerprint(primary_key) != info.fingerprint:
        raise BackupError(
            "the backup is damaged: its primary key does not match the fingerprint it "
            "names; use another copy of the backup"
        )
    return OpenedBackup(info=info, primary_key=primary_key)


def _password_bytes(password: str, error: type[Exception]) -> bytes:
    if not isinstance(password, str) or not password:
        raise error("a backup password is a non-empty string")
    # OpenSSL reads PKCS#12 passwords as C strings; a NUL would silently cut the
    # password short (and makes cryptography's loader abort), so refuse it up front.
    if "\x00" in password:
        raise error("a backup password cannot contain the NUL character")
    return password.encode("utf-8")


def _looks_like_pfx(data: bytes) -> bool:
    """Whether ``data`` is exactly one DER SEQUENCE opening with ``version v3``.

    RFC 7292 — 4: ``PFX ::= SEQUENCE { version INTEGER {v3(3)}, ... }``. Checked before
    any password work so that a truncated or random file is named as such rather than
    blamed on the password (X.690 — 8.1.3 for the length forms).
    """
    if len(data) < 2 or data[0] != 0x30:
        return False
    first = data[1]
    count = 0 if first < 0x80 else first & 0x7F
    if first >= 0x80 and not 1 <= count <= 4:
        return False
    start = 2 + count
    length = first if count == 0 else int.from_bytes(data[2:start], "big")
    return start + length == len(data) and data[start : start + 3] == b"\x02\x01\x03"


def _primary_key_extension(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(PRIMARY_KEY_OID)
    except (x509.ExtensionNotFound, ValueError):
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _parse_primary_key(value: bytes) -> bytes:
    if len(value) != len(_OCTET_STRING_32) + KEK_SIZE or not value.startswith(_OCTET_STRING_32):
        raise BackupError(
            "the backup's primary key field is malformed (a newer vmcrypt, or a damaged "
            "file); restore it with the vmcrypt version that exported it"
        )
    return value[len(_OCTET_STRING_32) :]


def _subject_value(cert: x509.Certificate, oid: ObjectIdentifier) -> str:
    attrs = cert.subject.get_attributes_for_oid(oid)
    if len(attrs) != 1 or not isinstance(attrs[0].value, str):
        raise BackupError(
            "the backup's certificate does not name its provider and fingerprint; " + _DO_WHAT
        )
    return attrs[0].value
