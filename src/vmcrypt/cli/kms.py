"""``vmcrypt kms …``: run the KMIP key server.

The embedded default key server for ``make up`` and tests, and a KMS any KMIP client
(a vCenter Server included) can use. See ``docs/kms.md``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from vmcrypt.cli import kms_keys
from vmcrypt.cli.serving import configure_server_logging
from vmcrypt.exceptions import UsageError

app = typer.Typer(
    help="The KMIP key server: KMIP 1.0-1.4 over mutual TLS (port 5696), keys sealed at rest.",
    no_args_is_help=True,
)
app.command("status")(kms_keys.status)
app.add_typer(kms_keys.keys, name="key")


@app.command()
def serve(
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", help="Folder for the database (kms.db), the master key "
                     "(master.key, 0600) and, unless --cert/--key/--ca are given, the PKI "
                     "(pki/), created on first start."),
    ] = Path("vmcrypt-kms"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port; 0 picks a free one.")
    ] = 5696,
    cert: Annotated[Path | None, typer.Option("--cert", help="Server certificate (PEM).")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Server private key (PEM).")] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", help="CA certificate that signs client certificates.")
    ] = None,
    master_key_file: Annotated[
        Path | None,
        typer.Option("--master-key-file", help="Master key file (default DATA_DIR/master.key); "
                     "$VMCRYPT_KMS_MASTER_KEY takes precedence."),
    ] = None,
    database: Annotated[
        Path | None, typer.Option("--database", help="SQLite file (default DATA_DIR/kms.db).")
    ] = None,
    server_name: Annotated[
        list[str] | None,
        typer.Option("--server-name", help="DNS name in a generated server certificate "
                     "(repeatable; default localhost)."),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the 'listening' line as JSON for scripts.")
    ] = False,
) -> None:
    """Run the key server until interrupted (Ctrl-C or SIGTERM).

    On first start it creates DATA_DIR with a master key and, unless you pass your own
    certificates, a PKI: DATA_DIR/pki/ca.pem (give it to clients), server.pem/key, and a
    client identity admin.pem/admin.key. Point a KMIP client at HOST:PORT with a client
    certificate signed by that CA.
    """
    from vmcrypt.kms.server import KmsConfig, KmsServer
    from vmcrypt.pki.layout import init_pki

    configure_server_logging(log_level)
    given = [p for p in (cert, key, ca) if p is not None]
    if given and len(given) != 3:
        raise UsageError("give --cert, --key and --ca together, or none to use DATA_DIR/pki")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if cert is None or key is None or ca is None:
        pki = data_dir / "pki"
        if not (pki / "ca.pem").exists():
            init_pki(pki, server_names=tuple(server_name or ("localhost",)),
                     server_ips=("127.0.0.1",), clients=("admin",))
        cert, key, ca = pki / "server.pem", pki / "server.key", pki / "ca.pem"
    config = KmsConfig(
        database=database or data_dir / "kms.db",
        master_key_file=master_key_file or data_dir / "master.key",
        cert_file=cert, key_file=key, ca_file=ca, host=host, port=port,
    )
    server = KmsServer(config)
    bound_host, bound_port = server.start()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("vmcrypt.kms").info("signal %d: shutting down", signum)
        server.shutdown()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if json_output:
        sys.stdout.write(json.dumps({"event": "listening", "host": bound_host,
                                     "port": bound_port, "ca": str(ca)}) + "\n")
    else:
        sys.stdout.write(f"vmcrypt kms: listening on {bound_host}:{bound_port} "
                         f"(CA for clients: {ca})\n")
    sys.stdout.flush()
    server.serve_forever()
