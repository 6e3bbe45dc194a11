"""Shared fixtures for disk tests: keys and a keySafe."""

from __future__ import annotations

import pytest

from vmcrypt.crypto import KeySafe, generate_kek, generate_xts_key, seal_keysafe
from vmcrypt.disk import pipeline


@pytest.fixture
def kek() -> bytes:
    return generate_kek()


@pytest.fixture
def dek() -> bytes:
    return generate_xts_key()


@pytest.fixture
def keysafe(kek: bytes, dek: bytes) -> KeySafe:
    return seal_keysafe(kek=kek, dek=dek, provider_id="test", key_id="kek-1")


def interrupt_writes_at(monkeypatch: pytest.MonkeyPatch, cut: int) -> None:
    """Make a conversion's data writes stop at byte ``cut`` of the data file, as a
    SIGKILL between pages would: the write that holds it is cut there and raises
    KeyboardInterrupt (chunks are written in several pieces)."""
    real = pipeline.pwrite_all

    def partial(fd: int, view: memoryview, offset: int, what: str) -> None:
        if offset <= cut < offset + len(view):
            real(fd, view[: cut - offset], offset, what)
            raise KeyboardInterrupt("simulated kill")
        real(fd, view, offset, what)

    monkeypatch.setattr(pipeline, "pwrite_all", partial)
