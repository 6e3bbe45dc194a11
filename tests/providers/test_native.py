"""The native key provider: KEKs under a primary key, the sealed record, the backup gate."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmcrypt.providers as providers_pkg
from vmcrypt.crypto import IntegrityError
from vmcrypt.providers import (
    AddKeysToHostFailed,
    ForeignWrappedKek,
    HostNativeKeyProvider,
    KekRef,
    KeyMissing,
    KeyOwner,
    NativeKeyProvider,
    NotBackedUp,
    SealedRecordError,
)

NOW = datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)


@pytest.fixture
def sealing_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def provider(sealing_key: bytes) -> NativeKeyProvider:
    """A provider whose risk was acknowledged, so it hands out keys."""
    p = NativeKeyProvider.create("nkp-1", sealing_key=sealing_key, now=NOW)
    p.acknowledge_no_backup()
    return p


def key_forms(key: bytes) -> list[str]:
    """Every textual form a key could leak in."""
    return [
        key.hex(),
        key.hex().upper(),
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode(),
        base64.b64encode(key).decode().rstrip("="),
        repr(key),
    ]


def assert_no_key(text: str, key: bytes) -> None:
    for form in key_forms(key):
        assert form not in text


def test_exported_names() -> None:
    for name in providers_pkg.__all__:
        assert hasattr(providers_pkg, name)


# -- KEKs ----------------------------------------------------------------------------


def test_kek_round_trip(provider: NativeKeyProvider) -> None:
    new = provider.new_kek(owner=KeyOwner("Virtual Machine", "vm1", "uuid-1"))
    assert new.ref.key_id is None
    assert new.ref.wrapped_kek is not None
    assert new.ref.wrapped_kek != new.kek
    assert provider.get_kek(new.ref) == new.kek
    assert provider.get_keks([new.ref, new.ref]) == [new.kek, new.kek]


def test_keks_are_32_bytes_and_distinct(provider: NativeKeyProvider) -> None:
    keks = [provider.new_kek() for _ in range(64)]
    assert all(len(k.kek) == 32 for k in keks)
    assert len({k.kek for k in keks}) == 64
    assert len({k.ref.wrapped_kek for k in keks}) == 64


def test_wrapped_kek_from_another_provider_fails_precisely(
    provider: NativeKeyProvider, sealing_key: bytes
) -> None:
    other = NativeKeyProvider.create("nkp-2", sealing_key=sealing_key)
    other.acknowledge_no_backup()
    new = other.new_kek()
    with pytest.raises(ForeignWrappedKek, match="not wrapped by the primary key") as info:
        provider.get_kek(new.ref)
    assert isinstance(info.value, KeyMissing)
    assert "'nkp-1'" in str(info.value)
    assert provider.fingerprint in str(info.value)
    assert info.value.event == "native.kek.foreign"
    assert_no_key(str(info.value), new.kek)
    assert_no_key(str(info.value), provider.primary_key_for_push())


@given(data=st.data())
@settings(max_examples=50)
def test_tampered_wrapped_kek_fails(data: st.DataObject) -> None:
    p = NativeKeyProvider.create("nkp-t", sealing_key=os.urandom(32))
    p.acknowledge_no_backup()
    wrapped = p.new_kek().ref.wrapped_kek
    assert wrapped is not None
    index = data.draw(st.integers(0, len(wrapped) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(wrapped)
    tampered[index] ^= flip
    with pytest.raises(ForeignWrappedKek):
        p.get_kek(KekRef(wrapped_kek=bytes(tampered)))


@pytest.mark.parametrize("wrapped", [b"", b"x" * 7, b"y" * 40, b"z" * 17])
def test_garbage_wrapped_kek_fails(provider: NativeKeyProvider, wrapped: bytes) -> None:
    with pytest.raises(ForeignWrappedKek):
        provider.get_kek(KekRef(wrapped_kek=wrapped))


def test_wrapped_key_that_is_not_a_kek_fails(provider: NativeKeyProvider) -> None:
    from vmcrypt.crypto import wrap_key

    # Correctly wrapped under the primary key, but 16 bytes: not a KEK this provider made.
    ref = KekRef(wrapped_kek=wrap_key(provider.primary_key_for_push(), os.urandom(16)))
    with pytest.raises(ForeignWrappedKek):
        provider.get_kek(ref)


def test_key_id_reference_is_a_clear_error(provider: NativeKeyProvider) -> None:
    with pytest.raises(KeyMissing, match=r"has no key IDs.*'kmip-42'"):
        provider.get_kek(KekRef(key_id="kmip-42"))


# -- the backup gate, health, warnings --------------------------------------------


def test_gate_before_backup_or_acknowledgement(sealing_key: bytes) -> None:
    p = NativeKeyProvider.create("nkp-g", sealing_key=sealing_key)
    ref = KekRef(wrapped_kek=os.urandom(40))
    for call in (p.new_kek, lambda: p.get_kek(ref), p.primary_key_for_push):
        with pytest.raises(NotBackedUp, match=r"back it up with export_backup.*acknowledge"):
            call()
    assert not p.usable


def test_gate_opens_after_acknowledgement(sealing_key: bytes) -> None:
    p = NativeKeyProvider.create("nkp-g", sealing_key=sealing_key)
    p.acknowledge_no_backup()
    assert p.usable
    new = p.new_kek()
    assert p.get_kek(new.ref) == new.kek


def test_gate_opens_after_backup(sealing_key: bytes) -> None:
    p = NativeKeyProvider.create("nkp-g", sealing_key=sealing_key)
    p.export_backup("correct horse")
    assert p.backed_up and p.usable
    new = p.new_kek()
    assert p.get_kek(new.ref) == new.kek


def test_health_and_warnings(sealing_key: bytes) -> None:
    p = NativeKeyProvider.create("nkp-h", sealing_key=sealing_key)
    health = p.health()
    assert (health.state, health.kind, health.provider_id) == ("degraded", "native", "nkp-h")
    assert len(health.warnings) == 1 and "not backed up" in health.warnings[0]
    assert p.warnings() == list(health.warnings)

    p.acknowledge_no_backup()  # acknowledged is still not backed up
    assert p.health().state == "degraded"
    assert "not backed up" in p.warnings()[0]

    p.export_backup("pw")
    assert p.health().state == "healthy"
    assert p.health().warnings == ()
    assert p.warnings() == []


# -- the sealed record ------------------------------------------------------------


def test_record_round_trip(provider: NativeKeyProvider, sealing_key: bytes) -> None:
    new = provider.new_kek()
    record = json.loads(json.dumps(provider.to_record()))
    loaded = NativeKeyProvider.from_record(record, sealing_key=sealing_key)
    assert loaded.provider_id == "nkp-1"
    assert loaded.fingerprint == provider.fingerprint
    assert loaded.created_at == NOW
    assert (loaded.backed_up, loaded.backup_acknowledged) == (False, True)
    assert loaded.get_kek(new.ref) == new.kek
    assert loaded.to_record() == record
    assert record["created_at"] == "2024-05-01T12:30:15Z"


def test_record_with_wrong_sealing_key(provider: NativeKeyProvider) -> None:
    with pytest.raises(SealedRecordError, match="sealing key is not the one") as info:
        NativeKeyProvider.from_record(provider.to_record(), sealing_key=os.urandom(32))
    assert_no_key(str(info.value), provider.primary_key_for_push())


def test_record_cannot_move_to_another_provider(
    provider: NativeKeyProvider, sealing_key: bytes
) -> None:
    record = provider.to_record() | {"provider_id": "nkp-other"}
    with pytest.raises(SealedRecordError, match="cannot unseal"):
        NativeKeyProvider.from_record(record, sealing_key=sealing_key)


def test_record_with_altered_fingerprint(provider: NativeKeyProvider, sealing_key: bytes) -> None:
    record = provider.to_record() | {"fingerprint": "0" * 16}
    with pytest.raises(SealedRecordError, match="fingerprint"):
        NativeKeyProvider.from_record(record, sealing_key=sealing_key)


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"kind": "standard"},
        {"provider_id": ""},
        {"sealed_primary_key": "not base64!"},
        {"sealed_primary_key": 5},
        {"created_at": "yesterday"},
        {"created_at": "2024-05-01T12:30:15"},
        {"backed_up": "yes"},
        {"fingerprint": None},
    ],
)
def test_malformed_record(
    provider: NativeKeyProvider, sealing_key: bytes, change: dict[str, object]
) -> None:
    with pytest.raises(SealedRecordError, match="malformed"):
        NativeKeyProvider.from_record(provider.to_record() | change, sealing_key=sealing_key)


@pytest.mark.parametrize("record", [None, [], "x", {}])
def test_record_that_is_not_a_record(record: object, sealing_key: bytes) -> None:
    with pytest.raises(SealedRecordError):
        NativeKeyProvider.from_record(record, sealing_key=sealing_key)


def test_record_and_repr_hold_no_key(provider: NativeKeyProvider) -> None:
    key = provider.primary_key_for_push()
    text = json.dumps(provider.to_record())
    assert_no_key(text, key)
    assert_no_key(repr(provider), key)
    new = provider.new_kek()
    assert_no_key(repr(new), new.kek)
    assert new.kek.hex() not in repr(new.ref)


def test_fingerprint_is_stable_public_and_distinct(sealing_key: bytes) -> None:
    a = NativeKeyProvider.create("a", sealing_key=sealing_key)
    b = NativeKeyProvider.create("b", sealing_key=sealing_key)
    assert len(a.fingerprint) == 16
    assert int(a.fingerprint, 16) >= 0
    assert a.fingerprint != b.fingerprint


def test_created_at_must_be_aware(sealing_key: bytes) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        NativeKeyProvider.create("x", sealing_key=sealing_key, now=datetime(2024, 1, 1))


def test_invalid_provider_id(sealing_key: bytes) -> None:
    with pytest.raises(ValueError, match="1 to 128"):
        NativeKeyProvider.create("", sealing_key=sealing_key)


def test_unseal_error_is_not_a_crypto_error(provider: NativeKeyProvider) -> None:
    # The control plane catches ProviderError; the opaque crypto error must not leak out.
    with pytest.raises(SealedRecordError) as info:
        NativeKeyProvider.from_record(provider.to_record(), sealing_key=os.urandom(32))
    assert not isinstance(info.value, IntegrityError)


# -- the host side ----------------------------------------------------------------


def test_host_side_opens_control_plane_keks(provider: NativeKeyProvider) -> None:
    made_here = provider.new_kek()
    host = HostNativeKeyProvider.from_pushed_key(
        provider.provider_id, provider.primary_key_for_push(), fingerprint=provider.fingerprint
    )
    assert host.get_kek(made_here.ref) == made_here.kek
    made_on_host = host.new_kek()
    assert provider.get_kek(made_on_host.ref) == made_on_host.kek
    assert host.health().state == "healthy"
    assert host.fingerprint == provider.fingerprint
    assert_no_key(repr(host), provider.primary_key_for_push())


def test_host_side_has_no_gate_but_push_is_gated(sealing_key: bytes) -> None:
    p = NativeKeyProvider.create("nkp-p", sealing_key=sealing_key)
    with pytest.raises(NotBackedUp):
        p.primary_key_for_push()
    p.acknowledge_no_backup()
    host = HostNativeKeyProvider.from_pushed_key("nkp-p", p.primary_key_for_push())
    new = host.new_kek()  # no acknowledgement needed on the host
    assert host.get_kek(new.ref) == new.kek


def test_host_side_rejects_mismatched_fingerprint(provider: NativeKeyProvider) -> None:
    with pytest.raises(AddKeysToHostFailed, match="push it again"):
        HostNativeKeyProvider.from_pushed_key(
            "nkp-1", os.urandom(32), fingerprint=provider.fingerprint
        )


def test_host_side_rejects_short_key() -> None:
    from vmcrypt.crypto import InvalidKey

    with pytest.raises(InvalidKey, match="32 bytes"):
        HostNativeKeyProvider.from_pushed_key("nkp-1", b"short")
