"""Conversions in place: round trips, key checks, cancel/resume, and journal repair."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from tests.disk.conftest import interrupt_writes_at
from vmcrypt.crypto import (
    KeySafe,
    generate_kek,
    generate_xts_key,
    open_keysafe,
    rewrap_keysafe,
    seal_keysafe,
)
from vmcrypt.disk.container import create_encrypted, open_encrypted, read_keysafe
from vmcrypt.disk.convert import (
    CHUNK,
    decrypt_disk,
    deep_rekey,
    encrypt_disk,
    pending,
    resume,
    shallow_rekey,
)
from vmcrypt.disk.exceptions import (
    ConversionCancelled,
    ConversionInProgress,
    JournalError,
    WrongKeyError,
)
from vmcrypt.disk.files import header_path, journal_path
from vmcrypt.exceptions import UsageError

MiB = 1 << 20


def _raw(path: Path, size: int) -> bytes:
    data = bytearray(os.urandom(size))
    data[MiB : 2 * MiB] = bytes(MiB)  # zero sectors too
    path.write_bytes(data)
    return bytes(data)


def _plain(path: Path, dek: bytes) -> bytes:
    with open_encrypted(path, dek=dek, writable=False) as disk:
        return disk.read(0, disk.size)


def test_encrypt_deep_rekey_decrypt_round_trip(tmp_path: Path, kek: bytes, dek: bytes,
                                               keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    data = _raw(path, 3 * CHUNK + 5 * 4096)
    progress: list[tuple[int, int]] = []
    encrypt_disk(path, dek=dek, keysafe=keysafe, progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (len(data), len(data))
    assert not journal_path(path).exists()
    stored = path.read_bytes()
    assert stored != data and stored[MiB : 2 * MiB] != bytes(MiB)
    assert read_keysafe(path) == keysafe
    assert _plain(path, dek) == data

    new_dek = generate_xts_key()
    new_ks = seal_keysafe(kek=kek, dek=new_dek, provider_id="test", key_id="kek-1")
    deep_rekey(path, old_dek=dek, new_dek=new_dek, new_keysafe=new_ks)
    assert read_keysafe(path) == new_ks
    assert _plain(path, new_dek) == data
    with pytest.raises(WrongKeyError):
        open_encrypted(path, dek=dek)

    decrypt_disk(path, dek=new_dek)
    assert path.read_bytes() == data
    assert not header_path(path).exists()


def test_deep_rekey_keeps_thin_holes(tmp_path: Path, kek: bytes, dek: bytes,
                                     keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    with create_encrypted(path, size=4 * MiB, dek=dek, keysafe=keysafe) as disk:
        disk.write(MiB, b"x" * 4096)
    new_dek = generate_xts_key()
    ks = seal_keysafe(kek=kek, dek=new_dek, provider_id="t", key_id="k")
    deep_rekey(path, old_dek=dek, new_dek=new_dek, new_keysafe=ks)
    stored = path.read_bytes()
    assert stored[:MiB] == bytes(MiB)  # still a hole
    assert os.stat(path).st_blocks * 512 <= 64 * 1024  # and still unallocated
    with open_encrypted(path, dek=new_dek) as disk:
        assert disk.read(MiB, 4096) == b"x" * 4096
        assert disk.read(0, 4096) == bytes(4096)


def test_shallow_rekey_is_header_only(tmp_path: Path, kek: bytes, dek: bytes,
                                      keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    with create_encrypted(path, size=2 * MiB, dek=dek, keysafe=keysafe) as disk:
        disk.write(0, b"payload")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    new_kek = generate_kek()
    new_ks = rewrap_keysafe(keysafe, old_kek=kek, new_kek=new_kek, key_id="kek-2")
    shallow_rekey(path, dek=dek, new_keysafe=new_ks)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    stored = read_keysafe(path)
    assert stored is not None and stored.key_id == "kek-2"
    assert open_keysafe(stored, new_kek) == dek
    with open_encrypted(path, dek=dek) as disk:
        assert disk.read(0, 7) == b"payload"


def test_shallow_rekey_refuses_a_keysafe_for_another_dek(tmp_path: Path, dek: bytes,
                                                         keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    create_encrypted(path, size=MiB, dek=dek, keysafe=keysafe).close()
    with pytest.raises(WrongKeyError):
        shallow_rekey(path, dek=generate_xts_key(), new_keysafe=keysafe)
    assert read_keysafe(path) == keysafe


def test_preconditions(tmp_path: Path, kek: bytes, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(UsageError, match="multiple of 4096"):
        encrypt_disk(path, dek=dek, keysafe=keysafe)
    assert path.read_bytes() == b"x" * 5000
    path.write_bytes(bytes(MiB))
    encrypt_disk(path, dek=dek, keysafe=keysafe)
    with pytest.raises(UsageError, match="already encrypted"):
        encrypt_disk(path, dek=dek, keysafe=keysafe)
    with pytest.raises(WrongKeyError):
        decrypt_disk(path, dek=generate_xts_key())
    with pytest.raises(UsageError, match="new DEK"):
        deep_rekey(path, old_dek=dek, new_dek=dek, new_keysafe=keysafe)


def test_cancel_then_resume(tmp_path: Path, kek: bytes, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    data = _raw(path, 4 * CHUNK)
    cancel = threading.Event()

    def stop_after_two(done: int, total: int) -> None:
        if done >= 2 * CHUNK:
            cancel.set()

    with pytest.raises(ConversionCancelled, match="resume"):
        encrypt_disk(path, dek=dek, keysafe=keysafe, progress=stop_after_two, cancel=cancel)
    journal = pending(path)
    assert journal is not None and journal.operation == "encrypt"
    with pytest.raises(ConversionInProgress):
        encrypt_disk(path, dek=dek, keysafe=keysafe)
    with pytest.raises(ConversionInProgress):
        open_encrypted(path, dek=dek)
    # A wrong key for the new keySafe is refused before anything is written.
    snapshot = path.read_bytes()
    with pytest.raises(WrongKeyError):
        resume(path, resolve_dek=lambda ks: generate_xts_key())
    assert path.read_bytes() == snapshot
    assert resume(path, resolve_dek=lambda ks: open_keysafe(ks, kek)) == "encrypt"
    assert _plain(path, dek) == data
    assert resume(path, resolve_dek=lambda ks: dek) is None


def _interrupt_mid_chunk(monkeypatch: pytest.MonkeyPatch, sectors_written: int) -> None:
    """Make the writes stop once ``sectors_written`` sectors of the second chunk are
    written."""
    interrupt_writes_at(monkeypatch, CHUNK + sectors_written * 4096)


def _in_flight(path: Path, sector: int) -> bool:
    """True if the journal of ``path`` has ``sector`` in its in-flight range."""
    journal = pending(path)
    assert journal is not None and journal.inflight_first is not None
    return journal.inflight_first <= sector < journal.inflight_first + journal.inflight_sectors


@pytest.mark.parametrize("sectors_written", [0, 1, 777, CHUNK // 4096 - 1])
def test_repair_of_a_half_written_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        kek: bytes, dek: bytes, keysafe: KeySafe,
                                        sectors_written: int) -> None:
    path = tmp_path / "d.img"
    data = _raw(path, 3 * CHUNK)
    _interrupt_mid_chunk(monkeypatch, sectors_written)
    with pytest.raises(KeyboardInterrupt):
        encrypt_disk(path, dek=dek, keysafe=keysafe)
    monkeypatch.undo()
    assert _in_flight(path, CHUNK // 4096 + sectors_written)
    assert resume(path, resolve_dek=lambda ks: dek) == "encrypt"
    assert _plain(path, dek) == data


def test_half_written_decrypt_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    data = _raw(path, 3 * CHUNK)
    encrypt_disk(path, dek=dek, keysafe=keysafe)
    _interrupt_mid_chunk(monkeypatch, 100)
    with pytest.raises(KeyboardInterrupt):
        decrypt_disk(path, dek=dek)
    monkeypatch.undo()
    assert resume(path, resolve_dek=lambda ks: dek) == "decrypt"
    assert path.read_bytes() == data


def test_torn_sector_is_reported_not_guessed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    _raw(path, 3 * CHUNK)
    _interrupt_mid_chunk(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        encrypt_disk(path, dek=dek, keysafe=keysafe)
    monkeypatch.undo()
    # Tear sector CHUNK/4096 + 3: its first 512 bytes old, the rest new.
    offset = CHUNK + 3 * 4096
    with path.open("r+b") as f:
        f.seek(offset + 1024)
        f.write(os.urandom(512))
    with pytest.raises(JournalError, match="torn"):
        resume(path, resolve_dek=lambda ks: dek)


def _encrypt_one_chunk(path: Path, dek: bytes, keysafe: KeySafe) -> threading.Event:
    """Start encrypting and cancel after the first chunk: a journal is left behind."""
    cancel = threading.Event()
    with pytest.raises(ConversionCancelled):
        encrypt_disk(path, dek=dek, keysafe=keysafe, progress=lambda d, t: cancel.set(),
                     cancel=cancel)
    return cancel


def test_corrupt_journal_is_refused(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    _raw(path, 2 * CHUNK)
    _encrypt_one_chunk(path, dek, keysafe)
    raw = bytearray(journal_path(path).read_bytes())
    raw[20] ^= 1
    journal_path(path).write_bytes(bytes(raw))
    snapshot = path.read_bytes()
    with pytest.raises(JournalError, match="corrupt"):
        resume(path, resolve_dek=lambda ks: dek)
    assert path.read_bytes() == snapshot


def test_data_file_changed_under_the_journal(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    _raw(path, 2 * CHUNK)
    _encrypt_one_chunk(path, dek, keysafe)
    with path.open("ab") as f:
        f.write(bytes(4096))
    with pytest.raises(JournalError, match="changed outside vmcrypt"):
        resume(path, resolve_dek=lambda ks: dek)


def test_no_key_material_in_files(tmp_path: Path, kek: bytes, dek: bytes,
                                  keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    _raw(path, 2 * CHUNK)
    cancel = _encrypt_one_chunk(path, dek, keysafe)
    new_dek = generate_xts_key()
    secrets = (kek, dek, new_dek, dek[:32], dek[32:], new_dek[:32], new_dek[32:])

    def scan() -> int:
        files = list(tmp_path.iterdir())
        for f in files:
            blob = f.read_bytes()
            for secret in secrets:
                assert secret not in blob and secret.hex().encode() not in blob
        return len(files)

    assert journal_path(path).exists()
    assert scan() == 2  # data file and journal (no header yet)
    resume(path, resolve_dek=lambda ks: dek)
    cancel.clear()
    with pytest.raises(ConversionCancelled):
        deep_rekey(path, old_dek=dek, new_dek=new_dek, progress=lambda d, t: cancel.set(),
                   new_keysafe=seal_keysafe(kek=kek, dek=new_dek, provider_id="t", key_id="k"),
                   cancel=cancel)
    assert scan() == 3  # data, header, journal
    resume(path, resolve_dek=lambda ks: new_dek if ks.created_at and ks.key_id == "k" else dek)
    assert scan() == 2
