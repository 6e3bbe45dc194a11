"""Our LUKS2 headers against the real cryptsetup binary, in both directions.

These are the recovery guarantees in docs/recovery.md: stock cryptsetup accepts a
vmcrypt header, adds a passphrase keyslot given the DEK (and refuses a wrong DEK), and
vmcrypt keeps reading, rewriting and preserving what cryptsetup wrote.

Everything works on plain files (no device-mapper): ``--test-passphrase`` and
``luksAddKey`` only read and write the header. Fast PBKDF settings keep each test well
under a second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmcrypt.disk import luks2

pytestmark = pytest.mark.interop

FAST_PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
KEYSAFE: dict[str, Any] = {
    "version": 1,
    "provider_id": "provider-a",
    "key_id": "key-1",
    "wrapped_kek": None,
    "wrapped_dek": "d3JhcHBlZC1ub3QtYS1yZWFsLWtleQ==",
    "kek_algorithm": "AES-256",
    "wrap_algorithm": "AES-256-KWP",
    "dek_algorithm": "aes-xts-plain64",
    "created_at": "2024-01-01T00:00:00Z",
}


@dataclass(frozen=True)
class Files:
    header: Path
    data: Path
    dek: Path
    wrong_dek: Path
    passphrase: Path
    wrong_passphrase: Path

    @property
    def dek_bytes(self) -> bytes:
        return self.dek.read_bytes()


def cryptsetup(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run cryptsetup non-interactively; callers assert on the exit status."""
    return subprocess.run(
        ["cryptsetup", "--batch-mode", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"cryptsetup failed ({result.returncode}): {result.stderr}"
    return result


@pytest.fixture
def files(tmp_path: Path) -> Files:
    f = Files(
        header=tmp_path / "disk.img.luks",
        data=tmp_path / "disk.img",
        dek=tmp_path / "dek.bin",
        wrong_dek=tmp_path / "wrong-dek.bin",
        passphrase=tmp_path / "pass.txt",
        wrong_passphrase=tmp_path / "wrong-pass.txt",
    )
    f.dek.write_bytes(os.urandom(luks2.VOLUME_KEY_SIZE))
    f.wrong_dek.write_bytes(os.urandom(luks2.VOLUME_KEY_SIZE))
    f.passphrase.write_bytes(b"correct horse battery staple")
    f.wrong_passphrase.write_bytes(b"not the passphrase")
    with open(f.data, "wb") as data:
        data.truncate(4 * 1024 * 1024)
    return f


def write_vmcrypt_header(f: Files) -> luks2.Luks2Header:
    header = luks2.build_header(volume_key=f.dek_bytes, keysafe=KEYSAFE, label="vm-disk")
    luks2.write_header(f.header, header)
    return header


def add_passphrase(f: Files, volume_key_file: Path) -> subprocess.CompletedProcess[str]:
    return cryptsetup(
        "luksAddKey",
        "--key-size",
        "512",
        "--volume-key-file",
        volume_key_file,
        *FAST_PBKDF,
        f.header,
        f.passphrase,
    )


def passphrase_opens(f: Files, passphrase: Path) -> bool:
    result = cryptsetup(
        "open", "--test-passphrase", "--header", f.header, "--key-file", passphrase, f.data
    )
    return result.returncode == 0


def dump(f: Files) -> str:
    return ok(cryptsetup("luksDump", f.header)).stdout


def keyslot_ids(dump_text: str) -> list[str]:
    section = dump_text.split("Keyslots:", 1)[1].split("Tokens:", 1)[0]
    return re.findall(r"^\s+(\d+): luks2$", section, re.MULTILINE)


# ----------------------------------------------------------------------------- tests


def test_luksdump_accepts_our_header_and_shows_the_token(files: Files) -> None:
    header = write_vmcrypt_header(files)
    text = dump(files)
    assert re.search(r"^Version:\s+2$", text, re.MULTILINE)
    assert header.uuid in text
    assert re.search(r"^\s+0: vmcrypt$", text, re.MULTILINE)
    assert re.search(r"cipher: aes-xts-plain64", text)
    assert re.search(r"sector: 4096 \[bytes\]", text)
    assert keyslot_ids(text) == []
    token = json.loads(ok(cryptsetup("token", "export", "--token-id", "0", files.header)).stdout)
    assert token == {"type": "vmcrypt", "keyslots": [], "keysafe": KEYSAFE}
    assert ok(cryptsetup("isLuks", "--type", "luks2", files.header))


def test_luksaddkey_accepts_our_dek_and_rejects_a_wrong_one(files: Files) -> None:
    write_vmcrypt_header(files)
    before = files.header.read_bytes()[: 2 * luks2.DEFAULT_HDR_SIZE]

    wrong = add_passphrase(files, files.wrong_dek)
    assert wrong.returncode != 0
    assert files.header.read_bytes()[: 2 * luks2.DEFAULT_HDR_SIZE] == before

    ok(add_passphrase(files, files.dek))
    assert keyslot_ids(dump(files)) == ["0"]
    assert passphrase_opens(files, files.passphrase)
    assert not passphrase_opens(files, files.wrong_passphrase)

    # vmcrypt still reads what cryptsetup rewrote, keySafe intact.
    header = luks2.read_header(files.header)
    assert header.keysafe == KEYSAFE
    assert header.verify_volume_key(files.dek_bytes)
    assert list(header.metadata["keyslots"]) == ["0"]
    assert header.metadata["digests"]["0"]["keyslots"] == ["0"]  # linked by cryptsetup
    assert header.seqid > 1


def test_cryptsetup_checks_our_dek_without_any_keyslot(files: Files) -> None:
    """The no-passphrase recovery path: open with --volume-key-file (needs --key-size)."""
    write_vmcrypt_header(files)

    def test_volume_key(key_file: Path) -> int:
        return cryptsetup(
            "open",
            "--test-passphrase",
            "--header",
            files.header,
            "--key-size",
            "512",
            "--volume-key-file",
            key_file,
            files.data,
        ).returncode

    assert test_volume_key(files.dek) == 0
    assert test_volume_key(files.wrong_dek) != 0


def test_rewrite_with_new_keysafe_keeps_the_passphrase_keyslot(files: Files) -> None:
    write_vmcrypt_header(files)
    ok(add_passphrase(files, files.dek))
    header = luks2.read_header(files.header)
    rotated = {**KEYSAFE, "key_id": "key-2", "wrapped_dek": "cm90YXRlZA=="}

    updated = luks2.with_keysafe(header, rotated)
    luks2.write_header(files.header, updated, copy_keyslots_from=files.header)

    text = dump(files)
    assert keyslot_ids(text) == ["0"]
    assert re.search(r"^\s+0: vmcrypt$", text, re.MULTILINE)
    assert passphrase_opens(files, files.passphrase)
    assert not passphrase_opens(files, files.wrong_passphrase)
    reread = luks2.read_header(files.header)
    assert reread.keysafe == rotated
    assert reread.seqid == header.seqid + 1
    # cryptsetup can keep managing it: a second passphrase, from the first one.
    second = files.passphrase.parent / "second.txt"
    second.write_bytes(b"second passphrase")
    ok(cryptsetup("luksAddKey", *FAST_PBKDF, "--key-file", files.passphrase, files.header, second))
    assert keyslot_ids(dump(files)) == ["0", "1"]
    assert luks2.read_header(files.header).keysafe == rotated


def test_rewrite_to_another_file_carries_the_keyslot(files: Files) -> None:
    write_vmcrypt_header(files)
    ok(add_passphrase(files, files.dek))
    header = luks2.read_header(files.header)
    moved = files.header.parent / "moved.img.luks"
    luks2.write_header(moved, header, copy_keyslots_from=files.header)
    result = cryptsetup(
        "open", "--test-passphrase", "--header", moved, "--key-file", files.passphrase, files.data
    )
    ok(result)


def _format_options(files: Files) -> list[str | Path]:
    """What luksFormat and reencrypt --encrypt share: a detached header, 4 KiB sectors,
    our DEK as the volume key, a passphrase keyslot with a fast PBKDF, the data file."""
    return [
        "--header", files.header, "--sector-size", "4096", "--key-size", "512",
        "--volume-key-file", files.dek, "--key-file", files.passphrase, *FAST_PBKDF,
        files.data,
    ]


def test_reads_a_cryptsetup_luksformat_header(files: Files) -> None:
    ok(
        cryptsetup(
            "luksFormat",
            "--type",
            "luks2",
            "--offset",
            "0",
            "--cipher",
            "aes-xts-plain64",
            *_format_options(files),
        )
    )
    header = luks2.read_header(files.header)
    assert header.keysafe is None
    assert header.verify_volume_key(files.dek_bytes)
    assert not header.verify_volume_key(files.wrong_dek.read_bytes())
    assert header.sector_size == 4096
    assert header.data_offset == 0
    assert header.hdr_size == luks2.DEFAULT_HDR_SIZE
    assert header.keyslots_size == luks2.DEFAULT_KEYSLOTS_SIZE

    # Adopting it: add our token, keep cryptsetup's passphrase keyslot working.
    adopted = luks2.with_keysafe(header, KEYSAFE)
    luks2.write_header(files.header, adopted, copy_keyslots_from=files.header)
    assert re.search(r"^\s+0: vmcrypt$", dump(files), re.MULTILINE)
    assert passphrase_opens(files, files.passphrase)
    assert luks2.read_header(files.header).keysafe == KEYSAFE


def test_reads_a_header_made_by_cryptsetup_reencrypt_encrypt(files: Files) -> None:
    ok(
        cryptsetup(
            "reencrypt",
            "--encrypt",
            "--type",
            "luks2",
            "--force-offline-reencrypt",
            *_format_options(files),
        )
    )
    header = luks2.read_header(files.header)
    assert header.keysafe is None
    assert header.sector_size == 4096
    assert header.data_offset == 0
    assert header.verify_volume_key(files.dek_bytes)
    assert "requirements" not in header.metadata["config"]  # reencryption finished
