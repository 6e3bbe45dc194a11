"""The keySafe envelope: seal, open, re-wrap, and strict parsing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcrypt.crypto import (
    IntegrityError,
    InvalidKey,
    KeySafe,
    generate_aead_key,
    generate_kek,
    generate_xts_key,
    open_keysafe,
    rewrap_keysafe,
    seal_keysafe,
)


def test_seal_open_round_trip_and_json() -> None:
    kek, dek = generate_kek(), generate_xts_key()
    ks = seal_keysafe(kek=kek, dek=dek, provider_id="kms-1", key_id="42")
    text = json.dumps(ks.to_dict())
    assert dek.hex() not in text and kek.hex() not in text
    again = KeySafe.from_dict(json.loads(text))
    assert again == ks
    assert open_keysafe(again, kek) == dek
    assert "wrapped_dek" not in repr(ks) or ks.wrapped_dek.hex() not in repr(ks)


def test_vm_home_dek_and_wrapped_kek() -> None:
    kek, dek = generate_kek(), generate_aead_key()
    ks = seal_keysafe(
        kek=kek, dek=dek, provider_id="native-1", wrapped_kek=b"\x01" * 40,
        dek_algorithm="AES-256-GCM",
    )
    assert open_keysafe(KeySafe.from_dict(ks.to_dict()), kek) == dek


def test_wrong_kek_is_integrity_error() -> None:
    ks = seal_keysafe(kek=generate_kek(), dek=generate_xts_key(), provider_id="p", key_id="k")
    with pytest.raises(IntegrityError):
        open_keysafe(ks, generate_kek())


def test_rewrap_keeps_the_dek() -> None:
    old, new, dek = generate_kek(), generate_kek(), generate_xts_key()
    ks = seal_keysafe(kek=old, dek=dek, provider_id="p", key_id="old")
    ks2 = rewrap_keysafe(ks, old_kek=old, new_kek=new, key_id="new")
    assert ks2.key_id == "new" and open_keysafe(ks2, new) == dek
    with pytest.raises(IntegrityError):
        open_keysafe(ks2, old)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dek": b"x" * 32}, "64 bytes"),
        ({"dek_algorithm": "rot13"}, "unknown DEK algorithm"),
        ({"provider_id": ""}, "provider"),
        ({"key_id": None}, "key ID or a wrapped KEK"),
    ],
)
def test_seal_validates_before_wrapping(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "kek": generate_kek(), "dek": generate_xts_key(), "provider_id": "p", "key_id": "k",
    }
    args.update(kwargs)
    with pytest.raises(InvalidKey, match=message):
        seal_keysafe(**args)  # type: ignore[arg-type]


@given(st.dictionaries(st.sampled_from([
    "version", "provider_id", "key_id", "wrapped_kek", "wrapped_dek", "kek_algorithm",
    "wrap_algorithm", "dek_algorithm", "created_at"]),
    st.one_of(st.none(), st.integers(), st.text(max_size=20), st.booleans())))
def test_garbage_keysafes_are_integrity_errors(data: dict[str, object]) -> None:
    with pytest.raises(IntegrityError):
        KeySafe.from_dict(data)


def test_tampered_field_is_rejected() -> None:
    ks = seal_keysafe(kek=generate_kek(), dek=generate_xts_key(), provider_id="p", key_id="k")
    for field, value in [("wrap_algorithm", "AES-KW"), ("wrapped_dek", "!!notb64"),
                         ("version", 2), ("dek_algorithm", "aes-cbc")]:
        data = ks.to_dict()
        data[field] = value
        with pytest.raises(IntegrityError):
            KeySafe.from_dict(data)
