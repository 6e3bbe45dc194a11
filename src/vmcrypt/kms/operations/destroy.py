"""Destroy — KMIP 1.4, 4.21.

"The key material for the specified Managed Object SHALL be destroyed … The meta-data
for the key material MAY be retained by the server." "Objects SHALL only be destroyed if
they are in either Pre-Active or Deactivated state" (Compromised objects too, becoming
Destroyed Compromised). Destroying an Active key is refused, as the OASIS test case
SKLC-M-2-14 expects: revoke it first.
"""

from __future__ import annotations

from vmcrypt.kmip.items import date_time, enum, text
from vmcrypt.kmip.tags import ResultReason, State, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, response, state_of
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.objects import touch

_NEXT = {
    State.PRE_ACTIVE: State.DESTROYED,
    State.DEACTIVATED: State.DESTROYED,
    State.COMPROMISED: State.DESTROYED_COMPROMISED,
}


def run(ctx: Context, payload: Item) -> Item:
    """Forget the key material; keep the object and its attributes."""
    uid = ctx.uid(payload)
    obj = ctx.load(uid)
    state = state_of(obj)
    if state is State.ACTIVE:
        raise OperationError(
            ResultReason.PERMISSION_DENIED,
            f"object {uid!r} is Active: revoke it before destroying it",
        )
    if state not in _NEXT:
        raise OperationError(
            ResultReason.ILLEGAL_OPERATION, f"object {uid!r} is already destroyed"
        )
    ctx.store.destroy_material(uid)
    ctx.store.put_attribute(uid, "State", 0, enum(Tag.ATTRIBUTE_VALUE, _NEXT[state]))
    ctx.store.put_attribute(uid, "Destroy Date", 0, date_time(Tag.ATTRIBUTE_VALUE, ctx.now))
    touch(ctx, obj)
    return response(text(Tag.UNIQUE_IDENTIFIER, uid))
