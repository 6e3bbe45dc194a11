"""Encryption records from what a host reports: its keySafes are the truth.

After a host made or changed a VM (create, clone, register, a job that ended), the
control plane records each component's key provider and **key ID** — or, for a native
VM, the KEK as the host wrapped it — from the facts the host reads out of its keySafes.
One function, so create, clone, register and jobs record the same way.
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import KeyProvider, VirtualMachine
from vmcrypt.control.db.repo import encryption_records, record_encryption

__all__ = ["record_from_host"]


def record_from_host(session: Session, vm: VirtualMachine, disk_id: int | None,
                     facts: dict[str, Any]) -> None:
    """Record one component (VM home when ``disk_id`` is None) from the host's facts.

    ``facts`` holds ``provider_id`` and either ``key_id`` or ``wrapped_kek`` (base64).
    A record that already says the same is kept (with its creation time).
    """
    provider = session.scalars(
        select(KeyProvider).where(KeyProvider.name == facts["provider_id"])).one()
    wrapped = facts.get("wrapped_kek")
    wrapped_bytes = base64.b64decode(wrapped) if wrapped else None
    existing = next((r for r in encryption_records(session, vm_id=vm.id)
                     if r.disk_id == disk_id), None)
    if existing is not None and existing.key_provider_id == provider.id and (
            existing.key_id == facts.get("key_id")) and existing.wrapped_kek == wrapped_bytes:
        return
    if facts.get("key_id") is not None:
        record_encryption(session, vm_id=vm.id, key_provider_id=provider.id,
                          disk_id=disk_id, key_id=facts["key_id"])
    elif wrapped_bytes:
        record_encryption(session, vm_id=vm.id, key_provider_id=provider.id,
                          disk_id=disk_id, wrapped_kek=wrapped_bytes)
