"""``/datastores``: create, list and read datastores (a cluster's or a host's)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from vmcrypt.control.api.deps import AuditedRoute, SessionDep, requires
from vmcrypt.control.api.schemas import DatastoreCreate, DatastorePublic
from vmcrypt.control.db.models import Datastore
from vmcrypt.control.db.repo import create_datastore
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.privileges import DATASTORE_CONFIG, SYSTEM_READ

__all__ = ["router"]

router = APIRouter(prefix="/datastores", tags=["datastores"], route_class=AuditedRoute)


@router.post("", status_code=201, dependencies=[requires(DATASTORE_CONFIG)])
def create(body: DatastoreCreate, session: SessionDep) -> DatastorePublic:
    """Create a datastore shared by a cluster, or local to one host."""
    store = create_datastore(
        session, name=body.name, path=body.path, cluster_id=body.cluster_id,
        host_id=body.host_id,
    )
    return DatastorePublic.model_validate(store)


@router.get("", dependencies=[requires(SYSTEM_READ)])
def list_all(session: SessionDep) -> list[DatastorePublic]:
    """Every datastore, oldest first."""
    rows = session.scalars(select(Datastore).order_by(Datastore.id))
    return [DatastorePublic.model_validate(row) for row in rows]


@router.get("/{datastore_id}", dependencies=[requires(SYSTEM_READ)])
def get(datastore_id: int, session: SessionDep) -> DatastorePublic:
    """One datastore."""
    return DatastorePublic.model_validate(fetch(session, Datastore, datastore_id))
