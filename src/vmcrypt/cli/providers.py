"""``vmcrypt kp …`` and ``vmcrypt policy …``: key providers and encryption policies.

Key providers are where KEKs come from: a *standard* one is a list of KMIP servers
(``kp add-kmip``), a *native* one keeps a primary key the control plane generated
(``kp add-native``), a *trusted* one is published by a Trust Authority whose attested
hosts get their KEKs from it directly (``kp published``, ``kp add-trusted``). A native
provider cannot be used until it is backed up (``kp backup``) or the risk is accepted
(``kp ack-no-backup``), as in vSphere. The backup is the only way its key ever leaves
the control plane: a ``.p12`` protected by a password this CLI reads from a prompt or a
file, never from a flag (flags end up in shell history and the process list).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import typer

from vmcrypt.cli.api_client import (
    DEFAULT_URL,
    CaOpt,
    JsonOpt,
    TokenFileOpt,
    TokenOpt,
    UrlOpt,
    connect,
    post_named_action,
    resolve_id,
)
from vmcrypt.cli.inventory import emit, print_rows
from vmcrypt.cli.keyfiles import write_secret_file
from vmcrypt.cli.output import out, print_json, print_record
from vmcrypt.exceptions import UsageError

__all__ = ["kp_app", "policy_app"]

kp_app = typer.Typer(
    help="Key providers: standard (KMIP servers) and native (a primary key kept by the "
    "control plane), the default one, native backups.",
    no_args_is_help=True,
)
policy_app = typer.Typer(help="Storage policies: how VMs ask for encryption.",
                         no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="The key provider's name (or numeric ID).")]
PasswordFileOpt = Annotated[
    Path | None,
    typer.Option("--password-file", help="Read the backup password from this file "
                 "(default: prompt)."),
]
DefaultOpt = Annotated[
    bool, typer.Option("--default", help="Make it the default key provider.")
]
_COLUMNS = ["id", "name", "kind", "is_default", "backed_up", "backup_acknowledged", "servers"]


def _summary(provider: dict[str, Any]) -> dict[str, Any]:
    """A provider for the table: its KMS servers as HOST:PORT, certificates left out."""
    row = {k: v for k, v in provider.items() if k != "kms_servers"}
    row["servers"] = [f"{s['address']}:{s['port']}" for s in provider.get("kms_servers", [])]
    return row


def _read_pem(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path}: not a PEM file") from None


def _server(text: str, index: int, *, ca_pem: str, cert_pem: str | None,
            key_path: str | None) -> dict[str, Any]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--server {text!r} must be HOST:PORT, e.g. kms1.example:5696")
    return {"name": f"kms{index}", "address": host.strip("[]"), "port": int(port),
            "ca_pem": ca_pem, "client_cert_pem": cert_pem, "client_key_path": key_path}


def _password(password_file: Path | None, *, confirm: bool) -> str:
    if password_file is not None:
        try:
            return password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"--password-file {password_file}: {exc.strerror or exc}") from None
    text: str = typer.prompt("Backup password", hide_input=True,
                             confirmation_prompt=confirm, err=True)
    return text


@kp_app.command("add-kmip")
def add_kmip(
    name: Annotated[str, typer.Argument(help="The new provider's name (unique).")],
    server: Annotated[
        list[str], typer.Option("--server", help="A KMS as HOST:PORT; repeat for failover, "
                                "tried in the order given.")
    ],
    kms_ca: Annotated[Path, typer.Option("--kms-ca", help="CA certificate (PEM) of the KMS "
                                         "servers (--ca is the control plane's).")],
    client_cert: Annotated[
        Path | None, typer.Option("--client-cert", help="The control plane's client "
                                  "certificate (PEM) for the KMS.")
    ] = None,
    client_key: Annotated[
        str | None, typer.Option("--client-key", help="Path of its private key on the "
                                 "control plane's machine (stored as a path only).")
    ] = None,
    default: DefaultOpt = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Add a standard key provider: one or more KMIP servers.

    Only public material is sent: certificates, and the client key's path.

    Example: vmcrypt kp add-kmip corp --server kms1:5696 --server kms2:5696 --kms-ca kms-ca.pem --client-cert vc.pem --client-key /etc/vmcrypt/vc.key
    """  # noqa: E501
    ca_pem = _read_pem(kms_ca, "--kms-ca")
    cert_pem = _read_pem(client_cert, "--client-cert") if client_cert else None
    servers = [_server(s, i, ca_pem=ca_pem, cert_pem=cert_pem, key_path=client_key)
               for i, s in enumerate(server, start=1)]
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        created = api.post("/key-providers/standard",
                           {"name": name, "kms_servers": servers, "is_default": default})
    emit(as_json, created if as_json else _summary(created), title=f"key provider {name}")


