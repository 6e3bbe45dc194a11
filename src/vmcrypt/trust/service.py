"""The Trust Authority's behaviour, apart from HTTP: attest, authorise, wrap, administer.

:class:`TrustService` joins the configuration, the nonce store, the token issuer, the
KMIP provider pool and the event log. The API (:mod:`vmcrypt.trust.api`) is a thin layer
over it that only translates HTTP, so the rules live here and are tested in-process.

Callers are known by the common name of their verified client certificate:

- **hosts** attest and use keys; the certificate's CN must be the host's registered
  name, both in the evidence and in the token's subject, so a token copied from host A
  is useless to host B;
- **administrators** (the CNs given to ``--admin``) manage baselines, hosts and
  providers and read events; they cannot attest.

Events are written here, in the one place each outcome is decided, never in handlers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vmcrypt.trust.attestation import (
    Attested,
    NonceStore,
    TokenClaims,
    TokenIssuer,
    verify_evidence,
)
from vmcrypt.trust.config import (
    Baseline,
    ConfigStore,
    KmsServer,
    RegisteredHost,
    TrustedProvider,
    check_name,
)
from vmcrypt.trust.events import EventLog
from vmcrypt.trust.exceptions import (
    AttestationFailed,
    EvidenceMalformed,
    KeyProviderUnavailable,
    TokenInvalid,
    TrustConflict,
    TrustObjectNotFound,
)
from vmcrypt.trust.providers import ProviderPool, WrappedKek

__all__ = ["IssuedToken", "TrustService"]


@dataclass(frozen=True)
class IssuedToken:
    """A passed attestation: the token and what it says."""

    token: str
    expires_at: float
    attested: Attested


class TrustService:
    """Attestation Service and Key Provider Service over one configuration."""

    def __init__(self, *, config: ConfigStore, events: EventLog, issuer: TokenIssuer,
                 nonces: NonceStore, providers: ProviderPool,
                 admins: Sequence[str] = ("admin",),
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.events = events
        self.issuer = issuer
        self.nonces = nonces
        self.providers = providers
        self.admins = frozenset(admins)
        self._clock = clock

    def is_admin(self, peer: str | None) -> bool:
        """Whether the certificate CN ``peer`` is an administrator's."""
        return peer is not None and peer in self.admins

    # -- attestation ----------------------------------------------------------------------

    def new_nonce(self) -> tuple[str, float]:
        """A single-use nonce for the next evidence, and its expiry."""
        return self.nonces.issue()

    def attest(self, evidence: Any, *, peer: str | None) -> IssuedToken:
        """Verify evidence from the client ``peer``; issue a token or raise with the reason."""
        try:
            attested = verify_evidence(evidence, config=self.config.config, nonces=self.nonces)
            if attested.host != peer:
                raise AttestationFailed(
                    f"the client certificate ({peer!r}) is not the host's", host=attested.host)
        except AttestationFailed as exc:
            self.events.record("attestation.failed", host=exc.host, reason=exc.reason,
                               by=peer)
            raise
        except EvidenceMalformed as exc:
            self.events.record("attestation.failed", reason=str(exc), by=peer)
            raise
        token, expires = self.issuer.issue(attested)
        self.events.record("attestation.passed", host=attested.host,
                           hardware_uuid=attested.hardware_uuid, baseline=attested.baseline)
        return IssuedToken(token=token, expires_at=expires, attested=attested)

    def authorize(self, token: str | None, *, peer: str | None) -> TokenClaims:
        """The claims of ``token`` if it is valid, presented by its host, which is still
        registered; :class:`TokenInvalid` otherwise."""
        if not token:
            raise TokenInvalid("an attestation token is required (Authorization: Bearer …); "
                               "attest first")
        claims = self.issuer.verify(token)
        if claims.host != peer:
            raise TokenInvalid("this attestation token was issued to another host")
        host = self.config.config.hosts.get(claims.host)
        if host is None or host.hardware_uuid != claims.hardware_uuid:
            raise TokenInvalid("the host of this token is no longer registered")
        return claims

    # -- key provider service -------------------------------------------------------------

    def provider(self, name: str) -> TrustedProvider:
        """A published trusted key provider, or :class:`TrustObjectNotFound`."""
        provider = self.config.config.providers.get(name)
        if provider is None:
            raise TrustObjectNotFound(f"no trusted key provider named {name!r}")
        return provider

    def new_kek(self, name: str, claims: TokenClaims) -> WrappedKek:
        """A KEK for an attested host, wrapped under provider ``name``'s primary key."""
        provider = self.provider(name)
        try:
            return self.providers.new_kek(provider.name, provider.key_id, provider.servers)
        except KeyProviderUnavailable as exc:
            self._unavailable(exc, claims)
            raise

    def unwrap(self, name: str, ciphertext: bytes, claims: TokenClaims) -> bytes:
        """The KEK in ``ciphertext``, for an attested host."""
        provider = self.provider(name)
        try:
            return self.providers.unwrap(provider.name, provider.key_id, provider.servers,
                                         ciphertext)
        except KeyProviderUnavailable as exc:
            self._unavailable(exc, claims)
            raise

    def _unavailable(self, exc: KeyProviderUnavailable, claims: TokenClaims | None) -> None:
        self.events.record("key_provider.unavailable", provider=exc.provider,
                           reason=exc.detail, host=claims.host if claims else None)

    # -- administration -------------------------------------------------------------------

    def add_baseline(self, name: str, measurements: dict[str, str], *, by: str) -> Baseline:
        """Approve a baseline."""
        baseline = self.config.add_baseline(
            Baseline(name=name, measurements=dict(measurements), created_at=self._clock()))
        self.events.record("baseline.added", baseline=name, by=by)
        return baseline

    def remove_baseline(self, name: str, *, by: str) -> None:
        """Withdraw a baseline."""
        self.config.remove_baseline(name)
        self.events.record("baseline.removed", baseline=name, by=by)

    def add_host(self, name: str, hardware_uuid: str, public_key_pem: str, *,
                 by: str) -> RegisteredHost:
        """Register a host identity."""
        host = self.config.add_host(RegisteredHost(
            name=name, hardware_uuid=hardware_uuid, public_key_pem=public_key_pem,
            registered_at=self._clock()))
        self.events.record("host.added", host=name, hardware_uuid=hardware_uuid, by=by)
        return host

    def remove_host(self, name: str, *, by: str) -> None:
        """Unregister a host."""
        self.config.remove_host(name)
        self.events.record("host.removed", host=name, by=by)

    def add_provider(self, name: str, servers: Sequence[KmsServer], *,
                     by: str) -> TrustedProvider:
        """Create the primary key in the key server, then publish the provider."""
        check_name(name, "key provider")
        if name in self.config.config.providers:
            # Checked before the key server is asked, so a repeat makes no orphan key.
            raise TrustConflict(f"a key provider named {name!r} already exists")
        try:
            key_id = self.providers.create_primary_key(name, servers)
        except KeyProviderUnavailable as exc:
            self._unavailable(exc, None)
            raise
        provider = self.config.add_provider(TrustedProvider(
            name=name, key_id=key_id, servers=tuple(servers), created_at=self._clock()))
        self.events.record("key_provider.added", provider=name, key_id=key_id, by=by)
        return provider

    def last_attestations(self) -> dict[str, dict[str, Any]]:
        """Each host's latest attestation event (its status: passed or failed, why)."""
        return self.events.last_attestations()
