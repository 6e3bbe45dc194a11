"""Run the control plane: prepare its data folder, then serve the API over HTTPS.

:func:`prepare` is the first-start logic (PKI, master key, database, Administrator) and
is idempotent: a restart finds everything in place and changes nothing. :func:`serve`
binds the socket *before* announcing it, so a script may connect as soon as it reads
the listening line, and returns when uvicorn has shut down cleanly (SIGTERM, Ctrl-C).

API clients authenticate with bearer tokens, so the HTTPS port only *verifies* a client
certificate when one is offered (CERT_OPTIONAL); hosts are called with the control
plane's own client certificate (mutual TLS), see :attr:`ControlSettings.client`, and
each host must present the certificate issued at its enrolment (:class:`TlsHostConnector`).
While serving, a :class:`~vmcrypt.control.monitor.HostMonitor` polls every host and
reconnects (re-pushes keys to) any that comes back or restarted, and a
:class:`~vmcrypt.control.provider_monitor.ProviderMonitor` probes every key provider;
both write to the app's health board (``app.state.health``), which the API reads.
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from vmcrypt.control.api import create_app
from vmcrypt.control.api.bootstrap import bootstrap_administrator
from vmcrypt.control.db.engine import Database, open_database
from vmcrypt.control.db.models import Host
from vmcrypt.control.enrolment import ca_fingerprint
from vmcrypt.control.health import HealthBoard
from vmcrypt.control.hostclient import HostClient
from vmcrypt.control.monitor import HostMonitor
from vmcrypt.control.pinning import HostNotEnrolled, pinned_context
from vmcrypt.control.provider_monitor import ProviderMonitor
from vmcrypt.control.settings import CLIENT_IDENTITY, ControlSettings
from vmcrypt.exceptions import UsageError
from vmcrypt.kms.master_key import load_master_key
from vmcrypt.listen import listen
from vmcrypt.pki import (
    CertificateAuthority,
    client_context,
    init_pki,
    server_context,
    write_pem,
)
from vmcrypt.providers.exceptions import AddKeysToHostFailed

__all__ = [
    "Prepared",
    "TlsHostConnector",
    "bind",
    "build_app",
    "fingerprint",
    "prepare",
    "serve",
]

logger = logging.getLogger("vmcrypt.control")


@dataclass(frozen=True)
class Prepared:
    """What a start found or created: the open database, keys, and the new token file."""

    database: Database
    master_key: bytes
    ca: CertificateAuthority
    #: The admin token file if this start created it, else ``None`` (never re-minted).
    new_admin_token_file: Path | None


def _redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True) if "://" in url else url


def prepare(settings: ControlSettings) -> Prepared:
    """Create (first start) or load the data folder, and open and migrate the database."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not settings.ca_file.exists():
        # EC keys: fast to generate, and nothing here needs vCenter's RSA-only habits.
        init_pki(settings.pki_dir, server_names=("localhost",),
                 server_ips=settings.server_ips(), clients=(CLIENT_IDENTITY,), key_type="ec")
    ca = CertificateAuthority.load(settings.ca.cert, settings.ca.key)
    # The environment variable is the KMS's; the control plane reads its own file only.
    master_key = load_master_key(settings.master_key_file, environ={})
    try:
        database = open_database(settings.database)
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        reason = (str(cause).splitlines() or [type(cause).__name__])[0]
        raise UsageError(
            f"cannot open the database {_redacted(str(settings.database))}: {reason}"
        ) from None
    token = bootstrap_administrator(database)
    new_file = None
    if token is not None:
        write_pem(settings.admin_token_file, (token + "\n").encode("ascii"), private=True)
        new_file = settings.admin_token_file
    return Prepared(database=database, master_key=master_key, ca=ca,
                    new_admin_token_file=new_file)


