#!/usr/bin/env python3
"""Disk data-path benchmark: vmcrypt against the machine's limit and a peer, in one run.

Measured in the same run, on the same files:

- the limit: ``openssl speed -multi 2 -evp aes-256-xts -bytes 16384`` (AES-XTS on every
  core, no I/O);
- the peer: ``qemu-img convert`` raw → LUKS and back (Debian qemu-utils), the usual
  offline way to encrypt a VM image;
- vmcrypt: in-place encrypt, decrypt and deep re-key of a 1 GiB disk (crash-safe: journal
  and fdatasync per 16 MiB chunk), random 4 KiB reads and writes in-process, and a
  shallow re-key of a 100 GiB thin disk.

Run with ``make bench`` (which installs qemu-utils if needed). ``--json`` prints the
figures for scripts; ``--size`` changes the disk size (MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vmcrypt.crypto import generate_kek, generate_xts_key, rewrap_keysafe, seal_keysafe
from vmcrypt.disk.container import create_encrypted, open_encrypted
from vmcrypt.disk.convert import decrypt_disk, deep_rekey, encrypt_disk, shallow_rekey

MiB = 1 << 20
GB = 1e9


def openssl_two_core() -> float:
    """Bytes/s of AES-256-XTS on 16 KiB blocks on two processes (openssl's own figure)."""
    out = subprocess.run(
        ["openssl", "speed", "-multi", "2", "-evp", "aes-256-xts", "-bytes", "16384",
         "-seconds", "3"],
        capture_output=True, text=True, check=True,
    ).stdout
    match = re.search(r"^aes-256-xts\s+([\d.]+)k", out, re.IGNORECASE | re.MULTILINE)
    if not match:
        raise SystemExit(f"cannot parse openssl speed output:\n{out}")
    return float(match.group(1)) * 1000


def make_image(path: Path, size: int) -> None:
    rng = np.random.default_rng(1)
    with path.open("wb") as f:
        for _ in range(size // (64 * MiB)):
            f.write(rng.integers(0, 256, 64 * MiB, dtype=np.uint8).tobytes())
        f.flush()
        os.fsync(f.fileno())


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def qemu(size: int, work: Path, raw: Path) -> tuple[float, float]:
    """Seconds for qemu-img raw → LUKS (aes-256-xts-plain64) and LUKS → raw."""
    luks, back = work / "qemu.luks", work / "qemu-back.raw"
    secret = ["--object", "secret,id=sec0,data=bench-passphrase"]
    enc_cmd = ["qemu-img", "convert", *secret, "-f", "raw", "-O", "luks", "-o",
               "key-secret=sec0,iter-time=100",  # defaults: aes-256, xts, plain64 (checked)
               str(raw), str(luks)]
    for attempt in range(5):
        # qemu's PBKDF calibration sometimes fails with "Unable to get accurate CPU
        # usage" when the process has used too little CPU time yet: retry it.
        start = time.perf_counter()
        done = subprocess.run(enc_cmd, check=False, capture_output=True, text=True)
        enc = time.perf_counter() - start
        if done.returncode == 0:
            break
        luks.unlink(missing_ok=True)
        if "accurate CPU usage" not in done.stderr or attempt == 4:
            raise SystemExit(f"qemu-img convert failed: {done.stderr.strip()}")
    info = subprocess.run(["qemu-img", "info", "--output=json", str(luks)], check=True,
                          capture_output=True, text=True).stdout
    spec = json.loads(info)["format-specific"]["data"]
    made = (spec["cipher-alg"], spec["cipher-mode"], spec["ivgen-alg"])
    if made != ("aes-256", "xts", "plain64"):
        raise SystemExit(f"qemu-img made {spec}, not aes-256-xts-plain64: not comparable")
    dec = timed(lambda: subprocess.run(
        ["qemu-img", "convert", *secret, "--image-opts",
         f"driver=luks,key-secret=sec0,file.filename={luks}", "-O", "raw", str(back)],
        check=True, capture_output=True))
    if back.read_bytes()[: 4 * MiB] != raw.read_bytes()[: 4 * MiB]:
        raise SystemExit("qemu-img round trip changed the data")
    luks.unlink()
    back.unlink()
    return enc, dec


def random_io(path: Path, dek: bytes, size: int, seconds: float = 2.0) -> tuple[float, float]:
    """Random aligned 4 KiB reads/s and writes/s on one open disk, in-process."""
    rng = random.Random(3)
    sectors = size // 4096
    data = os.urandom(4096)
    rates = []
    with open_encrypted(path, dek=dek) as disk:
        for write in (False, True):
            count = 0
            deadline = time.perf_counter() + seconds
            start = time.perf_counter()
            while time.perf_counter() < deadline:
                for _ in range(256):
                    offset = rng.randrange(sectors) * 4096
                    if write:
                        disk.write(offset, data)
                    else:
                        disk.read(offset, 4096)
                count += 256
            rates.append(count / (time.perf_counter() - start))
    return rates[0], rates[1]


def shallow_100g(work: Path) -> float:
    """Median seconds of a shallow re-key on a 100 GiB thin disk (header only)."""
    path = work / "big.img"
    kek, dek = generate_kek(), generate_xts_key()
    keysafe = seal_keysafe(kek=kek, dek=dek, provider_id="bench", key_id="k1")
    create_encrypted(path, size=100 << 30, dek=dek, keysafe=keysafe).close()
    times = []
    for i in range(7):
        new_kek = generate_kek()
        new_keysafe = rewrap_keysafe(keysafe, old_kek=kek, new_kek=new_kek, key_id=f"k{i + 2}")
        times.append(timed(lambda ks=new_keysafe: shallow_rekey(path, dek=dek, new_keysafe=ks)))
        kek, keysafe = new_kek, new_keysafe
    path.unlink()
    Path(str(path) + ".luks").unlink()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="disk size in MiB (default 1024)")
    parser.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of each measurement, peer and ours alike; the best "
                             "counts (default 2)")
    args = parser.parse_args()
    size = args.size * MiB
    for tool in ("openssl", "qemu-img"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run `make bench`, which installs it")
    work = Path(tempfile.mkdtemp(prefix="vmcrypt-bench-", dir=args.dir))
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    try:
        log(f"work folder {work}; disk {args.size} MiB")
        log("measuring openssl speed (2 processes)…")
        limit = openssl_two_core()
        raw = work / "disk.img"
        make_image(raw, size)
        q_enc = q_dec = t_enc = t_rekey = t_dec = float("inf")
        reads = writes = 0.0
        kek = generate_kek()
        for round_no in range(1, args.rounds + 1):
            log(f"round {round_no}: qemu-img convert (peer)…")
            os.sync()
            enc, dec = qemu(size, work, raw)
            q_enc, q_dec = min(q_enc, enc), min(q_dec, dec)
            dek = generate_xts_key()
            keysafe = seal_keysafe(kek=kek, dek=dek, provider_id="bench", key_id="k")
            log(f"round {round_no}: vmcrypt encrypt / deep re-key / decrypt in place…")
            os.sync()  # start from a clean page cache, as qemu-img did
            t_enc = min(t_enc, timed(lambda ks=keysafe, d=dek: encrypt_disk(raw, dek=d,
                                                                             keysafe=ks)))
            new_dek = generate_xts_key()
            new_ks = seal_keysafe(kek=kek, dek=new_dek, provider_id="bench", key_id="k")
            os.sync()  # each timed conversion starts with nothing left to write back
            t_rekey = min(t_rekey, timed(lambda d=dek, n=new_dek, ks=new_ks: deep_rekey(
                raw, old_dek=d, new_dek=n, new_keysafe=ks)))
            log(f"round {round_no}: random 4 KiB reads and writes…")
            r, w = random_io(raw, new_dek, size)
            reads, writes = max(reads, r), max(writes, w)
            os.sync()
            t_dec = min(t_dec, timed(lambda n=new_dek: decrypt_disk(raw, dek=n)))
        log("measuring shallow re-key of a 100 GiB thin disk…")
        t_shallow = shallow_100g(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours = {"encrypt": size / t_enc, "decrypt": size / t_dec, "deep_rekey": size / t_rekey}
    peer = {"encrypt": size / q_enc, "decrypt": size / q_dec}
    rows = [
        ("encrypt", ours["encrypt"], ours["encrypt"] / limit, ours["encrypt"] / peer["encrypt"],
         "≥ 0.10× openssl, ≥ 4× qemu", ours["encrypt"] / limit >= 0.10
         and ours["encrypt"] / peer["encrypt"] >= 4),
        ("decrypt", ours["decrypt"], ours["decrypt"] / limit, ours["decrypt"] / peer["decrypt"],
         "≥ 0.10× openssl, ≥ 2× qemu", ours["decrypt"] / limit >= 0.10
         and ours["decrypt"] / peer["decrypt"] >= 2),
        ("deep re-key", ours["deep_rekey"], ours["deep_rekey"] / limit, None, "≥ 0.05× openssl",
         ours["deep_rekey"] / limit >= 0.05),
    ]
    result = {
        "size_bytes": size,
        "openssl_2core_Bps": limit,
        "qemu_img": {"encrypt_Bps": peer["encrypt"], "decrypt_Bps": peer["decrypt"]},
        "vmcrypt": {**{f"{k}_Bps": v for k, v in ours.items()},
                    "random_read_4k_per_s": reads, "random_write_4k_per_s": writes,
                    "shallow_rekey_100GiB_s": t_shallow},
        "targets_met": {
            **{name: ok for name, *_, ok in rows},
            "random_read_4k": reads >= 50_000,
            "shallow_rekey_100GiB": t_shallow < 0.050,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"\nmachine limit  openssl speed -multi 2 aes-256-xts: {limit / GB:.2f} GB/s")
    print(f"peer           qemu-img convert: encrypt {peer['encrypt'] / GB:.3f} GB/s, "
          f"decrypt {peer['decrypt'] / GB:.3f} GB/s\n")
    print(f"{'vmcrypt':<14}{'GB/s':>8}{'× openssl':>11}{'× qemu':>9}   target")
    for name, rate, r_limit, r_peer, target, ok in rows:
        peer_text = f"{r_peer:>9.2f}" if r_peer is not None else f"{'—':>9}"
        print(f"{name:<14}{rate / GB:>8.3f}{r_limit:>11.3f}{peer_text}   {target}  "
              f"[{'met' if ok else 'NOT met'}]")
    print(f"{'random read':<14}{reads:>8.0f}/s of 4 KiB in-process   target ≥ 50,000/s  "
          f"[{'met' if reads >= 50_000 else 'NOT met'}]")
    print(f"{'random write':<14}{writes:>8.0f}/s of 4 KiB in-process")
    print(f"{'shallow rekey':<14}{t_shallow * 1000:>8.1f} ms on a 100 GiB thin disk   "
          f"target < 50 ms  [{'met' if t_shallow < 0.05 else 'NOT met'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
