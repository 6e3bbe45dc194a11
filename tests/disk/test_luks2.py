"""Detached LUKS2 headers: layout, redundancy, tamper detection and atomic rewrite.

The byte-level checks re-derive the layout from the LUKS2 on-disk format specification
independently of the implementation, so a shared misunderstanding cannot pass silently.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmcrypt.crypto.exceptions import InvalidKey
from vmcrypt.disk import luks2
from vmcrypt.disk.exceptions import DiskError, HeaderError
from vmcrypt.exceptions import UsageError, VmcryptError

DEK = bytes(range(64))
KEYSAFE: dict[str, Any] = {
    "version": 1,
    "provider_id": "provider-a",
    "key_id": "key-1",
    "wrapped_kek": None,
    "wrapped_dek": "c2VjcmV0LWJ1dC13cmFwcGVk",
    "kek_algorithm": "AES-256",
    "wrap_algorithm": "AES-256-KWP",
    "dek_algorithm": "aes-xts-plain64",
    "created_at": "2024-01-01T00:00:00Z",
}
HDR = 16384
FULL_SIZE = 2 * HDR + 16744448  # two copies + cryptsetup's default keyslots area


def _write(path: Path, **kwargs: Any) -> luks2.Luks2Header:
    header = luks2.build_header(volume_key=DEK, keysafe=KEYSAFE, **kwargs)
    luks2.write_header(path, header)
    return header


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _parse_copy(blob: bytes, offset: int) -> dict[str, Any]:
    """Independent parse of one copy, straight from the spec's binary header table."""
    magic, version, hdr_size, seqid = struct.unpack_from(">6sHQQ", blob, offset)
    (hdr_offset,) = struct.unpack_from(">Q", blob, offset + 256)
    area = bytearray(blob[offset : offset + hdr_size])
    csum = bytes(area[448:512])
    area[448:512] = bytes(64)
    json_text = bytes(area[4096:]).split(b"\0", 1)[0]
    return {
        "magic": magic,
        "version": version,
        "hdr_size": hdr_size,
        "seqid": seqid,
        "hdr_offset": hdr_offset,
        "checksum_alg": blob[offset + 72 : offset + 104].rstrip(b"\0"),
        "salt": blob[offset + 104 : offset + 168],
        "uuid": blob[offset + 168 : offset + 208].rstrip(b"\0").decode(),
        "label": blob[offset + 24 : offset + 72].rstrip(b"\0").decode(),
        "checksum_ok": hashlib.sha256(bytes(area)).digest() == csum[:32],
        "metadata": json.loads(json_text),
    }


# ------------------------------------------------------------------------ round trip


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    uuid = "0f5bd0c5-6f9a-4e2b-9a57-6b2e0e6b3c11"
    written = _write(path, uuid=uuid, label="vm-disk-0")
    read = luks2.read_header(path)
    assert read == written
    assert read.uuid == uuid
    assert read.label == "vm-disk-0"
    assert read.seqid == 1
    assert read.hdr_size == HDR
    assert read.keysafe == KEYSAFE
    assert read.sector_size == luks2.SECTOR_SIZE == 4096
    assert read.data_offset == 0
    assert read.metadata["segments"]["0"]["encryption"] == luks2.CIPHER
    assert read.metadata["config"] == {"json_size": "12288", "keyslots_size": "16744448"}
    assert read.metadata["tokens"]["0"]["type"] == luks2.TOKEN_TYPE


