"""Shared fixtures for disk tests: keys and a keySafe."""

from __future__ import annotations

import pytest

from vmcrypt.crypto import KeySafe, generate_kek, generate_xts_key, seal_keysafe


@pytest.fixture
def kek() -> bytes:
    return generate_kek()


@pytest.fixture
def dek() -> bytes:
    return generate_xts_key()


@pytest.fixture
def keysafe(kek: bytes, dek: bytes) -> KeySafe:
    return seal_keysafe(kek=kek, dek=dek, provider_id="test", key_id="kek-1")
