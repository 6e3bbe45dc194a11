"""A host's link to its Trust Authority: attestation, and KEKs of trusted key providers.

The seeds' trusted key provider flow, host side: when the host needs a KEK of a trusted
provider and holds no valid attestation token (none yet, or expired), it asks the
Attestation Service for a nonce, signs its measurements with its identity key and gets
a token; with the token it asks the Key Provider Service for a new KEK (plaintext and
ciphertext), or to unwrap the KEK ciphertext a keySafe stores (after a restart). The
control plane is not involved and never sees these KEKs.

Only the *plaintext* KEK is secret: it goes into the memory-only
:class:`~vmcrypt.host.keycache.KeyCache`, never into a file, a log line or an
exception. The token is held in memory only too (whoever holds it, over this host's
client certificate, can get keys until it expires).

Errors (both subclasses of :class:`~vmcrypt.host.exceptions.KeyNotOnHost`, so every
VM operation that lacks a key fails the same way whichever provider kind it uses)::

    KeyNotOnHost
    ├── HostNotAttested             — the Attestation Service refused this host (tampered
    │                                 file, unknown baseline, unknown host): ``reason``
    └── TrustedProviderUnavailable  — the Trust Authority or the provider's key server
                                      did not answer, or no Trust Authority is set up

``reason`` on both is the sentence the control plane puts on a locked VM.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from vmcrypt.exceptions import UsageError, VmcryptError
from vmcrypt.host.exceptions import KeyNotOnHost
from vmcrypt.trust.exceptions import (
    AttestationFailed,
    KekCiphertextInvalid,
    TokenInvalid,
    TrustObjectNotFound,
)

__all__ = [
    "AttestationState",
    "AttestationStatus",
    "HostNotAttested",
    "TrustLink",
    "TrustSettings",
    "TrustedProviderUnavailable",
    "cache_key_id",
]

log = logging.getLogger("vmcrypt.host.trust")

AttestationState = Literal["attested", "failed", "unset"]
#: Seconds before a token's expiry at which the host attests again rather than risk a
#: token that expires in flight.
_TOKEN_MARGIN = 15.0
#: How long the list of providers the Trust Authority publishes is trusted.
_PROVIDERS_TTL = 60.0


class HostNotAttested(KeyNotOnHost):
    """The Attestation Service refused this host: it gets no key of a trusted provider."""

    code = "host_not_attested"

    def __init__(self, provider_id: str, reason: str) -> None:
        VmcryptError.__init__(
            self, f"host not attested: {reason}; trusted key provider {provider_id!r} gives "
            "keys to attested hosts only — restore the host's approved software and "
            "configuration (or have an administrator approve a baseline), then retry")
        self.provider_id = provider_id
        self.key_id = None
        self.reason = f"host not attested: {reason}"


class TrustedProviderUnavailable(KeyNotOnHost):
    """No KEK from a trusted provider: the Trust Authority or its key server is down."""

    code = "trusted_provider_unavailable"

    def __init__(self, provider_id: str, reason: str) -> None:
        VmcryptError.__init__(
            self, f"trusted key provider {provider_id!r} unavailable: {reason}; the VM stays "
            "locked until it answers again")
        self.provider_id = provider_id
        self.key_id = None
        self.reason = f"trusted key provider unavailable: {reason}"


def cache_key_id(kek_ciphertext: bytes) -> str:
    """The name a trusted KEK has in the key cache: a digest of its ciphertext.

    Not secret (the ciphertext is stored in the clear beside the data), stable across
    restarts, and distinct for each KEK, so :meth:`KeyCache.forget_vm` can drop exactly
    the KEKs a VM used.
    """
    return "trusted:" + hashlib.sha256(kek_ciphertext).hexdigest()[:40]


@dataclass(frozen=True)
class TrustSettings:
    """Where the Trust Authority is and how this host proves who it is and what it runs.

    ``cert_file``/``key_file`` are the host's TLS client certificate at the Trust
    Authority (its CN is the registered host name); ``identity_file`` the ECDSA P-256
    key that signs evidence; ``config_file`` the file measured as ``config`` (its
    bytes, or nothing when None); ``package`` the vmcrypt folder measured (default:
    the one this process runs).
    """

    url: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    identity_file: Path
    config_file: Path | None = None
    package: Path | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class AttestationStatus:
    """What ``/health`` reports: the last attestation's outcome, never the token."""

    state: AttestationState
    reason: str | None = None
    at: float | None = None
    baseline: str | None = None
    expires_at: float | None = None
    url: str | None = None
    #: For ``failed``: ``host_not_attested`` (refused) or ``trusted_provider_unavailable``
    #: (the Trust Authority did not answer).
    code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"state": self.state, "reason": self.reason, "at": self.at,
                "baseline": self.baseline, "expires_at": self.expires_at, "url": self.url,
                "code": self.code}


