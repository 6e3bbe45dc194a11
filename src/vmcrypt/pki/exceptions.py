"""Errors of the PKI layer (the small CA and the TLS contexts built from its files).

::

    VmcryptError
    ├── UsageError                 — a bad name, IP address or option combination
    └── pki.PkiError               — a PKI operation failed; nothing was half-written
        ├── pki.CertificateError   — a certificate or key file is missing, unreadable,
        │                            not PEM, expired, or does not match its partner
        └── pki.PkiExistsError     — files of an existing CA or certificate would be
                                     overwritten; pass ``force=True`` (``--force``)

Every message names the file it is about and says what to do next; none ever contains
key bytes, so messages can be logged and shown as they are.
"""

from __future__ import annotations

from vmcrypt.exceptions import VmcryptError

__all__ = ["CertificateError", "PkiError", "PkiExistsError"]


class PkiError(VmcryptError):
    """A PKI operation failed; files already on disk are unchanged unless the message says so."""


class CertificateError(PkiError):
    """A certificate or private key file cannot be used as it is."""


class PkiExistsError(PkiError):
    """Writing would replace an existing CA or certificate, and with it every trust built on it."""
