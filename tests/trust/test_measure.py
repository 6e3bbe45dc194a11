"""Host-side measurement, identity keys and signed evidence."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from vmcrypt.exceptions import UsageError
from vmcrypt.trust.measure import (
    build_evidence,
    load_or_create_identity,
    measure_config,
    measure_host,
    measure_tree,
    package_root,
    public_key_pem,
)


def _tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("a = 1\n")
    (root / "pkg" / "sub" / "b.py").write_text("b = 2\n")
    return root / "pkg"


def test_tree_measurement_is_sha256sum_manifest(tmp_path: Path) -> None:
    pkg = _tree(tmp_path)
    manifest = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(pkg).as_posix()}\n"
        for p in sorted([pkg / "a.py", pkg / "sub" / "b.py"],
                        key=lambda p: p.relative_to(pkg).as_posix()))
    assert measure_tree(pkg) == hashlib.sha256(manifest.encode()).hexdigest()


def test_any_change_changes_the_measurement(tmp_path: Path) -> None:
    pkg = _tree(tmp_path)
    before = measure_tree(pkg)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00")
    (pkg / "c.pyc").write_bytes(b"\x00")
    assert measure_tree(pkg) == before, "byte-code caches are not measured"
    (pkg / "a.py").write_text("a = 2\n")
    changed = measure_tree(pkg)
    assert changed != before
    (pkg / "a.py").write_text("a = 1\n")
    assert measure_tree(pkg) == before
    (pkg / "a.py").rename(pkg / "z.py")
    assert measure_tree(pkg) != before
    (pkg / "z.py").rename(pkg / "a.py")
    (pkg / "new.txt").write_text("")
    assert measure_tree(pkg) != before


def test_installed_package_and_config(tmp_path: Path) -> None:
    copy = tmp_path / "vmcrypt"
    shutil.copytree(package_root(), copy)
    assert measure_tree(copy) == measure_tree(copy)
    measured = measure_host(config=b"x", package=copy)
    assert measured == {"config": measure_config(b"x"), "vmcrypt": measure_tree(copy)}
    with pytest.raises(UsageError):
        measure_tree(tmp_path / "missing")


def test_identity_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "id" / "host.key"
    key = load_or_create_identity(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_identity(path)
    assert public_key_pem(again) == public_key_pem(key)
    path.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        load_or_create_identity(path)


def test_evidence_signs_the_exact_statement_bytes(tmp_path: Path) -> None:
    key = load_or_create_identity(tmp_path / "k")
    evidence = build_evidence(key=key, host_name="h1", hardware_uuid="u1", nonce="n",
                              measurements={"vmcrypt": "0" * 64, "config": "1" * 64})

    def dec(v: str) -> bytes:
        return base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))

    statement = dec(evidence["statement"])
    key.public_key().verify(dec(evidence["signature"]), statement, ec.ECDSA(hashes.SHA256()))
    assert json.loads(statement) == {
        "version": 1, "host": "h1", "hardware_uuid": "u1", "nonce": "n",
        "measurements": {"vmcrypt": "0" * 64, "config": "1" * 64}}


def test_coreutils_reproduce_the_measurement(tmp_path: Path) -> None:
    """The one-liner in docs/trust.md gives the same digest (operators can check)."""
    import subprocess

    pkg = _tree(tmp_path)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "x.pyc").write_bytes(b"\x00")
    pipeline = ("find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -printf '%P\\n' "
                "| LC_ALL=C sort | xargs sha256sum | sha256sum")
    result = subprocess.run(["sh", "-c", pipeline], cwd=pkg, capture_output=True, text=True,
                            check=True)
    assert result.stdout.split()[0] == measure_tree(pkg)