class TrustApi(Protocol):
    """The calls of :class:`vmcrypt.trust.client.TrustClient` a host uses."""

    def nonce(self) -> str: ...
    def attest(self, evidence: dict[str, str]) -> dict[str, Any]: ...
    def new_kek(self, provider: str, token: str) -> tuple[bytes, bytes, str]: ...
    def unwrap(self, provider: str, ciphertext: bytes, token: str) -> bytes: ...
    def request(self, method: str, path: str, *, token: str | None = None,
                **kwargs: Any) -> Any: ...


EvidenceMaker = Callable[[str], dict[str, str]]


class TrustLink:
    """The host's session with its Trust Authority: one token, status, KEK calls.

    Thread-safe: the API serves requests (and jobs) in several threads; one lock keeps
    a single attestation in flight and the token consistent.
    """

    def __init__(self, api: TrustApi, *, evidence: EvidenceMaker, url: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self._api = api
        self._evidence = evidence
        self._clock = clock
        self._url = url
        self._lock = threading.RLock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._status = AttestationStatus("unset", url=url or None)
        self._published: tuple[float, frozenset[str]] | None = None

    @classmethod
    def from_settings(cls, settings: TrustSettings, *, host_name: str,
                      hardware_uuid: str) -> TrustLink:
        """A link over mutual TLS; the identity key is loaded (0600) now, not on first use."""
        from vmcrypt.trust.client import TrustClient
        from vmcrypt.trust.measure import build_evidence, load_or_create_identity, measure_host

        if not settings.identity_file.exists():
            raise UsageError(f"{settings.identity_file}: no host identity key; create it with "
                             "'vmcrypt trust identity FILE' and register its public key")
        identity = load_or_create_identity(settings.identity_file)
        client = TrustClient(settings.url, ca_file=settings.ca_file,
                             cert_file=settings.cert_file, key_file=settings.key_file,
                             timeout=settings.timeout)

        def evidence(nonce: str) -> dict[str, str]:
            # Measured at each attestation: a file changed since start shows at once.
            config = settings.config_file.read_bytes() if settings.config_file else b""
            return build_evidence(key=identity, host_name=host_name,
                                  hardware_uuid=hardware_uuid, nonce=nonce,
                                  measurements=measure_host(config=config,
                                                            package=settings.package))

        return cls(client, evidence=evidence, url=settings.url)

    # -- attestation --------------------------------------------------------------------
    def status(self) -> AttestationStatus:
        """The last attestation's outcome (``unset`` before the first)."""
        with self._lock:
            return self._status

    def attest(self) -> AttestationStatus:
        """Attest now (nonce → signed evidence → token), whatever token is held."""
        with self._lock:
            self._token = None
            try:
                answer = self._api.attest(self._evidence(self._api.nonce()))
            except AttestationFailed as exc:
                self._status = AttestationStatus("failed", reason=exc.reason,
                                                 at=self._clock(), url=self._url or None,
                                                 code=HostNotAttested.code)
                log.warning("attestation failed: %s", exc.reason)
                raise
            except VmcryptError as exc:
                self._status = AttestationStatus("failed", reason=_short(exc),
                                                 at=self._clock(), url=self._url or None,
                                                 code=TrustedProviderUnavailable.code)
                log.warning("attestation failed: %s", _short(exc))
                raise
            self._token = str(answer["token"])
            self._expires_at = float(answer["expires_at"])
            self._status = AttestationStatus(
                "attested", at=self._clock(), baseline=answer.get("baseline"),
                expires_at=self._expires_at, url=self._url or None)
            log.info("attested (baseline %s)", answer.get("baseline"))
            return self._status

    def _token_for(self, provider_id: str) -> str:
        """A valid token: the held one, or a fresh attestation (errors mapped)."""
        with self._lock:
            if self._token is not None and self._clock() < self._expires_at - _TOKEN_MARGIN:
                return self._token
            try:
                self.attest()
            except AttestationFailed as exc:
                raise HostNotAttested(provider_id, exc.reason) from None
            except VmcryptError as exc:
                raise TrustedProviderUnavailable(provider_id, _short(exc)) from None
            assert self._token is not None
            return self._token

    def _with_token(self, provider_id: str, call: Callable[[str], Any]) -> Any:
        """Run ``call(token)``; on a refused token attest once more and retry."""
        token = self._token_for(provider_id)
        try:
            return call(token)
        except TokenInvalid:
            with self._lock:
                if self._token == token:
                    self._token = None
            return call(self._token_for(provider_id))

    # -- keys -----------------------------------------------------------------------------
    def new_kek(self, provider_id: str) -> tuple[bytes, bytes]:
        """A new KEK of a trusted provider: (plaintext for the cache, ciphertext to store)."""
        try:
            kek, ciphertext, _key_id = self._with_token(
                provider_id, lambda token: self._api.new_kek(provider_id, token))
        except (HostNotAttested, TrustedProviderUnavailable):
            raise
        except VmcryptError as exc:
            raise TrustedProviderUnavailable(provider_id, _short(exc)) from None
        return kek, ciphertext

    def unwrap(self, provider_id: str, kek_ciphertext: bytes) -> bytes:
        """The KEK a stored ciphertext holds (after a restart, or on another host)."""
        try:
            kek: bytes = self._with_token(
                provider_id, lambda token: self._api.unwrap(provider_id, kek_ciphertext, token))
        except (HostNotAttested, TrustedProviderUnavailable):
            raise
        except KekCiphertextInvalid:
            raise TrustedProviderUnavailable(
                provider_id, "the Key Provider Service cannot open this KEK ciphertext (not "
                "made by this provider, or altered)") from None
        except VmcryptError as exc:
            raise TrustedProviderUnavailable(provider_id, _short(exc)) from None
        return kek

    def provider(self, provider_id: str) -> dict[str, Any]:
        """Check the provider is usable from here: attested, and published by the service.

        What the control plane asks before it creates a VM with a trusted provider
        (seeds: "checks if the default trusted key provider is accessible to the ESXi
        host"). Returns the published description (name, primary key ID, servers).
        """
        self._token_for(provider_id)
        try:
            answer: dict[str, Any] = self._api.request("GET", f"/key-providers/{provider_id}")
        except TrustObjectNotFound:
            raise TrustedProviderUnavailable(
                provider_id, "the Trust Authority does not publish this provider") from None
        except VmcryptError as exc:
            raise TrustedProviderUnavailable(provider_id, _short(exc)) from None
        return answer

    def publishes(self, provider_id: str) -> bool:
        """Whether the Trust Authority publishes ``provider_id`` (list cached a minute).

        How a host that just restarted tells a trusted provider's KEK ciphertext from a
        native provider's wrapped KEK: both are opaque bytes in a keySafe.
        """
        with self._lock:
            now = self._clock()
            cached = self._published
            if cached is None or now - cached[0] > _PROVIDERS_TTL or (
                    provider_id not in cached[1] and now - cached[0] > 1.0):
                try:
                    listed = self._api.request("GET", "/key-providers")
                except VmcryptError as exc:
                    if cached is None:
                        raise TrustedProviderUnavailable(provider_id, _short(exc)) from None
                    return provider_id in cached[1]
                names = frozenset(str(p.get("name")) for p in listed or [])
                cached = self._published = (now, names)
            return provider_id in cached[1]

    def close(self) -> None:
        """Close the connections (the token is dropped)."""
        with self._lock:
            self._token = None
        closer = getattr(self._api, "close", None)
        if callable(closer):
            closer()


def _short(exc: BaseException) -> str:
    """A one-line reason from an error: its message, which never holds a key or token."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
