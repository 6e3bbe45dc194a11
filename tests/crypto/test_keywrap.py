"""AES key wrap with padding against NIST SP 800-38F KWP vectors (cryptography-vectors)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.crypto.vectors import load_nist_rsp, vectors_path
from vmcrypt.crypto import IntegrityError, InvalidKey, unwrap_key, wrap_key


def load_kw(name: str) -> list[dict[str, Any]]:
    """K/P/C records of a NIST kwtestvectors file as bytes; ``fail`` marks must-reject."""
    records = load_nist_rsp(vectors_path("keywrap", "kwtestvectors", name))
    return [
        {"count": int(r["count"]), "fail": "fail" in r,
         **{k.upper(): bytes.fromhex(r[k]) for k in ("k", "p", "c") if k in r}}
        for r in records
    ]


AE = load_kw("KWP_AE_256.txt")
AD = load_kw("KWP_AD_256.txt")


def test_vector_files_are_not_empty() -> None:
    assert len(AE) > 100
    assert sum(1 for c in AD if c.get("fail")) > 10


@pytest.mark.parametrize("case", AE, ids=lambda c: f"AE-{c['count']}-{len(c['P'])}")
def test_wrap_matches_nist(case: dict[str, Any]) -> None:
    assert wrap_key(case["K"], case["P"]) == case["C"]
    assert unwrap_key(case["K"], case["C"]) == case["P"]


@pytest.mark.parametrize("case", AD, ids=lambda c: f"AD-{c['count']}-{len(c['C'])}")
def test_unwrap_matches_nist(case: dict[str, Any]) -> None:
    if case.get("fail"):
        with pytest.raises(IntegrityError):
            unwrap_key(case["K"], case["C"])
    else:
        assert unwrap_key(case["K"], case["C"]) == case["P"]


def test_wrong_kek_is_the_same_opaque_error_as_tampering() -> None:
    kek, other, dek = os.urandom(32), os.urandom(32), os.urandom(64)
    wrapped = wrap_key(kek, dek)
    tampered = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    with pytest.raises(IntegrityError) as wrong:
        unwrap_key(other, wrapped)
    with pytest.raises(IntegrityError) as altered:
        unwrap_key(kek, tampered)
    assert str(wrong.value) == str(altered.value)
    assert dek.hex() not in str(wrong.value)


@pytest.mark.parametrize("bad", [b"", b"x" * 15, b"x" * 17, b"x" * 23])
def test_malformed_wrapped_keys_are_integrity_errors(bad: bytes) -> None:
    with pytest.raises(IntegrityError):
        unwrap_key(os.urandom(32), bad)


@pytest.mark.parametrize("length", [0, 16, 24, 33])
def test_only_aes256_keks_are_accepted(length: int) -> None:
    with pytest.raises(InvalidKey, match="32 bytes"):
        wrap_key(os.urandom(length), os.urandom(32))


def test_empty_key_is_refused() -> None:
    with pytest.raises(InvalidKey):
        wrap_key(os.urandom(32), b"")
