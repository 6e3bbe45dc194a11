"""The server master key: the one key that seals every key the KMS stores.

It comes from the environment (``VMCRYPT_KMS_MASTER_KEY``, 64 hex digits or base64 of 32
bytes) or from a file. A file is created on first start with mode 0600 and refused later
if group or others can read it — a master key readable by others makes every sealed key
readable by others. The key itself never appears in a message or a log line.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from vmcrypt.crypto.keys import generate_aead_key
from vmcrypt.kms.errors import MasterKeyError

__all__ = ["ENV_VAR", "MASTER_KEY_SIZE", "load_master_key"]

ENV_VAR = "VMCRYPT_KMS_MASTER_KEY"
MASTER_KEY_SIZE = 32


def _parse(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text) if len(text) == 2 * MASTER_KEY_SIZE else base64.b64decode(
            text, validate=True
        )
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != MASTER_KEY_SIZE:
        raise MasterKeyError(
            f"{where} does not hold a 256-bit master key (64 hex digits or base64 of 32 "
            "bytes); restore the right key — a new one cannot open the keys already stored"
        )
    return key


def load_master_key(path: Path | None, *, environ: dict[str, str] | None = None,
                    create: bool = True) -> bytes:
    """The master key from ``$VMCRYPT_KMS_MASTER_KEY``, else from ``path`` (created if absent)."""
    env = os.environ if environ is None else environ
    if ENV_VAR in env:
        return _parse(env[ENV_VAR], f"${ENV_VAR}")
    if path is None:
        raise MasterKeyError(f"no master key: set ${ENV_VAR} or give a master key file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            raise MasterKeyError(f"master key file {path} does not exist") from None
        return _create(path)
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise MasterKeyError(
                f"master key file {path} is readable by group or others (mode "
                f"{stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        with os.fdopen(fd, "r", closefd=False) as handle:
            return _parse(handle.read(256), f"master key file {path}")
    finally:
        os.close(fd)


def _create(path: Path) -> bytes:
    key = generate_aead_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_master_key(path, environ={}, create=False)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key
