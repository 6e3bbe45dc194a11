"""``/key-providers``: standard (KMIP) and native providers, the default, backups.

A standard provider is stored with its KMS servers' public material only. A native
provider's 256-bit primary key is generated here by
:class:`~vmcrypt.providers.NativeKeyProvider` and stored only **sealed** under the
control plane's master key; no response, event or log line carries it — except the
password-protected ``.p12`` backup, which exists to carry it.

Health (``GET …/{id}/health``, and ``health`` in the listing) is read from the health
board the provider monitor writes (:mod:`vmcrypt.control.provider_monitor`), never
probed by the request: a dead key server must not make the listing hang.

A native provider without a backup is the seeds' "native key provider not backed up"
alarm: creating one appends a ``native.not.backed.up`` warning, acknowledging the risk
appends another saying it was accepted (and by whom), and a backup appends
``native.backed.up``, which clears it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from vmcrypt.control.api.deps import AuditedRoute, CurrentUser, SessionDep, requires
from vmcrypt.control.api.schemas import (
    BackupInfoPublic,
    BackupRequest,
    KeyProviderHealthPublic,
    KeyProviderPublic,
    KeyProviderWithHealthPublic,
    KmsServerCreate,
    KmsServerPublic,
    NativeProviderCreate,
    ProviderHealthPublic,
    RestoreRequest,
    ServerHealthPublic,
    StandardProviderCreate,
)
from vmcrypt.control.db.models import Host, KeyProvider, ProviderKind, Severity
from vmcrypt.control.db.repo import (
    add_kms_server,
    append_event,
    create_key_provider,
    remove_kms_server,
    set_default_provider,
)
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict
from vmcrypt.control.health import HealthBoard
from vmcrypt.control.privileges import CRYPTO_MANAGE_KEY_SERVERS, SYSTEM_READ
from vmcrypt.control.services.keys import (
    HostConnector,
    push_native_provider,
    withdraw_native_provider,
)
from vmcrypt.exceptions import UsageError
from vmcrypt.providers import NativeKeyProvider
from vmcrypt.providers.exceptions import NotBackedUp

__all__ = ["router"]

router = APIRouter(prefix="/key-providers", tags=["key providers"], route_class=AuditedRoute)
_MANAGE = requires(CRYPTO_MANAGE_KEY_SERVERS)
_P12 = "application/x-pkcs12"


def master_key(request: Request) -> bytes:
    """The control plane's master key, which seals native primary keys."""
    key: bytes = request.app.state.master_key
    return key


MasterKey = Annotated[bytes, Depends(master_key)]


def _host_connector(request: Request) -> HostConnector | None:
    """The way to reach host agents, when this control plane has one (tests may not)."""
    hosts: HostConnector | None = getattr(request.app.state, "hosts", None)
    return hosts


MaybeHosts = Annotated[HostConnector | None, Depends(_host_connector)]


def _board(request: Request) -> HealthBoard:
    """The health board the monitors write (``create_app`` always sets one)."""
    board: HealthBoard = request.app.state.health
    return board


Board = Annotated[HealthBoard, Depends(_board)]


def _health(board: HealthBoard, name: str) -> ProviderHealthPublic:
    """The provider's last probe from the board; ``unknown`` before the first."""
    found = board.provider(name)
    if found is None:
        return ProviderHealthPublic(state="unknown")
    health, checked_at = found
    return ProviderHealthPublic(
        state=health.state, checked_at=checked_at, warnings=list(health.warnings),
        servers=[ServerHealthPublic(
            address=s.address, reachable=s.reachable, tls_ok=s.tls_ok,
            latency_ms=s.latency_ms, version=s.version, error=s.error,
            certificate_expires_at=s.certificate_expires_at,
        ) for s in health.servers])


def _not_backed_up_event(session: Session, row: KeyProvider, *, accepted_by: str | None) -> None:
    """The seeds' "native key provider not backed up" alarm, or its acknowledgement."""
    if accepted_by is None:
        message = (f"native key provider {row.name!r} is not backed up: back it up "
                   "(POST /key-providers/{id}/backup) or acknowledge the risk; it cannot "
                   "be used until then")
    else:
        message = (f"native key provider {row.name!r} is not backed up; {accepted_by} "
                   "accepted the risk, so it may be used: losing the control plane's "
                   "database or master key now loses its VMs' keys")
    append_event(session, type=NotBackedUp.event, severity=Severity.WARNING,
                 object_type="key_provider", object_id=row.id, user_name=accepted_by,
                 message=message,
                 details={"provider": row.name, "acknowledged": accepted_by is not None})


def _push_if_usable(session: Session, hosts: HostConnector | None, row: KeyProvider,
                    native: NativeKeyProvider, sealing_key: bytes) -> None:
    """Seeds: the control plane pushes a native provider's primary key to the hosts.

    It is pushed once the provider may be used (backed up, or the risk acknowledged —
    the backup gate); hosts that fail get the "adding keys to the host failed" event.
    """
    if hosts is None or not native.usable:
        return
    push_native_provider(session, hosts, row, sealing_key=sealing_key,
                         targets=session.scalars(select(Host)).all())


