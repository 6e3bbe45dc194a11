"""Key generation and comparison."""

from __future__ import annotations

import pytest

from vmcrypt.crypto import (
    constant_time_equal,
    generate_aead_key,
    generate_kek,
    generate_xts_key,
)
from vmcrypt.crypto.exceptions import InvalidKey
from vmcrypt.crypto.keys import check_key


def test_sizes_and_uniqueness() -> None:
    keys = {generate_kek() for _ in range(64)}
    assert len(keys) == 64 and all(len(k) == 32 for k in keys)
    assert len(generate_aead_key()) == 32
    xts = generate_xts_key()
    assert len(xts) == 64 and xts[:32] != xts[32:]


def test_constant_time_equal() -> None:
    assert constant_time_equal(b"abc", b"abc")
    assert not constant_time_equal(b"abc", b"abd")
    assert not constant_time_equal(b"abc", b"ab")


def test_check_key_never_echoes_the_key() -> None:
    secret = bytes(range(31))
    with pytest.raises(InvalidKey) as info:
        check_key(secret, 32, "KEK")
    assert secret.hex() not in str(info.value)
    with pytest.raises(InvalidKey):
        check_key("not bytes", 32, "KEK")
