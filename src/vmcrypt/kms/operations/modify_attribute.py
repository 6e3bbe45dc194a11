"""Modify Attribute — KMIP 1.4, 4.15: replace the value of one existing attribute instance.

"If no Attribute Index is specified in the request, then the Attribute Index SHALL be
assumed to be 0." Activation Date may change only while the key is Pre-Active (3.24);
setting it to now or earlier activates the key. Changing it later is Permission Denied,
the reason the OASIS case SKLC-M-3-14 expects.
"""

from __future__ import annotations

from datetime import datetime

from vmcrypt.kmip.attributes import Attribute
from vmcrypt.kmip.items import enum, find, text
from vmcrypt.kmip.tags import ResultReason, State, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, response, state_of
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.objects import check_client_may_set, touch


def run(ctx: Context, payload: Item) -> Item:
    """Replace one attribute instance's value."""
    uid = ctx.uid(payload)
    raw = find(payload, Tag.ATTRIBUTE)
    if raw is None:
        raise OperationError(ResultReason.MISSING_DATA, "Modify Attribute needs an Attribute")
    attribute = Attribute.from_item(raw)
    obj = ctx.load(uid)
    check_client_may_set(attribute, on_create=False)
    index = attribute.index or 0
    if index not in obj.attributes.get(attribute.name, {}):
        raise OperationError(
            ResultReason.ITEM_NOT_FOUND,
            f"object {uid!r} has no {attribute.name!r} at index {index}; "
            "use Add Attribute to create it",
        )
    if attribute.name == "Activation Date":
        if state_of(obj) is not State.PRE_ACTIVE:
            raise OperationError(
                ResultReason.PERMISSION_DENIED,
                "Activation Date can only change while the key is Pre-Active",
            )
        if isinstance(attribute.value.value, datetime) and attribute.value.value <= ctx.now:
            ctx.store.put_attribute(uid, "State", 0, enum(Tag.ATTRIBUTE_VALUE, State.ACTIVE))
    ctx.store.put_attribute(uid, attribute.name, index, attribute.value)
    touch(ctx, obj)
    return response(
        text(Tag.UNIQUE_IDENTIFIER, uid),
        Attribute(attribute.name, attribute.value, attribute.index).to_item(),
    )
