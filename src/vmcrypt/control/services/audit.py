"""The audit event of a cryptographic operation: who did what to which VM, with which key.

The HTTP audit event (``api/deps.py``) says a request was made; this one says what
the operation did in the domain's words — the VM, the component (``home``,
``disk-N``, ``vtpm``, ``all``), the key provider and the key ID — so an operator can
answer "which VMs used key X, and who re-keyed them" from the event log alone.
It carries key IDs only, never key bytes.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.orm import Session

from vmcrypt.control.db.models import Event, Severity, VirtualMachine
from vmcrypt.control.db.repo.events import append_event

__all__ = ["CRYPTO_EVENT_PREFIX", "crypto_event"]

#: Every cryptographic-operation event type starts with this (``crypto.encrypt``…).
CRYPTO_EVENT_PREFIX: Final = "crypto."


def crypto_event(
    session: Session,
    *,
    operation: str,
    vm: VirtualMachine,
    component: str,
    user_name: str | None,
    provider: str | None = None,
    key_id: str | None = None,
    result: str = "succeeded",
    message: str | None = None,
    details: dict[str, object] | None = None,
) -> Event:
    """Append ``crypto.<operation>`` for ``vm``; a failed ``result`` is an error event.

    ``operation`` is a verb such as ``create``, ``encrypt``, ``decrypt``,
    ``rekey-shallow``, ``rekey-deep``, ``add-disk``, ``add-vtpm``, ``clone``,
    ``migrate``, ``unregister`` or ``delete``.
    """
    severity = Severity.INFO if result in ("succeeded", "started") else Severity.ERROR
    text = message or (f"{operation} of {component} of VM {vm.name!r}: {result}"
                       + (f" (key {key_id})" if key_id else ""))
    facts: dict[str, object] = {
        "vm": vm.name, "instance_uuid": vm.instance_uuid, "component": component,
        "provider": provider, "key_id": key_id, "result": result,
    }
    facts.update(details or {})
    return append_event(session, type=f"{CRYPTO_EVENT_PREFIX}{operation}", message=text,
                        severity=severity, object_type="vm", object_id=vm.id,
                        user_name=user_name, details=facts)
