"""``vmcrypt pki`` through the real entry point: init, issue, show, and their errors."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import Cli, Run, assert_one_line_error, parallel
from vmcrypt.exceptions import EXIT_CODES

PKI = EXIT_CODES["PkiError"]


def ok(cli: Cli, *args: str | Path) -> Run:
    run = cli.run("pki", *args)
    assert run.returncode == 0, f"vmcrypt pki {' '.join(run.args)} failed:\n{run.err}"
    assert "Traceback" not in run.err
    return run


def no_key_bytes(run: Run) -> None:
    assert b"PRIVATE KEY" not in run.stdout + run.stderr


def test_init_issue_show_json(cli: Cli) -> None:
    d = cli.cwd / "pki"
    init = ok(cli, "init", d, "--key-type", "ec", "--server-name", "kms.example",
              "--server-name", "localhost", "--server-ip", "127.0.0.1", "--server-ip", "::1",
              "--client", "vcenter", "--client", "admin", "--json").json
    assert init["ca"] == {"cert": str(d / "ca.pem"), "key": str(d / "ca.key")}
    assert init["server"]["key"] == str(d / "server.key")
    assert sorted(init["clients"]) == ["admin", "vcenter"]
    for name in ("ca", "server", "vcenter", "admin"):
        assert (d / f"{name}.key").stat().st_mode & 0o777 == 0o600
        assert (d / f"{name}.pem").stat().st_mode & 0o777 == 0o644

    issued, server = parallel(
        lambda: ok(cli, "issue", d, "host-1", "--server", "--client", "--dns", "esx1.example",
                   "--ip", "10.0.0.1", "--json"),
        lambda: ok(cli, "show", d / "server.pem", "--json"),
    )
    cert = issued.json["certificate"]
    assert issued.json["key"] == str(d / "host-1.key")
    assert cert["subject"] == "CN=host-1"
    assert cert["dns_names"] == ["esx1.example"]
    assert cert["ip_addresses"] == ["10.0.0.1"]
    assert cert["extended_key_usage"] == ["serverAuth", "clientAuth"]
    assert cert["public_key"] == "EC secp256r1"

    shown = server.json
    assert shown["file"] == str(d / "server.pem")
    assert shown["subject"] == "CN=kms.example"
    assert shown["issuer"].startswith("CN=vmcrypt CA ")
    assert shown["dns_names"] == ["kms.example", "localhost"]
    assert shown["ip_addresses"] == ["127.0.0.1", "::1"]
    assert shown["extended_key_usage"] == ["serverAuth", "clientAuth"]
    assert shown["expired"] is False
    assert shown["not_after"] <= init["ca_not_after"]
    for run in cli.runs:
        no_key_bytes(run)


def test_defaults_human_output(cli: Cli) -> None:
    d = cli.cwd / "pki"
    init = ok(cli, "init", d)  # RSA 2048, localhost, 127.0.0.1, admin
    assert "client admin" in init.stdout.decode()
    assert "keep" in init.err and "secret" in init.err
    client, show = parallel(lambda: ok(cli, "issue", d, "bob"),
                            lambda: ok(cli, "show", d / "server.pem"))
    assert "clientAuth" in client.stdout.decode()
    assert "serverAuth" not in client.stdout.decode()
    text = show.stdout.decode()
    for phrase in ("CN=localhost", "127.0.0.1", "serverAuth, clientAuth", "RSA 2048"):
        assert phrase in text
    bob = ok(cli, "show", d / "bob.pem", "--json").json
    assert bob["extended_key_usage"] == ["clientAuth"]
    assert bob["public_key"] == "RSA 2048"  # the CA's key type


def test_errors(cli: Cli) -> None:
    d = cli.cwd / "pki"
    ok(cli, "init", d, "--key-type", "ec")
    runs = parallel(
        lambda: cli.run("pki", "issue", cli.cwd / "empty", "bob"),
        lambda: cli.run("pki", "init", d, "--key-type", "ec"),
        lambda: cli.run("pki", "show", d / "ca.key"),
        lambda: cli.run("pki", "show", d / "nope.pem"),
        lambda: cli.run("pki", "issue", d, "admin"),
        lambda: cli.run("pki", "issue", d, "x/y"),
        lambda: cli.run("pki", "issue", d, "ip", "--ip", "not-an-ip"),
    )
    missing_ca, again, key, nope, exists, bad_name, bad_ip = runs
    assert_one_line_error(missing_ca, code=PKI, phrase="vmcrypt pki init")
    assert "empty/ca.pem" in missing_ca.err
    assert_one_line_error(again, code=PKI, phrase="--force")
    assert_one_line_error(key, code=PKI, phrase="is not a PEM certificate")
    assert_one_line_error(nope, code=PKI, phrase="no such certificate file")
    assert_one_line_error(exists, code=PKI, phrase="refusing to overwrite")
    assert_one_line_error(bad_name, code=2, phrase="cannot name a certificate")
    assert_one_line_error(bad_ip, code=2, phrase="not an IP address")
    assert not (cli.cwd / "empty").exists()
    for run in runs:
        no_key_bytes(run)


def test_force_replaces_the_ca(cli: Cli) -> None:
    d = cli.cwd / "pki"
    first = ok(cli, "init", d, "--key-type", "ec", "--client", "a", "--json").json
    before = (d / "ca.pem").read_bytes()
    second = ok(cli, "init", d, "--key-type", "ec", "--client", "a", "--force", "--json").json
    assert (d / "ca.pem").read_bytes() != before
    assert first["ca"] == second["ca"]


def test_help_teaches(cli: Cli) -> None:
    text = ok(cli, "--help").stdout.decode()
    for command in ("init", "issue", "show"):
        assert command in text
    init_help = ok(cli, "init", "--help").stdout.decode()
    for phrase in ("--server-name", "--server-ip", "--client", "--key-type", "vCenter", "--json"):
        assert phrase in init_help
