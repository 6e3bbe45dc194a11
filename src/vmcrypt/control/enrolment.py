"""Host enrolment: one-time tokens, and certificates signed from a host's CSR.

The control plane's CA is the CA of the whole system (the role of vCenter's
certificate authority). A host earns a certificate in two steps:

1. an administrator creates an enrolment token (:func:`create_enrolment_token`): 256
   random bits, shown once, stored as SHA-256, valid for a short time and **once**;
2. the host generates its key locally and sends the token with a certificate signing
   request (:func:`enrol`); the control plane checks the token, signs the CSR's public
   key — the private key never leaves the host — and marks the token used in the same
   transaction.

Every bad token (unknown, used, expired) fails with one opaque
:class:`~vmcrypt.control.exceptions.AuthenticationFailed`: a caller learns nothing
about which tokens exist. Time is a parameter (``at=``) so expiry is testable.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import EnrolmentToken, Host
from vmcrypt.control.db.models.base import now as _now
from vmcrypt.control.db.repo._common import fetch, insert
from vmcrypt.control.db.repo.access import token_digest
from vmcrypt.control.exceptions import AuthenticationFailed, Conflict
from vmcrypt.exceptions import UsageError
from vmcrypt.pki import LEAF_DAYS, CertificateAuthority

__all__ = [
    "DEFAULT_TTL",
    "ENROLMENT_TOKEN_PREFIX",
    "Enrolled",
    "IssuedEnrolmentToken",
    "ca_fingerprint",
    "create_enrolment_token",
    "enrol",
    "sign_csr",
]

#: Enrolment tokens are recognisable in logs and secret scanners, and never mistaken
#: for API tokens (``vmct_``).
ENROLMENT_TOKEN_PREFIX: Final = "vmce_"  # noqa: S105 — a public marker, not a secret
DEFAULT_TTL: Final = timedelta(hours=1)
_MAX_TTL: Final = timedelta(days=7)
# Certificates start a little in the past so a host whose clock lags still accepts them.
_BACKDATE: Final = timedelta(minutes=5)


@dataclass(frozen=True)
class IssuedEnrolmentToken:
    """A fresh enrolment token: ``token`` is the secret, shown this once."""

    token_id: int
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class Enrolled:
    """What an enrolled host receives: its certificate and the CA's, both PEM."""

    host_id: int
    certificate_pem: str
    ca_certificate_pem: str
    fingerprint: str


def ca_fingerprint(ca: CertificateAuthority) -> str:
    """SHA-256 of the CA's DER certificate, hex: what a host pins on first contact."""
    return ca.certificate.fingerprint(hashes.SHA256()).hex()


def create_enrolment_token(
    session: Session,
    *,
    host_id: int | None = None,
    host_name: str | None = None,
    ttl: timedelta = DEFAULT_TTL,
    created_by: str | None = None,
    at: datetime | None = None,
) -> IssuedEnrolmentToken:
    """A one-time token for the registered host ``host_id``, or a new standalone host.

    Exactly one of ``host_id`` and ``host_name``: a token always says which host it
    admits, so a leaked one cannot enrol an arbitrary machine under another name.
    """
    if (host_id is None) == (host_name is None):
        raise UsageError("an enrolment token names either a registered host or a new host name")
    if not timedelta(0) < ttl <= _MAX_TTL:
        raise UsageError(f"an enrolment token lives between 1 second and {_MAX_TTL.days} days")
    if host_id is not None:
        host = fetch(session, Host, host_id)
        if host.enrolled_at is not None:
            raise Conflict(f"host {host.name!r} is already enrolled")
    elif session.scalar(select(Host).where(Host.name == host_name)) is not None:
        raise Conflict(f"a host named {host_name!r} exists; create the token for its ID")
    token = ENROLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = (at or _now()) + ttl
    row = insert(session, EnrolmentToken(
        digest=token_digest(token), host_id=host_id, host_name=host_name,
        created_by=created_by, expires_at=expires_at,
    ), what="enrolment token")
    return IssuedEnrolmentToken(token_id=row.id, token=token, expires_at=expires_at)


def enrol(
    session: Session,
    *,
    ca: CertificateAuthority,
    token: str,
    csr_pem: str,
    hardware_uuid: str,
    address: str,
    api_url: str,
    at: datetime | None = None,
) -> Enrolled:
    """Redeem ``token``: sign the host's CSR and record the host as enrolled.

    The token row is locked (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN
    IMMEDIATE`` serialises writers) and marked used before the transaction commits, so
    two hosts racing with one token cannot both succeed.
    """
    moment = at or _now()
    row = session.scalar(
        select(EnrolmentToken).where(EnrolmentToken.digest == token_digest(token))
        .with_for_update()
    )
    if row is None or row.used_at is not None or row.expires_at <= moment:
        raise AuthenticationFailed
    csr = _load_csr(csr_pem)
    if row.host_id is not None:
        host = fetch(session, Host, row.host_id)
        if host.hardware_uuid != hardware_uuid:
            raise UsageError("this enrolment token is for another host (hardware UUID differs)")
    else:
        host = insert(session, Host(name=row.host_name or "", hardware_uuid=hardware_uuid,
                                    api_url=api_url), what=f"host {row.host_name!r}")
    certificate = sign_csr(ca, csr, common_name=host.name, address=address, now=moment)
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    row.used_at = moment
    row.host_id = host.id
    row.certificate_fingerprint = fingerprint
    host.certificate_fingerprint = fingerprint
    host.enrolled_at = moment
    session.flush()
    return Enrolled(
        host_id=host.id,
        certificate_pem=certificate.public_bytes(Encoding.PEM).decode("ascii"),
        ca_certificate_pem=ca.certificate.public_bytes(Encoding.PEM).decode("ascii"),
        fingerprint=fingerprint,
    )


def _load_csr(pem: str) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise UsageError("csr is not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise UsageError("the CSR's signature does not verify: it was not made with its key")
    key = csr.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise UsageError("only RSA and EC keys can be enrolled")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise UsageError("an RSA key must have at least 2048 bits")
    return csr


def _san(address: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        pass
    if not address or len(address) > 253 or any(c.isspace() or c == "/" for c in address):
        raise UsageError(f"{address!r} is neither an IP address nor a DNS name")
    return x509.DNSName(address)


def sign_csr(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    *,
    common_name: str,
    address: str,
    days: int = LEAF_DAYS,
    now: datetime | None = None,
) -> x509.Certificate:
    """A serverAuth + clientAuth certificate for the CSR's key, SAN = ``address``.

    Only the public key is taken from the CSR: the name, the SAN and the usages are the
    control plane's decision, so a host cannot ask for more than it is given. The
    profile matches :meth:`CertificateAuthority.issue` (docs/pki.md).
    """
    start = now or _now()
    key = csr.public_key()
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)  # _load_csr checked
    ca_end = ca.certificate.not_valid_after_utc
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(min(start + timedelta(days=days), ca_end))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # RFC 5480 — 3: keyEncipherment is not a usage of an EC key.
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=isinstance(key, rsa.RSAPublicKey), data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
            critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(address)]), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
