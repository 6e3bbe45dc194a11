"""``vmcrypt control …``: run the control plane (the vCenter Server role).

It owns the inventory, key providers, users and the CA that enrols hosts, and serves
the REST API under ``/api/v1`` over HTTPS. See ``docs/control-api.md`` and ``docs/up.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from vmcrypt.cli.serving import configure_server_logging

__all__ = ["app", "serve"]

app = typer.Typer(
    help="The control plane: inventory, key providers, privileges, host enrolment; REST API.",
    no_args_is_help=True,
)


@app.command()
def serve(
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", help="Folder for the PKI (pki/), the master key "
                     "(master.key, 0600), control.db and admin.token; created on first start."),
    ] = Path("vmcrypt-control"),
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URL (postgresql://USER@HOST/DB); default "
                     "DATA_DIR/control.db (SQLite)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port; 0 picks a free one.")
    ] = 8440,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the 'listening' line as JSON for scripts.")
    ] = False,
    host_check_interval: Annotated[
        float,
        typer.Option("--host-check-interval", min=0, max=3600,
                     help="Seconds between health polls of every host; a host that comes "
                     "back or restarted gets its keys pushed again. 0 turns it off."),
    ] = 5.0,
    provider_check_interval: Annotated[
        float,
        typer.Option("--provider-check-interval", min=0, max=3600,
                     help="Seconds between health probes of every key provider and KMS "
                     "server (kp.health.changed events, kp health). 0 turns it off."),
    ] = 30.0,
) -> None:
    """Run the control plane until interrupted (Ctrl-C or SIGTERM).

    On first start it creates DATA_DIR with the system's CA, a master key and the
    database, and writes the Administrator's API token to DATA_DIR/admin.token (0600)
    — once. Hosts enrol against the CA: pin it with the fingerprint printed here.
    """
    from vmcrypt.control.server import Prepared, fingerprint
    from vmcrypt.control.server import serve as run
    from vmcrypt.control.settings import ControlSettings

    configure_server_logging(log_level)
    settings = ControlSettings(data_dir=data_dir, db=db, host=host, port=port,
                               host_check_interval=host_check_interval,
                               provider_check_interval=provider_check_interval)

    def listening(bound_host: str, bound_port: int, prepared: Prepared) -> None:
        url = f"https://{bound_host}:{bound_port}"
        token_file = str(settings.admin_token_file)
        if json_output:
            sys.stdout.write(json.dumps({
                "event": "listening", "host": bound_host, "port": bound_port, "url": url,
                "api": f"{url}/api/v1", "ca": str(settings.ca_file),
                "ca_fingerprint": fingerprint(prepared), "admin_token_file": token_file,
                "admin_token_created": prepared.new_admin_token_file is not None,
            }) + "\n")
        else:
            if prepared.new_admin_token_file is not None:
                sys.stdout.write(f"vmcrypt control: the Administrator's API token is in "
                                 f"{token_file} (0600; written this once)\n")
            sys.stdout.write(f"vmcrypt control: listening on {url} (API {url}/api/v1, "
                             f"CA {settings.ca_file}, SHA-256 {fingerprint(prepared)})\n")
        sys.stdout.flush()

    run(settings, log_level=log_level, on_listening=listening)
