"""The conversion journal: round trip, and every malformed file is one JournalError."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmcrypt.crypto import KeySafe
from vmcrypt.disk.exceptions import JournalError
from vmcrypt.disk.journal import FINGERPRINT_SIZE, Journal, dek_digest, verify_dek_digest


def _journal(path: Path, keysafe: KeySafe) -> Journal:
    return Journal(
        path=path, operation="deep-rekey", size=1 << 30, done=1 << 24,
        inflight_first=4096,
        inflight_fp=np.arange(3 * FINGERPRINT_SIZE, dtype=np.uint8).reshape(3, -1) % 251,
        old_keysafe=keysafe, new_keysafe=keysafe, new_dek_digest={"x": 1}, label="vm1",
    )


def test_round_trip(tmp_path: Path, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img.journal"
    _journal(path, keysafe).save()
    back = Journal.load(path)
    assert back.operation == "deep-rekey" and back.done == 1 << 24
    assert back.inflight_first == 4096 and back.inflight_sectors == 3
    assert back.old_keysafe == keysafe and back.label == "vm1"
    assert back.inflight_fp is not None
    assert (back.inflight_fp == _journal(path, keysafe).inflight_fp).all()


def test_dek_digest(dek: bytes) -> None:
    record = dek_digest(dek)
    assert verify_dek_digest(dek, record)
    assert not verify_dek_digest(bytes(64), record)
    assert dek.hex() not in json.dumps(record)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), value=st.integers(1, 255))
def test_any_flipped_byte_is_a_journal_error(
    tmp_path: Path, keysafe: KeySafe, position: int, value: int
) -> None:
    path = tmp_path / "flip.journal"
    _journal(path, keysafe).save()
    raw = bytearray(path.read_bytes())
    raw[position % len(raw)] ^= value
    path.write_bytes(bytes(raw))
    with pytest.raises(JournalError, match="corrupt"):
        Journal.load(path)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=st.dictionaries(st.sampled_from(
    ["version", "operation", "size", "done", "inflight", "old_keysafe", "new_keysafe",
     "new_dek_digest", "label", "extra"]),
    st.one_of(st.none(), st.integers(), st.text(max_size=8), st.booleans(),
              st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))),
       tail=st.binary(max_size=200))
def test_well_sealed_but_malformed_content_is_a_journal_error(
    tmp_path: Path, meta: dict[str, object], tail: bytes
) -> None:
    """Even with a valid checksum, content that does not parse is refused cleanly."""
    text = json.dumps(meta).encode()
    body = b"VMCJRNL1" + struct.pack(">I", len(text)) + text + tail
    path = tmp_path / "forged.journal"
    path.write_bytes(body + hashlib.sha256(body).digest())
    with contextlib.suppress(JournalError):
        Journal.load(path)


def test_resume_refuses_a_journal_without_its_new_keysafe(tmp_path: Path, dek: bytes) -> None:
    from vmcrypt.disk.convert import resume

    path = tmp_path / "d.img"
    path.write_bytes(bytes(1 << 20))
    Journal(path=tmp_path / "d.img.journal", operation="encrypt", size=1 << 20).save()
    with pytest.raises(JournalError, match="lacks the new keySafe"):
        resume(path, resolve_dek=lambda ks: dek)
    assert path.read_bytes() == bytes(1 << 20)
