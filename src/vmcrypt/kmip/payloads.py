"""Request payloads the KMIP client builds and the response payloads it reads.

The shapes are the tables of KMIP 1.4 section 4 (one per operation) and 2.1/2.2 for the
structures inside them (Attribute, Template-Attribute, Key Block). Readers are lenient
where a client must be — attributes a server returns are taken as sent, since other
servers (PyKMIP, vendors) return names this server does not know — and strict where
the answer matters: a Get response without key material is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vmcrypt.kmip.attributes import Attribute, attribute
from vmcrypt.kmip.exceptions import MessageError
from vmcrypt.kmip.items import (
    byte_string,
    enum,
    find,
    get_int,
    get_text,
    integer,
    structure,
    text,
)
from vmcrypt.kmip.tags import (
    BlockCipherMode,
    CryptographicAlgorithm,
    KeyFormatType,
    ResultReason,
    Tag,
)
from vmcrypt.kmip.ttlv import Item, ItemType

__all__ = [
    "AttributesArg",
    "add_fields",
    "attribute_list",
    "cipher_fields",
    "get_fields",
    "ints",
    "key_bytes",
    "named",
    "raw_symmetric_key",
    "read_attribute",
    "template",
    "unique_identifier",
]

#: Attributes as a mapping of name to Python value, or as built :class:`Attribute`\ s.
AttributesArg = Mapping[str, object] | Sequence[Attribute]


def raw_symmetric_key(key: bytes) -> Item:
    """A Symmetric Key object (2.2.2) holding ``key`` as a Raw AES Key Block (2.1.3)."""
    return structure(
        Tag.SYMMETRIC_KEY,
        structure(
            Tag.KEY_BLOCK,
            enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
            structure(Tag.KEY_VALUE, byte_string(Tag.KEY_MATERIAL, key)),
            enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
            integer(Tag.CRYPTOGRAPHIC_LENGTH, len(key) * 8),
        ),
    )


def cipher_fields(uid: str, data: bytes, *, mode: BlockCipherMode, iv: bytes | None,
                  aad: bytes | None, tag: bytes | None,
                  tag_length: int | None) -> tuple[Item | None, ...]:
    """The fields of an Encrypt (4.29) or Decrypt (4.30) request, in the spec's order."""
    return (
        text(Tag.UNIQUE_IDENTIFIER, uid),
        structure(Tag.CRYPTOGRAPHIC_PARAMETERS, enum(Tag.BLOCK_CIPHER_MODE, mode),
                  integer(Tag.TAG_LENGTH, tag_length) if tag_length is not None else None),
        byte_string(Tag.DATA, data),
        byte_string(Tag.IV_COUNTER_NONCE, iv) if iv is not None else None,
        byte_string(Tag.AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad)
        if aad is not None else None,
        byte_string(Tag.AUTHENTICATED_ENCRYPTION_TAG, tag) if tag is not None else None,
    )


def get_fields(uid: str) -> tuple[Item, Item]:
    """Get (4.11) of ``uid`` as Raw bytes: the one format every server offers."""
    return text(Tag.UNIQUE_IDENTIFIER, uid), enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW)


def add_fields(uid: str, name: str, value: object) -> tuple[Item, Item]:
    """Add Attribute (4.14) of one new attribute, no index (the server picks it)."""
    return text(Tag.UNIQUE_IDENTIFIER, uid), attribute(name, value).to_item()


def named(name: str | None) -> list[Attribute]:
    """A Name attribute (3.2) when ``name`` is given."""
    return [attribute("Name", name)] if name is not None else []


def attribute_list(given: AttributesArg) -> list[Attribute]:
    """Attributes from a mapping (typed by :func:`attribute`) or as given."""
    if isinstance(given, Mapping):
        return [attribute(name, value) for name, value in given.items()]
    return list(given)


def template(attributes: list[Attribute]) -> Item:
    """A Template-Attribute structure (2.1.8) holding ``attributes``."""
    return structure(Tag.TEMPLATE_ATTRIBUTE, *(a.to_item() for a in attributes))


def unique_identifier(payload: Item) -> str:
    """The payload's Unique Identifier (required)."""
    uid = get_text(payload, Tag.UNIQUE_IDENTIFIER)
    assert uid is not None
    return uid


def ints(items: list[Item]) -> list[int]:
    """The integer values of enumeration or integer items."""
    return [item.value for item in items if isinstance(item.value, int)]


def read_attribute(item: Item) -> Attribute:
    """An Attribute as the server sent it, without this server's SPECS checks.

    A client must read what other servers return (PyKMIP, vendor attributes), so only
    the structure is checked here, not which names and types are allowed.
    """
    name = get_text(item, Tag.ATTRIBUTE_NAME)
    assert name is not None
    value = find(item, Tag.ATTRIBUTE_VALUE)
    return Attribute(name=name, value=value if value is not None else structure(
        Tag.ATTRIBUTE_VALUE), index=get_int(item, Tag.ATTRIBUTE_INDEX, required=False))


def key_bytes(payload: Item, uid: str) -> bytes:
    """The Key Material of a Get response's Symmetric Key (2.2.2), Raw or Transparent."""
    key_object = find(payload, Tag.SYMMETRIC_KEY)
    block = find(key_object, Tag.KEY_BLOCK) if key_object is not None else None
    value = find(block, Tag.KEY_VALUE) if block is not None else None
    if value is None or value.type is not ItemType.STRUCTURE:
        raise MessageError(ResultReason.MISSING_DATA,
                           f"the Get response for {uid!r} holds no symmetric Key Value")
    material = find(value, Tag.KEY_MATERIAL)
    if material is not None and material.type is ItemType.STRUCTURE:
        material = find(material, Tag.KEY)  # Transparent Symmetric Key (2.1.7.1)
    if material is None or not isinstance(material.value, bytes):
        raise MessageError(ResultReason.MISSING_DATA,
                           f"the Get response for {uid!r} holds no Key Material")
    return material.value
