"""The host side of attestation: its identity key, its measurements, signed evidence.

A host proves what it runs by signing a *statement* with its identity key (ECDSA P-256,
created once, private key 0600, public key registered with the Trust Authority by an
administrator). The statement is canonical JSON::

    {"hardware_uuid": …, "host": …, "measurements": {"config": HEX, "vmcrypt": HEX},
     "nonce": …, "version": 1}

and the evidence sent is ``{"statement": base64url(bytes), "signature": base64url(DER)}``
— the exact bytes signed travel with the signature, so the verifier never re-serialises
JSON and no canonicalisation mismatch can make a good signature fail or a bad one pass.

Measurements (``MEASUREMENTS``):

- ``vmcrypt``: :func:`measure_tree` of the installed ``vmcrypt`` package folder —
  SHA-256 over a manifest of ``"<sha256 hex>  <relative posix path>\\n"`` lines sorted by
  path (the ``sha256sum`` format, so an operator can reproduce it with coreutils);
  byte-code caches (``__pycache__``, ``*.pyc``) are left out since Python rewrites them.
- ``config``: SHA-256 of the host's configuration bytes (:func:`measure_config`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vmcrypt.exceptions import UsageError
from vmcrypt.pki.ca import write_pem

__all__ = [
    "MEASUREMENTS",
    "STATEMENT_VERSION",
    "build_evidence",
    "load_or_create_identity",
    "measure_config",
    "measure_host",
    "measure_tree",
    "package_root",
    "public_key_pem",
    "statement_bytes",
]

#: The measurements every statement carries and every baseline pins.
MEASUREMENTS = ("config", "vmcrypt")
#: The statement format; a verifier refuses versions it does not know.
STATEMENT_VERSION = 1

_SKIPPED_DIRS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def package_root() -> Path:
    """The folder of the installed ``vmcrypt`` package this process runs."""
    import vmcrypt

    return Path(vmcrypt.__file__).resolve().parent


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def measure_tree(root: Path) -> str:
    """SHA-256 (hex) of the sorted manifest of every regular file under ``root``.

    Paths are part of the manifest, so renaming, adding or removing a file changes the
    measurement as surely as changing its bytes. Symbolic links are not followed: a
    link is measured as its target string, so it cannot point the measurement elsewhere.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder to measure")
    lines: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        for name in files:
            if name.endswith(_SKIPPED_SUFFIXES):
                continue
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                digest = hashlib.sha256(b"symlink:" + os.readlink(path).encode()).hexdigest()
            else:
                digest = _file_sha256(path)
            lines.append(f"{digest}  {relative}\n")
    lines.sort(key=lambda line: line[66:])
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def measure_config(data: bytes) -> str:
    """SHA-256 (hex) of a host's configuration bytes."""
    return hashlib.sha256(data).hexdigest()


def measure_host(*, config: bytes, package: Path | None = None) -> dict[str, str]:
    """Both measurements of a host: its vmcrypt install (or ``package``) and config."""
    return {"config": measure_config(config),
            "vmcrypt": measure_tree(package if package is not None else package_root())}


def load_or_create_identity(path: Path) -> ec.EllipticCurvePrivateKey:
    """The host's identity key from ``path``, created (P-256, PKCS#8, 0600) if missing.

    Only the host process should read this file: whoever holds it can attest as the host.
    """
    path = Path(path)
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise UsageError(f"{path} is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise UsageError(f"{path}: a host identity is an EC P-256 key")
        if path.stat().st_mode & 0o077:
            raise UsageError(f"{path} is readable by other users; run chmod 600 {path}")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_pem(path, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), private=True)
    return key


def public_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """The public half of a host identity, as registered with the Trust Authority."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def statement_bytes(*, host_name: str, hardware_uuid: str, nonce: str,
                    measurements: Mapping[str, str]) -> bytes:
    """The canonical JSON statement a host signs."""
    statement: dict[str, Any] = {
        "version": STATEMENT_VERSION,
        "host": host_name,
        "hardware_uuid": hardware_uuid,
        "nonce": nonce,
        "measurements": dict(measurements),
    }
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def build_evidence(*, key: ec.EllipticCurvePrivateKey, host_name: str, hardware_uuid: str,
                   nonce: str, measurements: Mapping[str, str]) -> dict[str, str]:
    """Evidence for ``POST /api/v1/attestation/token``: the statement and its signature."""
    statement = statement_bytes(host_name=host_name, hardware_uuid=hardware_uuid,
                                nonce=nonce, measurements=measurements)
    signature = key.sign(statement, ec.ECDSA(hashes.SHA256()))
    return {"statement": _b64(statement), "signature": _b64(signature)}
