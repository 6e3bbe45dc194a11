"""The Attestation Service: nonces, evidence verification, and ES256 attestation tokens.

A host gets a nonce (:class:`NonceStore`), signs a statement of its measurements with
that nonce (:func:`vmcrypt.trust.measure.build_evidence`), and sends it back;
:func:`verify_evidence` checks, in this order:

1. the evidence decodes into a version 1 statement (else :class:`EvidenceMalformed`);
2. the host is registered and the hardware UUID is the registered one ("unknown host");
3. the signature verifies with the registered public key ("bad signature") — before the
   nonce is touched, so nobody without the host's key can burn the host's nonces;
4. the nonce was issued here, is unexpired and unused ("nonce unknown", "nonce
   expired", "nonce reused"); it is consumed whatever follows;
5. one approved baseline matches every measurement ("measurement 'vmcrypt' does not
   match any approved baseline").

A pass gets a JWT (:class:`TokenIssuer`, ES256, RFC 7519 claims ``iss``, ``sub`` = host
name, ``aud``, ``iat``, ``nbf``, ``exp``, ``jti``, plus ``hardware_uuid`` and
``baseline``), signed with the service's own P-256 key, persisted 0600 beside the
configuration so tokens survive a restart of the service. PyJWT checks signature,
algorithm, issuer, audience and expiry; the algorithm list is pinned to ES256, so an
``alg: none`` or HS256 token made with the public key is refused.

Time and randomness are parameters (``clock``) so tests drive expiry without sleeping.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vmcrypt.pki.ca import write_pem
from vmcrypt.trust.config import TrustConfig, load_public_key
from vmcrypt.trust.exceptions import AttestationFailed, EvidenceMalformed, TokenInvalid
from vmcrypt.trust.measure import MEASUREMENTS, STATEMENT_VERSION

__all__ = [
    "AUDIENCE",
    "ISSUER",
    "Attested",
    "NonceStore",
    "TokenClaims",
    "TokenIssuer",
    "load_or_create_signing_key",
    "verify_evidence",
]

ISSUER = "vmcrypt-trust-authority"
AUDIENCE = "vmcrypt-key-provider-service"
#: Evidence larger than this is refused before decoding.
MAX_EVIDENCE = 16 << 10


class NonceStore:
    """Single-use nonces with a short lifetime, in memory.

    Memory is enough: a nonce lives ``ttl`` seconds, and a restarted service simply
    refuses nonces issued before (the host asks again). Consumed nonces are remembered
    until they would have expired, which is what lets the answer say "reused".
    """

    def __init__(self, *, ttl: float = 60.0, clock: Callable[[], float] = time.time,
                 capacity: int = 100_000) -> None:
        self.ttl = ttl
        self._clock = clock
        self._capacity = capacity
        self._issued: dict[str, float] = {}
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> tuple[str, float]:
        """A fresh nonce (256 bits, URL-safe) and when it expires."""
        now = self._clock()
        nonce = secrets.token_urlsafe(32)
        with self._lock:
            self._expire(now)
            if len(self._issued) >= self._capacity:
                # Bounded memory: the oldest outstanding nonce goes first.
                del self._issued[next(iter(self._issued))]
            self._issued[nonce] = now + self.ttl
        return nonce, now + self.ttl

    def consume(self, nonce: str) -> None:
        """Use ``nonce`` once, or raise :class:`AttestationFailed` saying why not."""
        now = self._clock()
        with self._lock:
            expires = self._issued.pop(nonce, None)
            if expires is None:
                reused = nonce in self._used
                self._expire(now)
                raise AttestationFailed("nonce reused" if reused else
                                        "nonce unknown or expired: ask for a new one")
            if now > expires:
                raise AttestationFailed("nonce expired: ask for a new one")
            self._used[nonce] = expires
            self._expire(now)

    def _expire(self, now: float) -> None:
        for table in (self._issued, self._used):
            for stale in [n for n, t in table.items() if t < now]:
                del table[stale]


@dataclass(frozen=True)
class Attested:
    """A host that passed: who it is and the baseline it matched."""

    host: str
    hardware_uuid: str
    baseline: str


def _b64decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise EvidenceMalformed(f"evidence: {what} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise EvidenceMalformed(f"evidence: {what} is not base64url") from None


def _statement(evidence: Any) -> tuple[bytes, bytes, dict[str, Any]]:
    if not isinstance(evidence, dict):
        raise EvidenceMalformed("evidence must be an object with 'statement' and 'signature'")
    raw = _b64decode(evidence.get("statement"), "statement")
    signature = _b64decode(evidence.get("signature"), "signature")
    if len(raw) > MAX_EVIDENCE:
        raise EvidenceMalformed("evidence: the statement is too large")
    try:
        statement = json.loads(raw)
    except ValueError:
        raise EvidenceMalformed("evidence: the statement is not JSON") from None
    if not isinstance(statement, dict) or statement.get("version") != STATEMENT_VERSION:
        raise EvidenceMalformed(f"evidence: not a version {STATEMENT_VERSION} statement")
    for name, longest in (("host", 64), ("hardware_uuid", 128), ("nonce", 128)):
        if not isinstance(statement.get(name), str) or not statement[name]:
            raise EvidenceMalformed(f"evidence: the statement has no {name!r}")
        if len(statement[name]) > longest:
            raise EvidenceMalformed(f"evidence: {name!r} is longer than {longest} characters")
    measurements = statement.get("measurements")
    if (not isinstance(measurements, dict)
            or not all(isinstance(measurements.get(m), str) for m in MEASUREMENTS)):
        raise EvidenceMalformed(
            f"evidence: the statement must measure {', '.join(MEASUREMENTS)}")
    return raw, signature, statement


def _matching_baseline(config: TrustConfig, measurements: dict[str, str]) -> str:
    baselines = sorted(config.baselines.values(), key=lambda b: b.name)
    if not baselines:
        raise AttestationFailed("no approved baseline: an administrator must add one")
    for baseline in baselines:
        if all(secrets.compare_digest(baseline.measurements[m], measurements[m])
               for m in MEASUREMENTS):
            return baseline.name
    for m in MEASUREMENTS:
        if all(b.measurements[m] != measurements[m] for b in baselines):
            raise AttestationFailed(f"measurement {m!r} does not match any approved baseline")
    raise AttestationFailed("the measurements match no single approved baseline")


def verify_evidence(evidence: Any, *, config: TrustConfig, nonces: NonceStore) -> Attested:
    """Check evidence as the module docstring says; return who attested, or raise."""
    raw, signature, statement = _statement(evidence)
    name = statement["host"]
    host = config.hosts.get(name)
    if host is None or host.hardware_uuid != statement["hardware_uuid"]:
        raise AttestationFailed("unknown host", host=name)
    try:
        load_public_key(host.public_key_pem).verify(signature, raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AttestationFailed("bad signature", host=name) from None
    try:
        nonces.consume(statement["nonce"])
        baseline = _matching_baseline(config, statement["measurements"])
    except AttestationFailed as exc:
        raise AttestationFailed(exc.reason, host=name) from None
    return Attested(host=name, hardware_uuid=host.hardware_uuid, baseline=baseline)


def load_or_create_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The service's token signing key (P-256), created 0600 on first start."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TokenInvalid(f"{path} is not an EC signing key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    write_pem(path, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), private=True)
    return key


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says."""

    host: str
    hardware_uuid: str
    baseline: str
    expires_at: float


