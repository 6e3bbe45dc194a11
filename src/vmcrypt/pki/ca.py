"""A small certificate authority for mutual TLS between vmcrypt processes and KMIP peers.

The KMIP key server, its clients and (later) the control plane enrolling hosts all trust
one CA and present certificates it issued. Certificates carry what real KMIP peers check:
vCenter and PyKMIP expect a KMS certificate with both serverAuth and clientAuth, and
vCenter accepts RSA 2048 keys — hence the defaults. EC P-256 is offered because it is
much faster to generate. Time is a parameter (``now=``) so that expiry can be tested.

Files are PEM. Private keys are written unencrypted at mode 0600, atomically: a reader
sees either the old file or the new one, never a torn key.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmcrypt.exceptions import UsageError
from vmcrypt.pki.exceptions import CertificateError

__all__ = [
    "CA_DAYS",
    "LEAF_DAYS",
    "CertificateAuthority",
    "Issued",
    "KeyType",
    "PrivateKey",
    "describe_certificate",
    "generate_private_key",
    "load_certificate",
    "load_private_key",
    "write_pem",
]

logger = logging.getLogger(__name__)

KeyType = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: Ten years: replacing a CA means re-enrolling every host and KMIP client.
CA_DAYS = 3650
#: 825 days: the longest validity that common TLS clients accept from a private CA.
LEAF_DAYS = 825
#: Certificates start a little in the past so a peer whose clock lags still accepts them.
_BACKDATE = timedelta(minutes=5)
#: RFC 5280 — Appendix A, ub-common-name.
_MAX_CN = 64
#: The names OpenSSL prints, so ``show`` and ``openssl x509 -text`` read alike.
_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
              ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


def generate_private_key(key_type: KeyType = "rsa") -> PrivateKey:
    """A fresh key: RSA 2048 (what vCenter accepts) or EC P-256 (fast, for tests and hosts)."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise UsageError(f"unknown key type {key_type!r}: use 'rsa' or 'ec'")


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise UsageError("now= must be timezone-aware (e.g. datetime.now(UTC))")
    return now


def _name(common_name: str) -> x509.Name:
    if not common_name or len(common_name) > _MAX_CN:
        raise UsageError(
            f"common name {common_name!r} must be 1 to {_MAX_CN} characters (RFC 5280)"
        )
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ip(text: str | ipaddress.IPv4Address | ipaddress.IPv6Address
        ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"{text!r} is not an IP address; give e.g. 127.0.0.1 or ::1") from None


def _dns(name: str) -> x509.DNSName:
    # Hostname matching compares A-labels: an internationalised name must arrive punycoded.
    if not name or not name.isascii() or any(c.isspace() for c in name):
        raise UsageError(f"{name!r} is not a DNS name; use ASCII (punycode for IDNs), no spaces")
    return x509.DNSName(name)


def _key_usage(*, digital_signature: bool, key_encipherment: bool, cert_sign: bool
               ) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False,
        key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
        key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _same_key(certificate: x509.Certificate, key: PrivateKey) -> bool:
    def der(public: Any) -> bytes:
        return bytes(public.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))

    return der(certificate.public_key()) == der(key.public_key())


def _private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as :meth:`CertificateAuthority.issue` returns them."""

    certificate: x509.Certificate
    private_key: PrivateKey

    def certificate_pem(self) -> bytes:
        """The certificate as PEM, for a ``.pem`` file or a KMS trust store."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM; write it only with :func:`write_pem` (0600)."""
        return _private_pem(self.private_key)

    def write(self, cert_file: Path, key_file: Path) -> None:
        """Write key then certificate, so a certificate on disk always has its key beside it."""
        write_pem(key_file, self.private_key_pem(), private=True)
        write_pem(cert_file, self.certificate_pem())