@router.post("/standard", status_code=201, dependencies=[_MANAGE])
def create_standard(body: StandardProviderCreate, session: SessionDep) -> KeyProviderPublic:
    """Add a standard provider and its KMS servers, tried in the order given."""
    provider = create_key_provider(
        session, name=body.name, kind=ProviderKind.STANDARD, is_default=body.is_default
    )
    for server in body.kms_servers:
        add_kms_server(
            session, provider_id=provider.id, name=server.name, address=server.address,
            port=server.port, ca_pem=server.ca_pem, client_cert_pem=server.client_cert_pem,
            client_key_path=server.client_key_path,
        )
    return KeyProviderPublic.model_validate(provider)


@router.post("/{provider_id}/kms-servers", status_code=201, dependencies=[_MANAGE])
def add_server(provider_id: int, body: KmsServerCreate, session: SessionDep) -> KmsServerPublic:
    """Append a KMS server to a standard provider's failover order (tried last)."""
    provider = fetch(session, KeyProvider, provider_id)
    if provider.kind is not ProviderKind.STANDARD:
        raise Conflict(f"key provider {provider.name!r} is {provider.kind}: KMS servers "
                       "are added to standard providers")
    server = add_kms_server(
        session, provider_id=provider.id, name=body.name, address=body.address,
        port=body.port, ca_pem=body.ca_pem, client_cert_pem=body.client_cert_pem,
        client_key_path=body.client_key_path)
    return KmsServerPublic.model_validate(server)


@router.delete("/{provider_id}/kms-servers/{server_id}", status_code=204,
               dependencies=[_MANAGE])
def remove_server(provider_id: int, server_id: int, session: SessionDep) -> Response:
    """Take a KMS server out of the failover order; the last one stays."""
    remove_kms_server(session, provider_id=provider_id, server_id=server_id)
    return Response(status_code=204)


@router.post("/native", status_code=201, dependencies=[_MANAGE])
def create_native(
    body: NativeProviderCreate, session: SessionDep, sealing_key: MasterKey
) -> KeyProviderPublic:
    """Add a native provider: a fresh primary key, stored sealed under the master key.

    Like vSphere's, it is unusable until backed up (``POST …/backup``) or until the
    administrator acknowledges the risk; until then a ``native.not.backed.up`` warning
    stands in the event log.
    """
    native = NativeKeyProvider.create(body.name, sealing_key=sealing_key)
    row = _store_native(session, native, is_default=body.is_default)
    if not native.backed_up:
        _not_backed_up_event(session, row, accepted_by=None)
    return KeyProviderPublic.model_validate(row)


@router.get("", dependencies=[requires(SYSTEM_READ)])
def list_all(session: SessionDep, board: Board,
             health: bool = False) -> list[KeyProviderWithHealthPublic]:
    """Every key provider with its KMS servers, oldest first; with ``health=true`` each
    carries its last health probe too (``null`` otherwise, so the listing of stored
    state does not change between two probes)."""
    query = select(KeyProvider).options(selectinload(KeyProvider.kms_servers))
    rows = session.scalars(query.order_by(KeyProvider.id))
    return [KeyProviderWithHealthPublic.model_validate(row).model_copy(
        update={"health": _health(board, row.name) if health else None}) for row in rows]


@router.get("/{provider_id}/health", dependencies=[requires(SYSTEM_READ)])
def provider_health(provider_id: int, session: SessionDep, board: Board) -> KeyProviderHealthPublic:
    """The provider's last probe: state, each KMS server's reachability, latency,
    certificate expiry and error, and when it was checked (``unknown`` before the first
    probe, which comes within one ``--provider-check-interval``)."""
    row = fetch(session, KeyProvider, provider_id)
    found = _health(board, row.name)
    return KeyProviderHealthPublic(provider_id=row.id, name=row.name, kind=row.kind,
                                   **found.model_dump())


@router.get("/{provider_id}", dependencies=[requires(SYSTEM_READ)])
def get(provider_id: int, session: SessionDep) -> KeyProviderPublic:
    """One key provider with its KMS servers."""
    return KeyProviderPublic.model_validate(fetch(session, KeyProvider, provider_id))


@router.post("/{provider_id}/default", dependencies=[_MANAGE])
def make_default(provider_id: int, session: SessionDep) -> KeyProviderPublic:
    """Make this provider the default (used by encryption policies that name none)."""
    return KeyProviderPublic.model_validate(set_default_provider(session, provider_id=provider_id))


@router.delete("/{provider_id}", status_code=204, dependencies=[_MANAGE])
def delete(provider_id: int, session: SessionDep, hosts: MaybeHosts) -> Response:
    """Remove a provider that no storage policy or encrypted component uses.

    A native provider's primary key is then withdrawn from every host (seeds: deletions
    are pushed to the hosts too).
    """
    provider = fetch(session, KeyProvider, provider_id)
    try:
        with session.begin_nested():
            session.delete(provider)
    except IntegrityError as exc:
        raise Conflict(
            f"key provider {provider.name!r} is still used by a storage policy or an "
            "encrypted VM or disk: change those first"
        ) from exc
    if hosts is not None and provider.kind is ProviderKind.NATIVE:
        withdraw_native_provider(session, hosts, provider,
                                 targets=session.scalars(select(Host)).all())
    return Response(status_code=204)


