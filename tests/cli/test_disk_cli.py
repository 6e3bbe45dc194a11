"""``vmcrypt disk``: the real command, run in a child process on small disks.

Covers the whole life cycle with ``--json``, the conversions (shallow and deep re-key,
decrypt, encrypt, resume after a kill), the promise that no KEK or DEK byte reaches any
output or any file but the KEK files and an explicit ``export-dek``, and the error
contract: one line on stderr saying what failed and what to do, an exit code from
``EXIT_CODES``, never a traceback.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.cli.conftest import Cli, DiskFixture, MiB, Run, assert_one_line_error, parallel
from vmcrypt.cli.keyfiles import kek_key_id
from vmcrypt.crypto import generate_kek, generate_xts_key, seal_keysafe
from vmcrypt.disk import container, luks2
from vmcrypt.disk.exceptions import NoSpaceError
from vmcrypt.disk.files import header_path, journal_path
from vmcrypt.exceptions import EXIT_CODES

USAGE = EXIT_CODES["UsageError"]
WRONG_KEY = EXIT_CODES["IntegrityError"]
HEADER = EXIT_CODES["HeaderError"]
IN_PROGRESS = EXIT_CODES["ConversionInProgress"]
NO_SPACE = EXIT_CODES["NoSpaceError"]
DISK = EXIT_CODES["DiskError"]


# -- key-leak scanning ----------------------------------------------------------------------


def _b64_needles(key: bytes) -> set[bytes]:
    """Base64 text that must appear wherever ``key`` is base64-encoded, at any alignment."""
    needles = set()
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(bytes(shift) + key)
            # Drop the groups that mix in the prefix or the padding.
            needles.add(text[4 if shift else 0 : -4])
    return needles


def key_forms(key: bytes) -> dict[str, bytes]:
    """Every form in which a key could leak: raw, hex, base64; DEK halves (XTS keys) too."""
    parts = {"key": key}
    if len(key) == 64:
        parts |= {"first half": key[:32], "second half": key[32:]}
    forms: dict[str, bytes] = {}
    for name, part in parts.items():
        forms[f"{name} raw"] = part
        forms[f"{name} hex"] = part.hex().encode()
        forms[f"{name} HEX"] = part.hex().upper().encode()
        for i, needle in enumerate(sorted(_b64_needles(part))):
            forms[f"{name} base64 #{i}"] = needle
    return forms


def assert_no_key_leak(
    keys: dict[str, bytes], *, root: Path, allowed: set[Path], runs: list[Run]
) -> None:
    """No form of any key in any file under ``root`` (but ``allowed``) or any output."""
    haystacks: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path == a or a in path.parents for a in allowed):
            haystacks[str(path.relative_to(root))] = path.read_bytes()
    for i, run in enumerate(runs):
        haystacks[f"stdout of run {i} ({' '.join(run.args)})"] = run.stdout
        haystacks[f"stderr of run {i} ({' '.join(run.args)})"] = run.stderr
    assert haystacks
    for key_name, key in keys.items():
        for form, needle in key_forms(key).items():
            for where, data in haystacks.items():
                assert needle not in data, f"{key_name} ({form}) leaked into {where}"


def export_dek(cli: Cli, disk: Path, kek_file: Path, out: Path) -> bytes:
    out.parent.mkdir(exist_ok=True)
    run = cli.ok("export-dek", disk, "-k", kek_file, "--out", out, "--json")
    assert run.json == {"path": str(disk), "dek_file": str(out)}
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    dek = out.read_bytes()
    assert len(dek) == 64
    return dek


def new_kek_file(cli: Cli, name: str) -> tuple[Path, bytes]:
    run = cli.ok("new-kek", name, "--json")
    path = cli.cwd / name
    kek = path.read_bytes()
    assert len(kek) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run.json == {"file": name, "key_id": kek_key_id(kek)}
    return path, kek


# -- the life cycle -------------------------------------------------------------------------


def test_life_cycle_json_and_no_key_leaks(cli: Cli, tmp_path: Path) -> None:
    kek_file, kek = new_kek_file(cli, "kek.bin")
    key_id = kek_key_id(kek)

    created = cli.ok("create", "disk.img", "--size", "4M", "-k", kek_file, "--json").json
    assert created["encrypted"] is True
    assert created["size"] == 4 * MiB
    assert created["header"] == "disk.img.luks"
    assert created["keysafe"]["key_id"] == key_id
    disk = tmp_path / "disk.img"
    assert disk.stat().st_size == 4 * MiB
    assert disk.stat().st_blocks * 512 < MiB, "a new disk is thin (a hole)"

    model = bytearray(4 * MiB)
    # Unaligned offsets and lengths: partial sectors at both ends, across many sectors.
    first, first_at = os.urandom(70_001), 12_345
    (tmp_path / "first.bin").write_bytes(first)
    wrote = cli.ok("write", "disk.img", "-k", kek_file, "--offset", str(first_at),
                   "--input", "first.bin", "--json").json
    assert wrote == {"path": "disk.img", "offset": first_at, "written": len(first)}
    model[first_at : first_at + len(first)] = first

    second, second_at = os.urandom(5_000), MiB + 7
    wrote = cli.ok("write", "disk.img", "-k", kek_file, "--offset", str(second_at), "--json",
                   stdin=second).json
    assert wrote["written"] == len(second)
    model[second_at : second_at + len(second)] = second
    # Overlapping an earlier write, given with a size suffix.
    third = os.urandom(4096 + 3)
    cli.ok("write", "disk.img", "-k", kek_file, "--offset", "1M", stdin=third)
    model[MiB : MiB + len(third)] = third

    # Read-only commands from here on: run them side by side (shared locks).
    back, out, full, info_run, human, verified = parallel(
        lambda: cli.ok("read", "disk.img", "-k", kek_file, "--offset", str(first_at + 1),
                       "--length", str(len(first) - 2), "-o", "back.bin"),
        lambda: cli.ok("read", "disk.img", "-k", kek_file, "--offset", str(second_at - 3),
                       "--length", "5003"),
        lambda: cli.ok("read", "disk.img", "-k", kek_file),
        lambda: cli.ok("info", "disk.img", "--json"),
        lambda: cli.ok("info", "disk.img"),
        lambda: cli.ok("verify", "disk.img", "-k", kek_file, "--sha256", "--json"),
    )
    assert back.stdout == b""
    assert (tmp_path / "back.bin").read_bytes() == first[1:-1]
    assert stat.S_IMODE((tmp_path / "back.bin").stat().st_mode) == 0o600, "plaintext is private"
    assert out.stdout == bytes(model[second_at - 3 : second_at + 5000])
    assert full.stdout == bytes(model)
    ciphertext = disk.read_bytes()
    assert first not in ciphertext and second not in ciphertext

    info = info_run.json
    assert info["encrypted"] is True
    assert info["cipher"] == "aes-xts-plain64"
    assert info["sector_size"] == 4096
    assert info["data_offset"] == 0
    assert info["conversion"] is None
    assert info["keyslots"] == []
    keysafe = info["keysafe"]
    assert keysafe["provider_id"] == "kek-file"
    assert keysafe["key_id"] == key_id
    assert keysafe["kek_algorithm"] == "AES-256"
    assert keysafe["wrap_algorithm"] == "AES-256-KWP"
    assert keysafe["dek_algorithm"] == "aes-xts-plain64"
    assert keysafe["wrapped_dek"] == "72 bytes"
    assert datetime.fromisoformat(keysafe["created_at"].replace("Z", "+00:00"))
    assert b"keySafe" in human.stdout and key_id.encode() in human.stdout

    checked = verified.json
    assert checked["sha256"] == hashlib.sha256(model).hexdigest()
    assert checked["dek_digest"] == "matches"
    assert checked["size"] == 4 * MiB

    secrets = tmp_path / "secrets"
    dek = export_dek(cli, disk, kek_file, secrets / "dek.bin")
    assert luks2.read_header(header_path(disk)).verify_volume_key(dek)
    assert_no_key_leak({"KEK": kek, "DEK": dek}, root=tmp_path,
                       allowed={kek_file, secrets}, runs=cli.runs)


def test_shallow_rekey_rewraps_under_the_new_kek(cli: Cli, enc_disk: DiskFixture) -> None:
    new_file, new = new_kek_file(cli, "kek2.bin")
    ciphertext = enc_disk.path.read_bytes()
    result = cli.ok("rekey", enc_disk.path, "-k", enc_disk.kek_file, "--shallow",
                    "--new-kek-file", new_file, "--json").json
    assert result["mode"] == "shallow"
    assert result["keysafe"]["key_id"] == kek_key_id(new)

    run = cli.fails("read", enc_disk.path, "-k", enc_disk.kek_file, "--length", "1",
                    code=WRONG_KEY, phrase="does not open the keySafe")
    assert kek_key_id(new) in run.err, "the error names the KEK the disk now needs"
    assert cli.ok("read", enc_disk.path, "-k", new_file).stdout == enc_disk.plaintext
    assert enc_disk.path.read_bytes() == ciphertext, "a shallow re-key leaves the data alone"
    dek = export_dek(cli, enc_disk.path, new_file, cli.cwd / "secrets" / "dek.bin")
    assert dek == enc_disk.dek
    assert_no_key_leak({"old KEK": enc_disk.kek, "new KEK": new, "DEK": dek}, root=cli.cwd,
                       allowed={enc_disk.kek_file, new_file, cli.cwd / "secrets"},
                       runs=cli.runs)


def test_deep_rekey_then_decrypt(cli: Cli, enc_disk: DiskFixture) -> None:
    new_file, new = new_kek_file(cli, "kek2.bin")
    ciphertext = enc_disk.path.read_bytes()
    result = cli.ok("rekey", enc_disk.path, "-k", enc_disk.kek_file, "--deep",
                    "--new-kek-file", new_file, "--json").json
    assert result["mode"] == "deep"
    assert result["keysafe"]["key_id"] == kek_key_id(new)
    assert enc_disk.path.read_bytes() != ciphertext, "a deep re-key re-encrypts every sector"
    assert not journal_path(enc_disk.path).exists()
    cli.fails("read", enc_disk.path, "-k", enc_disk.kek_file, code=WRONG_KEY,
              phrase="does not open")
    assert cli.ok("read", enc_disk.path, "-k", new_file).stdout == enc_disk.plaintext
    dek = export_dek(cli, enc_disk.path, new_file, cli.cwd / "secrets" / "dek.bin")
    assert dek != enc_disk.dek

    done = cli.ok("decrypt", enc_disk.path, "-k", new_file, "--json").json
    assert done == {"path": str(enc_disk.path), "encrypted": False}
    assert enc_disk.path.read_bytes() == enc_disk.plaintext
    assert not header_path(enc_disk.path).exists()
    assert not journal_path(enc_disk.path).exists()
    assert cli.ok("info", enc_disk.path, "--json").json["encrypted"] is False
    assert cli.ok("read", enc_disk.path, "--offset", "5000", "--length", "10").stdout == \
        enc_disk.plaintext[5000:5010]
    assert_no_key_leak({"old KEK": enc_disk.kek, "new KEK": new, "new DEK": dek},
                       root=cli.cwd, allowed={enc_disk.kek_file, new_file, cli.cwd / "secrets"},
                       runs=cli.runs)


def test_encrypt_a_raw_disk(cli: Cli, tmp_path: Path) -> None:
    kek_file, kek = new_kek_file(cli, "kek.bin")
    made = cli.ok("create", "raw.img", "--size", "4M", "--raw", "--json").json
    assert made == {"path": "raw.img", "size": 4 * MiB, "encrypted": False}
    plaintext = bytearray(4 * MiB)
    data = os.urandom(200_000)
    cli.ok("write", "raw.img", "--offset", "3", stdin=data)
    plaintext[3 : 3 + len(data)] = data
    raw = tmp_path / "raw.img"
    assert raw.read_bytes() == plaintext

    done = cli.ok("encrypt", "raw.img", "-k", kek_file, "--json")
    assert done.json["encrypted"] is True
    assert done.json["keysafe"]["key_id"] == kek_key_id(kek)
    assert done.stderr == b"", "--json shows no progress bar"
    assert header_path(raw).exists()
    assert data not in raw.read_bytes()
    assert cli.ok("read", "raw.img", "-k", kek_file).stdout == plaintext
    digest = cli.ok("verify", "raw.img", "-k", kek_file, "--sha256", "--json").json["sha256"]
    assert digest == hashlib.sha256(plaintext).hexdigest()

    # For people: a progress bar and a tick on stderr, nothing on stdout; --quiet: no bar.
    cli.ok("create", "two.img", "--size", "1M", "--raw")
    shown = cli.ok("encrypt", "two.img", "-k", kek_file)
    assert "encrypting" in shown.err and "100%" in shown.err and "✓ encrypted" in shown.err
    assert shown.stdout == b""
    quiet = cli.ok("decrypt", "two.img", "-k", kek_file, "--quiet")
    assert "decrypting" not in quiet.err and "✓ decrypted" in quiet.err

    dek = export_dek(cli, raw, kek_file, tmp_path / "secrets" / "dek.bin")
    assert_no_key_leak({"KEK": kek, "DEK": dek}, root=tmp_path,
                       allowed={kek_file, tmp_path / "secrets"}, runs=cli.runs)


# A child that runs the real CLI but dies (like SIGKILL) after the second chunk's
# fdatasync, with 1 MiB chunks: the journal then says chunk 1 is in flight.
_CRASH_AFTER_TWO_CHUNKS = """
import os, sys
import vmcrypt.disk.pipeline as pipeline
pipeline.CHUNK = 1 << 20
calls = []
real = os.fdatasync
def crash(fd):
    real(fd)
    calls.append(fd)
    if len(calls) == 2:
        os._exit(137)
