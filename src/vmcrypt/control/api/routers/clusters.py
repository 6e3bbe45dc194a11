"""``/clusters``: create, list and read clusters (deletion waits for the VM work)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from vmcrypt.control.api.deps import AuditedRoute, SessionDep, requires
from vmcrypt.control.api.schemas import ClusterCreate, ClusterPublic
from vmcrypt.control.db.models import Cluster
from vmcrypt.control.db.repo import create_cluster
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.privileges import HOST_CREATE_CLUSTER, SYSTEM_READ

__all__ = ["router"]

router = APIRouter(prefix="/clusters", tags=["clusters"], route_class=AuditedRoute)


@router.post("", status_code=201, dependencies=[requires(HOST_CREATE_CLUSTER)])
def create(body: ClusterCreate, session: SessionDep) -> ClusterPublic:
    """Create an empty cluster; hosts join it when they are registered."""
    return ClusterPublic.model_validate(create_cluster(session, name=body.name))


@router.get("", dependencies=[requires(SYSTEM_READ)])
def list_all(session: SessionDep) -> list[ClusterPublic]:
    """Every cluster, oldest first."""
    rows = session.scalars(select(Cluster).order_by(Cluster.id))
    return [ClusterPublic.model_validate(row) for row in rows]


@router.get("/{cluster_id}", dependencies=[requires(SYSTEM_READ)])
def get(cluster_id: int, session: SessionDep) -> ClusterPublic:
    """One cluster."""
    return ClusterPublic.model_validate(fetch(session, Cluster, cluster_id))
