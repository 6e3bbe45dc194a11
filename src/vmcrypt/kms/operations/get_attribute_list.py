"""Get Attribute List — KMIP 1.4, 4.13: the names of the object's attributes."""

from __future__ import annotations

from vmcrypt.kmip.items import text
from vmcrypt.kmip.tags import Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, response


def run(ctx: Context, payload: Item) -> Item:
    """Every attribute name the object carries."""
    uid = ctx.uid(payload)
    obj = ctx.load(uid)
    return response(
        text(Tag.UNIQUE_IDENTIFIER, uid),
        *(text(Tag.ATTRIBUTE_NAME, name) for name in sorted(obj.attributes)),
    )
