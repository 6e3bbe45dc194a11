"""``vmcrypt trust …``: run the Trust Authority and administer it.

``serve`` runs the Attestation Service and the Key Provider Service in one process over
mutual TLS. The other commands are clients of its API with an administrator's
certificate (``--url``, ``--pki DIR`` holding ``ca.pem`` and ``NAME.pem``/``NAME.key``,
``--identity NAME``). ``identity`` and ``measure`` run on a host. See ``docs/trust.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from vmcrypt.cli.output import out, print_json, print_record
from vmcrypt.cli.serving import configure_server_logging
from vmcrypt.exceptions import UsageError

__all__ = ["app"]

app = typer.Typer(
    help="The Trust Authority: host attestation and trusted key providers (mutual TLS).",
    no_args_is_help=True,
)
baseline_app = typer.Typer(help="Approved baselines of host measurements.",
                           no_args_is_help=True)
host_app = typer.Typer(help="Hosts allowed to attest (name, hardware UUID, identity key).",
                       no_args_is_help=True)
provider_app = typer.Typer(help="Trusted key providers (primary key in a KMIP server).",
                           no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")
app.add_typer(host_app, name="host")
app.add_typer(provider_app, name="provider")

UrlOpt = Annotated[str, typer.Option("--url", envvar="VMCRYPT_TRUST_URL",
                                     help="The Trust Authority's URL.")]
PkiOpt = Annotated[Path, typer.Option("--pki", envvar="VMCRYPT_TRUST_PKI",
                                      help="Folder with ca.pem and IDENTITY.pem/.key.")]
IdentityOpt = Annotated[str, typer.Option("--identity", help="Client certificate name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]

_DEFAULT_URL = "https://127.0.0.1:8443"
_DEFAULT_PKI = Path("vmcrypt-trust/pki")


def _client(url: str, pki: Path, identity: str) -> Any:
    from vmcrypt.pki.layout import cert_files
    from vmcrypt.trust.client import TrustClient

    files = cert_files(pki, identity)
    return TrustClient(url, ca_file=pki / "ca.pem", cert_file=files.cert, key_file=files.key)


def _call(url: str, pki: Path, identity: str, method: str, path: str, **kwargs: Any) -> Any:
    with _client(url, pki, identity) as client:
        return client.request(method, path, **kwargs)


@app.command()
def serve(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Folder for pki/, trust.json, "
                           "token-signing.key and events.jsonl; created on first start."),
    ] = Path("vmcrypt-trust"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="TCP port; 0 picks a free one.")] = 8443,
    cert: Annotated[Path | None, typer.Option("--cert", help="Server certificate.")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Server private key.")] = None,
    ca: Annotated[Path | None, typer.Option(
        "--ca", help="CA that signs host and administrator certificates.")] = None,
    admin: Annotated[list[str] | None, typer.Option(
        "--admin", help="Certificate CN of an administrator (repeatable; default admin).")
    ] = None,
    token_ttl: Annotated[float, typer.Option("--token-ttl", min=1, max=86400,
                                             help="Attestation token lifetime, seconds.")
                         ] = 600.0,
    nonce_ttl: Annotated[float, typer.Option("--nonce-ttl", min=1, max=3600,
                                             help="Nonce lifetime, seconds.")] = 60.0,
    kms_timeout: Annotated[float, typer.Option("--kms-timeout", min=0.1, max=300,
                                               help="KMIP timeout, seconds.")] = 5.0,
    server_name: Annotated[list[str] | None, typer.Option(
        "--server-name", help="DNS name in a generated server certificate (repeatable).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level",
                                           help="debug, info, warning or error.")] = "info",
    json_output: JsonOpt = False,
) -> None:
    """Run the Trust Authority until interrupted (Ctrl-C or SIGTERM)."""
    from vmcrypt.trust.server import TrustSettings
    from vmcrypt.trust.server import serve as run

    configure_server_logging(log_level)
    settings = TrustSettings(
        data_dir=data_dir, host=host, port=port, cert=cert, key=key, ca=ca,
        admins=tuple(admin or ("admin",)), token_ttl=token_ttl, nonce_ttl=nonce_ttl,
        kms_timeout=kms_timeout, server_names=tuple(server_name or ("localhost",)))

    def listening(bound_host: str, bound_port: int) -> None:
        url = f"https://{bound_host}:{bound_port}"
        if json_output:
            sys.stdout.write(json.dumps({
                "event": "listening", "host": bound_host, "port": bound_port, "url": url,
                "api": f"{url}/api/v1", "ca": str(settings.ca_file),
                "admins": list(settings.admins)}) + "\n")
        else:
            sys.stdout.write(f"vmcrypt trust: listening on {url} (API {url}/api/v1, "
                             f"CA {settings.ca_file})\n")
        sys.stdout.flush()

    run(settings, log_level=log_level, on_listening=listening)


@app.command()
def identity(
    key_file: Annotated[Path, typer.Argument(help="The host's identity key (created 0600).")],
    json_output: JsonOpt = False,
) -> None:
    """On a host: create (or load) its identity key and print the public key to register."""
    from vmcrypt.trust.measure import load_or_create_identity, public_key_pem

    pem = public_key_pem(load_or_create_identity(key_file))
    if json_output:
        print_json({"key_file": str(key_file), "public_key_pem": pem})
    else:
        sys.stdout.write(pem)


@app.command()
def measure(
    config: Annotated[Path | None, typer.Option("--config", help="The host's config file.")
                      ] = None,
    package: Annotated[Path | None, typer.Option(
        "--package", help="Measure this folder instead of the installed vmcrypt.")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Print this install's measurements (what ``baseline add --from-install`` records)."""
    measurements = _measurements(config, package)
    if json_output:
        print_json(measurements)
    else:
        print_record("measurements", measurements)


