"""``vmcrypt kms status`` and ``vmcrypt kms key …``: a KMIP client for operators.

Every command connects with a client certificate from a PKI directory (``--pki``,
default the one ``vmcrypt kms serve`` generated) and an identity in it (``--identity``,
default ``admin``). Key material is printed or written only by ``key export``, which an
operator runs on purpose; everything else shows identifiers and attributes.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from vmcrypt.cli.keyfiles import kek_key_id, write_secret_file
from vmcrypt.cli.output import out, print_json, print_record
from vmcrypt.exceptions import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
ServerOpt = Annotated[
    str, typer.Option("--server", "-s", help="The key server as HOST:PORT.")
]
PkiOpt = Annotated[
    Path, typer.Option("--pki", help="PKI directory holding ca.pem and IDENTITY.pem/.key.")
]
IdentityOpt = Annotated[
    str, typer.Option("--identity", "-i", help="Client identity: uses IDENTITY.pem/.key.")
]
UidArg = Annotated[str, typer.Argument(help="The key's Unique Identifier (its key ID).")]

_DEFAULT_SERVER = "127.0.0.1:5696"
_DEFAULT_PKI = Path("vmcrypt-kms/pki")

keys = typer.Typer(help="Create, find, inspect, retire and export keys on a KMIP server.",
                   no_args_is_help=True)


def _client(server: str, pki: Path, identity: str) -> Any:
    from vmcrypt.kmip.client import KmipClient
    from vmcrypt.pki.tls import client_context

    host, sep, port_text = server.rpartition(":")
    if not sep or not port_text.isdigit():
        raise UsageError(f"--server {server!r} must be HOST:PORT, e.g. {_DEFAULT_SERVER}")
    context = client_context(ca_file=pki / "ca.pem", cert_file=pki / f"{identity}.pem",
                             key_file=pki / f"{identity}.key")
    return KmipClient(host.strip("[]"), int(port_text), ssl_context=context, timeout=10.0)


def _attrs(pairs: list[str] | None) -> dict[str, object]:
    out_: dict[str, object] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--attr {pair!r} must be NAME=VALUE, e.g. x-Component=Host")
        if not name.startswith("x-"):
            raise UsageError(f"--attr {name!r}: only custom attributes (x-…) are set this way")
        out_[name] = value
    return out_


def _plain(name: str, value: object) -> object:
    from vmcrypt.kmip.tags import CryptographicAlgorithm, ObjectType, State

    names: dict[str, type[CryptographicAlgorithm | ObjectType | State]] = {
        "State": State, "Object Type": ObjectType, "Cryptographic Algorithm":
        CryptographicAlgorithm,
    }
    if name in names and isinstance(value, int):
        try:
            member = names[name](value).name
            # Spec spelling: "AES", "SymmetricKey", "PreActive".
            return member if len(member) <= 4 else member.title().replace("_", "")
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, int | str | bool) or value is None:
        return value
    return str(value)


def status(server: ServerOpt = _DEFAULT_SERVER, pki: PkiOpt = _DEFAULT_PKI,
           identity: IdentityOpt = "admin", as_json: JsonOpt = False) -> None:
    """Check a key server: TLS with your identity, protocol versions, vendor, latency."""
    from vmcrypt.pki.tls import certificate_expiry

    with _client(server, pki, identity) as client:
        client.connect()  # the TLS handshake is not part of the round-trip latency
        start = time.perf_counter()
        versions = client.discover_versions()
        latency = (time.perf_counter() - start) * 1000
        info = client.query()
    record = {
        "server": server,
        "reachable": True,
        "latency_ms": round(latency, 2),
        "versions": [str(v) for v in versions],
        "vendor": info.vendor,
        "operations": len(info.operations),
        "client_certificate_expires": certificate_expiry(pki / f"{identity}.pem").isoformat(),
    }
    if as_json:
        print_json(record)
    else:
        print_record(f"KMIP server {server}", record)


@keys.command("create")
def create(
    name: Annotated[str | None, typer.Option("--name", help="A Name attribute.")] = None,
    attr: Annotated[
        list[str] | None,
        typer.Option("--attr", "-a", help="Custom attribute NAME=VALUE (repeatable), e.g. "
                     "-a x-Product=vmcrypt."),
    ] = None,
    length: Annotated[int, typer.Option("--length", help="AES key length: 128 or 256.")] = 256,
    activate: Annotated[
        bool, typer.Option("--activate/--no-activate", help="Make the key Active now.")
    ] = True,
    server: ServerOpt = _DEFAULT_SERVER, pki: PkiOpt = _DEFAULT_PKI,
    identity: IdentityOpt = "admin", as_json: JsonOpt = False,
) -> None:
    """Create an AES key on the server and print its key ID (never the key)."""
    if length not in (128, 192, 256):
        raise UsageError("--length must be 128, 192 or 256")
    with _client(server, pki, identity) as client:
        uid = client.create_symmetric_key(length=length, name=name, attributes=_attrs(attr))
        if activate:
            client.activate(uid)
    if as_json:
        print_json({"key_id": uid, "active": activate})
    else:
        out.print(uid, highlight=False)


@keys.command("list")
def list_(
    name: Annotated[str | None, typer.Option("--name", help="Only keys with this Name.")] = None,
    attr: Annotated[
        list[str] | None, typer.Option("--attr", "-a", help="Only keys with NAME=VALUE.")
    ] = None,
    maximum: Annotated[
        int | None, typer.Option("--max", min=1, help="At most this many keys.")
    ] = None,
    server: ServerOpt = _DEFAULT_SERVER, pki: PkiOpt = _DEFAULT_PKI,
    identity: IdentityOpt = "admin", as_json: JsonOpt = False,
) -> None:
    """List key IDs matching every filter (KMIP Locate), oldest first."""
    with _client(server, pki, identity) as client:
        uids = client.locate(name=name, attributes=_attrs(attr), maximum_items=maximum)
    if as_json:
        print_json({"key_ids": uids})
    else:
        for uid in uids:
            out.print(uid, highlight=False)


@keys.command("show")
def show(uid: UidArg, server: ServerOpt = _DEFAULT_SERVER, pki: PkiOpt = _DEFAULT_PKI,
         identity: IdentityOpt = "admin", as_json: JsonOpt = False) -> None:
    """Show a key's attributes: state, dates, names, custom attributes (never the key)."""
    with _client(server, pki, identity) as client:
        attributes = client.get_attributes(uid)
    record: dict[str, Any] = {}
    for attribute in attributes:
        value = _plain(attribute.name, attribute.python)
        if attribute.name in record:
            previous = record[attribute.name]
            record[attribute.name] = [*previous, value] if isinstance(previous, list) else [
                previous, value]
        else:
            record[attribute.name] = value
    if as_json:
        print_json({"key_id": uid, "attributes": record})
    else:
        print_record(f"key {uid}", record)


