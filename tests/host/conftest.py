"""Shared fixtures for host tests: a datastore folder, a host's key cache, pushed keys."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from vmcrypt.crypto import generate_kek
from vmcrypt.host import Datastore, KeyCache, KeySpec
from vmcrypt.providers import KekRef

MIB = 1 << 20
KMS = "kms-1"
NATIVE = "nkp-1"


@pytest.fixture
def ds(tmp_path: Path) -> Datastore:
    return Datastore(tmp_path / "datastore")


@pytest.fixture
def kek() -> bytes:
    return generate_kek()


@pytest.fixture
def primary_key() -> bytes:
    return generate_kek()


@pytest.fixture
def cache(kek: bytes, primary_key: bytes) -> KeyCache:
    """A host the control plane pushed KEK ``key-1`` and a native primary key to."""
    keys = KeyCache()
    keys.put_kek(KMS, "key-1", kek)
    keys.put_primary_key(NATIVE, primary_key)
    return keys


@pytest.fixture
def std_key() -> KeySpec:
    return KeySpec(KMS, KekRef(key_id="key-1"))


@pytest.fixture
def native_key() -> KeySpec:
    return KeySpec(NATIVE)


def pattern(seed: int, size: int) -> bytes:
    """Recognisable, non-repeating-per-seed test data."""
    block = bytes((seed * 31 + i) % 251 for i in range(251))
    return (block * (size // len(block) + 1))[:size]


def forms(secret: bytes) -> list[bytes]:
    """How a key could appear in a file: raw, hex (both cases), base64."""
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def scan(root: Path, secrets: list[bytes]) -> list[tuple[Path, int]]:
    """Every (file, secret index) where a secret appears in any form."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for n, secret in enumerate(secrets):
                if any(form in data for form in forms(secret)):
                    hits.append((path, n))
    return hits
