"""Managed symmetric keys: building them from templates and returning them as Key Blocks.

Shared by Create and Register (new objects), Get (the Key Block) and the attribute
operations (the client's rights over each attribute, from
:data:`vmcrypt.kmip.attributes.SPECS`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from vmcrypt.kmip.attributes import SPECS, Attribute, is_custom
from vmcrypt.kmip.items import (
    byte_string,
    date_time,
    enum,
    find,
    find_all,
    structure,
    text,
)
from vmcrypt.kmip.tags import (
    CryptographicAlgorithm,
    HashingAlgorithm,
    KeyFormatType,
    ObjectType,
    ResultReason,
    State,
    Tag,
)
from vmcrypt.kmip.ttlv import Item, ItemType
from vmcrypt.kms.context import Context
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.store import ManagedObject

__all__ = [
    "AES_LENGTHS",
    "check_client_may_set",
    "digest",
    "key_block",
    "new_key_object",
    "template_attributes",
    "touch",
]

AES_LENGTHS = (128, 192, 256)


def template_attributes(payload: Item) -> list[Attribute]:
    """The attributes of a Template-Attribute (KMIP 1.x 2.1.8) or Attributes (2.0) field."""
    attributes: list[Attribute] = []
    for holder_tag in (Tag.TEMPLATE_ATTRIBUTE,):
        holder = find(payload, holder_tag)
        if holder is None:
            continue
        if find(holder, Tag.NAME) is not None:
            raise OperationError(
                ResultReason.FEATURE_NOT_SUPPORTED,
                "Template objects are not supported: give the attributes themselves",
            )
        attributes += [Attribute.from_item(item) for item in find_all(holder, Tag.ATTRIBUTE)]
    return attributes


def check_client_may_set(attribute: Attribute, *, on_create: bool) -> None:
    """Refuse attributes a client may not set (KMIP 1.4, 3: "set by server only")."""
    name = attribute.name
    if name.startswith("y-"):
        raise OperationError(
            ResultReason.PERMISSION_DENIED, f"{name!r}: 'y-' custom attributes are set by servers"
        )
    if is_custom(name):
        return
    spec = SPECS[name]
    allowed = spec.on_create if on_create else spec.modifiable
    if not allowed:
        raise OperationError(
            ResultReason.PERMISSION_DENIED,
            f"attribute {name!r} is set by the server" if not spec.on_create
            else f"attribute {name!r} cannot be changed after creation",
        )


def new_key_object(
    ctx: Context, *, attributes: list[Attribute], key_length: int | None = None,
    algorithm: int | None = None,
) -> ManagedObject:
    """A new symmetric key object with the client's and the server's attributes.

    ``key_length``/``algorithm`` come from a registered Key Block and must agree with the
    template when both are given.
    """
    obj = ManagedObject(
        uid=ctx.store.new_uid(), object_type=ObjectType.SYMMETRIC_KEY, owner=ctx.identity
    )
    for attribute in attributes:
        check_client_may_set(attribute, on_create=True)
        instances = obj.attributes.setdefault(attribute.name, {})
        spec = SPECS.get(attribute.name)
        if instances and spec is not None and not spec.multi:
            raise OperationError(
                ResultReason.INVALID_FIELD,
                f"single-valued attribute {attribute.name!r} is given twice",
            )
        instances[len(instances)] = attribute.value
    for name, given in (("Cryptographic Algorithm", algorithm),
                        ("Cryptographic Length", key_length)):
        have = obj.first(name)
        if given is not None and have is not None and have.value != given:
            raise OperationError(
                ResultReason.INVALID_FIELD, f"{name} in the template disagrees with the key"
            )
        if have is None and given is not None:
            kind = ItemType.ENUMERATION if name == "Cryptographic Algorithm" else (
                ItemType.INTEGER
            )
            obj.attributes[name] = {0: Item(Tag.ATTRIBUTE_VALUE, kind, given)}
    algo = obj.first("Cryptographic Algorithm")
    length = obj.first("Cryptographic Length")
    if algo is None or length is None:
        raise OperationError(
            ResultReason.MISSING_DATA,
            "a symmetric key needs Cryptographic Algorithm and Cryptographic Length",
        )
    if algo.value != CryptographicAlgorithm.AES:
        raise OperationError(
            ResultReason.INVALID_FIELD,
            f"Cryptographic Algorithm {algo.value!r} is not supported; this server makes AES keys",
        )
    if length.value not in AES_LENGTHS:
        raise OperationError(
            ResultReason.INVALID_FIELD,
            f"Cryptographic Length {length.value!r} is not an AES key length (128, 192, 256)",
        )
    state = State.PRE_ACTIVE
    activation = obj.first("Activation Date")
    if activation is not None and isinstance(activation.value, datetime) and (
        activation.value <= ctx.now
    ):
        state = State.ACTIVE  # 3.24: an Activation Date in the past makes the key Active
    now = date_time(Tag.ATTRIBUTE_VALUE, ctx.now)
    server = {
        "Unique Identifier": text(Tag.ATTRIBUTE_VALUE, obj.uid),
        "Object Type": enum(Tag.ATTRIBUTE_VALUE, ObjectType.SYMMETRIC_KEY),
        "State": enum(Tag.ATTRIBUTE_VALUE, state),
        "Initial Date": now,
        "Last Change Date": now,
        "Original Creation Date": now,
    }
    for name, value in server.items():
        obj.attributes[name] = {0: value}
    return obj


def digest(material: bytes) -> Item:
    """The Digest attribute value (3.17): SHA-256 of the Raw key, set by the server.

    Clients compare digests to check two servers hold the same key without moving it;
    the OASIS lifecycle test cases (SKLC-M-1/2/3-14) expect one on every new key.
    """
    return structure(
        Tag.ATTRIBUTE_VALUE,
        enum(Tag.HASHING_ALGORITHM, HashingAlgorithm.SHA_256),
        byte_string(Tag.DIGEST_VALUE, hashlib.sha256(material).digest()),
        enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
    )


def touch(ctx: Context, obj: ManagedObject) -> None:
    """Record a change (3.38 Last Change Date)."""
    ctx.store.put_attribute(
        obj.uid, "Last Change Date", 0, date_time(Tag.ATTRIBUTE_VALUE, ctx.now)
    )


def key_block(obj: ManagedObject, material: bytes, key_format: KeyFormatType) -> Item:
    """The Symmetric Key object (2.2.2) in the requested Key Format Type (Raw or Transparent)."""
    if key_format is KeyFormatType.RAW:
        key_material = byte_string(Tag.KEY_MATERIAL, material)
    elif key_format is KeyFormatType.TRANSPARENT_SYMMETRIC_KEY:
        key_material = structure(Tag.KEY_MATERIAL, byte_string(Tag.KEY, material))
    else:
        raise OperationError(
            ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
            f"Key Format Type {key_format.name} is not offered for symmetric keys; "
            "ask for Raw or Transparent Symmetric Key",
        )
    algorithm = obj.first("Cryptographic Algorithm")
    length = obj.first("Cryptographic Length")
    assert algorithm is not None and length is not None
    return structure(
        Tag.SYMMETRIC_KEY,
        structure(
            Tag.KEY_BLOCK,
            enum(Tag.KEY_FORMAT_TYPE, key_format),
            structure(Tag.KEY_VALUE, key_material),
            Item(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.ENUMERATION, algorithm.value),
            Item(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER, length.value),
        ),
    )
