"""A throwaway PostgreSQL server for the control plane's database tests.

``make sysdeps`` installs Debian's ``postgresql`` package; this starts a private
cluster from it (``initdb`` in a temporary folder, trust authentication, listening
on 127.0.0.1 and a free port only) and stops it afterwards, so the tests never touch
a system database. PostgreSQL refuses to run as root, so as root the server runs as
the ``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["postgres_server"]


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} not found: run `make sysdeps` (Debian package postgresql)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a private PostgreSQL; yield its SQLAlchemy URL; stop and remove it."""
    root = Path(tempfile.mkdtemp(prefix="vmcrypt-pg-"))
    data = root / "data"
    port = _free_port()
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
    try:
        subprocess.run(_as_server_user([
            _binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "--no-sync", "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
        subprocess.run(_as_server_user([
            _binary("pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
            "-t", "60", "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off", "start"]), check=True, capture_output=True, timeout=120)
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(_as_server_user([
                _binary("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                capture_output=True, timeout=60, check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
