"""The PKI directory: one CA, one server certificate, and one certificate per client.

``vmcrypt pki init``, ``vmcrypt up`` and the KMS all agree on one layout so that a path
to the directory is all a process needs::

    DIR/ca.pem      ca.key      (0600)  the CA every peer trusts
    DIR/server.pem  server.key  (0600)  the KMS / control plane server identity
    DIR/NAME.pem    NAME.key    (0600)  one client identity per NAME (CN = NAME)

Nothing is ever silently replaced: a new CA invalidates every certificate issued before,
and a new client key locks out whoever holds the old one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from vmcrypt.exceptions import UsageError
from vmcrypt.pki.ca import CA_DAYS, LEAF_DAYS, CertificateAuthority, KeyType
from vmcrypt.pki.exceptions import CertificateError, PkiExistsError

__all__ = ["CertFiles", "PkiLayout", "cert_files", "init_pki", "issue_client"]

#: A file-name-safe identity: it becomes both ``NAME.pem`` and the certificate's CN.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Names the layout itself uses.
_RESERVED = frozenset({"ca", "server"})


@dataclass(frozen=True)
class CertFiles:
    """A certificate file and the private key file beside it."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PkiLayout:
    """The files :func:`init_pki` wrote."""

    directory: Path
    ca: CertFiles
    server: CertFiles
    clients: Mapping[str, CertFiles] = field(default_factory=dict)


def cert_files(directory: Path, name: str) -> CertFiles:
    """Where the layout keeps ``name``'s certificate and key."""
    directory = Path(directory)
    return CertFiles(directory / f"{name}.pem", directory / f"{name}.key")


def _check_name(name: str, *, reserved_ok: bool = False) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} cannot name a certificate: use letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit)"
        )
    if not reserved_ok and name in _RESERVED:
        raise UsageError(f"{name!r} is the layout's own {name}.pem; choose another name")
    return name


def _refuse_existing(files: Iterable[CertFiles], *, force: bool) -> None:
    if force:
        return
    existing = [str(p) for pair in files for p in (pair.cert, pair.key) if p.exists()]
    if existing:
        raise PkiExistsError(
            f"refusing to overwrite {', '.join(existing)}: replacing them invalidates what "
            "was issued or trusted before; pass --force to replace them"
        )


def init_pki(
    directory: Path,
    *,
    server_names: Iterable[str] = ("localhost",),
    server_ips: Iterable[str] = ("127.0.0.1",),
    clients: Iterable[str] = ("admin",),
    key_type: KeyType = "rsa",
    force: bool = False,
    ca_days: int = CA_DAYS,
    days: int = LEAF_DAYS,
    now: datetime | None = None,
) -> PkiLayout:
    """Create a CA, a server certificate and client certificates in ``directory``.

    The server certificate has serverAuth and clientAuth, since KMIP peers such as vCenter
    use one certificate in both roles; its CN is the first server name.
    """
    directory = Path(directory)
    server_names, server_ips = list(server_names), list(server_ips)
    names = [_check_name(name) for name in clients]
    if len(set(names)) != len(names):
        raise UsageError(f"client names repeat: {', '.join(names)}")
    if not server_names and not server_ips:
        raise UsageError("the server certificate needs at least one DNS name or IP address")
    layout = PkiLayout(
        directory=directory,
        ca=cert_files(directory, "ca"),
        server=cert_files(directory, "server"),
        clients={name: cert_files(directory, name) for name in names},
    )
    _refuse_existing([layout.ca, layout.server, *layout.clients.values()], force=force)
    # Everything is issued in memory first: a bad name or address leaves no files behind.
    ca = CertificateAuthority.create(key_type=key_type, days=ca_days, now=now)
    server_cn = server_names[0] if server_names else str(server_ips[0])
    server = ca.issue(server_cn, dns_names=server_names, ip_addresses=server_ips,
                      server=True, client=True, days=days, now=now)
    issued = {name: ca.issue(name, server=False, client=True, days=days, now=now)
              for name in names}
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    server.write(layout.server.cert, layout.server.key)
    for name, files in layout.clients.items():
        issued[name].write(files.cert, files.key)
    # The CA goes last: until it exists, a failed run leaves nothing that looks usable.
    ca.as_issued().write(layout.ca.cert, layout.ca.key)
    return layout


def issue_client(
    directory: Path,
    name: str,
    *,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    server: bool = False,
    client: bool = True,
    key_type: KeyType | None = None,
    days: int = LEAF_DAYS,
    force: bool = False,
    now: datetime | None = None,
) -> CertFiles:
    """Issue ``NAME.pem``/``NAME.key`` from the CA already in ``directory``.

    The key type defaults to the CA's, so a directory stays all-RSA or all-EC unless asked.
    """
    directory = Path(directory)
    files = cert_files(directory, _check_name(name, reserved_ok=name == "server"))
    ca_files = cert_files(directory, "ca")
    if not ca_files.cert.exists():
        raise CertificateError(
            f"{ca_files.cert}: no CA in {directory}; create one first with "
            f"`vmcrypt pki init {directory}`"
        )
    _refuse_existing([files], force=force)
    ca = CertificateAuthority.load(ca_files.cert, ca_files.key)
    issued = ca.issue(name, dns_names=dns_names, ip_addresses=ip_addresses, server=server,
                      client=client, days=days, key_type=key_type, now=now)
    issued.write(files.cert, files.key)
    return files
