"""``vmcrypt pki``: the certificates of vmcrypt's mutual TLS, from a small local CA.

``init`` writes a CA, a server certificate and client certificates into one directory
(see docs/pki.md); ``issue`` adds certificates from that CA; ``show`` prints what a peer
will check in a certificate. Private keys are written 0600 and never printed.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from vmcrypt.cli.output import err, print_json, print_record
from vmcrypt.pki.ca import describe_certificate, load_certificate
from vmcrypt.pki.layout import init_pki, issue_client

app = typer.Typer(
    help=(
        "Certificates for mutual TLS between the KMS (port 5696), its KMIP clients and "
        "the control plane: one CA per directory, a server certificate, and one client "
        "certificate per identity (its CN is the name a KMIP server sees)."
    ),
    no_args_is_help=True,
)


class KeyTypeChoice(StrEnum):
    """Typer shows the members as the allowed values."""

    rsa = "rsa"
    ec = "ec"


DirArg = Annotated[Path, typer.Argument(help="The PKI directory (holds ca.pem and ca.key).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace existing files (old certificates stop working).")
]
DaysOpt = Annotated[
    int, typer.Option("--days", min=1, help="Validity of each issued certificate, in days.")
]


def _files(cert: Path, key: Path) -> dict[str, str]:
    return {"cert": str(cert), "key": str(key)}


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Directory to create the PKI in (0700).")],
    server_name: Annotated[
        list[str] | None,
        typer.Option("--server-name", help="DNS name clients use to reach the server "
                     "(repeatable; default localhost). The first is also the CN."),
    ] = None,
    server_ip: Annotated[
        list[str] | None,
        typer.Option("--server-ip", help="IP address clients use to reach the server "
                     "(repeatable; default 127.0.0.1)."),
    ] = None,
    client: Annotated[
        list[str] | None,
        typer.Option("--client", help="Client identity to issue NAME.pem/NAME.key for "
                     "(repeatable; default admin)."),
    ] = None,
    key_type: Annotated[
        KeyTypeChoice,
        typer.Option("--key-type", help="rsa: RSA 2048, what vCenter accepts; "
                     "ec: P-256, faster."),
    ] = KeyTypeChoice.rsa,
    days: DaysOpt = 825,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a CA, a server certificate and client certificates in DIRECTORY."""
    layout = init_pki(
        directory,
        server_names=["localhost"] if server_name is None else server_name,
        server_ips=["127.0.0.1"] if server_ip is None else server_ip,
        clients=["admin"] if client is None else client,
        key_type=key_type.value,
        force=force,
        days=days,
    )
    data: dict[str, Any] = {
        "directory": str(layout.directory),
        "ca": _files(layout.ca.cert, layout.ca.key),
        "server": _files(layout.server.cert, layout.server.key),
        "clients": {name: _files(f.cert, f.key) for name, f in layout.clients.items()},
        "ca_not_after": load_certificate(layout.ca.cert).not_valid_after_utc.isoformat(),
    }
    if as_json:
        print_json(data)
        return
    rows = {"CA": f"{layout.ca.cert}  (key {layout.ca.key}, 0600)",
            "server": f"{layout.server.cert}  (key {layout.server.key}, 0600)"}
    rows.update({f"client {name}": f"{f.cert}  (key {f.key}, 0600)"
                 for name, f in layout.clients.items()})
    rows["CA valid until"] = data["ca_not_after"]
    print_record(f"PKI in {layout.directory}", rows)
    err.print(f"[green]✓[/] keep {escape(str(layout.ca.key))} secret: whoever holds it can "
              "issue certificates every peer trusts", highlight=False)


@app.command()
def issue(
    directory: DirArg,
    name: Annotated[str, typer.Argument(help="Identity: the CN, and the files NAME.pem/NAME.key.")],
    server: Annotated[
        bool, typer.Option("--server", help="Usable as a TLS server (serverAuth).")
    ] = False,
    client: Annotated[
        bool, typer.Option("--client", help="Usable as a TLS client (clientAuth); the "
                           "default when neither --server nor --client is given.")
    ] = False,
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="DNS name for the SAN (repeatable).")
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="IP address for the SAN (repeatable).")
    ] = None,
    key_type: Annotated[
        KeyTypeChoice | None,
        typer.Option("--key-type", help="Key type (default: the CA's)."),
    ] = None,
    days: DaysOpt = 825,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Issue NAME.pem and NAME.key in DIRECTORY from the CA already there."""
    if not (server or client):
        client = True
    files = issue_client(
        directory, name, dns_names=dns or (), ip_addresses=ip or (), server=server,
        client=client, key_type=key_type.value if key_type else None, days=days, force=force,
    )
    info = describe_certificate(load_certificate(files.cert))
    if as_json:
        print_json({"name": name, **_files(files.cert, files.key), "certificate": info})
        return
    print_record(f"issued {name}", {"certificate": files.cert, "key (0600)": files.key,
                                    "usage": ", ".join(info["extended_key_usage"]),
                                    "not after": info["not_after"]})


@app.command()
def show(
    file: Annotated[Path, typer.Argument(help="A PEM certificate (never a key: keys are "
                                               "not shown).")],
    as_json: JsonOpt = False,
) -> None:
    """Show a certificate's subject, issuer, SANs, usages and validity."""
    info = describe_certificate(load_certificate(file))
    if as_json:
        print_json({"file": str(file), **info})
        return
    rows = dict(info)
    for key in ("dns_names", "ip_addresses", "extended_key_usage"):
        rows[key] = ", ".join(info[key]) or None
    print_record(str(file), rows)
