"""``/storage-policies``: create, list and read VM storage policies.

Creating one needs ``StorageProfile.Update`` and, because a policy is how encryption is
requested, ``Cryptographer.ManageEncryptionPolicy`` too.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from vmcrypt.control.api.deps import AuditedRoute, SessionDep, requires
from vmcrypt.control.api.schemas import StoragePolicyCreate, StoragePolicyPublic
from vmcrypt.control.db.models import StoragePolicy
from vmcrypt.control.db.repo import create_storage_policy
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.privileges import (
    CRYPTO_MANAGE_ENCRYPTION_POLICY,
    STORAGE_PROFILE_UPDATE,
    SYSTEM_READ,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/storage-policies", tags=["storage policies"], route_class=AuditedRoute
)


@router.post(
    "", status_code=201,
    dependencies=[requires(CRYPTO_MANAGE_ENCRYPTION_POLICY, STORAGE_PROFILE_UPDATE)],
)
def create(body: StoragePolicyCreate, session: SessionDep) -> StoragePolicyPublic:
    """Create a storage policy; an encryption one without a provider uses the default."""
    policy = create_storage_policy(
        session, name=body.name, encryption=body.encryption,
        key_provider_id=body.key_provider_id, description=body.description,
    )
    return StoragePolicyPublic.model_validate(policy)


@router.get("", dependencies=[requires(SYSTEM_READ)])
def list_all(session: SessionDep) -> list[StoragePolicyPublic]:
    """Every storage policy, oldest first."""
    rows = session.scalars(select(StoragePolicy).order_by(StoragePolicy.id))
    return [StoragePolicyPublic.model_validate(row) for row in rows]


@router.get("/{policy_id}", dependencies=[requires(SYSTEM_READ)])
def get(policy_id: int, session: SessionDep) -> StoragePolicyPublic:
    """One storage policy."""
    return StoragePolicyPublic.model_validate(fetch(session, StoragePolicy, policy_id))
