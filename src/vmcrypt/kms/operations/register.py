"""Register — KMIP 1.4, 4.3: a client hands the server a key it made itself."""

from __future__ import annotations

from vmcrypt.kmip.items import find, get_enum, text
from vmcrypt.kmip.tags import KeyFormatType, ObjectType, ResultReason, Tag
from vmcrypt.kmip.ttlv import Item, ItemType
from vmcrypt.kms.context import Context, response
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.objects import digest, new_key_object, template_attributes


def _material(symmetric_key: Item) -> tuple[bytes, int | None]:
    block = find(symmetric_key, Tag.KEY_BLOCK)
    if block is None:
        raise OperationError(ResultReason.MISSING_DATA, "the Symmetric Key has no Key Block")
    key_format = get_enum(block, Tag.KEY_FORMAT_TYPE)
    if find(block, Tag.KEY_WRAPPING_DATA) is not None:
        raise OperationError(
            ResultReason.FEATURE_NOT_SUPPORTED, "registering wrapped keys is not supported"
        )
    value = find(block, Tag.KEY_VALUE)
    if value is None or value.type is not ItemType.STRUCTURE:
        raise OperationError(ResultReason.MISSING_DATA, "the Key Block has no Key Value")
    material = find(value, Tag.KEY_MATERIAL)
    if material is None:
        raise OperationError(ResultReason.MISSING_DATA, "the Key Value has no Key Material")
    if key_format == KeyFormatType.RAW and isinstance(material.value, bytes):
        raw = material.value
    elif key_format == KeyFormatType.TRANSPARENT_SYMMETRIC_KEY and material.type is (
        ItemType.STRUCTURE
    ):
        key = find(material, Tag.KEY)
        if key is None or not isinstance(key.value, bytes):
            raise OperationError(ResultReason.MISSING_DATA, "the Key Material has no Key")
        raw = key.value
    else:
        raise OperationError(
            ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
            f"Key Format Type {key_format} is not accepted; use Raw or Transparent Symmetric Key",
        )
    length = find(block, Tag.CRYPTOGRAPHIC_LENGTH)
    declared = length.value if length is not None and isinstance(length.value, int) else None
    if declared is not None and declared != len(raw) * 8:
        raise OperationError(
            ResultReason.INVALID_FIELD,
            f"Cryptographic Length says {declared} bits but the key has {len(raw) * 8}",
        )
    return raw, declared


def run(ctx: Context, payload: Item) -> Item:
    """Store the client's key with its attributes."""
    object_type = get_enum(payload, Tag.OBJECT_TYPE)
    if object_type != ObjectType.SYMMETRIC_KEY:
        raise OperationError(
            ResultReason.INVALID_FIELD, f"Register accepts symmetric keys only, not {object_type}"
        )
    symmetric_key = find(payload, Tag.SYMMETRIC_KEY)
    if symmetric_key is None:
        raise OperationError(ResultReason.MISSING_DATA, "Register needs the Symmetric Key object")
    raw, _ = _material(symmetric_key)
    block = find(symmetric_key, Tag.KEY_BLOCK)
    assert block is not None
    algorithm = find(block, Tag.CRYPTOGRAPHIC_ALGORITHM)
    obj = new_key_object(
        ctx,
        attributes=template_attributes(payload),
        key_length=len(raw) * 8,
        algorithm=algorithm.value if algorithm is not None and isinstance(
            algorithm.value, int) else None,
    )
    obj.attributes["Digest"] = {0: digest(raw)}
    ctx.store.insert(obj, raw)
    ctx.id_placeholder = obj.uid
    return response(text(Tag.UNIQUE_IDENTIFIER, obj.uid))
