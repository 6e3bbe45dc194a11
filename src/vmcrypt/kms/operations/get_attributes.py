"""Get Attributes — KMIP 1.4, 4.12.

"If no Attribute Name is specified, then all attributes SHALL be returned." Names the
object does not have are simply absent from the response (vCenter asks for
``x-Product_Version`` on keys that may not carry it).
"""

from __future__ import annotations

from vmcrypt.kmip.attributes import Attribute
from vmcrypt.kmip.items import find_all, text
from vmcrypt.kmip.tags import ResultReason, Tag
from vmcrypt.kmip.ttlv import Item, ItemType
from vmcrypt.kms.context import Context, response
from vmcrypt.kms.errors import OperationError


def run(ctx: Context, payload: Item) -> Item:
    """The requested attributes (every instance, with its index when multi-valued)."""
    uid = ctx.uid(payload)
    names: list[str] = []
    for item in find_all(payload, Tag.ATTRIBUTE_NAME):
        if item.type is not ItemType.TEXT_STRING or not isinstance(item.value, str):
            raise OperationError(ResultReason.INVALID_MESSAGE, "Attribute Name must be text")
        names.append(item.value)
    obj = ctx.load(uid)
    wanted = names or sorted(obj.attributes)
    out: list[Item] = []
    for name in dict.fromkeys(wanted):
        instances = obj.attributes.get(name, {})
        for index in sorted(instances):
            out.append(Attribute(name, instances[index],
                                 index if len(instances) > 1 or index else None).to_item())
    return response(text(Tag.UNIQUE_IDENTIFIER, uid), *out)
