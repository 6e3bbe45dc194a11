"""Encrypted and raw disks: random access at any offset, thin holes, resize, errors."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmcrypt.crypto import KeySafe, generate_xts_key
from vmcrypt.disk.container import (
    create_encrypted,
    create_raw,
    is_encrypted,
    open_encrypted,
    open_raw,
    read_keysafe,
)
from vmcrypt.disk.exceptions import ConversionInProgress, DiskError, HeaderError, WrongKeyError
from vmcrypt.disk.files import header_path, journal_path
from vmcrypt.exceptions import UsageError

MiB = 1 << 20


def test_create_is_thin_and_reads_zeros(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    with create_encrypted(path, size=64 * MiB, dek=dek, keysafe=keysafe) as disk:
        assert disk.size == 64 * MiB and disk.encrypted
        assert disk.read(0, 8192) == bytes(8192)
    assert os.stat(path).st_blocks * 512 < MiB  # sparse: nothing written yet
    assert is_encrypted(path)
    assert read_keysafe(path) == keysafe


def test_sector_layout_is_dm_crypt_plain64(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    """Sector s is stored as XTS with tweak 8*s (512-byte IV units), little-endian."""
    path = tmp_path / "d.img"
    plain = os.urandom(3 * 4096)
    with create_encrypted(path, size=MiB, dek=dek, keysafe=keysafe) as disk:
        disk.write(5 * 4096, plain)
    stored = path.read_bytes()[5 * 4096 : 8 * 4096]
    for i in range(3):
        tweak = ((5 + i) * 8).to_bytes(16, "little")
        enc = Cipher(algorithms.AES(dek), modes.XTS(tweak)).encryptor()
        assert stored[i * 4096 : (i + 1) * 4096] == enc.update(plain[i * 4096 : (i + 1) * 4096])


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    writes=st.lists(
        st.tuples(st.integers(0, 2 * MiB - 1), st.integers(1, 300_000)), min_size=1, max_size=6
    )
)
def test_random_access_matches_a_bytearray_model(
    tmp_path_factory: pytest.TempPathFactory, writes: list[tuple[int, int]]
) -> None:
    size = 2 * MiB
    path = tmp_path_factory.mktemp("ra") / "d.img"
    dek = generate_xts_key()
    from vmcrypt.crypto import generate_kek, seal_keysafe

    ks = seal_keysafe(kek=generate_kek(), dek=dek, provider_id="t", key_id="k")
    model = bytearray(size)
    with create_encrypted(path, size=size, dek=dek, keysafe=ks) as disk:
        spans = [(offset, min(length, size - offset)) for offset, length in writes]
        for offset, length in spans:
            data = os.urandom(length)
            disk.write(offset, data)
            model[offset : offset + length] = data
        for offset, length in spans:
            assert disk.read(offset, length) == model[offset : offset + length]
    with open_encrypted(path, dek=dek, writable=False) as disk:
        assert disk.read(0, size) == model


def test_large_write_crosses_pieces(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    data = os.urandom(40 * MiB + 1234)
    with create_encrypted(path, size=48 * MiB, dek=dek, keysafe=keysafe) as disk:
        disk.write(777, data)
        assert disk.read(777, len(data)) == data
        assert disk.read(0, 777) == bytes(777)


def test_wrong_dek_is_refused(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    create_encrypted(path, size=MiB, dek=dek, keysafe=keysafe).close()
    with pytest.raises(WrongKeyError, match="does not match the digest"):
        open_encrypted(path, dek=generate_xts_key())


def test_missing_header_and_foreign_files(tmp_path: Path, dek: bytes) -> None:
    raw = tmp_path / "raw.img"
    create_raw(raw, size=MiB).close()
    with pytest.raises(HeaderError, match="unencrypted disk"):
        open_encrypted(raw, dek=dek)
    header_path(raw).write_bytes(os.urandom(32768))
    with pytest.raises(HeaderError):
        open_encrypted(raw, dek=dek)
    with pytest.raises(DiskError, match="no such data file"):
        open_raw(tmp_path / "nope.img")


def test_refuses_to_overwrite(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    path.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists"):
        create_encrypted(path, size=MiB, dek=dek, keysafe=keysafe)
    assert path.read_bytes() == b"precious"
    with pytest.raises(UsageError, match="multiple of 4096"):
        create_encrypted(tmp_path / "e.img", size=1000, dek=dek, keysafe=keysafe)


def test_out_of_range_and_read_only(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    create_encrypted(path, size=MiB, dek=dek, keysafe=keysafe).close()
    with open_encrypted(path, dek=dek, writable=False) as disk:
        with pytest.raises(UsageError, match="outside the disk"):
            disk.read(MiB - 10, 11)
        with pytest.raises(UsageError, match="read-only"):
            disk.write(0, b"x")


def test_grow_keeps_data_and_new_space_is_zero(
    tmp_path: Path, dek: bytes, keysafe: KeySafe
) -> None:
    path = tmp_path / "d.img"
    with create_encrypted(path, size=MiB, dek=dek, keysafe=keysafe) as disk:
        disk.write(MiB - 5, b"hello")
        disk.resize(3 * MiB)
        assert disk.read(MiB - 5, 5) == b"hello"
        assert disk.read(MiB, 2 * MiB) == bytes(2 * MiB)
        with pytest.raises(UsageError, match="only grow"):
            disk.resize(MiB)


def test_eager_zero_writes_real_ciphertext(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    seen: list[int] = []
    create_encrypted(
        path, size=2 * MiB, dek=dek, keysafe=keysafe, eager_zero=True,
        progress=lambda done, total: seen.append(done),
    ).close()
    assert seen[-1] == 2 * MiB
    stored = path.read_bytes()
    assert stored[:4096] != bytes(4096)
    with open_encrypted(path, dek=dek) as disk:
        assert disk.read(0, 2 * MiB) == bytes(2 * MiB)


def test_journal_blocks_plain_open(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    create_encrypted(path, size=MiB, dek=dek, keysafe=keysafe).close()
    journal_path(path).write_bytes(b"x")
    with pytest.raises(ConversionInProgress, match="resume"):
        open_encrypted(path, dek=dek)


def test_second_writer_is_refused(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    with (
        create_encrypted(path, size=MiB, dek=dek, keysafe=keysafe),
        pytest.raises(DiskError, match="in use"),
    ):
        open_encrypted(path, dek=dek)


def test_concurrent_threads_on_one_disk(tmp_path: Path, dek: bytes, keysafe: KeySafe) -> None:
    path = tmp_path / "d.img"
    blocks = {i: os.urandom(8192) for i in range(32)}
    with create_encrypted(path, size=MiB, dek=dek, keysafe=keysafe) as disk:

        def worker(ids: list[int]) -> None:
            for i in ids:
                disk.write(i * 8192, blocks[i])
                assert disk.read(i * 8192, 8192) == blocks[i]

        threads = [threading.Thread(target=worker, args=(list(range(k, 32, 4)),)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, data in blocks.items():
            assert disk.read(i * 8192, 8192) == data


def test_raw_disk(tmp_path: Path) -> None:
    path = tmp_path / "r.img"
    with create_raw(path, size=MiB) as disk:
        assert not disk.encrypted
        disk.write(10, b"plain")
    assert path.read_bytes()[10:15] == b"plain"
