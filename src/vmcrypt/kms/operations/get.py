"""Get — KMIP 1.4, 4.11: return the key itself.

A Destroyed key has no material left (4.21 keeps only its metadata), so Get of it fails;
GetAttributes still answers.
"""

from __future__ import annotations

from vmcrypt.kmip.items import enum, find, get_enum, text
from vmcrypt.kmip.tags import KeyFormatType, ObjectType, ResultReason, State, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, response, state_of
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.objects import key_block

#: The attributes a Get reads: its state and what the Key Block states.
_NEEDED = ("State", "Cryptographic Algorithm", "Cryptographic Length")

#: The reason a Get of a destroyed key answers with.
DESTROYED_REASON = ResultReason.ITEM_NOT_FOUND


def run(ctx: Context, payload: Item) -> Item:
    """The object in the requested format."""
    uid = ctx.uid(payload)
    requested = get_enum(payload, Tag.KEY_FORMAT_TYPE, required=False)
    if find(payload, Tag.KEY_WRAPPING_SPECIFICATION) is not None:
        raise OperationError(
            ResultReason.FEATURE_NOT_SUPPORTED,
            "Get with a Key Wrapping Specification is not supported; keys travel over "
            "mutual TLS",
        )
    obj, material = ctx.load_with_material(uid, names=_NEEDED)
    if material is None or state_of(obj) in (State.DESTROYED, State.DESTROYED_COMPROMISED):
        raise OperationError(
            DESTROYED_REASON, f"object {uid!r} was destroyed: its key material no longer exists"
        )
    try:
        key_format = KeyFormatType(requested or KeyFormatType.RAW)
    except ValueError:
        raise OperationError(
            ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED, f"unknown Key Format Type {requested}"
        ) from None
    return response(
        enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        text(Tag.UNIQUE_IDENTIFIER, uid),
        key_block(obj, material, key_format),
    )
