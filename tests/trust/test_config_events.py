"""The persisted configuration (atomic, 0600) and the append-only event log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from vmcrypt.exceptions import UsageError
from vmcrypt.trust.config import (
    Baseline,
    ConfigStore,
    KmsServer,
    RegisteredHost,
    TrustedProvider,
)
from vmcrypt.trust.events import EventLog
from vmcrypt.trust.exceptions import TrustConfigError, TrustConflict, TrustObjectNotFound
from vmcrypt.trust.measure import public_key_pem

M = {"vmcrypt": "a" * 64, "config": "b" * 64}


def _pem() -> str:
    return public_key_pem(ec.generate_private_key(ec.SECP256R1()))


def test_round_trip_mode_and_conflicts(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    store = ConfigStore(path)
    store.add_baseline(Baseline(name="b1", measurements=M, created_at=1.0))
    store.add_host(RegisteredHost(name="h1", hardware_uuid="u1", public_key_pem=_pem(),
                                  registered_at=2.0))
    server = KmsServer(host="127.0.0.1", port=5696, ca_file="/ca", cert_file="/c",
                       key_file="/k")
    store.add_provider(TrustedProvider(name="p1", key_id="uid-1", servers=(server,),
                                       created_at=3.0))
    assert path.stat().st_mode & 0o777 == 0o600
    again = ConfigStore(path).config
    assert again.baselines["b1"].measurements == M
    assert again.hosts["h1"].hardware_uuid == "u1"
    assert again.providers["p1"].servers == (server,)
    with pytest.raises(TrustConflict):
        store.add_baseline(Baseline(name="b1", measurements=M, created_at=1.0))
    store.remove_baseline("b1")
    with pytest.raises(TrustObjectNotFound):
        store.remove_baseline("b1")
    assert "b1" not in ConfigStore(path).config.baselines
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"


@pytest.mark.parametrize("measurements", [
    {"vmcrypt": "a" * 64}, {"vmcrypt": "A" * 64, "config": "b" * 64},
    {**M, "extra": "c" * 64}, {"vmcrypt": "a" * 63, "config": "b" * 64}])
def test_bad_baselines_are_refused(measurements: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        Baseline(name="b", measurements=measurements, created_at=0.0)


def test_bad_names_and_keys_are_refused() -> None:
    with pytest.raises(UsageError):
        Baseline(name="../x", measurements=M, created_at=0.0)
    with pytest.raises(UsageError, match="PEM"):
        RegisteredHost(name="h", hardware_uuid="u", public_key_pem="nope", registered_at=0)


def test_a_malformed_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_text("{not json")
    with pytest.raises(TrustConfigError, match=r"trust\.json"):
        ConfigStore(path)
    path.write_text(json.dumps({"version": 1, "baselines": [{"name": "x"}]}))
    with pytest.raises(TrustConfigError, match="malformed"):
        ConfigStore(path)


def test_events_append_filter_and_skip_torn_lines(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", clock=lambda: 5.0)
    log.record("attestation.failed", host="h1", reason="bad signature")
    log.record("attestation.passed", host="h2", baseline="b")
    with (tmp_path / "events.jsonl").open("a") as handle:
        handle.write('{"torn": ')
    log.record("key_provider.unavailable", provider="p", reason="down")
    assert (tmp_path / "events.jsonl").stat().st_mode & 0o777 == 0o600
    assert [e["type"] for e in log.read()] == [
        "attestation.failed", "attestation.passed", "key_provider.unavailable"]
    assert log.read(type_prefix="attestation.", host="h1")[0]["reason"] == "bad signature"
    assert len(log.read(limit=1)) == 1
    with pytest.raises(ValueError, match="field"):
        log.record("attestation.passed", kek="x")
    with pytest.raises(ValueError, match="type"):
        log.record("nope")


def test_last_attestation_per_host_survives_a_restart(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    log.record("attestation.passed", host="h1", baseline="b")
    log.record("attestation.failed", host="h2", reason="bad signature")
    assert log.last_attestations()["h1"]["type"] == "attestation.passed"
    log.record("attestation.failed", host="h1", reason="nonce reused")
    log.record("baseline.added", baseline="b", by="admin")
    assert log.last_attestations()["h1"]["reason"] == "nonce reused"
    reopened = EventLog(tmp_path / "events.jsonl").last_attestations()
    assert {h: e["type"] for h, e in reopened.items()} == {
        "h1": "attestation.failed", "h2": "attestation.failed"}
