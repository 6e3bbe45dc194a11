"""Add Attribute — KMIP 1.4, 4.14: a new attribute, or a new instance of a multi-valued one.

"The Attribute Index SHALL NOT be specified in the request"; the response carries the
index the server chose (the lowest unused one, 2.1.1). Custom ``x-`` attributes are the
point here: vCenter adds ``x-Vendor``, ``x-Product``, ``x-Product_Version`` and later
``x-Component``, ``x-Name``, ``x-Identifier`` this way.
"""

from __future__ import annotations

from vmcrypt.kmip.attributes import SPECS, Attribute
from vmcrypt.kmip.items import find, text
from vmcrypt.kmip.tags import ResultReason, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, response
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.objects import check_client_may_set, touch


def run(ctx: Context, payload: Item) -> Item:
    """Add one attribute instance."""
    uid = ctx.uid(payload)
    raw = find(payload, Tag.ATTRIBUTE)
    if raw is None:
        raise OperationError(ResultReason.MISSING_DATA, "Add Attribute needs an Attribute")
    attribute = Attribute.from_item(raw)
    if attribute.index is not None:
        raise OperationError(
            ResultReason.INVALID_FIELD, "Add Attribute must not carry an Attribute Index"
        )
    obj = ctx.load(uid)
    check_client_may_set(attribute, on_create=False)
    instances = obj.attributes.get(attribute.name, {})
    spec = SPECS.get(attribute.name)
    # 3.39: custom attributes may have several instances; standard ones follow SPECS.
    if instances and spec is not None and not spec.multi:
        raise OperationError(
            ResultReason.ILLEGAL_OPERATION,
            f"object {uid!r} already has {attribute.name!r}; use Modify Attribute to change it",
        )
    index = 0
    while index in instances:
        index += 1
    ctx.store.put_attribute(uid, attribute.name, index, attribute.value)
    touch(ctx, obj)
    return response(
        text(Tag.UNIQUE_IDENTIFIER, uid),
        Attribute(attribute.name, attribute.value, index if index else None).to_item(),
    )
