"""Activate — KMIP 1.4, 4.19: a Pre-Active key becomes Active.

"Only the object with a State of Pre-Active can be activated"; anything else is an
Illegal Operation (wrong state).
"""

from __future__ import annotations

from vmcrypt.kmip.items import date_time, enum, text
from vmcrypt.kmip.tags import ResultReason, State, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, response, state_of
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.objects import touch


def run(ctx: Context, payload: Item) -> Item:
    """Pre-Active → Active, with Activation Date now."""
    uid = ctx.uid(payload)
    obj = ctx.load(uid)
    state = state_of(obj)
    if state is not State.PRE_ACTIVE:
        raise OperationError(
            ResultReason.ILLEGAL_OPERATION,
            f"object {uid!r} is {state.name.replace('_', '-').title()}; only a Pre-Active "
            "object can be activated",
        )
    ctx.store.put_attribute(uid, "State", 0, enum(Tag.ATTRIBUTE_VALUE, State.ACTIVE))
    ctx.store.put_attribute(uid, "Activation Date", 0, date_time(Tag.ATTRIBUTE_VALUE, ctx.now))
    touch(ctx, obj)
    return response(text(Tag.UNIQUE_IDENTIFIER, uid))
