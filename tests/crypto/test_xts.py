"""XTS-AES-256 (``vmcrypt.crypto.xts``) against published vectors and per-sector XTS.

* NIST CAVP XTSGenAES256 (cryptography-vectors): every whole-block vector must match in
  both directions; the partial-block ones (ciphertext stealing) must be refused.
* IEEE 1619-2007 Annex B, as shipped in Crypto++'s ``xts.txt`` (Debian libcrypto++-utils).
* Property tests: the batched implementation equals ``cryptography``'s per-sector XTS with
  dm-crypt plain64 tweaks, round-trips, and works in place and from several threads.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.crypto.vectors import (
    CRYPTOPP_VECTORS,
    load_cryptopp,
    load_nist_rsp,
    unhex,
    vectors_path,
)
from vmcrypt.crypto import generate_xts_key
from vmcrypt.crypto.exceptions import InvalidKey
from vmcrypt.crypto.xts import DM_TWEAK_UNIT, SectorCipher, xts_decrypt, xts_encrypt

SECTOR = 4096

# --- reference ---------------------------------------------------------------------------


def reference_xts(
    key: bytes, data: bytes, *, unit_size: int, first_unit: int, step: int, encrypt: bool = True
) -> bytes:
    """One ``cryptography`` XTS call per data unit: the obviously-correct slow path."""
    out = []
    for n in range(len(data) // unit_size):
        tweak = ((first_unit + n) * step).to_bytes(16, "little")
        cipher = Cipher(algorithms.AES(key), modes.XTS(tweak))
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        out.append(ctx.update(data[n * unit_size : (n + 1) * unit_size]) + ctx.finalize())
    return b"".join(out)


def random_key() -> bytes:
    return os.urandom(64)


def small_jobs(cipher: SectorCipher, *, piece: int, job: int) -> None:
    """Make a cipher cut even small calls into many pieces and helper jobs.

    The real sizes (1 MiB pieces, 2 MiB jobs, no helper below 1.5 MiB) would leave the
    two-thread pipeline untested on the small inputs that property tests can afford.
    """
    cipher._per_piece = piece
    cipher._per_job = job
    cipher._min_split = 0


# --- NIST CAVP ---------------------------------------------------------------------------

NIST = load_nist_rsp(
    vectors_path("ciphers", "AES", "XTS", "tweak-dataunitseqno", "XTSGenAES256.rsp")
)


def nist_id(v: dict[str, str]) -> str:
    return f"{v['section']}-{v['count']}-{v['dataunitlen']}bits"


def test_nist_file_is_complete() -> None:
    # Guards the parser: the file has 500 ENCRYPT and 500 DECRYPT records.
    assert len(NIST) == 1000
    assert {v["section"] for v in NIST} == {"encrypt", "decrypt"}
    assert sum(int(v["dataunitlen"]) % 128 == 0 for v in NIST) == 600


@pytest.mark.parametrize(
    "vector", [v for v in NIST if int(v["dataunitlen"]) % 128 == 0], ids=nist_id
)
def test_nist_whole_blocks(vector: dict[str, str]) -> None:
    key, pt, ct = unhex(vector["key"]), unhex(vector["pt"]), unhex(vector["ct"])
    unit = int(vector["dataunitlen"]) // 8
    tweak = int(vector["dataunitseqnumber"])
    assert len(pt) == len(ct) == unit
    assert xts_encrypt(key, pt, unit_size=unit, first_tweak=tweak) == ct
    assert xts_decrypt(key, ct, unit_size=unit, first_tweak=tweak) == pt


@pytest.mark.parametrize(
    "vector", [v for v in NIST if int(v["dataunitlen"]) % 128 != 0], ids=nist_id
)
def test_nist_partial_blocks_are_refused(vector: dict[str, str]) -> None:
    # These data units (140 and 250 bits) end in a partial block and need ciphertext
    # stealing (IEEE 1619 — 5.3.2), which disk sectors never do. They are not even whole
    # bytes (the .rsp pads PT and CT to whole bytes), and their whole-byte part is not a
    # multiple of 16 bytes, so our functions must refuse them rather than guess.
    key, pt, ct = unhex(vector["key"]), unhex(vector["pt"]), unhex(vector["ct"])
    bits = int(vector["dataunitlen"])
    tweak = int(vector["dataunitseqnumber"])
    unit = bits // 8
    assert unit % 16 and len(pt) == len(ct) == -(-bits // 8)
    for data in (pt, pt[:unit]):
        with pytest.raises(ValueError):
            xts_encrypt(key, data, unit_size=unit, first_tweak=tweak)
    for data in (ct, ct[:unit]):
        with pytest.raises(ValueError):
            xts_decrypt(key, data, unit_size=unit, first_tweak=tweak)
    if len(pt) % 16:  # 140 bits pad to 18 bytes; 250 bits pad to a whole-block 32
        with pytest.raises(ValueError):
            xts_encrypt(key, pt, unit_size=len(pt), first_tweak=tweak)
        with pytest.raises(ValueError):
            xts_decrypt(key, ct, unit_size=len(ct), first_tweak=tweak)


# --- IEEE 1619-2007 Annex B (via Crypto++) --------------------------------------------------


def p1619_vectors() -> list[dict[str, str]]:
    path = CRYPTOPP_VECTORS / "xts.txt"
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: the IEEE 1619 vectors come from the Debian package "
            "libcrypto++-utils; run `make test`, which installs it"
        )
    return [
        v
        for v in load_cryptopp(path)
        if v.get("Source", "").startswith("P1619")
        and len(unhex(v["Key"])) == 64
        and len(unhex(v["Plaintext"])) % 16 == 0
    ]


def test_p1619_vectors_present() -> None:
    # Annex B has five XTS-AES-256 vectors (10 to 14), all 512-byte data units.
    vectors = p1619_vectors()
    assert [v["Comment"].split(",")[0] for v in vectors] == [f"Vector {n}" for n in range(10, 15)]


@pytest.mark.parametrize("index", range(5), ids=lambda i: f"vector-{i + 10}")
def test_p1619_annex_b(index: int) -> None:
    vector = p1619_vectors()[index]
    key = unhex(vector["Key"])
    pt, ct = unhex(vector["Plaintext"]), unhex(vector["Ciphertext"])
    # Crypto++ stores the data unit sequence number as a little-endian 16-byte IV.
    tweak = int.from_bytes(unhex(vector["IV"]), "little")
    assert vector["Test"] == "Encrypt"
    assert xts_encrypt(key, pt, unit_size=len(pt), first_tweak=tweak) == ct
    assert xts_decrypt(key, ct, unit_size=len(pt), first_tweak=tweak) == pt


# --- properties against per-sector XTS -----------------------------------------------------

keys = st.binary(min_size=64, max_size=64).filter(lambda k: k[:32] != k[32:])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=keys,
    sectors=st.integers(1, 40),
    first=st.integers(0, 2**40),
    threads=st.sampled_from([1, 2]),
    unit=st.sampled_from([SECTOR, 512]),
    small_pieces=st.booleans(),
    seed=st.binary(min_size=16, max_size=16),
)
def test_matches_per_sector_xts(
    *,
    key: bytes,
    sectors: int,
    first: int,
    threads: int,
    unit: int,
    small_pieces: bool,
    seed: bytes,
) -> None:
    data = np.random.default_rng(int.from_bytes(seed, "little")).bytes(sectors * unit)
    cipher = SectorCipher(key, unit_size=unit, threads=threads)
    if small_pieces:
        small_jobs(cipher, piece=3, job=5)
    step = max(1, unit // DM_TWEAK_UNIT)
    assert cipher.tweak_step == step
    assert cipher.unit_size == unit
    expected = reference_xts(key, data, unit_size=unit, first_unit=first, step=step)
    ct = cipher.encrypt(data, first)
    assert ct == expected
    assert cipher.decrypt(ct, first) == data
    assert (
        reference_xts(key, ct, unit_size=unit, first_unit=first, step=step, encrypt=False) == data
    )

    # In place equals out of place, for both directions.
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    cipher.encrypt_into(buf, buf, first)
    assert buf.tobytes() == expected
    out = np.empty_like(buf)
    cipher.decrypt_into(buf, out, first)
    assert out.tobytes() == data
    cipher.decrypt_into(buf, buf, first)
    assert buf.tobytes() == data


def test_dm_crypt_plain64_tweak() -> None:
    # Sector s of a 4096-byte-sector device has IV 8·s (plain64 counts 512-byte units).
    key = random_key()
    data = os.urandom(3 * SECTOR)
    expected = reference_xts(key, data, unit_size=SECTOR, first_unit=7, step=8)
    assert SectorCipher(key).encrypt(data, 7) == expected
    assert xts_encrypt(key, data, unit_size=SECTOR, first_tweak=56) != expected  # tweak step 1
    parts = [
        xts_encrypt(
            key, data[n * SECTOR : (n + 1) * SECTOR], unit_size=SECTOR, first_tweak=8 * (7 + n)
        )
        for n in range(3)
    ]
    assert b"".join(parts) == expected


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size_mib", [1, 5])
def test_large_chunks(threads: int, size_mib: int) -> None:
    # Several default-sized pieces (and a short last one), as the disk code uses it.
    key = random_key()
    data = os.urandom(size_mib * 2**20 + 3 * SECTOR)
    cipher = SectorCipher(key, threads=threads)
    first = 2**33 + 5
    expected = reference_xts(key, data, unit_size=SECTOR, first_unit=first, step=8)
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    cipher.encrypt_into(buf, buf, first)
    assert buf.tobytes() == expected
    cipher.decrypt_into(buf, buf, first)
    assert buf.tobytes() == data


def test_accepts_buffer_types() -> None:
    key = random_key()
    data = os.urandom(2 * SECTOR)
    cipher = SectorCipher(key)
    expected = cipher.encrypt(data, 3)
    assert cipher.encrypt(bytearray(data), 3) == expected
    assert cipher.encrypt(memoryview(data), 3) == expected
    assert cipher.encrypt(np.frombuffer(data, dtype=np.uint8), 3) == expected
    assert cipher.encrypt(np.frombuffer(data, dtype=np.uint64), 3) == expected
    assert cipher.encrypt(b"", 3) == b""


# --- concurrency -----------------------------------------------------------------------------


def test_concurrent_callers() -> None:
    # Four threads share one cipher (and the shared helper pool) at once; every result must
    # be right and nothing may deadlock.
    key = random_key()
    cipher = SectorCipher(key, threads=2)
    small_jobs(cipher, piece=2, job=4)
    workers = 4
    rounds = 6
    inputs = [os.urandom(37 * SECTOR) for _ in range(workers)]
    expected = [
        reference_xts(key, d, unit_size=SECTOR, first_unit=100 * i, step=8)
        for i, d in enumerate(inputs)
    ]
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                buf = np.frombuffer(inputs[i], dtype=np.uint8).copy()
                cipher.encrypt_into(buf, buf, 100 * i)
                assert buf.tobytes() == expected[i]
                assert cipher.decrypt(buf, 100 * i) == inputs[i]
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "XTS callers deadlocked"
    assert not errors, errors


def test_call_from_pool_thread_does_not_deadlock() -> None:
    # A cipher used from inside the helper pool's own worker must not wait on itself.
    from vmcrypt.crypto import xts

    key = random_key()
    cipher = SectorCipher(key, threads=2)
    small_jobs(cipher, piece=1, job=2)
    data = os.urandom(16 * SECTOR)
    expected = cipher.encrypt(data, 9)
    future = xts._pool().submit(cipher.encrypt, data, 9)
    assert future.result(timeout=60) == expected


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 16, 32, 48, 63, 65, 128])
def test_wrong_key_length(length: int) -> None:
    with pytest.raises(InvalidKey):
        SectorCipher(os.urandom(length))
    with pytest.raises(InvalidKey):
        xts_encrypt(os.urandom(length), bytes(32), unit_size=32, first_tweak=0)


def test_identical_key_halves() -> None:
    # IEEE 1619-2018 — 5.1: Key1 and Key2 must differ.
    half = os.urandom(32)
    with pytest.raises(InvalidKey):
        SectorCipher(half + half)
    with pytest.raises(InvalidKey):
        xts_decrypt(half + half, bytes(32), unit_size=32, first_tweak=0)


def test_key_must_be_bytes() -> None:
    bad: Any = "k" * 64
    with pytest.raises(InvalidKey):
        SectorCipher(bad)


@pytest.mark.parametrize("size", [1, 15, 16, SECTOR - 16, SECTOR + 16, 3 * SECTOR - 1])
def test_data_not_whole_units(size: int) -> None:
    cipher = SectorCipher(random_key())
    data = bytes(size)
    with pytest.raises(ValueError):
        cipher.encrypt(data, 0)
    with pytest.raises(ValueError):
        cipher.decrypt(data, 0)
    buf = np.zeros(size, dtype=np.uint8)
    with pytest.raises(ValueError):
        cipher.encrypt_into(buf, buf, 0)
    with pytest.raises(ValueError):
        cipher.decrypt_into(buf, buf, 0)


@pytest.mark.parametrize("unit", [0, -16, 8, 17, 4095])
def test_bad_unit_size(unit: int) -> None:
    with pytest.raises(ValueError):
        SectorCipher(random_key(), unit_size=unit)


def test_bad_output_buffer() -> None:
    cipher = SectorCipher(random_key())
    src = np.zeros(2 * SECTOR, dtype=np.uint8)
    with pytest.raises(ValueError):
        cipher.encrypt_into(src, np.zeros(SECTOR, dtype=np.uint8), 0)
    with pytest.raises(ValueError):
        cipher.encrypt_into(src, np.zeros(2 * SECTOR // 8, dtype=np.uint64), 0)
    with pytest.raises(ValueError):
        cipher.encrypt_into(src, np.zeros(4 * SECTOR, dtype=np.uint8)[::2], 0)
    readonly = np.zeros(2 * SECTOR, dtype=np.uint8)
    readonly.flags.writeable = False
    with pytest.raises(ValueError):
        cipher.encrypt_into(src, readonly, 0)
    # Overlapping but not identical: pieces run in parallel, so this cannot be done safely.
    big = np.zeros(3 * SECTOR, dtype=np.uint8)
    with pytest.raises(ValueError):
        cipher.encrypt_into(big[: 2 * SECTOR], big[SECTOR:], 0)


def test_sector_number_range() -> None:
    cipher = SectorCipher(random_key())
    data = bytes(2 * SECTOR)
    with pytest.raises(ValueError):
        cipher.encrypt(data, -1)
    last = (2**64 - 1) // 8  # the last sector whose plain64 IV (8·s) fits in 64 bits
    cipher.encrypt(data[:SECTOR], last)
    with pytest.raises(ValueError):
        cipher.encrypt(data, last)  # the second sector would overflow
    with pytest.raises(ValueError):
        xts_encrypt(random_key(), bytes(32), unit_size=32, first_tweak=2**64)


@pytest.mark.parametrize("units", [1, 2, 7, 8, 9])
def test_small_calls_match_the_batched_path(units: int) -> None:
    """Up to 8 sectors take a per-sector path (bytes in, bytes out); both paths agree."""
    key = generate_xts_key()
    longer = os.urandom(64 * 4096)  # 64 units always take the batched path
    data = longer[: units * 4096]
    cipher = SectorCipher(key)
    small = cipher.encrypt(data, 12345)
    batched = np.empty(len(longer), dtype=np.uint8)
    cipher.encrypt_into(np.frombuffer(longer, dtype=np.uint8), batched, 12345)
    assert small == batched[: units * 4096].tobytes()
    assert cipher.decrypt(small, 12345) == data