@kp_app.command("add-server")
def add_server(
    name: Annotated[str, typer.Argument(help="The standard provider to add a KMS to.")],
    server: Annotated[str, typer.Option("--server", help="The KMS as HOST:PORT; it is "
                                        "tried after the provider's other servers.")],
    kms_ca: Annotated[Path, typer.Option("--kms-ca", help="CA certificate (PEM) of the "
                                         "KMS.")],
    server_name: Annotated[
        str | None, typer.Option("--name", help="A name for this KMS (default kmsN).")
    ] = None,
    client_cert: Annotated[
        Path | None, typer.Option("--client-cert", help="The control plane's client "
                                  "certificate (PEM) for the KMS.")
    ] = None,
    client_key: Annotated[
        str | None, typer.Option("--client-key", help="Path of its private key on the "
                                 "control plane's machine (stored as a path only).")
    ] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Add one KMS server to a standard provider's failover list (tried last).

    Example: vmcrypt kp add-server corp --server kms3:5696 --kms-ca kms-ca.pem --client-cert vc.pem --client-key /etc/vmcrypt/vc.key
    """  # noqa: E501
    ca_pem = _read_pem(kms_ca, "--kms-ca")
    cert_pem = _read_pem(client_cert, "--client-cert") if client_cert else None
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        provider_id = resolve_id(api, "/key-providers", name, what="key provider")
        provider = api.get(f"/key-providers/{provider_id}")
        body = _server(server, len(provider["kms_servers"]) + 1, ca_pem=ca_pem,
                       cert_pem=cert_pem, key_path=client_key)
        if server_name:
            body["name"] = server_name
        added = api.post(f"/key-providers/{provider['id']}/kms-servers", body)
    emit(as_json, added, title=f"KMS server of {name}")


@kp_app.command("rm-server")
def rm_server(
    name: Annotated[str, typer.Argument(help="The standard provider.")],
    server_name: Annotated[str, typer.Argument(help="The KMS server's name (kp info).")],
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None,
) -> None:
    """Remove one KMS server from a standard provider; the last one stays.

    Example: vmcrypt kp rm-server corp kms2
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        provider_id = resolve_id(api, "/key-providers", name, what="key provider")
        provider = api.get(f"/key-providers/{provider_id}")
        match = [s for s in provider["kms_servers"] if s["name"] == server_name]
        if not match:
            names = ", ".join(s["name"] for s in provider["kms_servers"])
            raise UsageError(f"key provider {name!r} has no KMS server {server_name!r} "
                             f"(it has: {names})")
        api.delete(f"/key-providers/{provider['id']}/kms-servers/{match[0]['id']}")
    out.print(f"removed KMS server {server_name} from {name}", highlight=False, markup=False)


@kp_app.command("add-native")
def add_native(
    name: Annotated[str, typer.Argument(help="The new provider's name (unique).")],
    default: DefaultOpt = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Add a native key provider; back it up next (`vmcrypt kp backup NAME`).

    Example: vmcrypt kp add-native nkp --default
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        created = api.post("/key-providers/native", {"name": name, "is_default": default})
    emit(as_json, created if as_json else _summary(created), title=f"key provider {name}")
    if not as_json:
        out.print(f"next: back it up with `vmcrypt kp backup {name} --out {name}.p12`",
                  highlight=False, markup=False)


@kp_app.command("add-trusted")
def add_trusted(
    name: Annotated[str, typer.Argument(help="The provider's name, as the Trust Authority "
                                        "publishes it.")],
    trust_url: Annotated[str, typer.Option("--trust-url", help="The Trust Authority, "
                                           "https://HOST:PORT.")],
    trust_ca: Annotated[str, typer.Option("--trust-ca", help="Path of its CA certificate "
                                          "on the control plane's machine.")],
    client_cert: Annotated[str, typer.Option("--client-cert", help="Path of the control "
                                             "plane's client certificate (from that CA).")],
    client_key: Annotated[str, typer.Option("--client-key", help="Path of its private "
                                            "key (stored as a path only).")],
    default: DefaultOpt = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Register without asking "
                                            "the Trust Authority (offline).")] = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Register a trusted key provider a Trust Authority publishes.

    Hosts of a cluster whose default it is attest to the Trust Authority and get their
    KEKs from it: the control plane never holds or pushes them. The files are on the
    control plane's machine (it reads them when it asks the Trust Authority).

    Example: vmcrypt kp add-trusted tp1 --trust-url https://ta:8443 --trust-ca /etc/vmcrypt/ta-ca.pem --client-cert /etc/vmcrypt/ta-vc.pem --client-key /etc/vmcrypt/ta-vc.key
    """  # noqa: E501
    body = {"name": name, "url": trust_url, "ca_file": trust_ca, "cert_file": client_cert,
            "key_file": client_key, "is_default": default, "verify": not no_verify}
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        created = api.post("/key-providers/trusted", body)
    emit(as_json, created if as_json else _summary(created), title=f"key provider {name}")


@kp_app.command("published")
def published(
    via: Annotated[str | None, typer.Option("--via", help="Ask the Trust Authority of this "
                                            "registered trusted provider.")] = None,
    trust_url: Annotated[str | None, typer.Option("--trust-url")] = None,
    trust_ca: Annotated[str | None, typer.Option("--trust-ca")] = None,
    client_cert: Annotated[str | None, typer.Option("--client-cert")] = None,
    client_key: Annotated[str | None, typer.Option("--client-key")] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """List the trusted key providers a Trust Authority publishes (registered or not).

    Without options, every Trust Authority of the registered trusted providers is asked.

    Example: vmcrypt kp published --trust-url https://ta:8443 --trust-ca /etc/vmcrypt/ta-ca.pem --client-cert /etc/vmcrypt/ta-vc.pem --client-key /etc/vmcrypt/ta-vc.key
    """  # noqa: E501
    params: dict[str, Any] = {}
    given = {"url": trust_url, "ca_file": trust_ca, "cert_file": client_cert,
             "key_file": client_key}
    params.update({k: v for k, v in given.items() if v is not None})
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        if via is not None:
            params["via"] = resolve_id(api, "/key-providers", via, what="key provider")
        rows = api.get("/key-providers/trusted/published", params=params)
    emit(as_json, rows, title="published trusted key providers",
         columns=["name", "key_id", "servers", "registered"])


@kp_app.command("ls")
def ls(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
       ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """List key providers; the default one is marked.

    Example: vmcrypt kp ls --json | jq '.[] | select(.is_default) | .name'
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        rows = api.get("/key-providers")
    emit(as_json, rows if as_json else [_summary(r) for r in rows], title="key providers",
         columns=_COLUMNS)


@kp_app.command("info")
def info(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
         token_file: TokenFileOpt = None, ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """Show one key provider and its KMS servers (with --json, their certificates too).

    Example: vmcrypt kp info corp
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        provider_id = resolve_id(api, "/key-providers", name, what="key provider")
        record = api.get(f"/key-providers/{provider_id}")
    emit(as_json, record if as_json else _summary(record), title=f"key provider {name}")


@kp_app.command("health")
def health(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
           token_file: TokenFileOpt = None, ca: CaOpt = None,
           as_json: JsonOpt = False) -> None:
    """Show a provider's health as last probed: state, and each KMS server's
    reachability, latency, certificate expiry and error.

    The control plane probes every provider in the background (``--provider-check-
    interval``); this reads the last result, so it answers at once even when a key
    server hangs. ``unknown`` means no probe has finished yet.

    Example: vmcrypt kp health corp --json | jq '.servers[] | select(.reachable | not)'
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        provider_id = resolve_id(api, "/key-providers", name, what="key provider")
        record = api.get(f"/key-providers/{provider_id}/health")
    if as_json:
        print_json(record)
        return
    print_record(f"key provider {name}", {
        "state": record["state"], "kind": record["kind"],
        "checked at": record["checked_at"] or "not yet",
        "warnings": "; ".join(record["warnings"]) or None})
    if record["servers"]:
        print_rows("key servers", [{
            "address": s["address"], "reachable": s["reachable"], "tls": s["tls_ok"],
            "latency ms": s["latency_ms"], "certificate expires": s["certificate_expires_at"],
            "error": s["error"]} for s in record["servers"]],
            ["address", "reachable", "tls", "latency ms", "certificate expires", "error"])


def _action(name: str, action: str, *, url: str, token: str | None, token_file: Path | None,
            ca: Path | None, as_json: bool, done: str) -> None:
    post_named_action("/key-providers", "key provider", name, action, url=url, token=token,
                      token_file=token_file, ca=ca, as_json=as_json, done=done)


@kp_app.command("default")
def default_(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
             token_file: TokenFileOpt = None, ca: CaOpt = None,
             as_json: JsonOpt = False) -> None:
    """Make a provider the default: encryption policies that name none use it.

    Example: vmcrypt kp default corp
    """
    _action(name, "default", url=url, token=token, token_file=token_file, ca=ca,
            as_json=as_json, done=f"{name} is now the default key provider")


@kp_app.command("ack-no-backup")
def ack_no_backup(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                  token_file: TokenFileOpt = None, ca: CaOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Accept the risk of a native provider without a backup, so it can be used.

    If the control plane's database is lost, VMs encrypted by it cannot be opened.

    Example: vmcrypt kp ack-no-backup nkp
    """
    _action(name, "acknowledge-no-backup", url=url, token=token, token_file=token_file,
            ca=ca, as_json=as_json,
            done=f"{name}: running without a backup acknowledged; back it up when you can")


@kp_app.command("rm")
def rm(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
       token_file: TokenFileOpt = None, ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a key provider no storage policy or encrypted VM uses.

    Example: vmcrypt kp rm old-kms
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        provider_id = resolve_id(api, "/key-providers", name, what="key provider")
        api.delete(f"/key-providers/{provider_id}")
    if as_json:
        print_json({"id": provider_id, "name": name, "removed": True})
    else:
        out.print(f"removed key provider {name}", highlight=False, markup=False)


@kp_app.command("backup")
def backup(
    name: NameArg,
    output: Annotated[Path, typer.Option("--out", "-o", help="The .p12 file to create "
                                         "(mode 0600, never overwritten).")],
    password_file: PasswordFileOpt = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Back up a native provider's primary key to a password-protected .p12 file.

    The password (at least 12 characters) is asked twice, or read from
    --password-file. Keep the file and the password apart; the provider is marked
    backed up.

    Example: vmcrypt kp backup nkp --out nkp.p12
    """
    if output.exists():
        raise UsageError(f"{output} already exists; refusing to overwrite a backup")
    password = _password(password_file, confirm=True)
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        provider_id = resolve_id(api, "/key-providers", name, what="key provider")
        data = api.request("POST", f"/key-providers/{provider_id}/backup",
                           json={"password": password}).content
    write_secret_file(output, data)
    if as_json:
        print_json({"id": provider_id, "name": name, "file": str(output), "bytes": len(data)})
    else:
        out.print(f"wrote the backup of {name} to {output}", highlight=False, markup=False)


@kp_app.command("restore")
def restore(
    file: Annotated[Path, typer.Argument(help="A .p12 made by `vmcrypt kp backup`.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only check the file and show what it holds.")
    ] = False,
    password_file: PasswordFileOpt = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Re-create a native provider from its backup (its name must be free).

    Run with --dry-run first to confirm the file: it reports the provider name,
    fingerprint and creation time, and changes nothing.

    Example: vmcrypt kp restore nkp.p12 --dry-run --password-file pw.txt
    """
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"{file}: {exc.strerror or exc}") from None
    password = _password(password_file, confirm=False)
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        record = api.post("/key-providers/restore", {
            "backup": base64.b64encode(data).decode("ascii"), "password": password,
            "dry_run": dry_run,
        })
    if as_json:
        print_json(record)
    elif dry_run:
        print_record(f"backup {file} (dry run: nothing changed)", record)
    else:
        print_record(f"restored key provider {record['name']}", _summary(record))


# -- storage policies -------------------------------------------------------------------


@policy_app.command("create")
def policy_create(
    name: Annotated[str, typer.Argument(help="The new policy's name (unique).")],
    encryption: Annotated[
        bool, typer.Option("--encryption/--no-encryption", help="Encrypt VMs and disks.")
    ] = True,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Key provider (default: the default one).")
    ] = None,
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a storage policy; VMs created or encrypted with it get their keys here.

    Example: vmcrypt policy create "VM Encryption" --provider corp
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        body: dict[str, Any] = {"name": name, "encryption": encryption,
                                "description": description}
        if provider is not None:
            body["key_provider_id"] = resolve_id(api, "/key-providers", provider,
                                                 what="key provider")
        created = api.post("/storage-policies", body)
    emit(as_json, created, title=f"storage policy {name}")


@policy_app.command("ls")
def policy_ls(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
              token_file: TokenFileOpt = None, ca: CaOpt = None,
              as_json: JsonOpt = False) -> None:
    """List storage policies.

    Example: vmcrypt policy ls
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        rows = api.get("/storage-policies")
    emit(as_json, rows, title="storage policies",
         columns=["id", "name", "encryption", "key_provider_id", "description"])
