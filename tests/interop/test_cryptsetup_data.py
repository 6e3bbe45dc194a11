"""Our data files and cryptsetup's are the same thing: each side decrypts the other's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.interop.conftest import FAST_PBKDF, run
from vmcrypt.crypto import generate_kek, generate_xts_key, seal_keysafe
from vmcrypt.disk.container import create_encrypted, open_encrypted
from vmcrypt.disk.convert import deep_rekey, encrypt_disk
from vmcrypt.disk.files import header_path

pytestmark = pytest.mark.interop
MiB = 1 << 20


def _keysafe(dek: bytes):  # type: ignore[no-untyped-def]
    return seal_keysafe(kek=generate_kek(), dek=dek, provider_id="t", key_id="k")


def _add_passphrase(cryptsetup: str, tmp: Path, header: Path, dek: bytes) -> Path:
    dek_file, pass_file = tmp / "dek.bin", tmp / "pass"
    dek_file.write_bytes(dek)
    pass_file.write_bytes(b"correct horse battery staple")
    run(cryptsetup, "luksAddKey", "--batch-mode", "--key-size", "512", "--volume-key-file",
        str(dek_file), *FAST_PBKDF, str(header), str(pass_file))
    return pass_file


def _cryptsetup_decrypt(cryptsetup: str, header: Path, data: Path, pass_file: Path) -> None:
    run(cryptsetup, "reencrypt", "--decrypt", "--force-offline-reencrypt", "--batch-mode",
        "--header", str(header), "--key-file", str(pass_file), str(data))


def test_cryptsetup_decrypts_our_disk_exactly(cryptsetup: str, tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    dek = generate_xts_key()
    plain = os.urandom(8 * MiB)
    with create_encrypted(path, size=8 * MiB, dek=dek, keysafe=_keysafe(dek)) as disk:
        disk.write(0, plain[: 3 * MiB + 100])  # two writes, one unaligned boundary
        disk.write(3 * MiB + 100, plain[3 * MiB + 100 :])
    pass_file = _add_passphrase(cryptsetup, tmp_path, header_path(path), dek)
    _cryptsetup_decrypt(cryptsetup, header_path(path), path, pass_file)
    assert path.read_bytes() == plain


def test_wrong_dek_is_rejected_by_cryptsetup(cryptsetup: str, tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    dek = generate_xts_key()
    create_encrypted(path, size=MiB, dek=dek, keysafe=_keysafe(dek)).close()
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(generate_xts_key())
    (tmp_path / "pass").write_bytes(b"pw")
    result = run(cryptsetup, "luksAddKey", "--batch-mode", "--key-size", "512",
                 "--volume-key-file", str(wrong), *FAST_PBKDF, str(header_path(path)),
                 str(tmp_path / "pass"), check=False)
    assert result.returncode != 0
    assert "Volume key does not match" in result.stderr or result.stderr


def test_cryptsetup_decrypts_a_disk_we_encrypted_in_place(cryptsetup: str, tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    plain = os.urandom(20 * MiB)
    path.write_bytes(plain)
    dek = generate_xts_key()
    encrypt_disk(path, dek=dek, keysafe=_keysafe(dek))
    assert path.read_bytes() != plain
    new_dek = generate_xts_key()
    deep_rekey(path, old_dek=dek, new_dek=new_dek, new_keysafe=_keysafe(new_dek))
    pass_file = _add_passphrase(cryptsetup, tmp_path, header_path(path), new_dek)
    _cryptsetup_decrypt(cryptsetup, header_path(path), path, pass_file)
    assert path.read_bytes() == plain


def test_we_read_and_write_a_disk_cryptsetup_encrypted(cryptsetup: str, tmp_path: Path) -> None:
    """cryptsetup 2.6 refuses `reencrypt --encrypt` onto a header made by luksFormat
    ("already LUKS device"), so its one-step form creates the detached header itself,
    with the same parameters luksFormat takes (--offset 0 is the default for a
    detached header)."""
    path = tmp_path / "c.img"
    plain = os.urandom(12 * MiB)
    path.write_bytes(plain)
    dek = generate_xts_key()
    (tmp_path / "dek.bin").write_bytes(dek)
    pass_file = tmp_path / "pass"
    pass_file.write_bytes(b"pw")
    run(cryptsetup, "reencrypt", "--encrypt", "--batch-mode", "--type", "luks2",
        "--header", str(header_path(path)), "--sector-size", "4096", "--key-size", "512",
        "--cipher", "aes-xts-plain64", "--volume-key-file", str(tmp_path / "dek.bin"),
        *FAST_PBKDF, "--key-file", str(pass_file), "--force-offline-reencrypt", str(path))
    assert path.read_bytes() != plain
    with open_encrypted(path, dek=dek) as disk:
        assert disk.keysafe is None  # a foreign header: no vmcrypt token
        assert disk.read(0, disk.size) == plain
        disk.write(5000, b"written by vmcrypt")
    expected = plain[:5000] + b"written by vmcrypt" + plain[5018:]
    _cryptsetup_decrypt(cryptsetup, header_path(path), path, pass_file)
    assert path.read_bytes() == expected


def test_luksformat_header_with_offset_zero_is_readable(cryptsetup: str, tmp_path: Path) -> None:
    path = tmp_path / "f.img"
    path.write_bytes(bytes(4 * MiB))
    dek = generate_xts_key()
    (tmp_path / "dek.bin").write_bytes(dek)
    (tmp_path / "pass").write_bytes(b"pw")
    run(cryptsetup, "luksFormat", "--batch-mode", "--type", "luks2", "--header",
        str(header_path(path)), "--offset", "0", "--sector-size", "4096", "--key-size", "512",
        "--volume-key-file", str(tmp_path / "dek.bin"), *FAST_PBKDF,
        "--key-file", str(tmp_path / "pass"), str(path))
    with open_encrypted(path, dek=dek) as disk:
        disk.write(0, b"hello")
        assert disk.read(0, 5) == b"hello"
    _cryptsetup_decrypt(cryptsetup, header_path(path), path, tmp_path / "pass")
    assert path.read_bytes()[:5] == b"hello"
