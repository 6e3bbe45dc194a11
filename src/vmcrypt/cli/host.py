"""``vmcrypt host …``: run a host agent (the ESXi role) over a datastore folder.

The agent holds KEKs in memory only and does the cryptography on VM data; the control
plane is its only client, over mutual TLS. See ``docs/host.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import ssl
import sys
import threading
import uuid
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from vmcrypt.cli.serving import configure_server_logging
from vmcrypt.exceptions import UsageError, VmcryptError
from vmcrypt.listen import listen

if TYPE_CHECKING:
    from vmcrypt.host.trust import TrustLink

__all__ = ["app", "serve"]

app = typer.Typer(
    help="The host agent: KEKs in memory, VM homes and disks encrypted on a datastore.",
    no_args_is_help=True,
)


@app.command()
def serve(
    datastore: Annotated[
        Path, typer.Option("--datastore", help="Datastore folder (created if missing).")
    ],
    cert: Annotated[Path, typer.Option("--cert", help="This host's server certificate (PEM).")],
    key: Annotated[Path, typer.Option("--key", help="Its private key (PEM).")],
    ca: Annotated[
        Path, typer.Option("--ca", help="CA certificate that signs the control plane's.")
    ],
    name: Annotated[str, typer.Option("--name", help="Host name.")] = "",
    hardware_uuid: Annotated[
        str | None,
        typer.Option("--hardware-uuid", help="Hardware UUID (default: a new random one)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port; 0 picks a free one.")
    ] = 8443,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the 'listening' line as JSON for scripts.")
    ] = False,
    enrol_url: Annotated[
        str | None,
        typer.Option("--enrol", help="Control plane URL: on first start (no --cert yet) enrol "
                     "there and write --cert/--key/--ca."),
    ] = None,
    token: Annotated[
        str, typer.Option("--token", envvar="VMCRYPT_ENROL_TOKEN", show_default=False,
                          help="One-time enrolment token (or $VMCRYPT_ENROL_TOKEN).")
    ] = "",
    ca_fingerprint: Annotated[
        str, typer.Option("--ca-fingerprint", help="SHA-256 of the control plane CA to pin.")
    ] = "",
    address: Annotated[
        str | None, typer.Option("--address", help="Address in this host's certificate "
                                 "(default: --host).")
    ] = None,
    trust_url: Annotated[
        str | None, typer.Option("--trust-url", envvar="VMCRYPT_HOST_TRUST_URL",
                                 help="Trust Authority URL: enables trusted key providers.")
    ] = None,
    trust_ca: Annotated[
        Path | None, typer.Option("--trust-ca", help="CA of the Trust Authority (PEM).")
    ] = None,
    trust_cert: Annotated[
        Path | None, typer.Option("--trust-cert", help="Client certificate at the Trust "
                                  "Authority, CN = this host's name (default: --cert).")
    ] = None,
    trust_key: Annotated[
        Path | None, typer.Option("--trust-key", help="Its private key (default: --key).")
    ] = None,
    trust_identity: Annotated[
        Path | None, typer.Option("--trust-identity", help="The host identity key that "
                                  "signs evidence ('vmcrypt trust identity FILE').")
    ] = None,
    trust_config: Annotated[
        Path | None, typer.Option("--trust-config", help="The host configuration file "
                                  "measured as 'config' (default: none, empty bytes).")
    ] = None,
) -> None:
    """Run the host agent until interrupted (Ctrl-C or SIGTERM).

    It starts with no keys: the control plane pushes KEKs (and native primary keys)
    after it connects. Clients must present a certificate signed by --ca. With
    --enrol, a first start generates the key here (0600) and gets the certificate from
    the control plane CA with a one-time --token. With --trust-url (and --trust-ca,
    --trust-identity) the host attests to that Trust Authority and gets the KEKs of
    trusted key providers itself; see docs/trust.md.
    """
    import uvicorn

    from vmcrypt.host.api import HostState, create_app
    from vmcrypt.host.datastore import Datastore
    from vmcrypt.pki.tls import server_context

    configure_server_logging(log_level)
    try:
        hw = str(uuid.UUID(hardware_uuid)) if hardware_uuid else str(uuid.uuid4())
    except ValueError:
        raise UsageError(f"--hardware-uuid {hardware_uuid!r} is not a UUID") from None
    # Bound before enrolling, so the URL the control plane records has the real port.
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    state_name = name or socket.gethostname()
    if enrol_url is not None:
        from vmcrypt.host.enrol import EnrolFiles, enrol, enrolled

        files = EnrolFiles(cert=cert, key=key, ca=ca)
        if not enrolled(files):
            san = address or bound_host
            enrol(url=enrol_url, token=token, ca_fingerprint=ca_fingerprint, files=files,
                  name=state_name, hardware_uuid=hw, address=san,
                  api_url=f"https://{san}:{bound_port}")
    # Checked here for a clear message naming the bad file; uvicorn loads them again.
    server_context(cert_file=cert, key_file=key, ca_file=ca)
    datastore.mkdir(parents=True, exist_ok=True, mode=0o700)
    link = _trust_link(url=trust_url, ca=trust_ca, cert=trust_cert or cert,
                       key=trust_key or key, identity=trust_identity, config=trust_config,
                       name=state_name, hardware_uuid=hw)
    state = HostState(name=state_name, hardware_uuid=hw, datastore=Datastore(datastore),
                      trust=link)
    config = uvicorn.Config(
        create_app(state),
        log_config=None,
        log_level=log_level.lower(),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        ssl_ca_certs=str(ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        server_header=False,
    )
    server = uvicorn.Server(config)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles the signal while serving and re-raises it afterwards: landing
        # here then means a clean shutdown already happened, so exit 0.
        logging.getLogger("vmcrypt.host").info("signal %d: shutting down", signum)
        server.should_exit = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if json_output:
        sys.stdout.write(json.dumps({"event": "listening", "host": bound_host,
                                     "port": bound_port, "name": state.name,
                                     "hardware_uuid": hw}) + "\n")
    else:
        sys.stdout.write(f"vmcrypt host {state.name}: listening on https://{bound_host}:"
                         f"{bound_port} (mutual TLS, clients signed by {ca})\n")
    sys.stdout.flush()
    if link is not None:
        # Attest once at start so /health shows attested or failed (with the reason)
        # before the first trusted VM needs a key; failures are retried on use.
        threading.Thread(target=_attest_quietly, args=(link,), name="attest",
                         daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        state.jobs.stop_all()
        if link is not None:
            link.close()
        sock.close()


def _attest_quietly(link: TrustLink) -> None:
    with contextlib.suppress(VmcryptError):  # the link's status records the reason
        link.attest()


def _trust_link(*, url: str | None, ca: Path | None, cert: Path, key: Path,
                identity: Path | None, config: Path | None, name: str,
                hardware_uuid: str) -> TrustLink | None:
    """The Trust Authority link from the --trust-* options (None without --trust-url)."""
    from vmcrypt.host.trust import TrustLink, TrustSettings

    if url is None:
        if ca is not None or identity is not None:
            raise UsageError("--trust-ca and --trust-identity need --trust-url")
        return None
    if ca is None or identity is None:
        raise UsageError("--trust-url needs --trust-ca (the Trust Authority's CA) and "
                         "--trust-identity (the host identity key)")
    if config is not None and not config.is_file():
        raise UsageError(f"--trust-config {config}: no such file")
    settings = TrustSettings(url=url, ca_file=ca, cert_file=cert, key_file=key,
                             identity_file=identity, config_file=config)
    return TrustLink.from_settings(settings, host_name=name, hardware_uuid=hardware_uuid)
