"""Small builders and readers for TTLV items, so message code reads like the spec's tables.

Builders take the tag first (``text(Tag.NAME_VALUE, "k1")``); readers look children up by
tag and raise :class:`~vmcrypt.kmip.exceptions.MessageError` with the KMIP result reason
a server answers with (Invalid Message for a wrong type, Missing Data for an absent
required field), so operation code never checks types by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from vmcrypt.kmip.exceptions import MessageError
from vmcrypt.kmip.tags import ResultReason, Tag
from vmcrypt.kmip.ttlv import Item, ItemType, make_item

__all__ = [
    "boolean",
    "byte_string",
    "children",
    "date_time",
    "enum",
    "find",
    "find_all",
    "get_bool",
    "get_bytes",
    "get_enum",
    "get_int",
    "get_text",
    "integer",
    "long_integer",
    "structure",
    "tag_name",
    "text",
]


def structure(tag: int, *items: Item | None) -> Item:
    """A Structure of the given children; ``None`` children (optional fields) are left out."""
    return make_item(tag, ItemType.STRUCTURE, tuple(i for i in items if i is not None))


def text(tag: int, value: str) -> Item:
    """A Text String item."""
    return make_item(tag, ItemType.TEXT_STRING, value)


def byte_string(tag: int, value: bytes) -> Item:
    """A Byte String item."""
    return make_item(tag, ItemType.BYTE_STRING, value)


def integer(tag: int, value: int) -> Item:
    """A 32-bit Integer item."""
    return _cached(tag, ItemType.INTEGER, value)


def long_integer(tag: int, value: int) -> Item:
    """A 64-bit Long Integer item."""
    return make_item(tag, ItemType.LONG_INTEGER, value)


def enum(tag: int, value: int) -> Item:
    """An Enumeration item (pass an IntEnum member or its value)."""
    return _cached(tag, ItemType.ENUMERATION, int(value))


#: Enumeration and Integer items already built, by (tag, type, value). Items are
#: immutable, and a server answers with the same few (Operation, Result Status, Object
#: Type, Batch Count…) in every response: a lookup instead of a checked construction.
#: Bounded, since values may come from requests.
_ITEMS: dict[tuple[int, ItemType, int], Item] = {}
_MAX_CACHED = 4096


def _cached(tag: int, kind: ItemType, value: int) -> Item:
    key = (tag, kind, value)
    item = _ITEMS.get(key)
    if item is None:
        item = make_item(tag, kind, value)
        if len(_ITEMS) < _MAX_CACHED:
            _ITEMS[key] = item
    return item


def boolean(tag: int, value: bool) -> Item:
    """A Boolean item."""
    return make_item(tag, ItemType.BOOLEAN, value)


def date_time(tag: int, value: datetime) -> Item:
    """A Date-Time item; KMIP carries whole seconds (9.1.1.4), so microseconds are dropped."""
    return make_item(tag, ItemType.DATE_TIME, value.astimezone(UTC).replace(microsecond=0))


def tag_name(tag: int) -> str:
    """The spec's name of a tag for messages (``Unique Identifier``), or its hex value."""
    try:
        return Tag(tag).name.replace("_", " ").title()
    except ValueError:
        return f"tag {tag:#08x}"


def children(item: Item) -> tuple[Item, ...]:
    """The children of a Structure; any other type is an Invalid Message."""
    if item.type is not ItemType.STRUCTURE or not isinstance(item.value, tuple):
        raise MessageError(ResultReason.INVALID_MESSAGE, f"{tag_name(item.tag)} is not a structure")
    return item.value


def find(item: Item, tag: int) -> Item | None:
    """The first child with ``tag``, or ``None``."""
    for child in children(item):
        if child.tag == tag:
            return child
    return None


def find_all(item: Item, tag: int) -> list[Item]:
    """Every child with ``tag``, in order."""
    return [child for child in children(item) if child.tag == tag]


def _typed(item: Item | None, tag: int, kind: ItemType, *, parent: Item) -> Item | None:
    if item is None:
        return None
    if item.type is not kind:
        raise MessageError(
            ResultReason.INVALID_MESSAGE,
            f"{tag_name(tag)} in {tag_name(parent.tag)} must be a {kind.name.replace('_', ' ')}"
            f", not a {item.type.name.replace('_', ' ')}",
        )
    return item


def _missing(tag: int, parent: Item) -> MessageError:
    return MessageError(
        ResultReason.MISSING_DATA, f"{tag_name(parent.tag)} has no {tag_name(tag)}"
    )


def _get(parent: Item, tag: int, kind: ItemType, python: type, required: bool) -> object:
    """The value of the child ``tag`` of type ``kind``; None when optional and absent."""
    child = _typed(find(parent, tag), tag, kind, parent=parent)
    if child is None:
        if required:
            raise _missing(tag, parent)
        return None
    assert isinstance(child.value, python)
    return child.value


def get_text(parent: Item, tag: int, *, required: bool = True) -> str | None:
    """A Text String child's value (``None`` when optional and absent)."""
    return cast("str | None", _get(parent, tag, ItemType.TEXT_STRING, str, required))


def get_bytes(parent: Item, tag: int, *, required: bool = True) -> bytes | None:
    """A Byte String child's value."""
    return cast("bytes | None", _get(parent, tag, ItemType.BYTE_STRING, bytes, required))


def get_int(parent: Item, tag: int, *, required: bool = True) -> int | None:
    """An Integer child's value."""
    return cast("int | None", _get(parent, tag, ItemType.INTEGER, int, required))


def get_bool(parent: Item, tag: int, *, required: bool = True) -> bool | None:
    """A Boolean child's value."""
    return cast("bool | None", _get(parent, tag, ItemType.BOOLEAN, bool, required))


def get_enum(parent: Item, tag: int, *, required: bool = True) -> int | None:
    """An Enumeration child's value (the caller maps it to its IntEnum)."""
    return cast("int | None", _get(parent, tag, ItemType.ENUMERATION, int, required))
