"""Object attributes — KMIP 1.4, section 3, and the Attribute structure of 2.1.1.

In KMIP 1.x an attribute travels as ``Attribute { Attribute Name, [Attribute Index],
Attribute Value }`` where the value keeps the tag ``Attribute Value`` and the type of the
attribute (a structure for Name, Link, Cryptographic Parameters …). vmcrypt keeps that
value as a TTLV :class:`Item` all the way to the database, which is what lets the server
store, return and search *custom* attributes (``x-…`` set by clients, ``y-…`` by servers,
3.39) of any type without knowing them in advance.

:data:`SPECS` is the table of standard attributes this server understands, with the
rules the spec's per-attribute tables give: single or multi-valued, who may set it, and
whether a client may modify or delete it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from vmcrypt.kmip.exceptions import KmipError, MessageError
from vmcrypt.kmip.items import (
    children,
    enum,
    find,
    get_int,
    get_text,
    integer,
    structure,
    tag_name,
    text,
)
from vmcrypt.kmip.tags import NameType, ResultReason, Tag
from vmcrypt.kmip.ttlv import Item, ItemType

__all__ = [
    "SPECS",
    "Attribute",
    "AttributeSpec",
    "attribute",
    "check_value",
    "is_custom",
    "name_value",
    "python_value",
]


@dataclass(frozen=True)
class AttributeSpec:
    """The rules of one standard attribute (KMIP 1.4, 3.x tables)."""

    name: str
    type: ItemType
    multi: bool = False
    #: May a client supply it in Create / Register templates?
    on_create: bool = True
    #: May a client Add or Modify it afterwards?
    modifiable: bool = True
    #: May a client Delete it?
    deletable: bool = True


_S, _T, _E, _I, _D, _B = (
    ItemType.STRUCTURE, ItemType.TEXT_STRING, ItemType.ENUMERATION, ItemType.INTEGER,
    ItemType.DATE_TIME, ItemType.BOOLEAN,
)


def _server(name: str, kind: ItemType, *, multi: bool = False) -> AttributeSpec:
    """An attribute only the server sets (read-only to clients)."""
    return AttributeSpec(name, kind, multi, on_create=False, modifiable=False, deletable=False)


def _fixed(name: str, kind: ItemType) -> AttributeSpec:
    """Set by the client at creation, then immutable."""
    return AttributeSpec(name, kind, on_create=True, modifiable=False, deletable=False)


SPECS: dict[str, AttributeSpec] = {
    spec.name: spec
    for spec in (
        _server("Unique Identifier", _T),                       # 3.1
        AttributeSpec("Name", _S, multi=True),                  # 3.2
        _server("Object Type", _E),                             # 3.3
        _fixed("Cryptographic Algorithm", _E),                  # 3.4
        _fixed("Cryptographic Length", _I),                     # 3.5
        AttributeSpec("Cryptographic Parameters", _S, multi=True),  # 3.6
        _server("Digest", _S, multi=True),                      # 3.17
        AttributeSpec("Operation Policy Name", _T),             # 3.18
        _fixed("Cryptographic Usage Mask", _I),                 # 3.19
        _server("Lease Time", ItemType.INTERVAL),               # 3.20
        _server("State", _E),                                   # 3.22
        _server("Initial Date", _D),                            # 3.23
        AttributeSpec("Activation Date", _D, deletable=False),  # 3.24
        AttributeSpec("Process Start Date", _D, deletable=False),  # 3.25
        AttributeSpec("Protect Stop Date", _D, deletable=False),   # 3.26
        AttributeSpec("Deactivation Date", _D, deletable=False),   # 3.27
        _server("Destroy Date", _D),                            # 3.28
        _server("Compromise Occurrence Date", _D),              # 3.29
        _server("Compromise Date", _D),                         # 3.30
        _server("Revocation Reason", _S),                       # 3.31
        _server("Archive Date", _D),                            # 3.32
        AttributeSpec("Object Group", _T, multi=True),          # 3.33
        AttributeSpec("Link", _S, multi=True),                  # 3.35
        AttributeSpec("Application Specific Information", _S, multi=True),  # 3.36
        AttributeSpec("Contact Information", _T),               # 3.37
        _server("Last Change Date", _D),                        # 3.38
        AttributeSpec("Sensitive", _B, deletable=False),        # 3.41 (1.4)
        _server("Always Sensitive", _B),                        # 3.42
        AttributeSpec("Extractable", _B, deletable=False),      # 3.43
        _server("Never Extractable", _B),                       # 3.44
        _server("Original Creation Date", _D),                  # 3.45
        AttributeSpec("Alternative Name", _S, multi=True),      # (1.2)
    )
}

#: 3.39: "x-" names are set by clients, "y-" names by servers.
_CLIENT_PREFIX = "x-"
_SERVER_PREFIX = "y-"


def is_custom(name: str) -> bool:
    """True for custom attribute names (``x-…`` or ``y-…``)."""
    return name.startswith((_CLIENT_PREFIX, _SERVER_PREFIX))


@dataclass(frozen=True)
class Attribute:
    """One attribute instance: its name, optional index, and typed value item."""

    name: str
    value: Item
    index: int | None = None

    def to_item(self) -> Item:
        """The Attribute structure (2.1.1)."""
        return structure(
            Tag.ATTRIBUTE,
            text(Tag.ATTRIBUTE_NAME, self.name),
            integer(Tag.ATTRIBUTE_INDEX, self.index) if self.index is not None else None,
            self.value,
        )

    @classmethod
    def from_item(cls, item: Item, *, value_required: bool = True) -> Attribute:
        """Parse and check an Attribute structure against :data:`SPECS`."""
        if item.tag != Tag.ATTRIBUTE:
            raise MessageError(
                ResultReason.INVALID_MESSAGE, f"expected an Attribute, got {tag_name(item.tag)}"
            )
        children(item)
        name = get_text(item, Tag.ATTRIBUTE_NAME)
        assert name is not None
        index = get_int(item, Tag.ATTRIBUTE_INDEX, required=False)
        if index is not None and index < 0:
            raise MessageError(ResultReason.INVALID_FIELD, f"Attribute Index {index} < 0")
        value = find(item, Tag.ATTRIBUTE_VALUE)
        if value is None:
            if value_required:
                raise MessageError(
                    ResultReason.MISSING_DATA, f"attribute {name!r} has no Attribute Value"
                )
            value = structure(Tag.ATTRIBUTE_VALUE)
        else:
            check_value(name, value)
        return cls(name=name, value=value, index=index)

    @property
    def python(self) -> object:
        """The value as Python data (see :func:`python_value`)."""
        return python_value(self.value)


def check_value(name: str, value: Item) -> None:
    """Refuse an unknown standard name or a value of the wrong type (Invalid Field)."""
    if is_custom(name):
        return
    spec = SPECS.get(name)
    if spec is None:
        raise MessageError(
            ResultReason.INVALID_FIELD,
            f"attribute {name!r} is not supported; custom attributes start with 'x-'",
        )
    if value.type is not spec.type:
        raise MessageError(
            ResultReason.INVALID_FIELD,
            f"attribute {name!r} takes a {spec.type.name.replace('_', ' ')}, "
            f"not a {value.type.name.replace('_', ' ')}",
        )
    if name == "Name":
        get_text(value, Tag.NAME_VALUE)
        kind = find(value, Tag.NAME_TYPE)
        if kind is None or kind.type is not ItemType.ENUMERATION:
            raise MessageError(ResultReason.INVALID_FIELD, "a Name needs a Name Type")


def name_value(value: str, name_type: NameType = NameType.UNINTERPRETED_TEXT_STRING) -> Item:
    """The value item of a Name attribute (3.2)."""
    return structure(
        Tag.ATTRIBUTE_VALUE, text(Tag.NAME_VALUE, value), enum(Tag.NAME_TYPE, name_type)
    )


def attribute(name: str, value: object, *, index: int | None = None) -> Attribute:
    """Build an attribute from Python data, typed by :data:`SPECS` (custom: by value)."""
    if isinstance(value, Item):
        item = value
    else:
        spec = SPECS.get(name)
        kind = spec.type if spec is not None else _infer(value)
        if name == "Name" and isinstance(value, str):
            item = name_value(value)
        elif kind is ItemType.STRUCTURE:
            raise MessageError(
                ResultReason.INVALID_FIELD, f"attribute {name!r} needs a structure value"
            )
        else:
            if not isinstance(value, int | bool | str | bytes | datetime):
                raise MessageError(
                    ResultReason.INVALID_FIELD,
                    f"cannot carry a {type(value).__name__} in attribute {name!r}",
                )
            raw: int | bool | str | bytes | datetime = value
            if kind is ItemType.ENUMERATION and isinstance(value, int):
                raw = int(value)
            try:
                item = Item(Tag.ATTRIBUTE_VALUE, kind, raw)
            except KmipError as exc:
                raise MessageError(ResultReason.INVALID_FIELD, f"{name!r}: {exc}") from None
    check_value(name, item)
    return Attribute(name=name, value=item, index=index)


def _infer(value: object) -> ItemType:
    if isinstance(value, bool):
        return ItemType.BOOLEAN
    if isinstance(value, int):
        return ItemType.INTEGER
    if isinstance(value, str):
        return ItemType.TEXT_STRING
    if isinstance(value, bytes):
        return ItemType.BYTE_STRING
    if isinstance(value, datetime):
        return ItemType.DATE_TIME
    raise MessageError(
        ResultReason.INVALID_FIELD, f"cannot carry a {type(value).__name__} in an attribute"
    )


def python_value(value: Item) -> object:
    """Primitive values as themselves; a Name as its text; other structures as the item."""
    if value.type is ItemType.STRUCTURE:
        name = find(value, Tag.NAME_VALUE)
        if name is not None and isinstance(name.value, str):
            return name.value
        return value
    return value.value