@router.post(
    "/{provider_id}/backup", dependencies=[_MANAGE],
    response_class=Response,
    responses={200: {"content": {_P12: {}}, "description": "the .p12 backup"}},
)
def backup(
    provider_id: int, body: BackupRequest, session: SessionDep, sealing_key: MasterKey,
    hosts: MaybeHosts,
) -> Response:
    """Export a native provider's primary key as a password-protected ``.p12``.

    The one response that carries the key, under the caller's password; it marks the
    provider backed up, as vSphere does, since the file's fate is out of our sight.
    """
    row = fetch(session, KeyProvider, provider_id)
    native = _load_native(row, sealing_key)
    data = native.export_backup(body.password)
    was_backed_up, row.backed_up = row.backed_up, native.backed_up
    session.flush()
    if not was_backed_up:
        append_event(session, type="native.backed.up", severity=Severity.INFO,
                     object_type="key_provider", object_id=row.id,
                     message=f"native key provider {row.name!r} was backed up: the "
                             "not-backed-up alarm is cleared",
                     details={"provider": row.name})
    _push_if_usable(session, hosts, row, native, sealing_key)
    return Response(
        content=data, media_type=_P12,
        headers={"Content-Disposition": f'attachment; filename="{_filename(row.name)}.p12"'},
    )


@router.post("/{provider_id}/acknowledge-no-backup", dependencies=[_MANAGE])
def acknowledge_no_backup(
    provider_id: int, session: SessionDep, sealing_key: MasterKey, hosts: MaybeHosts,
    user: CurrentUser,
) -> KeyProviderPublic:
    """Accept the risk of a native provider without backup, so it may be used.

    The provider stays not ``backed_up`` (its health stays degraded); vSphere offers
    the same choice.
    """
    row = fetch(session, KeyProvider, provider_id)
    native = _load_native(row, sealing_key)
    native.acknowledge_no_backup()
    was_acknowledged, row.backup_acknowledged = (row.backup_acknowledged,
                                                 native.backup_acknowledged)
    session.flush()
    if not was_acknowledged and not row.backed_up:
        _not_backed_up_event(session, row, accepted_by=user.user_name)
    _push_if_usable(session, hosts, row, native, sealing_key)
    return KeyProviderPublic.model_validate(row)


@router.post("/restore", dependencies=[_MANAGE])
def restore(
    body: RestoreRequest, session: SessionDep, sealing_key: MasterKey, hosts: MaybeHosts
) -> KeyProviderPublic | BackupInfoPublic:
    """Re-create a native provider from its backup; ``dry_run`` only checks the file.

    A dry run opens the file with the password and reports the provider ID,
    fingerprint and creation time it holds, changing nothing — so an operator can
    confirm the right file before restoring. A provider of that name must not exist.
    """
    data = _decode_backup(body.backup)
    if body.dry_run:
        info = NativeKeyProvider.restore(
            data, body.password, sealing_key=sealing_key, dry_run=True
        )
        return BackupInfoPublic(
            provider_id=info.provider_id, fingerprint=info.fingerprint,
            created_at=info.created_at,
        )
    native = NativeKeyProvider.restore(data, body.password, sealing_key=sealing_key)
    row = _store_native(session, native, is_default=False)
    _push_if_usable(session, hosts, row, native, sealing_key)  # restored = backed up
    return KeyProviderPublic.model_validate(row)


def _store_native(session: Session, native: NativeKeyProvider, *, is_default: bool) -> KeyProvider:
    record = native.to_record()
    provider = create_key_provider(
        session, name=native.provider_id, kind=ProviderKind.NATIVE,
        sealed_primary_key=base64.b64decode(record["sealed_primary_key"]),
        fingerprint=native.fingerprint, is_default=is_default,
    )
    provider.created_at = native.created_at
    provider.backed_up = native.backed_up
    provider.backup_acknowledged = native.backup_acknowledged
    session.flush()
    return provider


def _load_native(row: KeyProvider, sealing_key: bytes) -> NativeKeyProvider:
    if row.kind is not ProviderKind.NATIVE or row.sealed_primary_key is None:
        raise UsageError(f"key provider {row.name!r} is {row.kind}: only native ones have a backup")
    record = {
        "version": 1, "kind": "native", "provider_id": row.name,
        "sealed_primary_key": base64.b64encode(row.sealed_primary_key).decode("ascii"),
        "fingerprint": row.fingerprint, "created_at": row.created_at.isoformat(),
        "backed_up": row.backed_up, "backup_acknowledged": row.backup_acknowledged,
    }
    return NativeKeyProvider.from_record(record, sealing_key=sealing_key)


def _filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "provider"


def _decode_backup(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("backup must be the base64 of a .p12 file") from None
