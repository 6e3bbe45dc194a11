"""Where ``vmcrypt control serve`` keeps its state, and how a first start creates it.

One data folder holds everything the control plane needs besides its database::

    DIR/pki/ca.pem, ca.key        the CA of the whole system (hosts enrol against it)
    DIR/pki/server.pem, .key      the HTTPS identity of the API (SAN localhost, 127.0.0.1)
    DIR/pki/control.pem, .key     the client identity the control plane shows to hosts
    DIR/master.key        (0600)  seals native providers' primary keys
    DIR/control.db                SQLite, unless --db names a PostgreSQL URL
    DIR/admin.token       (0600)  the Administrator's first API token, written once

The master key follows the KMS master key's rules (:func:`vmcrypt.kms.master_key.
load_master_key`): created 0600 on first start, refused when others can read it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from vmcrypt.exceptions import UsageError
from vmcrypt.pki import CertFiles, cert_files

__all__ = ["CLIENT_IDENTITY", "DEFAULT_HOST_CHECK_INTERVAL", "DEFAULT_PROVIDER_CHECK_INTERVAL",
           "ControlSettings"]

#: The CN of the certificate the control plane presents to hosts (mutual TLS).
CLIENT_IDENTITY: Final = "control"
#: Seconds between host health polls: a restarted host gets its keys back within this.
DEFAULT_HOST_CHECK_INTERVAL: Final = 5.0
#: Seconds between key provider probes: each is a TLS handshake and two KMIP requests
#: per KMS server, so less often than hosts; a server outage shows within this.
DEFAULT_PROVIDER_CHECK_INTERVAL: Final = 30.0


@dataclass(frozen=True)
class ControlSettings:
    """The options of ``vmcrypt control serve``; every path derives from ``data_dir``."""

    data_dir: Path
    db: str | None = None
    host: str = "127.0.0.1"
    port: int = 8440
    #: Seconds between two health polls of every host; 0 turns the monitor off.
    host_check_interval: float = DEFAULT_HOST_CHECK_INTERVAL
    #: Seconds between two health probes of every key provider; 0 turns the monitor off.
    provider_check_interval: float = DEFAULT_PROVIDER_CHECK_INTERVAL

    def __post_init__(self) -> None:
        if not 0 <= self.host_check_interval <= 3600:
            raise UsageError("--host-check-interval is between 0 (off) and 3600 seconds")
        if not 0 <= self.provider_check_interval <= 3600:
            raise UsageError("--provider-check-interval is between 0 (off) and 3600 seconds")
        if self.db is not None and "://" in self.db:
            try:
                url = make_url(self.db)
            except ArgumentError:
                raise UsageError(f"--db {self.db!r} is not a database URL "
                                 "(sqlite:///FILE or postgresql://USER@HOST/DB)") from None
            if url.get_backend_name() not in ("sqlite", "postgresql", "postgres"):
                raise UsageError(f"--db: {url.get_backend_name()!r} databases are not "
                                 "supported; use sqlite:///FILE or postgresql://…")

    @property
    def pki_dir(self) -> Path:
        """The CA and the control plane's own certificates."""
        return self.data_dir / "pki"

    @property
    def ca_file(self) -> Path:
        """The CA certificate every host and API client trusts."""
        return self.pki_dir / "ca.pem"

    @property
    def ca(self) -> CertFiles:
        """The CA certificate and key (the key signs host certificates)."""
        return cert_files(self.pki_dir, "ca")

    @property
    def server(self) -> CertFiles:
        """The API's HTTPS certificate and key."""
        return cert_files(self.pki_dir, "server")

    @property
    def client(self) -> CertFiles:
        """The client certificate the control plane presents when it calls a host."""
        return cert_files(self.pki_dir, CLIENT_IDENTITY)

    @property
    def master_key_file(self) -> Path:
        """The 0600 file holding the sealing key of native providers."""
        return self.data_dir / "master.key"

    @property
    def admin_token_file(self) -> Path:
        """Where the first Administrator token is written, once."""
        return self.data_dir / "admin.token"

    @property
    def database(self) -> str | Path:
        """``--db`` as given, or the SQLite file in the data folder."""
        return self.db if self.db else self.data_dir / "control.db"

    def server_ips(self) -> tuple[str, ...]:
        """The IPs in the API certificate: loopback, plus the listening address if specific."""
        ips = ["127.0.0.1"]
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return tuple(ips)
        if not address.is_unspecified and str(address) not in ips:
            ips.append(str(address))
        return tuple(ips)
