"""Run the Trust Authority: prepare its data folder, then serve the API over mutual TLS.

The data folder (created 0700 on first start)::

    DIR/pki/            unless --cert/--key/--ca: a CA, server.pem/key, admin.pem/key
    DIR/trust.json      the configuration (0600, atomic writes)
    DIR/token-signing.key   the ES256 token signing key (0600)
    DIR/events.jsonl    the event log (0600, append-only)

Every connection must present a client certificate from the CA (CERT_REQUIRED): hosts
and administrators alike are known by its CN. uvicorn does not pass the peer
certificate to the app, so :class:`PeerCertH11Protocol` reads it from the verified TLS
session when the connection is made and puts it in each request's ASGI scope as the
``tls`` extension (``client_cert_chain``, ``client_cert_name``, plus
``client_cert_cn``). As in :mod:`vmcrypt.control.server`, the socket is bound *before*
the listening line is announced.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from vmcrypt.exceptions import UsageError
from vmcrypt.listen import listen
from vmcrypt.pki import init_pki, server_context
from vmcrypt.pki.layout import CertFiles, cert_files
from vmcrypt.trust.api import create_app
from vmcrypt.trust.attestation import NonceStore, TokenIssuer, load_or_create_signing_key
from vmcrypt.trust.config import ConfigStore
from vmcrypt.trust.events import EventLog
from vmcrypt.trust.providers import ProviderPool
from vmcrypt.trust.service import TrustService

__all__ = [
    "PeerCertH11Protocol",
    "TrustSettings",
    "bind",
    "build_service",
    "prepare",
    "serve",
]

logger = logging.getLogger("vmcrypt.trust")


@dataclass(frozen=True)
class TrustSettings:
    """Where the Trust Authority keeps its files and how it serves."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    admins: tuple[str, ...] = ("admin",)
    token_ttl: float = 600.0
    nonce_ttl: float = 60.0
    kms_timeout: float = 5.0
    server_names: tuple[str, ...] = field(default=("localhost",))

    @property
    def pki_dir(self) -> Path:
        """The generated PKI (unused with ``--cert/--key/--ca``)."""
        return self.data_dir / "pki"

    @property
    def server(self) -> CertFiles:
        """The server certificate and key."""
        if self.cert is not None and self.key is not None:
            return CertFiles(self.cert, self.key)
        return cert_files(self.pki_dir, "server")

    @property
    def ca_file(self) -> Path:
        """The CA that signs client certificates (hosts and administrators)."""
        return self.ca if self.ca is not None else self.pki_dir / "ca.pem"

    @property
    def config_file(self) -> Path:
        """The configuration."""
        return self.data_dir / "trust.json"

    @property
    def signing_key_file(self) -> Path:
        """The token signing key."""
        return self.data_dir / "token-signing.key"

    @property
    def events_file(self) -> Path:
        """The event log."""
        return self.data_dir / "events.jsonl"


def prepare(settings: TrustSettings) -> None:
    """Create the data folder and, unless certificates were given, a PKI (first start)."""
    given = [settings.cert, settings.key, settings.ca]
    if any(p is not None for p in given) and not all(p is not None for p in given):
        raise UsageError("give --cert, --key and --ca together, or none of them")
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if settings.cert is None and not (settings.pki_dir / "ca.pem").exists():
        names = [n for n in settings.server_names if n]
        clients = tuple(dict.fromkeys(settings.admins))
        init_pki(settings.pki_dir, server_names=names, server_ips=("127.0.0.1",),
                 clients=clients, key_type="ec")


def build_service(settings: TrustSettings) -> TrustService:
    """The service over the data folder's configuration, key and event log."""
    issuer = TokenIssuer(load_or_create_signing_key(settings.signing_key_file),
                         ttl=settings.token_ttl)
    return TrustService(config=ConfigStore(settings.config_file),
                        events=EventLog(settings.events_file), issuer=issuer,
                        nonces=NonceStore(ttl=settings.nonce_ttl),
                        providers=ProviderPool(timeout=settings.kms_timeout),
                        admins=settings.admins)


def _tls_extension(transport: asyncio.Transport) -> dict[str, Any]:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    # getpeercert() is empty unless the handshake verified the certificate.
    if not der or not ssl_object.getpeercert():
        return {"client_cert_chain": [], "client_cert_name": None, "client_cert_cn": None}
    certificate = x509.load_der_x509_certificate(der)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    pem = certificate.public_bytes(encoding=Encoding.PEM).decode("ascii")
    return {"client_cert_chain": [pem], "client_cert_name": certificate.subject.rfc4514_string(),
            "client_cert_cn": str(names[0].value) if names else None,
            "tls_version": None, "cipher_suite": None}


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the verified client certificate to every scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        extension = _tls_extension(transport)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = extension
            await inner(scope, receive, send)

        self.app = app

    def shutdown(self) -> None:
        """On server shutdown, drop idle keep-alive connections at once.

        A TLS close waits for the peer's close_notify, which an idle client (a host
        agent's connection pool) sends only when it next reads: uvicorn would wait for
        it up to the SSL shutdown timeout. A connection mid-request finishes first.
        """
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one clear line when the port is taken."""
    return listen(host, port)


def serve(settings: TrustSettings, *, log_level: str = "info",
          on_listening: Callable[[str, int], None]) -> None:
    """Prepare, bind, call ``on_listening(host, port)``, serve until SIGTERM/Ctrl-C."""
    import uvicorn

    prepare(settings)
    # Checked here for a clear message naming a bad file; uvicorn loads them again.
    server_context(cert_file=settings.server.cert, key_file=settings.server.key,
                   ca_file=settings.ca_file, require_client_cert=True)
    service = build_service(settings)
    app: FastAPI = create_app(service)
    config = uvicorn.Config(
        app, http=PeerCertH11Protocol, log_config=None, log_level=log_level.lower(),
        ssl_certfile=str(settings.server.cert), ssl_keyfile=str(settings.server.key),
        ssl_ca_certs=str(settings.ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED,
        ssl_version=ssl.PROTOCOL_TLS_SERVER, server_header=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    sock = bind(settings.host, settings.port)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: shutting down", signum)
        server.should_exit = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    host, port = sock.getsockname()[:2]
    on_listening(host, port)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        service.providers.close()