os.fdatasync = crash
from vmcrypt.cli.main import main
sys.argv = ["vmcrypt", *sys.argv[1:]]
main()
"""


def test_interrupted_encrypt_is_resumed(cli: Cli, tmp_path: Path) -> None:
    kek_file, kek = new_kek_file(cli, "kek.bin")
    cli.ok("create", "d.img", "--size", "4M", "--raw")
    plaintext = os.urandom(4 * MiB)
    disk = tmp_path / "d.img"
    disk.write_bytes(plaintext)

    killed = cli.run("disk", "encrypt", "d.img", "-k", kek_file, "-q",
                     prefix=[sys.executable, "-c", _CRASH_AFTER_TWO_CHUNKS])
    assert killed.returncode == 137, killed.err
    assert journal_path(disk).exists()
    (tmp_path / "journal-copy").write_bytes(journal_path(disk).read_bytes())

    info = cli.ok("info", "d.img", "--json").json
    assert info["conversion"]["operation"] == "encrypt"
    assert 0 < info["conversion"]["percent"] < 100
    assert "vmcrypt disk resume d.img" in cli.ok("info", "d.img").stdout.decode()
    other = tmp_path / "other.bin"
    other.write_bytes(generate_kek())
    cli.fails_all([
        (["read", "d.img", "--length", "1"], IN_PROGRESS, "run `vmcrypt disk resume d.img`"),
        (["encrypt", "d.img", "-k", kek_file], IN_PROGRESS, "resume"),
        (["verify", "d.img", "-k", kek_file], IN_PROGRESS, "resume"),
        (["resume", "d.img"], USAGE, "--kek-file"),
        (["resume", "d.img", "-k", other], WRONG_KEY, "KEK"),
    ])
    assert journal_path(disk).exists(), "a wrong key changes nothing"

    resumed = cli.ok("resume", "d.img", "-k", kek_file, "--json").json
    assert resumed == {"path": "d.img", "resumed": "encrypt"}
    assert not journal_path(disk).exists()
    assert header_path(disk).exists()
    assert cli.ok("read", "d.img", "-k", kek_file).stdout == plaintext

    dek = export_dek(cli, disk, kek_file, tmp_path / "secrets" / "dek.bin")
    assert_no_key_leak({"KEK": kek, "DEK": dek}, root=tmp_path,
                       allowed={kek_file, other, tmp_path / "secrets"}, runs=cli.runs)


def test_resume_with_nothing_to_resume_is_a_harmless_no_op(
    cli: Cli, enc_disk: DiskFixture
) -> None:
    before = enc_disk.path.read_bytes(), header_path(enc_disk.path).read_bytes()
    run = cli.ok("resume", enc_disk.path, "-k", enc_disk.kek_file)
    assert run.err.strip().splitlines() == [f"✓ {enc_disk.path}: nothing to resume"]
    assert cli.ok("resume", enc_disk.path, "--json").json["resumed"] is None
    assert (enc_disk.path.read_bytes(), header_path(enc_disk.path).read_bytes()) == before
    cli.fails("resume", cli.cwd / "nope.img", code=USAGE, phrase="no such data file")


# -- errors: one line, an exit code, never a traceback ---------------------------------------


def test_wrong_kek(cli: Cli, enc_disk: DiskFixture) -> None:
    other = cli.cwd / "other.bin"
    other.write_bytes(generate_kek())
    commands: list[list[str | Path]] = [
        ["read"], ["verify"], ["export-dek", "--out", "x.bin"], ["decrypt"],
        ["rekey", "--deep"], ["rekey", "--shallow", "--new-kek-file", other],
    ]
    runs = cli.fails_all([
        ([command[0], enc_disk.path, "-k", other, *command[1:]], WRONG_KEY,
         "does not open the keySafe")
        for command in commands
    ])
    for run in runs:
        assert kek_key_id(enc_disk.kek) in run.err, "names the KEK the disk wants"
    assert not (cli.cwd / "x.bin").exists()
    assert cli.ok("read", enc_disk.path, "-k", enc_disk.kek_file).stdout == enc_disk.plaintext


def test_kek_files(cli: Cli, enc_disk: DiskFixture) -> None:
    short, long_, hexed = cli.cwd / "short.bin", cli.cwd / "long.bin", cli.cwd / "hex.txt"
    short.write_bytes(enc_disk.kek[:31])
    long_.write_bytes(enc_disk.kek + b"\0")
    # 64 hex characters (with a newline) are a KEK file too.
    hexed.write_text(enc_disk.kek.hex() + "\n")
    disk = enc_disk.path
    cli.fails_all([
        (["read", disk, "-k", short], USAGE, "32 raw bytes or 64 hex"),
        (["read", disk, "-k", long_], USAGE, "vmcrypt disk new-kek"),
        (["read", disk, "-k", cli.cwd / "missing.bin"], USAGE, "does not exist"),
        (["read", disk], USAGE, "--kek-file"),
        # new-kek never overwrites key material.
        (["new-kek", enc_disk.kek_file], USAGE, "refusing to overwrite"),
    ])
    out = cli.ok("read", disk, "-k", hexed, "--offset", "5000", "--length", "64")
    assert out.stdout == enc_disk.plaintext[5000:5064]
    assert enc_disk.kek_file.read_bytes() == enc_disk.kek


def test_missing_data_file(cli: Cli, enc_disk: DiskFixture) -> None:
    nope, k = cli.cwd / "nope.img", ["-k", enc_disk.kek_file]
    moved = cli.cwd / "moved.img"
    moved.write_bytes(b"")
    header_path(moved).write_bytes(header_path(enc_disk.path).read_bytes())
    moved.unlink()
    cli.fails_all([
        (["info", nope], USAGE, "no such data file; check the path"),
        (["read", nope, *k], USAGE, "no such data file"),
        (["write", nope, *k], USAGE, "no such data file"),
        (["encrypt", nope, *k], USAGE, "no such data file"),
        (["resume", nope, *k], USAGE, "no such data file"),
        (["decrypt", nope, *k], USAGE, "no disk at"),
        (["export-dek", nope, *k], USAGE, "no disk at"),
        (["read", moved, *k], USAGE, "was the data file moved"),
    ])


def _corrupt_json_areas(header: Path) -> None:
    """Overwrite JSON bytes in both header copies (primary at 0, secondary at 16 KiB)."""
    with header.open("r+b") as f:
        for copy in (0, luks2.DEFAULT_HDR_SIZE):
            f.seek(copy + 4096 + 100)
            f.write(b"\xff" * 64)


def test_tampered_header(cli: Cli, enc_disk: DiskFixture) -> None:
    _corrupt_json_areas(header_path(enc_disk.path))
    disk, k = enc_disk.path, ["-k", enc_disk.kek_file]
    ciphertext = disk.read_bytes()
    phrase = "corrupt or tampered LUKS2 header"
    runs = cli.fails_all([
        (["read", disk, *k], HEADER, phrase),
        (["info", disk], HEADER, phrase),
        (["decrypt", disk, *k], HEADER, phrase),
    ])
    for run in runs:
        assert "both copies are bad" in run.err and "restore the header" in run.err
    assert disk.read_bytes() == ciphertext


def test_keysafe_of_another_disk(cli: Cli, enc_disk: DiskFixture) -> None:
    """A well-formed header whose keySafe holds another DEK (same KEK): exit 4, not data."""
    other = seal_keysafe(kek=enc_disk.kek, dek=generate_xts_key(), provider_id="kek-file",
                         key_id=kek_key_id(enc_disk.kek))
    hdr = header_path(enc_disk.path)
    luks2.write_header(hdr, luks2.with_keysafe(luks2.read_header(hdr), other.to_dict()))
    k = ["-k", enc_disk.kek_file]
    cli.fails_all([
        (["verify", enc_disk.path, *k], WRONG_KEY, "does not match the digest in its header"),
        (["read", enc_disk.path, *k], WRONG_KEY, "does not match the digest"),
        (["rekey", enc_disk.path, *k, "--deep"], WRONG_KEY, "does not match the digest"),
    ])


def test_one_bad_header_copy_is_tolerated_reported_and_repaired(
    cli: Cli, enc_disk: DiskFixture
) -> None:
    with header_path(enc_disk.path).open("r+b") as f:
        f.seek(4096 + 100)
        f.write(b"\xff" * 64)
    k = ["-k", enc_disk.kek_file]
    read, checked = parallel(
        lambda: cli.ok("read", enc_disk.path, *k, "--offset", "5000", "--length", "100"),
        lambda: cli.ok("verify", enc_disk.path, *k, "--json"),
    )
    assert read.stdout == enc_disk.plaintext[5000:5100]
    warning = read.err.strip().splitlines()
    assert len(warning) == 1, "said once, however often the header is read"
    assert warning[0].startswith("warning: ") and "primary LUKS2 header copy is bad" in warning[0]
    assert checked.json["header"].startswith("degraded: ")
    # Re-keying to the same KEK rewrites both copies.
    cli.ok("rekey", enc_disk.path, *k, "--shallow", "--new-kek-file", enc_disk.kek_file)
    healed = cli.ok("verify", enc_disk.path, *k, "--json")
    assert healed.json["header"] == "ok" and healed.stderr == b""


def test_random_file_as_header(cli: Cli, enc_disk: DiskFixture) -> None:
    header_path(enc_disk.path).write_bytes(os.urandom(64 * 1024))
    short = cli.cwd / "short.img"
    short.write_bytes(bytes(4096))
    header_path(short).write_bytes(b"short")
    cli.fails_all([
        (["read", enc_disk.path, "-k", enc_disk.kek_file], HEADER, "is not a LUKS2 header"),
        (["info", enc_disk.path], HEADER, "NAME.img.luks"),
        (["info", short, "--json"], HEADER, "not a LUKS2 header"),
    ])


def test_create_never_overwrites(cli: Cli, enc_disk: DiskFixture) -> None:
    data, header = enc_disk.path.read_bytes(), header_path(enc_disk.path).read_bytes()
    # A stray header alone is not overwritten either, and no data file is left behind.
    stray = cli.cwd / "new.img"
    header_path(stray).write_bytes(b"keep me")
    k = ["-k", enc_disk.kek_file]
    cli.fails_all([
        (["create", enc_disk.path, "--size", "1M", *k], USAGE, "refusing to overwrite it"),
        (["create", enc_disk.path, "--size", "1M", "--raw"], USAGE, "already exists"),
        (["create", stray, "--size", "1M", *k], USAGE, "refusing to overwrite a header"),
    ])
    assert enc_disk.path.read_bytes() == data
    assert header_path(enc_disk.path).read_bytes() == header
    assert header_path(stray).read_bytes() == b"keep me"
    assert not stray.exists()


def test_create_bad_size(cli: Cli) -> None:
    cli.fails_all([
        (["create", "d.img", "--size", size, "--raw"], USAGE, phrase)
        for size, phrase in [("4097", "multiple of 4096"), ("0", "multiple of 4096"),
                             ("12Q", "cannot read size"), ("lots", "cannot read size"),
                             ("[red]4M", "'[red]4M'")]
    ])
    assert not (cli.cwd / "d.img").exists()


def test_names_are_printed_verbatim(cli: Cli) -> None:
    """Paths and values are text, not Rich markup: ``[b]`` stays in the output."""
    cli.ok("create", "[b]x.img", "--size", "1M", "--raw")
    ran = parallel(lambda: cli.ok("info", "[b]x.img"),
                   lambda: cli.run("disk", "read", "[b]x.img", "-o", "no/such/dir"))
    assert "disk [b]x.img" in ran[0].stdout.decode()
    assert_one_line_error(ran[1], code=1, phrase="no/such/dir: No such file or directory")


_BUG = """
import sys
import vmcrypt.cli.disk as disk
def broken(*args, **kwargs):
    raise RuntimeError("simulated bug")