class TokenIssuer:
    """Issue and verify ES256 attestation tokens."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, *, ttl: float = 600.0,
                 issuer: str = ISSUER, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._public = key.public_key()
        self.ttl = ttl
        self.issuer = issuer
        self._clock = clock

    def public_key_pem(self) -> str:
        """The key relying parties verify tokens with."""
        return self._public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def issue(self, attested: Attested) -> tuple[str, float]:
        """A token for ``attested`` and its expiry (seconds since the epoch)."""
        now = int(self._clock())
        expires = now + max(1, int(self.ttl))
        claims = {
            "iss": self.issuer, "aud": AUDIENCE, "sub": attested.host,
            "hardware_uuid": attested.hardware_uuid, "baseline": attested.baseline,
            "iat": now, "nbf": now, "exp": expires, "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self._key, algorithm="ES256"), float(expires)

    def verify(self, token: str) -> TokenClaims:
        """The claims of a valid token, or :class:`TokenInvalid` (never why in detail
        beyond "expired", which the host acts on by attesting again)."""
        try:
            claims = jwt.decode(
                token, self._public, algorithms=["ES256"], audience=AUDIENCE,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "nbf", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenInvalid("the attestation token has expired; attest again") from None
        except jwt.InvalidTokenError:
            raise TokenInvalid("the attestation token is not valid; attest again") from None
        hardware_uuid, baseline = claims.get("hardware_uuid"), claims.get("baseline")
        if not isinstance(hardware_uuid, str) or not isinstance(baseline, str):
            raise TokenInvalid("the attestation token is not valid; attest again")
        return TokenClaims(host=str(claims["sub"]), hardware_uuid=hardware_uuid,
                           baseline=baseline, expires_at=float(claims["exp"]))
