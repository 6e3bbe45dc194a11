"""Create — KMIP 1.4, 4.1: the server generates a new symmetric key.

"The response contains the Unique Identifier of the created object. The server SHALL
copy the Unique Identifier returned by this operation into the ID Placeholder variable."
"""

from __future__ import annotations

import os

from vmcrypt.kmip.items import enum, get_enum, text
from vmcrypt.kmip.tags import ObjectType, ResultReason, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, response
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.objects import digest, new_key_object, template_attributes


def run(ctx: Context, payload: Item) -> Item:
    """Generate and store a key from the template's attributes."""
    object_type = get_enum(payload, Tag.OBJECT_TYPE)
    if object_type != ObjectType.SYMMETRIC_KEY:
        raise OperationError(
            ResultReason.INVALID_FIELD,
            f"Create makes symmetric keys only (Object Type {ObjectType.SYMMETRIC_KEY:#x}), "
            f"not Object Type {object_type}",
        )
    obj = new_key_object(ctx, attributes=template_attributes(payload))
    length = obj.first("Cryptographic Length")
    assert length is not None and isinstance(length.value, int)
    material = os.urandom(length.value // 8)
    obj.attributes["Digest"] = {0: digest(material)}
    ctx.store.insert(obj, material)
    ctx.id_placeholder = obj.uid
    return response(
        enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY), text(Tag.UNIQUE_IDENTIFIER, obj.uid)
    )
