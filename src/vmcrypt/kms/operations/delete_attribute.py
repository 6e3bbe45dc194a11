"""Delete Attribute — KMIP 1.4, 4.16: remove one instance of a deletable attribute.

KMIP 1.x names the attribute by Attribute Name and optional Attribute Index (default 0)
directly in the payload; the response returns the deleted instance.
"""

from __future__ import annotations

from vmcrypt.kmip.attributes import SPECS, Attribute, is_custom
from vmcrypt.kmip.items import get_int, get_text, text
from vmcrypt.kmip.tags import ResultReason, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, response
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.objects import touch


def run(ctx: Context, payload: Item) -> Item:
    """Remove one attribute instance and return it."""
    uid = ctx.uid(payload)
    name = get_text(payload, Tag.ATTRIBUTE_NAME)
    assert name is not None
    index = get_int(payload, Tag.ATTRIBUTE_INDEX, required=False) or 0
    obj = ctx.load(uid)
    if name.startswith("y-") or (not is_custom(name) and (
            name not in SPECS or not SPECS[name].deletable)):
        raise OperationError(
            ResultReason.PERMISSION_DENIED, f"attribute {name!r} cannot be deleted by a client"
        )
    instances = obj.attributes.get(name, {})
    if index not in instances:
        raise OperationError(
            ResultReason.ITEM_NOT_FOUND, f"object {uid!r} has no {name!r} at index {index}"
        )
    ctx.store.delete_attribute(uid, name, index)
    touch(ctx, obj)
    return response(
        text(Tag.UNIQUE_IDENTIFIER, uid),
        Attribute(name, instances[index], index if index else None).to_item(),
    )
