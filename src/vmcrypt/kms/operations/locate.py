"""Locate — KMIP 1.4, 4.9: find objects whose attributes match every attribute given.

Matching is by equal value, for standard and custom attributes alike; a Name matches on
its value and type. "If a date attribute is specified twice, the server SHALL return
objects whose value lies between the two dates" — that range is checked here; the
equality filters run in SQL. Maximum Items and Offset Items (1.3) bound the answer;
Located Items (1.3) reports how many matched in all.
"""

from __future__ import annotations

from datetime import datetime

from vmcrypt.kmip.attributes import Attribute
from vmcrypt.kmip.items import find_all, get_int, integer, text
from vmcrypt.kmip.messages import ProtocolVersion
from vmcrypt.kmip.tags import ResultReason, StorageStatusMask, Tag
from vmcrypt.kmip.ttlv import Item, ItemType
from vmcrypt.kms.context import Context, response
from vmcrypt.kms.errors import OperationError

_LOCATED_ITEMS_SINCE = ProtocolVersion(1, 3)


def run(ctx: Context, payload: Item) -> Item:
    """The matching Unique Identifiers, oldest first."""
    maximum = get_int(payload, Tag.MAXIMUM_ITEMS, required=False)
    offset = get_int(payload, Tag.OFFSET_ITEMS, required=False) or 0
    mask = get_int(payload, Tag.STORAGE_STATUS_MASK, required=False)
    if (maximum is not None and maximum < 0) or offset < 0:
        raise OperationError(ResultReason.INVALID_FIELD, "Maximum/Offset Items must be >= 0")
    equal, ranges = _filters([Attribute.from_item(i) for i in find_all(payload, Tag.ATTRIBUTE)])
    if mask is not None and not mask & StorageStatusMask.ONLINE_STORAGE:
        found: list[str] = []  # this server archives nothing
    else:
        found = ctx.store.candidates(equal)
    if ranges:
        found = [uid for uid in found if _in_ranges(ctx, uid, ranges)]
    total = len(found)
    found = found[offset:]
    if maximum is not None:
        found = found[:maximum]
    if len(found) == 1:
        # The OASIS Tape Library cases (TL-M-3-14) batch Locate with Get/Modify Attribute
        # that name no object: a single match becomes the ID Placeholder. With several
        # matches the placeholder is left alone, so a following item cannot pick one by luck.
        ctx.id_placeholder = found[0]
    located = integer(Tag.LOCATED_ITEMS, total) if ctx.version >= _LOCATED_ITEMS_SINCE else None
    return response(located, *(text(Tag.UNIQUE_IDENTIFIER, uid) for uid in found))


def _filters(attributes: list[Attribute]
             ) -> tuple[list[tuple[str, Item]], list[tuple[str, datetime, datetime]]]:
    """Equality filters for SQL, and date ranges (a date attribute given twice)."""
    dates: dict[str, list[datetime]] = {}
    equal: list[tuple[str, Item]] = []
    for attribute in attributes:
        if attribute.value.type is ItemType.DATE_TIME and isinstance(
                attribute.value.value, datetime):
            dates.setdefault(attribute.name, []).append(attribute.value.value)
        else:
            equal.append((attribute.name, attribute.value))
    ranges: list[tuple[str, datetime, datetime]] = []
    for name, values in dates.items():
        if len(values) == 1:
            equal.append((name, Item(Tag.ATTRIBUTE_VALUE, ItemType.DATE_TIME, values[0])))
        elif len(values) == 2:
            ranges.append((name, min(values), max(values)))
        else:
            raise OperationError(
                ResultReason.INVALID_FIELD, f"date attribute {name!r} given more than twice"
            )
    return equal, ranges


def _in_ranges(ctx: Context, uid: str, ranges: list[tuple[str, datetime, datetime]]) -> bool:
    obj = ctx.store.load(uid)
    for name, low, high in ranges:
        values = [v.value for v in obj.values(name) if isinstance(v.value, datetime)]
        if not any(low <= value <= high for value in values):
            return False
    return True