@keys.command("revoke")
def revoke(
    uid: UidArg,
    compromised: Annotated[
        bool, typer.Option("--compromised", help="Record a key compromise (state Compromised).")
    ] = False,
    server: ServerOpt = _DEFAULT_SERVER, pki: PkiOpt = _DEFAULT_PKI,
    identity: IdentityOpt = "admin", as_json: JsonOpt = False,
) -> None:
    """Take a key out of service (Deactivated, or Compromised); required before destroy."""
    from vmcrypt.kmip.tags import RevocationReasonCode

    reason = (RevocationReasonCode.KEY_COMPROMISE if compromised
              else RevocationReasonCode.CESSATION_OF_OPERATION)
    with _client(server, pki, identity) as client:
        client.revoke(uid, reason=reason)
    _done(as_json, f"revoked {uid}", {"key_id": uid, "revoked": True})


@keys.command("destroy")
def destroy(uid: UidArg, server: ServerOpt = _DEFAULT_SERVER, pki: PkiOpt = _DEFAULT_PKI,
            identity: IdentityOpt = "admin", as_json: JsonOpt = False) -> None:
    """Erase a key's material for good (revoke it first). Data under it becomes unreadable."""
    with _client(server, pki, identity) as client:
        client.destroy(uid)
    _done(as_json, f"destroyed {uid}", {"key_id": uid, "destroyed": True})


@keys.command("export")
def export(
    uid: UidArg,
    output: Annotated[
        Path, typer.Option("--out", "-o", help="KEK file to create (mode 0600, never "
                           "overwritten), usable with `vmcrypt disk --kek-file`.")
    ],
    server: ServerOpt = _DEFAULT_SERVER, pki: PkiOpt = _DEFAULT_PKI,
    identity: IdentityOpt = "admin", as_json: JsonOpt = False,
) -> None:
    """Write a key to a KEK file, for offline recovery with `vmcrypt disk`.

    This puts key material in a file in the clear: do it on purpose, keep the file
    where only you can read it, and delete it when done.
    """
    with _client(server, pki, identity) as client:
        key = client.get_key(uid)
    if len(key) != 32:
        raise UsageError(f"key {uid} is {len(key) * 8} bits; KEK files hold AES-256 keys")
    write_secret_file(output, key)
    _done(as_json, f"wrote key {uid} to {output} (check value {kek_key_id(key)})",
          {"key_id": uid, "file": str(output), "check_value": kek_key_id(key)})


def _done(as_json: bool, message: str, record: dict[str, Any]) -> None:
    if as_json:
        print_json(record)
    else:
        out.print(message, highlight=False)
