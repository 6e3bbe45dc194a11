"""Errors of the Trust Authority (attestation service and key provider service).

::

    VmcryptError
    └── trust.TrustError             — the Trust Authority refused or could not serve
        ├── AttestationFailed        — evidence did not prove a trusted host: unknown
        │                              host, bad signature, nonce unknown/expired/reused,
        │                              measurements matching no approved baseline (403)
        ├── EvidenceMalformed        — the evidence is not a statement we can read (400)
        ├── TokenInvalid             — a missing, malformed, forged or expired attestation
        │                              token, or one presented by another host (401)
        ├── KeyProviderUnavailable   — no key server of a trusted provider answered, or
        │                              it refused to use the primary key (503)
        ├── KekCiphertextInvalid     — one opaque error for a KEK ciphertext that does not
        │                              open under this provider's primary key (400)
        ├── TrustObjectNotFound      — no such baseline, host or provider (404)
        ├── TrustConflict            — a baseline, host or provider by that name exists (409)
        └── TrustConfigError         — the configuration file is unreadable or malformed

Every message says what failed and what to do; none carries key bytes, a token or a
KEK ciphertext. ``reason`` on :class:`AttestationFailed` is the short sentence the
service puts in its 403 answer and in the ``attestation.failed`` event.
"""

from __future__ import annotations

from typing import ClassVar

from vmcrypt.exceptions import VmcryptError

__all__ = [
    "AttestationFailed",
    "EvidenceMalformed",
    "KekCiphertextInvalid",
    "KeyProviderUnavailable",
    "TokenInvalid",
    "TrustConfigError",
    "TrustConflict",
    "TrustError",
    "TrustObjectNotFound",
]


class TrustError(VmcryptError):
    """The Trust Authority refused a request or could not serve it."""

    #: The HTTP status the API answers with.
    status: ClassVar[int] = 500


class AttestationFailed(TrustError):
    """The host is not trusted: ``reason`` says why (it is also the event's reason)."""

    status = 403

    def __init__(self, reason: str, *, host: str | None = None) -> None:
        super().__init__(f"attestation failed: {reason}")
        self.reason = reason
        self.host = host


class EvidenceMalformed(TrustError):
    """The evidence cannot be decoded into a statement; nothing was checked."""

    status = 400


class TokenInvalid(TrustError):
    """The bearer token does not prove a recent, successful attestation of this caller."""

    status = 401


class KeyProviderUnavailable(TrustError):
    """The provider's key servers cannot wrap or unwrap right now."""

    status = 503

    def __init__(self, provider: str, detail: str) -> None:
        super().__init__(f"key provider unavailable: {provider!r}: {detail}")
        self.provider = provider
        self.detail = detail


class KekCiphertextInvalid(TrustError):
    """A KEK ciphertext that is malformed, altered, or another provider's."""

    status = 400


class TrustObjectNotFound(TrustError):
    """No baseline, host or provider by that name."""

    status = 404


class TrustConflict(TrustError):
    """A baseline, host or provider by that name already exists."""

    status = 409


class TrustConfigError(TrustError):
    """The persisted configuration cannot be read or is not a configuration."""