class TlsHostConnector:
    """Reaches host agents over mutual TLS, each pinned to its enrolment certificate.

    The host's certificate must chain to the system CA, name the address in its
    ``api_url`` (enrolment puts it in the SAN) **and** be the very certificate issued
    at its enrolment (``Host.certificate_fingerprint``, see :mod:`vmcrypt.control.
    pinning`): another host's certificate from the same CA is refused during the
    handshake, before any key is sent. A host never enrolled has nothing to pin and
    gets no connection (:class:`~vmcrypt.control.pinning.HostNotEnrolled`).

    One client per host, URL and pin is kept, so connections are reused across
    requests; a changed URL or a new enrolment gets a new client.
    """

    def __init__(self, settings: ControlSettings) -> None:
        self._settings = settings
        # Loaded once now so a bad client certificate fails the start, not a request.
        client_context(ca_file=settings.ca_file, cert_file=settings.client.cert,
                       key_file=settings.client.key)
        self._clients: dict[tuple[int, str, str], HostClient] = {}
        self._lock = threading.Lock()

    def client(self, host: Host) -> HostClient:
        """A client for ``host``'s agent (``AddKeysToHostFailed`` when it cannot have one)."""
        if not host.api_url:
            raise AddKeysToHostFailed(f"host {host.name!r} has no API URL to reach it at")
        if not host.certificate_fingerprint:
            raise HostNotEnrolled(
                f"host {host.name!r} is not enrolled: the control plane sends keys only to "
                "a host whose certificate it issued (vmcrypt host serve --enrol …)")
        key = (host.id, host.api_url, host.certificate_fingerprint)
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                context = pinned_context(
                    ca_file=self._settings.ca_file, cert_file=self._settings.client.cert,
                    key_file=self._settings.client.key, host_name=host.name,
                    fingerprint=host.certificate_fingerprint)
                found = HostClient.over_tls(host.name, host.api_url, context)
                for stale in [k for k in self._clients if k[0] == host.id]:
                    self._clients.pop(stale).close()
                self._clients[key] = found
            return found

    def close(self) -> None:
        """Close every client's connections."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def build_app(settings: ControlSettings, prepared: Prepared,
              hosts: TlsHostConnector | None = None, *,
              health: HealthBoard | None = None) -> FastAPI:
    """The API app, with what enrolment and the host client need on ``app.state``.

    ``health`` is the board the monitors write; the app reads it (``app.state.health``).
    """
    app = create_app(prepared.database, master_key=prepared.master_key, hosts=hosts,
                     health=health)
    app.state.enrolment_ca = prepared.ca
    app.state.settings = settings  # client certificate and CA for calling hosts
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one clear line when the port is taken."""
    return listen(host, port)


def serve(settings: ControlSettings, *, log_level: str = "info",
          on_listening: Callable[[str, int, Prepared], None]) -> None:
    """Prepare, bind, call ``on_listening(host, port, prepared)``, serve until stopped."""
    import uvicorn

    # Checked here for a clear message naming a bad file; uvicorn loads them again.
    prepared = prepare(settings)
    server_context(cert_file=settings.server.cert, key_file=settings.server.key,
                   ca_file=settings.ca_file, require_client_cert=False)
    hosts = TlsHostConnector(settings)
    board = HealthBoard()  # one board: both monitors write it, the API reads it
    monitors: list[HostMonitor | ProviderMonitor] = []
    if settings.host_check_interval > 0:
        monitors.append(HostMonitor(prepared.database, hosts, sealing_key=prepared.master_key,
                                    interval=settings.host_check_interval, health=board))
    if settings.provider_check_interval > 0:
        monitors.append(ProviderMonitor(prepared.database, sealing_key=prepared.master_key,
                                        health=board,
                                        interval=settings.provider_check_interval))
    app = build_app(settings, prepared, hosts, health=board)
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=log_level.lower(),
        ssl_certfile=str(settings.server.cert),
        ssl_keyfile=str(settings.server.key),
        ssl_ca_certs=str(settings.ca_file),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        server_header=False,
    )
    server = uvicorn.Server(config)
    sock = bind(settings.host, settings.port)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles the signal while serving and re-raises it afterwards: landing
        # here then means a clean shutdown already happened, so exit 0.
        logger.info("signal %d: shutting down", signum)
        server.should_exit = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    host, port = sock.getsockname()[:2]
    on_listening(host, port, prepared)
    for monitor in monitors:
        monitor.start()
    try:
        server.run(sockets=[sock])
    finally:
        for monitor in monitors:
            monitor.stop()
        # Relays stop at their next chunk (their jobs end failed, the VMs stay put).
        app.state.jobrunner.shutdown()
        sock.close()
        hosts.close()
        prepared.database.close()


def fingerprint(prepared: Prepared) -> str:
    """The CA fingerprint hosts pin (``--ca-fingerprint``)."""
    return ca_fingerprint(prepared.ca)
