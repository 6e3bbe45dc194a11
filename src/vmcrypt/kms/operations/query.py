"""Query — KMIP 1.4, 4.25: what this server offers.

Answers Query Operations, Query Objects and Query Server Information (vCenter's health
check asks for the last); the other query functions are answered with nothing, which
the spec allows ("the server SHALL return … the information it is able to").
"""

from __future__ import annotations

from vmcrypt import __version__
from vmcrypt.kmip.items import enum, find_all, structure, text
from vmcrypt.kmip.tags import ObjectType, Operation, QueryFunction, ResultReason, Tag
from vmcrypt.kmip.ttlv import Item, ItemType
from vmcrypt.kms.context import Context, response
from vmcrypt.kms.errors import OperationError

VENDOR = "vmcrypt"


def run(ctx: Context, payload: Item) -> Item:
    """Answer each Query Function asked."""
    from vmcrypt.kms.dispatch import OPERATIONS

    functions: list[int] = []
    for item in find_all(payload, Tag.QUERY_FUNCTION):
        if item.type is not ItemType.ENUMERATION or not isinstance(item.value, int):
            raise OperationError(ResultReason.INVALID_MESSAGE, "Query Function must be an enum")
        functions.append(item.value)
    out: list[Item] = []
    if QueryFunction.QUERY_OPERATIONS in functions:
        out += [enum(Tag.OPERATION, op) for op in sorted(OPERATIONS)]
    if QueryFunction.QUERY_OBJECTS in functions:
        out.append(enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY))
    if QueryFunction.QUERY_SERVER_INFORMATION in functions:
        out.append(text(Tag.VENDOR_IDENTIFICATION, f"{VENDOR} {__version__}"))
        out.append(structure(Tag.SERVER_INFORMATION))
    return response(*out)


__all__ = ["VENDOR", "Operation", "run"]