def _measurements(config: Path | None, package: Path | None) -> dict[str, str]:
    from vmcrypt.trust.measure import measure_host

    data = config.read_bytes() if config is not None else b""
    return measure_host(config=data, package=package)


@baseline_app.command("add")
def baseline_add(
    name: Annotated[str, typer.Argument(help="Baseline name.")],
    from_install: Annotated[bool, typer.Option(
        "--from-install", help="Measure the vmcrypt installed here (and --config).")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", help="With --from-install: the host config file to measure.")] = None,
    package: Annotated[Path | None, typer.Option(
        "--package", help="With --from-install: measure this folder instead.")] = None,
    vmcrypt_hash: Annotated[str | None, typer.Option(
        "--vmcrypt", help="The 'vmcrypt' measurement (64 hex digits).")] = None,
    config_hash: Annotated[str | None, typer.Option(
        "--config-hash", help="The 'config' measurement (64 hex digits).")] = None,
    url: UrlOpt = _DEFAULT_URL, pki: PkiOpt = _DEFAULT_PKI,
    identity_name: IdentityOpt = "admin", json_output: JsonOpt = False,
) -> None:
    """Approve a baseline: hosts whose measurements all match it are trusted."""
    if from_install == (vmcrypt_hash is not None or config_hash is not None):
        raise UsageError("give --from-install, or both --vmcrypt and --config-hash")
    if from_install:
        measurements = _measurements(config, package)
    elif vmcrypt_hash is None or config_hash is None:
        raise UsageError("give both --vmcrypt and --config-hash")
    else:
        measurements = {"vmcrypt": vmcrypt_hash, "config": config_hash}
    answer = _call(url, pki, identity_name, "POST", "/baselines",
                   json={"name": name, "measurements": measurements})
    _show(answer, json_output, f"baseline {name}")


@baseline_app.command("ls")
def baseline_ls(url: UrlOpt = _DEFAULT_URL, pki: PkiOpt = _DEFAULT_PKI,
                identity_name: IdentityOpt = "admin", json_output: JsonOpt = False) -> None:
    """List approved baselines."""
    answer = _call(url, pki, identity_name, "GET", "/baselines")
    _table(answer, json_output, lambda b: f"{b['name']}  vmcrypt={b['measurements']['vmcrypt']}"
           f"  config={b['measurements']['config']}")


@baseline_app.command("rm")
def baseline_rm(name: Annotated[str, typer.Argument(help="Baseline name.")],
                url: UrlOpt = _DEFAULT_URL, pki: PkiOpt = _DEFAULT_PKI,
                identity_name: IdentityOpt = "admin", json_output: JsonOpt = False) -> None:
    """Withdraw a baseline: hosts matching only it fail their next attestation."""
    _call(url, pki, identity_name, "DELETE", f"/baselines/{name}")
    _show({"removed": name}, json_output, "baseline")


@host_app.command("add")
def host_add(
    name: Annotated[str, typer.Argument(help="Host name (= its client certificate CN).")],
    hardware_uuid: Annotated[str, typer.Option("--hardware-uuid", help="Hardware UUID.")],
    public_key: Annotated[Path, typer.Option(
        "--public-key", help="PEM public key (from `vmcrypt trust identity` on the host).")],
    url: UrlOpt = _DEFAULT_URL, pki: PkiOpt = _DEFAULT_PKI,
    identity_name: IdentityOpt = "admin", json_output: JsonOpt = False,
) -> None:
    """Register a host identity with the Attestation Service."""
    pem = public_key.read_text(encoding="ascii")
    answer = _call(url, pki, identity_name, "POST", "/hosts",
                   json={"name": name, "hardware_uuid": hardware_uuid, "public_key_pem": pem})
    answer.pop("public_key_pem", None)
    _show(answer, json_output, f"host {name}")


@host_app.command("ls")
def host_ls(url: UrlOpt = _DEFAULT_URL, pki: PkiOpt = _DEFAULT_PKI,
            identity_name: IdentityOpt = "admin", json_output: JsonOpt = False) -> None:
    """List registered hosts and their latest attestation result."""
    answer = _call(url, pki, identity_name, "GET", "/hosts")

    def line(h: dict[str, Any]) -> str:
        last = h.get("last_attestation") or {}
        status = {"attestation.passed": "attested", "attestation.failed": "failed"}.get(
            last.get("type", ""), "unset")
        reason = f" ({last['reason']})" if last.get("reason") else ""
        return f"{h['name']}  {h['hardware_uuid']}  {status}{reason}"
    _table(answer, json_output, line)


@provider_app.command("add")
def provider_add(
    name: Annotated[str, typer.Argument(help="Provider name.")],
    kms: Annotated[list[str], typer.Option(
        "--kms", help="HOST:PORT of a KMIP server (repeatable, failover in order).")],
    kms_ca: Annotated[Path, typer.Option("--kms-ca", help="The KMS's CA (path on the "
                                         "Trust Authority's machine).")],
    kms_cert: Annotated[Path, typer.Option("--kms-cert", help="Client certificate for the "
                                           "KMS (path on the Trust Authority's machine).")],
    kms_key: Annotated[Path, typer.Option("--kms-key", help="Its private key (ditto).")],
    kms_server_name: Annotated[str | None, typer.Option(
        "--kms-server-name", help="Name the KMS certificate carries, if not HOST.")] = None,
    url: UrlOpt = _DEFAULT_URL, pki: PkiOpt = _DEFAULT_PKI,
    identity_name: IdentityOpt = "admin", json_output: JsonOpt = False,
) -> None:
    """Create a trusted key provider: its primary key is created (and stays) in the KMS."""
    servers = []
    for address in kms:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise UsageError(f"--kms {address!r}: give HOST:PORT")
        servers.append({"host": host.strip("[]"), "port": int(port),
                        "ca_file": str(kms_ca.resolve()), "cert_file": str(kms_cert.resolve()),
                        "key_file": str(kms_key.resolve()), "server_hostname": kms_server_name})
    answer = _call(url, pki, identity_name, "POST", "/key-providers",
                   json={"name": name, "servers": servers})
    _show(answer, json_output, f"key provider {name}")


@provider_app.command("ls")
def provider_ls(url: UrlOpt = _DEFAULT_URL, pki: PkiOpt = _DEFAULT_PKI,
                identity_name: IdentityOpt = "admin", json_output: JsonOpt = False) -> None:
    """List the trusted key providers this Trust Authority publishes."""
    answer = _call(url, pki, identity_name, "GET", "/key-providers")
    _table(answer, json_output,
           lambda p: f"{p['name']}  key {p['key_id']}  {', '.join(p['servers'])}")


@app.command()
def events(
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
    kind: Annotated[str | None, typer.Option("--type", help="Type prefix, e.g. attestation.")
                    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Only this host's events.")
                    ] = None,
    url: UrlOpt = _DEFAULT_URL, pki: PkiOpt = _DEFAULT_PKI,
    identity_name: IdentityOpt = "admin", json_output: JsonOpt = False,
) -> None:
    """The Trust Authority's latest events (attestation passed/failed, provider down)."""
    params: dict[str, Any] = {"limit": limit}
    if kind:
        params["type"] = kind
    if host:
        params["host"] = host
    answer = _call(url, pki, identity_name, "GET", "/events", params=params)

    def line(e: dict[str, Any]) -> str:
        when = _when(e["time"])
        rest = "  ".join(f"{k}={v}" for k, v in sorted(e.items()) if k not in ("time", "type"))
        return f"{when}  {e['type']}  {rest}"
    _table(answer, json_output, line)


def _when(value: Any) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _show(answer: Any, json_output: bool, title: str) -> None:
    if json_output:
        print_json(answer)
        return
    rows: dict[str, Any] = {}
    for key, value in answer.items():
        if isinstance(value, dict):
            rows.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, list):
            rows[key] = ", ".join(map(str, value))
        else:
            rows[key] = _when(value) if key.endswith("_at") and value is not None else value
    print_record(title, rows)


def _table(rows: list[dict[str, Any]], json_output: bool, line: Any) -> None:
    if json_output:
        print_json(rows)
        return
    if not rows:
        out.print("(none)")
    for row in rows:
        out.print(line(row), highlight=False, markup=False)
