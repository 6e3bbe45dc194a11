"""KEK files for the low-level ``vmcrypt disk`` tool.

The low-level tool takes KEKs from files so that an operator can work on a disk with no
control plane or key server (recovery, scripting, tests). A KEK file holds 32 raw bytes
or 64 hexadecimal characters; it is key material in the clear, so it is created 0600
and its content is never printed. Higher layers never use KEK files: they get KEKs from
a key provider.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from pathlib import Path

from vmcrypt.crypto.exceptions import IntegrityError
from vmcrypt.crypto.keys import KEK_SIZE, generate_kek
from vmcrypt.crypto.keysafe import KeySafe, open_keysafe
from vmcrypt.exceptions import UsageError

__all__ = ["FILE_PROVIDER", "kek_key_id", "load_kek", "new_kek", "resolver", "write_secret_file"]

#: Provider ID recorded in keySafes made with KEK files.
FILE_PROVIDER = "kek-file"


def load_kek(path: Path) -> bytes:
    """Read a KEK file; the error names the file and the expected format, never the content."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"KEK file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read KEK file {path}: {exc.strerror}") from None
    if len(raw) == KEK_SIZE:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEK_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise UsageError(
        f"KEK file {path} must hold 32 raw bytes or 64 hex characters (AES-256); "
        "create one with `vmcrypt disk new-kek FILE`"
    )


def kek_key_id(kek: bytes) -> str:
    """A stable ID for a KEK file's key: a keyed check value that reveals nothing of it."""
    check = hmac.new(kek, b"vmcrypt key id", hashlib.sha256).hexdigest()[:16]
    return f"kcv:{check}"


def resolver(keks: list[bytes]) -> Callable[[KeySafe], bytes]:
    """A DEK resolver that tries each KEK on a keySafe; none fitting is an IntegrityError."""

    def resolve(keysafe: KeySafe) -> bytes:
        for kek in keks:
            key_id = keysafe.key_id
            if key_id is not None and key_id.startswith("kcv:") and key_id != kek_key_id(kek):
                continue
            try:
                return open_keysafe(keysafe, kek)
            except IntegrityError:
                continue
        raise IntegrityError("keySafe")

    return resolve


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and ``data``; never overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:
        raise UsageError(f"{path} already exists; refusing to overwrite key material") from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def new_kek() -> bytes:
    """A fresh random KEK for a KEK file."""
    return generate_kek()