def test_file_is_full_size_but_sparse(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    _write(path)
    st_ = path.stat()
    assert st_.st_size == FULL_SIZE
    assert st_.st_blocks * 512 <= 256 * 1024  # ~32 KiB of data; holes for the rest


def test_new_header_is_private(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    _write(path)
    assert path.stat().st_mode & 0o777 == 0o600


def test_both_copies_written_with_valid_checksums(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    header = _write(path, label="x")
    blob = path.read_bytes()[: 2 * HDR]
    primary, secondary = _parse_copy(blob, 0), _parse_copy(blob, HDR)
    assert primary["magic"] == b"LUKS\xba\xbe"
    assert secondary["magic"] == b"SKUL\xba\xbe"
    for copy, offset in ((primary, 0), (secondary, HDR)):
        assert copy["version"] == 2
        assert copy["hdr_size"] == HDR
        assert copy["hdr_offset"] == offset
        assert copy["seqid"] == header.seqid
        assert copy["checksum_alg"] == b"sha256"
        assert copy["checksum_ok"]
        assert copy["uuid"] == header.uuid
        assert copy["label"] == "x"
        assert copy["metadata"] == header.metadata
    assert primary["salt"] != secondary["salt"]  # fresh random salt per copy
    # The JSON area is NUL-padded to its end.
    json_area = blob[4096:HDR]
    end = json_area.index(b"\0")
    assert json_area[end:] == bytes(len(json_area) - end)


def test_digest_is_pbkdf2_of_volume_key() -> None:
    header = luks2.build_header(volume_key=DEK, keysafe=KEYSAFE, iterations=1234)
    digest = header.metadata["digests"]["0"]
    assert digest["type"] == "pbkdf2"
    assert digest["keyslots"] == []
    assert digest["segments"] == ["0"]
    assert digest["iterations"] == 1234
    salt = base64.b64decode(digest["salt"])
    expected = hashlib.pbkdf2_hmac("sha256", DEK, salt, 1234, 32)
    assert base64.b64decode(digest["digest"]) == expected
    assert DEK.hex() not in json.dumps(header.metadata)


# -------------------------------------------------------------------------- redundancy


def test_tampered_primary_json_falls_back_to_secondary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "disk.img.luks"
    header = _write(path)
    _flip(path, 4096 + 20)  # inside the primary JSON text
    assert luks2.read_header(path) == header
    assert "primary" in caplog.text
    assert "checksum" in caplog.text


def test_destroyed_primary_binary_header_falls_back_to_secondary(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    header = _write(path)
    with open(path, "r+b") as f:
        f.write(bytes(4096))  # magic and hdr_size gone: the secondary must be found by probing
    assert luks2.read_header(path) == header


def test_tampered_secondary_uses_primary(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    header = _write(path)
    _flip(path, HDR + 4096 + 5)
    assert luks2.read_header(path) == header


def test_both_copies_tampered_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    _write(path)
    _flip(path, 4096 + 20)
    _flip(path, HDR + 4096 + 20)
    with pytest.raises(HeaderError) as info:
        luks2.read_header(path)
    message = str(info.value)
    assert "corrupt or tampered" in message
    assert "both copies" in message
    assert "backup" in message
    assert isinstance(info.value, DiskError)
    assert isinstance(info.value, VmcryptError)


def test_highest_seqid_wins(tmp_path: Path) -> None:
    old, new = tmp_path / "old.luks", tmp_path / "new.luks"
    header = luks2.build_header(volume_key=DEK, keysafe=KEYSAFE)
    luks2.write_header(old, header)
    newer = luks2.with_keysafe(header, {**KEYSAFE, "key_id": "key-2"})
    luks2.write_header(new, newer)
    mixed = tmp_path / "mixed.luks"
    mixed.write_bytes(old.read_bytes()[:HDR] + new.read_bytes()[HDR : 2 * HDR])
    assert luks2.read_header(mixed).seqid == newer.seqid
    mixed.write_bytes(new.read_bytes()[:HDR] + old.read_bytes()[HDR : 2 * HDR])
    assert luks2.read_header(mixed).keysafe == newer.keysafe


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    _write(path)
    data = path.read_bytes()
    path.write_bytes(data[: HDR + 100])  # primary intact, secondary cut off
    assert luks2.read_header(path).keysafe == KEYSAFE
    path.write_bytes(data[:5000])
    with pytest.raises(HeaderError, match="both copies are bad"):
        luks2.read_header(path)


# ------------------------------------------------------------------------- not LUKS2


def test_random_file_is_not_luks2(tmp_path: Path) -> None:
    path = tmp_path / "random.bin"
    path.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(HeaderError, match="not a LUKS2 header"):
        luks2.read_header(path)


def test_empty_file_is_not_luks2(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(HeaderError, match="not a LUKS2 header"):
        luks2.read_header(path)


def test_luks1_is_named(tmp_path: Path) -> None:
    path = tmp_path / "luks1"
    path.write_bytes(b"LUKS\xba\xbe\x00\x01" + bytes(8192))
    with pytest.raises(HeaderError, match="LUKS1"):
        luks2.read_header(path)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        luks2.read_header(tmp_path / "nope")


# -------------------------------------------------------------------- volume key


def test_verify_volume_key(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    _write(path)
    header = luks2.read_header(path)
    assert header.verify_volume_key(DEK) is True
    assert header.verify_volume_key(bytes(64)) is False
    assert header.verify_volume_key(DEK[:32]) is False


def test_build_header_rejects_wrong_key_length() -> None:
    with pytest.raises(InvalidKey, match="64 bytes"):
        luks2.build_header(volume_key=bytes(32), keysafe=KEYSAFE)


def test_build_header_validates_arguments() -> None:
    with pytest.raises(UsageError, match="at least 1000"):
        luks2.build_header(volume_key=DEK, keysafe=KEYSAFE, iterations=999)
    with pytest.raises(UsageError, match="not a UUID"):
        luks2.build_header(volume_key=DEK, keysafe=KEYSAFE, uuid="nope")
    with pytest.raises(UsageError, match="label"):
        luks2.build_header(volume_key=DEK, keysafe=KEYSAFE, label="x" * 48)
    with pytest.raises(UsageError, match="JSON"):
        luks2.build_header(volume_key=DEK, keysafe={"bytes": b"raw"})


def test_keysafe_is_a_copy() -> None:
    source = dict(KEYSAFE)
    header = luks2.build_header(volume_key=DEK, keysafe=source)
    source["key_id"] = "changed-by-caller"
    assert header.keysafe == KEYSAFE
    returned = header.keysafe
    assert returned is not None
    returned["key_id"] = "changed-via-property"
    assert header.keysafe == KEYSAFE


# ------------------------------------------------------------------------ with_keysafe


def _with_extras(header: luks2.Luks2Header) -> luks2.Luks2Header:
    """A header carrying a foreign token and a (fake) keyslot, as cryptsetup would add."""
    metadata = json.loads(json.dumps(header.metadata))
    metadata["tokens"]["1"] = {"type": "luks2-keyring", "keyslots": [], "key_description": "k"}
    metadata["keyslots"]["0"] = {
        "type": "luks2",
        "key_size": 64,
        "area": {"type": "raw", "offset": "32768", "size": "4096"},
    }
    metadata["digests"]["0"]["keyslots"] = ["0"]
    return luks2.Luks2Header(
        uuid=header.uuid, label="l", seqid=7, hdr_size=header.hdr_size, metadata=metadata
    )


def test_with_keysafe_keeps_everything_else() -> None:
    header = _with_extras(luks2.build_header(volume_key=DEK, keysafe=KEYSAFE))
    new_keysafe = {**KEYSAFE, "key_id": "key-2"}
    updated = luks2.with_keysafe(header, new_keysafe)
    assert updated.seqid == header.seqid + 1
    assert updated.keysafe == new_keysafe
    assert header.keysafe == KEYSAFE  # the original is untouched
    assert (updated.uuid, updated.label, updated.hdr_size) == (
        header.uuid,
        header.label,
        header.hdr_size,
    )
    for key in ("keyslots", "segments", "digests", "config"):
        assert updated.metadata[key] == header.metadata[key]
    assert updated.metadata["tokens"]["1"] == header.metadata["tokens"]["1"]
    assert updated.verify_volume_key(DEK)


def test_with_keysafe_adds_token_to_foreign_header() -> None:
    header = luks2.build_header(volume_key=DEK, keysafe=KEYSAFE)
    metadata = json.loads(json.dumps(header.metadata))
    metadata["tokens"] = {"0": {"type": "luks2-keyring", "keyslots": []}}
    foreign = luks2.Luks2Header(
        uuid=header.uuid, label="", seqid=3, hdr_size=HDR, metadata=metadata
    )
    assert foreign.keysafe is None
    adopted = luks2.with_keysafe(foreign, KEYSAFE)
    assert adopted.keysafe == KEYSAFE
    assert adopted.metadata["tokens"]["1"]["type"] == "vmcrypt"
    assert adopted.metadata["tokens"]["0"] == metadata["tokens"]["0"]
    assert adopted.seqid == 4


def test_json_larger_than_area_is_a_clear_error(tmp_path: Path) -> None:
    huge = {**KEYSAFE, "wrapped_kek": "A" * 13000}
    with pytest.raises(HeaderError, match="JSON area") as info:
        luks2.build_header(volume_key=DEK, keysafe=huge)
    assert "12288" in str(info.value)
    header = luks2.build_header(volume_key=DEK, keysafe=KEYSAFE)
    with pytest.raises(HeaderError, match="smaller keySafe"):
        luks2.with_keysafe(header, huge)


# ---------------------------------------------------------------------------- writing


def test_rewrite_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    header = _write(path)
    updated = luks2.with_keysafe(header, {**KEYSAFE, "key_id": "key-2"})
    luks2.write_header(path, updated)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.img.luks"]
    assert luks2.read_header(path) == updated


def test_failed_write_keeps_old_header_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "disk.img.luks"
    header = _write(path)
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        luks2.write_header(path, luks2.with_keysafe(header, {"key_id": "x"}))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.img.luks"]


def test_rewrite_keeps_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.luks"
    header = _write(path)
    path.chmod(0o640)
    luks2.write_header(path, luks2.with_keysafe(header, KEYSAFE))
    assert path.stat().st_mode & 0o777 == 0o640


def test_keyslots_need_a_source(tmp_path: Path) -> None:
    header = _with_extras(luks2.build_header(volume_key=DEK, keysafe=KEYSAFE))
    with pytest.raises(HeaderError, match="copy_keyslots_from"):
        luks2.write_header(tmp_path / "h.luks", header)


def test_copy_keyslots_copies_only_referenced_areas(tmp_path: Path) -> None:
    source = tmp_path / "old.luks"
    header = _with_extras(luks2.build_header(volume_key=DEK, keysafe=KEYSAFE))
    # Lay the source out by hand: valid header copies plus keyslot material and junk.
    plain = luks2.Luks2Header(
        uuid=header.uuid,
        label=header.label,
        seqid=header.seqid,
        hdr_size=header.hdr_size,
        metadata={**header.metadata, "keyslots": {}},
    )
    luks2.write_header(source, plain)
    material = os.urandom(4096)
    junk = os.urandom(4096)
    with open(source, "r+b") as f:
        f.seek(32768)
        f.write(material)
        f.seek(32768 + 8192)
        f.write(junk)  # not referenced by any keyslot: must not be carried over
    target = tmp_path / "new.luks"
    luks2.write_header(target, header, copy_keyslots_from=source)
    data = target.read_bytes()
    assert data[32768 : 32768 + 4096] == material
    assert data[32768 + 8192 : 32768 + 8192 + 4096] == bytes(4096)
    assert len(data) == FULL_SIZE
    assert luks2.read_header(target).metadata["keyslots"] == header.metadata["keyslots"]
    # In place, too.
    luks2.write_header(source, luks2.with_keysafe(header, KEYSAFE), copy_keyslots_from=source)
    assert source.read_bytes()[32768 : 32768 + 4096] == material


def test_copy_keyslots_from_other_disk_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.luks"
    _write(other)
    header = _with_extras(luks2.build_header(volume_key=DEK, keysafe=KEYSAFE))
    with pytest.raises(HeaderError, match="UUID"):
        luks2.write_header(tmp_path / "h.luks", header, copy_keyslots_from=other)


def test_keyslot_area_outside_keyslots_area_is_refused(tmp_path: Path) -> None:
    header = _with_extras(luks2.build_header(volume_key=DEK, keysafe=KEYSAFE))
    header.metadata["keyslots"]["0"]["area"]["offset"] = "4096"  # inside the header copies
    with pytest.raises(HeaderError, match="outside the keyslots area"):
        luks2.write_header(tmp_path / "h.luks", header, copy_keyslots_from=tmp_path / "x")


# --------------------------------------------------------------------------- segments


def _with_segment(**changes: Any) -> luks2.Luks2Header:
    header = luks2.build_header(volume_key=DEK, keysafe=KEYSAFE)
    metadata = json.loads(json.dumps(header.metadata))
    metadata["segments"]["0"].update(changes)
    return luks2.Luks2Header(uuid=header.uuid, label="", seqid=1, hdr_size=HDR, metadata=metadata)


def test_unsupported_cipher_is_named() -> None:
    header = _with_segment(encryption="serpent-xts-plain64")
    with pytest.raises(HeaderError, match=r"serpent-xts-plain64.*aes-xts-plain64"):
        _ = header.sector_size
    with pytest.raises(HeaderError, match="serpent"):
        _ = header.data_offset


def test_decrypted_header_is_explained() -> None:
    header = _with_segment(type="linear")
    with pytest.raises(HeaderError, match="decrypted"):
        _ = header.sector_size


def test_unfinished_reencryption_is_refused() -> None:
    header = _with_segment()
    header.metadata["config"]["requirements"] = {"mandatory": ["online-reencrypt-v2"]}
    with pytest.raises(HeaderError, match="online-reencrypt-v2"):
        _ = header.data_offset


def test_other_sector_size_and_offset_are_reported() -> None:
    header = _with_segment(sector_size=512, offset="1048576")
    assert header.sector_size == 512
    assert header.data_offset == 1048576


# ------------------------------------------------------------------------- fuzzing


@functools.cache
def _pristine() -> bytes:
    """Both copies of one valid header, built once for all fuzzing examples."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "pristine.luks"
        luks2.write_header(path, luks2.build_header(volume_key=DEK, keysafe=KEYSAFE))
        return path.read_bytes()[: 2 * HDR]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 2 * HDR - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.one_of(st.none(), st.integers(0, 2 * HDR)),
)
def test_corruption_only_ever_raises_header_error(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None
) -> None:
    blob = bytearray(_pristine())
    for offset, value in edits:
        blob[offset] = value
    if cut is not None:
        del blob[cut:]
    path = tmp_path / "fuzzed.luks"
    path.write_bytes(bytes(blob))
    try:
        header = luks2.read_header(path)
    except HeaderError:
        return
    # Whatever was accepted must be an intact copy of the original.
    assert header.keysafe == KEYSAFE
    assert header.verify_volume_key(DEK)


def _reseal(blob: bytearray, offset: int) -> None:
    """Recompute one copy's checksum, as an attacker who can write the header would."""
    area = bytearray(blob[offset : offset + HDR])
    area[448:512] = bytes(64)
    blob[offset + 448 : offset + 512] = hashlib.sha256(bytes(area)).digest() + bytes(32)


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 4096 + 1200), st.integers(0, 255)), min_size=1, max_size=6
    )
)
def test_resealed_corruption_only_ever_raises_header_error(edits: list[tuple[int, int]]) -> None:
    """Checksums recomputed: now the binary-field and JSON validation must hold the line."""
    blob = bytearray(_pristine())
    for offset, value in edits:
        for base in (0, HDR):  # the same edit in both copies
            blob[base + offset] = value
    for base in (0, HDR):
        _reseal(blob, base)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzzed.luks"
        path.write_bytes(bytes(blob))
        try:
            header = luks2.read_header(path)
            _ = header.keysafe
            _ = header.sector_size
            _ = header.data_offset
            _ = header.verify_volume_key(DEK)
            _ = luks2.with_keysafe(header, KEYSAFE)
            luks2.write_header(Path(directory) / "rewritten.luks", header, copy_keyslots_from=path)
        except HeaderError:
            pass
