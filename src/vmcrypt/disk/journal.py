"""The conversion journal: a small file beside the disk that makes conversions resumable.

Conversions (encrypt, decrypt, deep re-key) rewrite the data file in place, chunk by
chunk. Before a chunk is overwritten the journal records, durably, which chunk is in
flight and a *fingerprint* of every sector's current (old) stored content. After a
SIGKILL or power loss, each sector of that chunk is either still old (its fingerprint
matches), or already new (running the conversion backwards gives back the fingerprint),
so recovery redoes exactly the old sectors — the same idea as cryptsetup's ``checksum``
resilience mode, with no second copy of the data. A sector matching neither was torn
below sector granularity, which the kernel does not do for page-aligned writes; it is
reported, never guessed at.

File format (replaced atomically on every update)::

    b"VMCJRNL1" | u32 BE length of JSON | JSON | fingerprints | SHA-256 of all before

The fingerprint of a sector is the first 8 bytes of each of its eight 512-byte parts
(64 bytes), so a write torn at a 512-byte boundary is detected too.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vmcrypt.crypto.exceptions import IntegrityError
from vmcrypt.crypto.keys import constant_time_equal
from vmcrypt.crypto.keysafe import KeySafe
from vmcrypt.disk.codec import SECTOR
from vmcrypt.disk.exceptions import JournalError
from vmcrypt.disk.files import atomic_write, fsync_dir

__all__ = ["FINGERPRINT_SIZE", "Journal", "dek_digest", "fingerprints", "verify_dek_digest"]

_MAGIC = b"VMCJRNL1"
_VERSION = 1
FINGERPRINT_SIZE = 64
_PARTS = SECTOR // 512
_DIGEST_ITERATIONS = 1000
OPERATIONS = ("encrypt", "decrypt", "deep-rekey")


def fingerprints(buf: np.ndarray) -> np.ndarray:
    """(sectors, 64) uint8 fingerprints of whole stored sectors."""
    parts = buf.reshape(-1, _PARTS, 512)[:, :, :8]
    return np.ascontiguousarray(parts).reshape(-1, FINGERPRINT_SIZE)


def dek_digest(dek: bytes) -> dict[str, Any]:
    """A PBKDF2 digest of a DEK (as LUKS2 keeps one), so resume can reject a wrong key."""
    salt = os.urandom(32)
    digest = hashlib.pbkdf2_hmac("sha256", dek, salt, _DIGEST_ITERATIONS)
    return {"salt": salt.hex(), "iterations": _DIGEST_ITERATIONS, "digest": digest.hex()}


def verify_dek_digest(dek: bytes, record: dict[str, Any]) -> bool:
    """Check a DEK against :func:`dek_digest` output in constant time."""
    got = hashlib.pbkdf2_hmac(
        "sha256", dek, bytes.fromhex(record["salt"]), int(record["iterations"])
    )
    return constant_time_equal(got, bytes.fromhex(record["digest"]))


@dataclass
class Journal:
    """The state of one conversion; :meth:`save` makes it durable."""

    path: Path
    operation: str
    size: int
    done: int = 0
    inflight_first: int | None = None
    inflight_fp: np.ndarray | None = None
    old_keysafe: KeySafe | None = None
    new_keysafe: KeySafe | None = None
    new_dek_digest: dict[str, Any] | None = None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inflight_sectors(self) -> int:
        return 0 if self.inflight_fp is None else int(self.inflight_fp.shape[0])

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.size if self.size else 100.0

    def save(self) -> None:
        """Atomically replace the journal file with this state."""
        meta = {
            "version": _VERSION,
            "operation": self.operation,
            "size": self.size,
            "done": self.done,
            "inflight": None
            if self.inflight_first is None
            else {"first_sector": self.inflight_first, "sectors": self.inflight_sectors},
            "old_keysafe": self.old_keysafe.to_dict() if self.old_keysafe else None,
            "new_keysafe": self.new_keysafe.to_dict() if self.new_keysafe else None,
            "new_dek_digest": self.new_dek_digest,
            "label": self.label,
            "extra": self.extra,
        }
        text = json.dumps(meta, sort_keys=True).encode()
        fp = b"" if self.inflight_fp is None else self.inflight_fp.tobytes()
        body = _MAGIC + struct.pack(">I", len(text)) + text + fp
        atomic_write(self.path, body + hashlib.sha256(body).digest())

    def remove(self) -> None:
        """The conversion is complete: drop the journal durably."""
        self.path.unlink(missing_ok=True)
        fsync_dir(self.path)

    @classmethod
    def load(cls, path: Path) -> Journal:
        """Read and check a journal; anything malformed is a JournalError, never a guess."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise JournalError(
                f"cannot read the conversion journal {path}: {exc.strerror}"
            ) from None
        bad = JournalError(
            f"the conversion journal {path} is corrupt; the data file was not touched "
            "by this check — restore the journal from a backup or contact support"
        )
        if len(raw) < len(_MAGIC) + 4 + 32 or raw[: len(_MAGIC)] != _MAGIC:
            raise bad
        body, check = raw[:-32], raw[-32:]
        if not constant_time_equal(hashlib.sha256(body).digest(), check):
            raise bad
        (length,) = struct.unpack(">I", body[8:12])
        try:
            meta = json.loads(body[12 : 12 + length])
            fp_raw = body[12 + length :]
            inflight = meta["inflight"]
            operation = meta["operation"]
            if meta["version"] != _VERSION or operation not in OPERATIONS:
                raise bad
            fp = None
            first = None
            if inflight is not None:
                first = int(inflight["first_sector"])
                sectors = int(inflight["sectors"])
                if len(fp_raw) != sectors * FINGERPRINT_SIZE:
                    raise bad
                fp = np.frombuffer(fp_raw, dtype=np.uint8).reshape(sectors, FINGERPRINT_SIZE)
            return cls(
                path=path,
                operation=operation,
                size=int(meta["size"]),
                done=int(meta["done"]),
                inflight_first=first,
                inflight_fp=fp,
                old_keysafe=KeySafe.from_dict(meta["old_keysafe"]) if meta["old_keysafe"] else None,
                new_keysafe=KeySafe.from_dict(meta["new_keysafe"]) if meta["new_keysafe"] else None,
                new_dek_digest=meta.get("new_dek_digest"),
                label=str(meta.get("label", "")),
                extra=dict(meta.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError, IntegrityError):
            raise bad from None
