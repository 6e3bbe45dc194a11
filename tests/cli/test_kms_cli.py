"""``vmcrypt kms status`` and ``vmcrypt kms key …`` against a real key server over TLS.

The server runs in this process (so the test can look at what it stored); the CLI runs
as a child process, as an operator would run it.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Cli, assert_one_line_error
from vmcrypt.exceptions import EXIT_CODES
from vmcrypt.kms.server import KmsConfig, KmsServer
from vmcrypt.pki import init_pki


@pytest.fixture
def kms(tmp_path: Path) -> Iterator[tuple[KmsServer, list[str]]]:
    pki = tmp_path / "pki"
    init_pki(pki, key_type="ec")
    server = KmsServer(
        KmsConfig(database=tmp_path / "kms.db", cert_file=pki / "server.pem",
                  key_file=pki / "server.key", ca_file=pki / "ca.pem", port=0),
        master_key=os.urandom(32),
    )
    host, port = server.start()
    try:
        yield server, ["--server", f"{host}:{port}", "--pki", str(pki)]
    finally:
        server.shutdown()


def _ok(cli: Cli, *args: str) -> str:
    run = cli.run("kms", *args)
    assert run.returncode == 0, f"vmcrypt kms {' '.join(args)}:\n{run.err}"
    assert "Traceback" not in run.err
    return run.stdout.decode()


def test_key_life_cycle_through_the_cli(cli: Cli, kms: tuple[KmsServer, list[str]]) -> None:
    server, conn = kms
    status = cli.run("kms", "status", *conn, "--json").json
    assert status["reachable"] is True and "1.4" in status["versions"]
    assert status["vendor"].startswith("vmcrypt")

    uid = cli.run("kms", "key", "create", *conn, "--name", "vm1-kek", "-a", "x-Product=vmcrypt",
                  "-a", "x-Component=Virtual Machine", "--json").json["key_id"]
    assert cli.run("kms", "key", "list", *conn, "--name", "vm1-kek", "--json").json == {
        "key_ids": [uid]}
    assert cli.run("kms", "key", "list", *conn, "-a", "x-Component=Virtual Machine",
                   "--json").json == {"key_ids": [uid]}
    shown = cli.run("kms", "key", "show", uid, *conn, "--json").json["attributes"]
    assert shown["State"] == "Active"
    assert shown["Cryptographic Algorithm"] == "AES"
    assert shown["x-Product"] == "vmcrypt" and shown["Name"] == "vm1-kek"

    key = server.store.material(uid)
    assert key is not None
    kek_file = cli.cwd / "kek.bin"
    _ok(cli, "key", "export", uid, *conn, "--out", str(kek_file))
    assert kek_file.read_bytes() == key
    assert kek_file.stat().st_mode & 0o777 == 0o600
    # The exported KEK works with the low-level disk tool.
    cli.ok("create", cli.cwd / "d.img", "--size", "1M", "--kek-file", kek_file)
    cli.ok("verify", cli.cwd / "d.img", "--kek-file", kek_file)

    refused = cli.run("kms", "key", "destroy", uid, *conn)
    assert_one_line_error(refused, code=EXIT_CODES["OperationFailed"], phrase="revoke it")
    _ok(cli, "key", "revoke", uid, *conn)
    _ok(cli, "key", "destroy", uid, *conn)
    assert cli.run("kms", "key", "show", uid, *conn, "--json").json["attributes"][
        "State"] == "Destroyed"
    gone = cli.run("kms", "key", "export", uid, *conn, "--out", str(cli.cwd / "again.bin"))
    assert_one_line_error(gone, code=EXIT_CODES["OperationFailed"], phrase="destroyed")
    assert not (cli.cwd / "again.bin").exists()

    # Only `export` ever shows key material: scan every other output for the key.
    forms = [key, key.hex().encode(), base64.b64encode(key)]
    scanned = [run for run in cli.runs if run.args[:3] != ("kms", "key", "export")]
    assert len(scanned) >= 10
    for run in scanned:
        for form in forms:
            assert form not in run.stdout and form not in run.stderr


def test_errors_are_one_clear_line(cli: Cli, kms: tuple[KmsServer, list[str]],
                                   tmp_path: Path) -> None:
    _, conn = kms
    unknown = cli.run("kms", "key", "show", "no-such-key", *conn)
    assert_one_line_error(unknown, code=EXIT_CODES["OperationFailed"], phrase="Item Not Found")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    down = cli.run("kms", "status", "--server", f"127.0.0.1:{free_port}", *conn[2:])
    assert_one_line_error(down, code=EXIT_CODES["KmipConnectionError"], phrase="refused")

    bad = cli.run("kms", "status", "--server", "no-port", *conn[2:])
    assert_one_line_error(bad, code=EXIT_CODES["UsageError"], phrase="HOST:PORT")

    stranger = cli.run("kms", "status", *conn, "--identity", "nobody")
    assert_one_line_error(stranger, code=EXIT_CODES["PkiError"], phrase="nobody")

    attr = cli.run("kms", "key", "create", *conn, "-a", "State=1")
    assert_one_line_error(attr, code=EXIT_CODES["UsageError"], phrase="custom attributes")
