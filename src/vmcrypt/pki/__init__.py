"""A small certificate authority and the TLS contexts of vmcrypt's mutual TLS.

The KMIP key server (``vmcrypt kms serve``, port 5696), its clients and the control
plane enrolling hosts trust one CA: :func:`init_pki` writes the CA, a server certificate
and client certificates into a directory; :func:`server_context` and
:func:`client_context` turn those files into TLS contexts; :func:`peer_identity` gives the
verified client's name.
"""

from vmcrypt.pki.ca import (
    CA_DAYS,
    LEAF_DAYS,
    CertificateAuthority,
    Issued,
    KeyType,
    PrivateKey,
    describe_certificate,
    generate_private_key,
    load_certificate,
    load_private_key,
    write_pem,
)
from vmcrypt.pki.exceptions import CertificateError, PkiError, PkiExistsError
from vmcrypt.pki.layout import CertFiles, PkiLayout, cert_files, init_pki, issue_client
from vmcrypt.pki.tls import certificate_expiry, client_context, peer_identity, server_context

__all__ = [
    "CA_DAYS",
    "LEAF_DAYS",
    "CertFiles",
    "CertificateAuthority",
    "CertificateError",
    "Issued",
    "KeyType",
    "PkiError",
    "PkiExistsError",
    "PkiLayout",
    "PrivateKey",
    "cert_files",
    "certificate_expiry",
    "client_context",
    "describe_certificate",
    "generate_private_key",
    "init_pki",
    "issue_client",
    "load_certificate",
    "load_private_key",
    "peer_identity",
    "server_context",
    "write_pem",
]