class CertificateAuthority:
    """A CA certificate with its key: issues leaf certificates for servers and clients."""

    def __init__(self, certificate: x509.Certificate, private_key: PrivateKey) -> None:
        if not _same_key(certificate, private_key):
            raise CertificateError("the CA key does not match the CA certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.value.ca:
            raise CertificateError(
                f"{certificate.subject.rfc4514_string()} is not a CA certificate "
                "(no basicConstraints CA:TRUE); give the CA's own ca.pem"
            )
        self.certificate = certificate
        self.private_key = private_key

    @classmethod
    def create(cls, common_name: str | None = None, *, key_type: KeyType = "rsa",
               days: int = CA_DAYS, now: datetime | None = None) -> CertificateAuthority:
        """A new self-signed CA.

        The default name carries a random suffix: trust stores (OpenSSL hash directories,
        vCenter's list of KMS CAs) look CAs up by subject, and two CAs both called
        "vmcrypt CA" would shadow each other.
        """
        if days < 1:
            raise UsageError(f"days={days}: a CA must be valid for at least one day")
        start = _now(now)
        key = generate_private_key(key_type)
        name = _name(common_name or f"vmcrypt CA {secrets.token_hex(4)}")
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - _BACKDATE)
            .not_valid_after(start + timedelta(days=days))
            # path_length=0: this CA signs leaves only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(digital_signature=False, key_encipherment=False,
                                      cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        """The CA from its PEM files; a :class:`CertificateError` names what is wrong."""
        certificate = load_certificate(cert_file)
        key = load_private_key(key_file)
        if not _same_key(certificate, key):
            raise CertificateError(
                f"{key_file} is not the key of {cert_file}: restore the matching pair, "
                "or create a new CA with `vmcrypt pki init --force`"
            )
        return cls(certificate, key)

    @property
    def key_type(self) -> KeyType:
        """The CA's key type, the default for what it issues."""
        return "ec" if isinstance(self.private_key, ec.EllipticCurvePrivateKey) else "rsa"

    def as_issued(self) -> Issued:
        """The CA's own certificate and key, to write with :meth:`Issued.write`."""
        return Issued(self.certificate, self.private_key)

    def issue(
        self,
        common_name: str,
        *,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        server: bool = True,
        client: bool = True,
        days: int = LEAF_DAYS,
        key_type: KeyType | None = None,
        now: datetime | None = None,
    ) -> Issued:
        """A new key and a certificate for it, signed by this CA.

        The certificate never outlives the CA: a chain is only valid while every link is,
        so a longer leaf would promise a validity it cannot have.
        """
        if not (server or client):
            raise UsageError("a certificate must be for a server, a client or both")
        if days < 1:
            raise UsageError(f"days={days}: a certificate must be valid for at least one day")
        start = _now(now)
        ca_end = self.certificate.not_valid_after_utc
        if start >= ca_end:
            raise CertificateError(
                f"the CA {self.certificate.subject.rfc4514_string()} expired on "
                f"{ca_end:%Y-%m-%d}: create a new CA with `vmcrypt pki init --force` and "
                "issue every certificate again"
            )
        subject = _name(common_name)
        sans: list[x509.GeneralName] = [_dns(name) for name in dns_names]
        sans += [x509.IPAddress(_ip(ip)) for ip in ip_addresses]
        key = generate_private_key(key_type or self.key_type)
        usages = [oid for oid, wanted in ((ExtendedKeyUsageOID.SERVER_AUTH, server),
                                          (ExtendedKeyUsageOID.CLIENT_AUTH, client)) if wanted]
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - _BACKDATE)
            .not_valid_after(min(start + timedelta(days=days), ca_end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # RFC 5480 — 3: keyEncipherment is not a usage of an EC key; RSA key exchange
            # (TLS 1.2 RSA suites, still in KMIP's authentication suites) needs it.
            .add_extension(_key_usage(digital_signature=True, cert_sign=False,
                                      key_encipherment=isinstance(key, rsa.RSAPrivateKey)),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        if sans:
            # RFC 5280 — 4.2.1.6: an empty subjectAltName extension is not allowed.
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return Issued(builder.sign(self.private_key, hashes.SHA256()), key)


def write_pem(path: Path, data: bytes, *, private: bool = False) -> None:
    """Replace ``path`` atomically; a private file is 0600 from its first byte.

    The temporary file is created 0600 in the same directory (so ``os.replace`` is a
    rename on one file system); a public one is widened to 0644 only before the rename.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if not private:
                os.fchmod(handle.fileno(), 0o644)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{path}: no such {what} file; check the path") from None
    except IsADirectoryError:
        raise CertificateError(f"{path} is a directory, not a {what} file") from None
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read the {what} file: {exc.strerror}") from None


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate in a PEM file, or a :class:`CertificateError` naming the file."""
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        # The message never quotes the content: it could be a private key.
        raise CertificateError(
            f"{path} is not a PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None


def load_private_key(path: Path) -> PrivateKey:
    """An unencrypted RSA or EC private key from a PEM file."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(
            f"{path} is encrypted with a passphrase; vmcrypt needs an unencrypted key "
            "protected by file mode 0600 (openssl pkey -in KEY -out KEY.plain)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"{path} is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: only RSA and EC keys are supported")
    if os.stat(path).st_mode & 0o077:
        logger.warning("%s is readable by other users; run chmod 600 %s", path, path)
    return key


def describe_certificate(certificate: x509.Certificate, *, now: datetime | None = None
                         ) -> dict[str, Any]:
    """What an operator checks in a certificate — names, usages, dates; never key bytes."""
    ext = certificate.extensions
    dns: list[str] = []
    ips: list[str] = []
    ekus: list[str] = []
    try:
        san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    try:
        usages = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
        ekus = [_EKU_NAMES.get(oid, oid.dotted_string) for oid in usages]
    except x509.ExtensionNotFound:
        pass
    try:
        is_ca = ext.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key_text = f"RSA {key.key_size}"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_text = f"EC {key.curve.name}"
    else:
        key_text = type(key).__name__
    not_after = certificate.not_valid_after_utc
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": f"{certificate.serial_number:x}",
        "not_before": certificate.not_valid_before_utc.isoformat(),
        "not_after": not_after.isoformat(),
        "expired": _now(now) >= not_after,
        "is_ca": is_ca,
        "dns_names": dns,
        "ip_addresses": ips,
        "extended_key_usage": ekus,
        "public_key": key_text,
        "sha256_fingerprint": certificate.fingerprint(hashes.SHA256()).hex(":").upper(),
    }
