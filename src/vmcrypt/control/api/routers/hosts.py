"""``/hosts``: register host records into a cluster, list and read them.

Registering a record is not enrolment: the host still has to present its enrolment
token and receive a certificate before the control plane talks to it, so its
``connection_state`` starts as ``disconnected`` and is never set through this API.

``GET /hosts/{id}`` adds the host monitor's last probe from the health board (KEKs
cached, native providers, VMs, running jobs, latency, when checked) — read from memory,
never a call to the host, so a hung host cannot make the inventory hang.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import select

from vmcrypt.control.api.deps import AuditedRoute, SessionDep, requires
from vmcrypt.control.api.schemas import HostCreate, HostDetailPublic, HostHealthPublic, HostPublic
from vmcrypt.control.db.models import Host
from vmcrypt.control.db.repo import create_host
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.health import HealthBoard
from vmcrypt.control.privileges import HOST_ADD_TO_CLUSTER, SYSTEM_READ

__all__ = ["router"]

router = APIRouter(prefix="/hosts", tags=["hosts"], route_class=AuditedRoute)


@router.post("", status_code=201, dependencies=[requires(HOST_ADD_TO_CLUSTER)])
def register(body: HostCreate, session: SessionDep) -> HostPublic:
    """Record a host (name, hardware UUID, agent URL) as a member of a cluster."""
    host = create_host(
        session, name=body.name, hardware_uuid=body.hardware_uuid,
        cluster_id=body.cluster_id, api_url=body.api_url,
    )
    return HostPublic.model_validate(host)


@router.get("", dependencies=[requires(SYSTEM_READ)])
def list_all(session: SessionDep, cluster_id: int | None = None) -> list[HostPublic]:
    """Every host, oldest first, or only those of ``cluster_id``."""
    query = select(Host).order_by(Host.id)
    if cluster_id is not None:
        query = query.where(Host.cluster_id == cluster_id)
    return [HostPublic.model_validate(row) for row in session.scalars(query)]


@router.get("/{host_id}", dependencies=[requires(SYSTEM_READ)])
def get(host_id: int, session: SessionDep, request: Request) -> HostDetailPublic:
    """One host, with its connection state and last health probe (``null`` before one)."""
    host = fetch(session, Host, host_id)
    board: HealthBoard = request.app.state.health
    seen = board.host(host.name)
    health = None if seen is None else HostHealthPublic(
        connected=seen.connected, keks=seen.keks, native_providers=seen.native_providers,
        vms=seen.vms, jobs_running=seen.jobs_running, latency_ms=seen.latency_ms,
        error=seen.error, attestation=seen.attestation, checked_at=seen.checked_at)
    return HostDetailPublic.model_validate(host).model_copy(update={"health": health})
