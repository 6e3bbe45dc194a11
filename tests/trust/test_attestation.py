"""Nonces, evidence verification (every refusal reason) and ES256 tokens."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from vmcrypt.trust.attestation import (
    AUDIENCE,
    ISSUER,
    Attested,
    NonceStore,
    TokenIssuer,
    load_or_create_signing_key,
    verify_evidence,
)
from vmcrypt.trust.config import Baseline, RegisteredHost, TrustConfig
from vmcrypt.trust.exceptions import AttestationFailed, EvidenceMalformed, TokenInvalid
from vmcrypt.trust.measure import build_evidence, public_key_pem

GOOD = {"vmcrypt": "a" * 64, "config": "b" * 64}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def config(key: ec.EllipticCurvePrivateKey) -> TrustConfig:
    return TrustConfig(
        baselines={"b1": Baseline(name="b1", measurements=GOOD, created_at=0)},
        hosts={"h1": RegisteredHost(name="h1", hardware_uuid="u1",
                                    public_key_pem=public_key_pem(key), registered_at=0)})


def _evidence(key: ec.EllipticCurvePrivateKey, nonce: str, *, host: str = "h1",
              uuid: str = "u1", measurements: dict[str, str] = GOOD) -> dict[str, str]:
    return build_evidence(key=key, host_name=host, hardware_uuid=uuid, nonce=nonce,
                          measurements=measurements)


def test_nonces_are_single_use_and_expire() -> None:
    clock = Clock()
    nonces = NonceStore(ttl=60, clock=clock)
    nonce, expires = nonces.issue()
    assert expires == clock.now + 60 and len(nonce) >= 43
    nonces.consume(nonce)
    with pytest.raises(AttestationFailed, match="nonce reused"):
        nonces.consume(nonce)
    with pytest.raises(AttestationFailed, match="nonce unknown"):
        nonces.consume("made-up")
    late, _ = nonces.issue()
    clock.now += 61
    with pytest.raises(AttestationFailed, match="nonce expired"):
        nonces.consume(late)


def test_good_evidence_passes(key: ec.EllipticCurvePrivateKey, config: TrustConfig) -> None:
    nonces = NonceStore()
    nonce, _ = nonces.issue()
    assert verify_evidence(_evidence(key, nonce), config=config, nonces=nonces) == Attested(
        host="h1", hardware_uuid="u1", baseline="b1")


@pytest.mark.parametrize(("change", "reason"), [
    ({"host": "h2"}, "unknown host"),
    ({"uuid": "u2"}, "unknown host"),
    ({"measurements": {**GOOD, "vmcrypt": "c" * 64}},
     "measurement 'vmcrypt' does not match any approved baseline"),
    ({"measurements": {**GOOD, "config": "c" * 64}},
     "measurement 'config' does not match any approved baseline"),
])
def test_refusals_name_the_reason(key: ec.EllipticCurvePrivateKey, config: TrustConfig,
                                  change: dict[str, object], reason: str) -> None:
    nonces = NonceStore()
    nonce, _ = nonces.issue()
    with pytest.raises(AttestationFailed) as caught:
        verify_evidence(_evidence(key, nonce, **change), config=config,  # type: ignore[arg-type]
                        nonces=nonces)
    assert caught.value.reason == reason


def test_bad_signature_leaves_the_nonce_usable(key: ec.EllipticCurvePrivateKey,
                                               config: TrustConfig) -> None:
    nonces = NonceStore()
    nonce, _ = nonces.issue()
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AttestationFailed, match="bad signature"):
        verify_evidence(_evidence(other, nonce), config=config, nonces=nonces)
    forged = _evidence(key, nonce)
    statement = json.loads(base64.urlsafe_b64decode(forged["statement"] + "=="))
    statement["measurements"]["vmcrypt"] = "c" * 64
    forged["statement"] = base64.urlsafe_b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(AttestationFailed, match="bad signature"):
        verify_evidence(forged, config=config, nonces=nonces)
    verify_evidence(_evidence(key, nonce), config=config, nonces=nonces)
    with pytest.raises(AttestationFailed, match="nonce reused"):
        verify_evidence(_evidence(key, nonce), config=config, nonces=nonces)


def test_no_baseline_and_mixed_baselines(key: ec.EllipticCurvePrivateKey,
                                         config: TrustConfig) -> None:
    nonces = NonceStore()
    empty = TrustConfig(hosts=config.hosts)
    with pytest.raises(AttestationFailed, match="no approved baseline"):
        verify_evidence(_evidence(key, nonces.issue()[0]), config=empty, nonces=nonces)
    mixed = TrustConfig(hosts=config.hosts, baselines={
        "x": Baseline(name="x", measurements={**GOOD, "config": "c" * 64}, created_at=0),
        "y": Baseline(name="y", measurements={**GOOD, "vmcrypt": "c" * 64}, created_at=0)})
    with pytest.raises(AttestationFailed, match="no single approved baseline"):
        verify_evidence(_evidence(key, nonces.issue()[0]), config=mixed, nonces=nonces)


@pytest.mark.parametrize("evidence", [
    None, [], {}, {"statement": "!!", "signature": "AA"},
    {"statement": base64.urlsafe_b64encode(b"not json").decode(), "signature": "AA"},
    {"statement": base64.urlsafe_b64encode(b'{"version": 2}').decode(), "signature": "AA"},
    {"statement": base64.urlsafe_b64encode(
        b'{"version": 1, "host": "h1", "hardware_uuid": "u1", "nonce": "n"}').decode(),
     "signature": "AA"},
])
def test_malformed_evidence(evidence: object, config: TrustConfig) -> None:
    with pytest.raises(EvidenceMalformed):
        verify_evidence(evidence, config=config, nonces=NonceStore())


def test_tokens(tmp_path: Path) -> None:
    signing = load_or_create_signing_key(tmp_path / "sign.key")
    assert (tmp_path / "sign.key").stat().st_mode & 0o777 == 0o600
    issuer = TokenIssuer(signing, ttl=600)
    token, expires = issuer.issue(Attested(host="h1", hardware_uuid="u1", baseline="b1"))
    claims = issuer.verify(token)
    assert (claims.host, claims.hardware_uuid, claims.baseline) == ("h1", "u1", "b1")
    assert claims.expires_at == expires
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw["iss"] == ISSUER and raw["aud"] == AUDIENCE and raw["exp"] - raw["iat"] == 600

    reloaded = TokenIssuer(load_or_create_signing_key(tmp_path / "sign.key"))
    assert reloaded.verify(token).host == "h1", "tokens survive a restart"
    past = TokenIssuer(signing, ttl=600, clock=lambda: time.time() - 601)
    old, _ = past.issue(Attested(host="h1", hardware_uuid="u1", baseline="b1"))
    with pytest.raises(TokenInvalid, match="expired"):
        issuer.verify(old)
    stranger = TokenIssuer(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(TokenInvalid):
        issuer.verify(stranger.issue(Attested("h1", "u1", "b1"))[0])
    unsigned = jwt.encode({**raw}, key=None, algorithm="none")
    with pytest.raises(TokenInvalid):
        issuer.verify(unsigned)
    with pytest.raises(TokenInvalid):
        issuer.verify(token[:-4] + "AAAA")
    with pytest.raises(TokenInvalid):
        issuer.verify("garbage")
