"""AES-256-GCM sealing of VM home blobs."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcrypt.crypto import IntegrityError, InvalidKey, generate_aead_key, seal, unseal


@given(st.binary(max_size=4096), st.binary(max_size=64))
def test_round_trip(plaintext: bytes, ad: bytes) -> None:
    key = generate_aead_key()
    sealed = seal(key, plaintext, associated_data=ad)
    assert unseal(key, sealed, associated_data=ad) == plaintext
    assert len(sealed) == 1 + 12 + len(plaintext) + 16


def test_nonces_are_fresh() -> None:
    key = generate_aead_key()
    assert seal(key, b"same") != seal(key, b"same")


@given(st.integers(min_value=0, max_value=1 + 12 + 5 + 16 - 1))
def test_any_flipped_byte_is_detected(position: int) -> None:
    key = generate_aead_key()
    sealed = bytearray(seal(key, b"hello", associated_data=b"vm-1"))
    sealed[position] ^= 0x40
    with pytest.raises(IntegrityError):
        unseal(key, bytes(sealed), associated_data=b"vm-1")


def test_wrong_key_wrong_ad_and_truncation_are_one_error() -> None:
    key = generate_aead_key()
    sealed = seal(key, b"nvram", associated_data=b"vm-1")
    errors = []
    for attempt in (
        lambda: unseal(generate_aead_key(), sealed, associated_data=b"vm-1"),
        lambda: unseal(key, sealed, associated_data=b"vm-2"),
        lambda: unseal(key, sealed[:20], associated_data=b"vm-1"),
        lambda: unseal(key, b"", associated_data=b"vm-1"),
    ):
        with pytest.raises(IntegrityError) as info:
            attempt()
        errors.append(str(info.value))
    assert len(set(errors)) == 1


def test_key_length_is_checked_first() -> None:
    with pytest.raises(InvalidKey):
        seal(os.urandom(16), b"x")
