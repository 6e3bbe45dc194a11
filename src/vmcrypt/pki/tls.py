"""TLS contexts for mutual TLS, and the identity a verified peer certificate carries.

Both sides require TLS 1.2 or newer (KMIP 1.2+ profiles mandate TLS 1.2; 1.3 is allowed
when the peer offers it) and keep Python's default cipher list, which has forward
secrecy and AEAD first. A KMIP client is identified by its certificate, not by anything
it sends, so :func:`peer_identity` reads the CN only from a certificate the handshake
verified.
"""

from __future__ import annotations

import ssl
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from vmcrypt.exceptions import UsageError
from vmcrypt.pki.ca import load_certificate, load_private_key
from vmcrypt.pki.exceptions import CertificateError

__all__ = ["certificate_expiry", "client_context", "peer_identity", "server_context"]


def _load_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    # Parsed first so a missing or malformed file gets a message naming it, not
    # OpenSSL's "[SSL] PEM lib".
    load_certificate(cert_file)
    load_private_key(key_file)
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except ssl.SSLError:
        raise CertificateError(
            f"{key_file} is not the key of {cert_file}; give the matching pair"
        ) from None


def _load_ca(context: ssl.SSLContext, ca_file: Path) -> None:
    load_certificate(ca_file)
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError:
        raise CertificateError(f"{ca_file} holds no usable CA certificate") from None


def server_context(*, cert_file: Path, key_file: Path, ca_file: Path,
                   require_client_cert: bool = True) -> ssl.SSLContext:
    """A server context that trusts only ``ca_file`` for client certificates.

    Without ``require_client_cert`` a client certificate is still verified when one is
    offered (CERT_OPTIONAL), so :func:`peer_identity` never reports an unverified name.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert_file, key_file)
    _load_ca(context, ca_file)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(*, ca_file: Path, cert_file: Path | None = None,
                   key_file: Path | None = None, check_hostname: bool = True) -> ssl.SSLContext:
    """A client context that trusts only ``ca_file`` and presents a certificate if given.

    The server certificate is always verified against the CA; ``check_hostname=False``
    only drops the name check, for servers reached by an address not in their SAN.
    """
    if (cert_file is None) != (key_file is None):
        raise UsageError("give both a client certificate and its key, or neither")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(context, ca_file)
    if cert_file is not None and key_file is not None:
        _load_chain(context, cert_file, key_file)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_identity(sock: ssl.SSLSocket) -> str | None:
    """The verified peer certificate's subject CN, or ``None`` without one.

    ``getpeercert()`` returns an empty dict for a certificate that was not verified,
    which makes this ``None`` rather than a name an attacker chose.
    """
    if not sock.getpeercert():
        return None
    der = sock.getpeercert(binary_form=True)
    if der is None:
        return None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def certificate_expiry(cert_file: Path) -> datetime:
    """When the certificate in ``cert_file`` stops being valid (UTC), for health reports."""
    return load_certificate(cert_file).not_valid_after_utc