disk.parse_size = broken
from vmcrypt.cli.main import main
sys.argv = ["vmcrypt", *sys.argv[1:]]
main()
"""


def test_a_bug_shows_its_traceback_and_asks_for_a_report(cli: Cli) -> None:
    run = cli.run("disk", "create", "x.img", "--size", "1M", "--raw",
                  prefix=[sys.executable, "-c", _BUG])
    assert run.returncode == 1
    assert "Traceback" in run.err and "RuntimeError: simulated bug" in run.err
    assert run.err.strip().splitlines()[-1].startswith("error: unexpected failure")
    assert "please report it" in run.err


def test_rekey_needs_exactly_one_mode(cli: Cli, enc_disk: DiskFixture) -> None:
    header = header_path(enc_disk.path).read_bytes()
    rekey = ["rekey", enc_disk.path, "-k", enc_disk.kek_file]
    cli.fails_all([
        (rekey, USAGE, "exactly one of --shallow and --deep"),
        ([*rekey, "--shallow", "--deep"], USAGE, "exactly one of --shallow and --deep"),
        ([*rekey, "--shallow"], USAGE, "--new-kek-file"),
    ])
    assert header_path(enc_disk.path).read_bytes() == header


def test_reading_and_writing_past_the_end(cli: Cli, enc_disk: DiskFixture) -> None:
    ciphertext = enc_disk.path.read_bytes()
    read, write = ["read", enc_disk.path, "-k", enc_disk.kek_file], \
        ["write", enc_disk.path, "-k", enc_disk.kek_file]
    cli.fails_all([
        ([*read, "--offset", "4M", "--length", "1"], USAGE, "inside the disk"),
        ([*read, "--offset", str(4 * MiB - 10), "--length", "11", "-o", "out.bin"], USAGE,
         "is only 4194304 bytes"),
        ([*read, "--offset", "5M"], USAGE, "inside the disk"),
    ])
    assert not (cli.cwd / "out.bin").exists(), "no output file is created for a bad range"
    # Writers lock the disk exclusively: these run one at a time, after the readers.
    cli.fails(*write, "--offset", "5M", "-i", enc_disk.kek_file, code=USAGE,
              phrase="does not fit")
    big = cli.cwd / "big.bin"
    big.write_bytes(b"y" * (20 * MiB))  # larger than one 16 MiB piece: nothing is written
    cli.fails(*write, "-i", big, code=USAGE, phrase="does not fit")
    cli.fails(*write, "--offset", str(4 * MiB - 10), code=USAGE, phrase="outside the disk",
              stdin=b"x" * 11)
    assert enc_disk.path.read_bytes() == ciphertext
    # The very end is fine: zero bytes at the end, and the last byte.
    at_end, last = parallel(
        lambda: cli.ok(*read, "--offset", "4M"),
        lambda: cli.ok(*read, "--offset", str(4 * MiB - 1)),
    )
    assert (at_end.stdout, last.stdout) == (b"", b"\0")


def test_a_disk_in_use_is_refused(cli: Cli, enc_disk: DiskFixture) -> None:
    k = ["-k", enc_disk.kek_file]
    with enc_disk.path.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a writing vmcrypt process would
        cli.fails_all([
            (["write", enc_disk.path, *k, "-i", enc_disk.kek_file], DISK,
             "in use by another vmcrypt process"),
            (["read", enc_disk.path, *k], DISK, "wait for it to finish"),
        ])


def test_encrypt_an_encrypted_disk(cli: Cli, enc_disk: DiskFixture) -> None:
    ciphertext = enc_disk.path.read_bytes()
    # Without --quiet: the progress bar must not leave a line above the error.
    cli.fails("encrypt", enc_disk.path, "-k", enc_disk.kek_file, code=USAGE,
              phrase="is already encrypted")
    assert enc_disk.path.read_bytes() == ciphertext
    assert not journal_path(enc_disk.path).exists()


def test_errors_with_json_keep_stdout_empty(cli: Cli, enc_disk: DiskFixture) -> None:
    other = cli.cwd / "other.bin"
    other.write_bytes(generate_kek())
    cli.fails_all([
        (["verify", enc_disk.path, "-k", other, "--sha256", "--json"], WRONG_KEY, "KEK"),
        (["info", cli.cwd / "nope.img", "--json"], USAGE, "check the path"),
    ])


# -- no space left ---------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, when this process may mount one (root with CAP_SYS_ADMIN)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if not _mount_tmpfs(mnt, "2m"):
        pytest.skip("cannot mount a tmpfs here; test_no_space_unit covers ENOSPC")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def test_no_space_on_a_full_file_system(cli: Cli, tmp_path: Path, tiny_fs: Path) -> None:
    kek_file, _ = new_kek_file(cli, "kek.bin")
    # Writing 4 MiB into a thin 4 MiB disk on a 2 MiB file system.
    cli.ok("create", tiny_fs / "thin.img", "--size", "4M", "-k", kek_file)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(4 * MiB))
    cli.fails("write", tiny_fs / "thin.img", "-k", kek_file, "-i", big, code=NO_SPACE,
              phrase="free some space and retry")
    for name in ("thin.img", "thin.img.luks"):
        (tiny_fs / name).unlink()

    # Encrypting a half-full raw disk needs every sector: it stops, and resumes later.
    disk = tiny_fs / "raw.img"
    cli.ok("create", disk, "--size", "4M", "--raw")
    data = os.urandom(1_500_000)
    cli.ok("write", disk, stdin=data)
    cli.fails("encrypt", disk, "-k", kek_file, code=NO_SPACE, phrase="free some space")
    assert cli.ok("info", disk, "--json").json["conversion"]["operation"] == "encrypt"
    cli.fails("read", disk, "-k", kek_file, code=IN_PROGRESS, phrase="resume")

    grown = subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_fs)],
                           capture_output=True, check=False)
    if grown.returncode:
        return  # cannot free space here; the error itself was checked
    assert cli.ok("resume", disk, "-k", kek_file, "--json").json["resumed"] == "encrypt"
    assert cli.ok("read", disk, "-k", kek_file).stdout == data + bytes(4 * MiB - len(data))


def test_no_space_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC from pwrite becomes NoSpaceError, and the CLI says to free space (exit 9)."""
    kek, dek = generate_kek(), generate_xts_key()
    keysafe = seal_keysafe(kek=kek, dek=dek, provider_id="kek-file", key_id=kek_key_id(kek))
    path = tmp_path / "d.img"
    container.create_encrypted(path, size=MiB, dek=dek, keysafe=keysafe).close()
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(kek)

    def full(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(container.os, "pwrite", full)
    with container.open_encrypted(path, dek=dek) as disk, pytest.raises(NoSpaceError) as caught:
        disk.write(10, b"x" * 5000)
    assert "free some space" in str(caught.value)

    from vmcrypt.cli.main import main

    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115
    monkeypatch.setattr(sys, "argv", ["vmcrypt", "disk", "write", str(path), "-k",
                                      str(kek_file), "-i", str(kek_file)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == NO_SPACE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "free some space" in err and "Traceback" not in err


# -- help ------------------------------------------------------------------------------------

HELP = {
    (): ("NAME.img.luks", "keySafe", "new-kek", "encrypt", "rekey", "resume", "export-dek"),
    ("new-kek",): ("KEK", "0600"),
    ("create",): ("--kek-file", "KEK", "--size", "--raw", "--eager-zero", "DEK"),
    ("info",): ("keySafe", "never key bytes", "--json"),
    ("encrypt",): ("--kek-file", "KEK", "resume", "--quiet"),
    ("decrypt",): ("--kek-file", "KEK", "header"),
    ("rekey",): ("--shallow", "--deep", "--new-kek-file", "KEK", "DEK"),
    ("resume",): ("--kek-file", "--new-kek-file", "interrupted"),
    ("read",): ("--kek-file", "--offset", "--length", "--output"),
    ("write",): ("--kek-file", "--offset", "--input", "stdin"),
    ("verify",): ("--kek-file", "--sha256", "DEK"),
    ("export-dek",): ("--kek-file", "KEK", "--out", "DEK", "cryptsetup", "0600"),
}


def test_help(cli: Cli) -> None:
    runs = dict(zip(HELP, parallel(*(lambda sub=sub: cli.run("disk", *sub, "--help")
                                     for sub in HELP)), strict=True))
    for sub, words in HELP.items():
        run = runs[sub]
        assert run.returncode == 0, run.err
        text = run.stdout.decode()
        assert f"Usage: vmcrypt disk {' '.join(sub)}".strip() in text
        for word in words:
            assert word in text, f"`vmcrypt disk {' '.join(sub)} --help` lacks {word!r}"
    bare = cli.run("disk")
    assert "new-kek" in (bare.stdout + bare.stderr).decode()


def test_error_contract_helper_rejects_tracebacks() -> None:
    """The helper itself must catch a traceback and a second line."""
    bad = Run(("disk", "x"), 1, b"", b"Traceback (most recent call last):\nboom\n")
    with pytest.raises(AssertionError):
        assert_one_line_error(bad, code=1, phrase="boom")
    two = Run(("disk", "x"), DISK, b"", b"bar\nerror: boom\n")
    with pytest.raises(AssertionError):
        assert_one_line_error(two, code=DISK, phrase="boom")


@pytest.mark.parametrize("encode", [
    lambda key: key,
    lambda key: key.hex().upper().encode(),
    lambda key: b'{"k": "' + base64.b64encode(b"x" + key) + b'"}',
    lambda key: base64.urlsafe_b64encode(b"xy" + key[32:]),
])
def test_leak_scanner_finds_keys(tmp_path: Path, encode: Callable[[bytes], bytes]) -> None:
    """The scanner itself must see a key in any of the forms it claims to look for."""
    dek = generate_xts_key()
    (tmp_path / "blob").write_bytes(os.urandom(1000) + encode(dek) + os.urandom(1000))
    with pytest.raises(AssertionError, match="leaked into blob"):
        assert_no_key_leak({"DEK": dek}, root=tmp_path, allowed=set(), runs=[])
