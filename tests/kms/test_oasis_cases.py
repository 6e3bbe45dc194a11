"""The mandatory OASIS KMIP 1.4 test cases of the Symmetric Key Lifecycle and Tape Library
profiles, step by step over TLS.

The cases are the XML message sequences published with "KMIP Profiles Version 1.4"
(``test-cases/kmip-v1.4/mandatory/SKLC-M-{1,2,3}-14.xml`` and ``TL-M-{1,2,3}-14.xml``).
Each test sends the requests of its case in order — the same operations, attributes,
header options (Batch Order Option) and Unique Batch Item IDs — and checks every field of
each expected response that does not depend on the capturing session (``$NOW`` time
stamps are checked to be recent, ``$UNIQUE_IDENTIFIER_0`` to be the same key throughout).
Each docstring lists the case's steps. Where the reference response lists server-set
attributes this server does not keep (Fresh, Lease Time, Random Number Generator …),
the test checks the rest and says so.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from tests.kms.conftest import (
    V1_4,
    KmipConn,
    attribute_payload,
    attributes_of,
    create_payload,
    key_material,
    name_attr,
    revoke_payload,
    uid_of,
    uid_payload,
)
from vmcrypt.kmip.attributes import Attribute, attribute
from vmcrypt.kmip.items import (
    boolean,
    enum,
    find,
    find_all,
    get_enum,
    integer,
    structure,
    text,
)
from vmcrypt.kmip.messages import ResponseMessage, parse_response
from vmcrypt.kmip.tags import (
    AlternativeNameType,
    CryptographicAlgorithm,
    HashingAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    QueryFunction,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
    Tag,
)
from vmcrypt.kmip.ttlv import Item, ItemType, decode, encode

#: The attributes SKLC-M-1/2/3-14 ask for right after Create, in the cases' order.
CREATED_NAMES = (
    "State", "Cryptographic Usage Mask", "Unique Identifier", "Object Type",
    "Cryptographic Algorithm", "Cryptographic Length", "Digest", "Initial Date",
    "Last Change Date",
)
#: The Compromise Occurrence Date of the cases' Revoke (1970-01-01T00:00:06+00:00).
OCCURRED = datetime(1970, 1, 1, 0, 0, 6, tzinfo=UTC)
ENCRYPT_DECRYPT = 0x04 | 0x08


def _recent(value: object) -> bool:
    """A ``$NOW`` of the reference responses: a time stamp within the last minute."""
    return isinstance(value, datetime) and (
        abs(datetime.now(UTC) - value) < timedelta(minutes=1))


def _request(*items: tuple[int, bytes | None, Item], batch_order: bool = False) -> Item:
    """A KMIP 1.4 request message as the cases write it (Batch Order Option when set)."""
    header = structure(
        Tag.REQUEST_HEADER,
        structure(Tag.PROTOCOL_VERSION, integer(Tag.PROTOCOL_VERSION_MAJOR, 1),
                  integer(Tag.PROTOCOL_VERSION_MINOR, 4)),
        boolean(Tag.BATCH_ORDER_OPTION, True) if batch_order else None,
        integer(Tag.BATCH_COUNT, len(items)),
    )
    batch = [
        structure(Tag.BATCH_ITEM, enum(Tag.OPERATION, operation),
                  Item(Tag.UNIQUE_BATCH_ITEM_ID, ItemType.BYTE_STRING, batch_id)
                  if batch_id is not None else None, payload)
        for operation, batch_id, payload in items
    ]
    return structure(Tag.REQUEST_MESSAGE, header, *batch)


def _exchange(kmip: KmipConn, message: Item) -> ResponseMessage:
    response = parse_response(decode(kmip.send_bytes(encode(message))))
    assert response.version == V1_4
    assert _recent(response.time_stamp)
    return response


def _check_created(kmip: KmipConn, uid: str, *, extra: tuple[str, ...] = ()) -> None:
    """Step 2 of SKLC-M-1/2/3-14: the new key's attributes, in the order asked for."""
    attrs = kmip.get_attributes(uid, *CREATED_NAMES, *extra)
    assert list(attrs) == list(CREATED_NAMES)  # asked-for but absent (Activation Date): left out
    assert attrs["State"] == [State.PRE_ACTIVE]
    assert attrs["Cryptographic Usage Mask"] == [ENCRYPT_DECRYPT]
    assert attrs["Unique Identifier"] == [uid]
    assert attrs["Object Type"] == [ObjectType.SYMMETRIC_KEY]
    assert attrs["Cryptographic Algorithm"] == [CryptographicAlgorithm.AES]
    assert attrs["Cryptographic Length"] == [256]
    _check_digest(attrs["Digest"][0])
    assert _recent(attrs["Initial Date"][0])
    assert _recent(attrs["Last Change Date"][0])


def _check_digest(value: object) -> bytes:
    assert isinstance(value, Item)
    assert get_enum(value, Tag.HASHING_ALGORITHM) == HashingAlgorithm.SHA_256
    assert get_enum(value, Tag.KEY_FORMAT_TYPE) == KeyFormatType.RAW
    digest = find(value, Tag.DIGEST_VALUE)
    assert digest is not None and isinstance(digest.value, bytes)
    assert len(digest.value) == 32
    return digest.value


def _revoke_compromised(kmip: KmipConn, uid: str) -> None:
    """Revoke (Key Compromise, occurred 1970-01-01T00:00:06Z), then State → Compromised."""
    revoked = kmip.ok(Operation.REVOKE, revoke_payload(
        uid, RevocationReasonCode.KEY_COMPROMISE, occurred=OCCURRED))
    assert uid_of(revoked) == uid
    assert kmip.get_attributes(uid, "State") == {"State": [State.COMPROMISED]}


# --- Symmetric Key Lifecycle -------------------------------------------------------------


def test_sklc_m_1_14_create_get_attributes_destroy(kmip: KmipConn) -> None:
    """SKLC-M-1-14: create a key, read its attributes, destroy the never-used key.

    1. Create (AES, 256, Encrypt|Decrypt, Name "SKLC-M-1-14") → Success, Object Type
       Symmetric Key and the new Unique Identifier.
    2. Get Attributes (State, Usage Mask, Unique Identifier, Object Type, Algorithm,
       Length, Digest, Initial Date, Last Change Date, Activation Date) → Success with
       Pre-Active, Decrypt|Encrypt, the identifier, Symmetric Key, AES, 256, a SHA-256
       Raw Digest, two recent dates; no Activation Date (the key has none).
    3. Destroy → Success, the identifier (a Pre-Active key may be destroyed).
    """
    created = kmip.ok(Operation.CREATE, create_payload(name_attr("SKLC-M-1-14")))
    assert get_enum(created, Tag.OBJECT_TYPE) == ObjectType.SYMMETRIC_KEY
    uid = uid_of(created)
    _check_created(kmip, uid, extra=("Activation Date",))
    assert uid_of(kmip.ok(Operation.DESTROY, uid_payload(uid))) == uid


def test_sklc_m_2_14_active_key_is_destroyed_only_after_revoke(kmip: KmipConn) -> None:
    """SKLC-M-2-14: an Active key cannot be destroyed until it is revoked.

    1. Create (Name "SKLC-M-2-14") → Success.  2. Get Attributes as in SKLC-M-1-14.
    3. Activate → Success.
    4. Get Attributes (State, Activation Date, Deactivation Date) → Active and a recent
       Activation Date; no Deactivation Date.
    5. Destroy → Operation Failed, Permission Denied (the key stays Active).
    6. Revoke (Key Compromise, Compromise Occurrence Date 1970-01-01T00:00:06Z) → Success.
    7. Get Attributes (State) → Compromised.  8. Destroy → Success.
    """
    uid = kmip.create(name_attr("SKLC-M-2-14"))
    _check_created(kmip, uid)
    assert uid_of(kmip.ok(Operation.ACTIVATE, uid_payload(uid))) == uid
    attrs = kmip.get_attributes(uid, "State", "Activation Date", "Deactivation Date")
    assert list(attrs) == ["State", "Activation Date"]
    assert attrs["State"] == [State.ACTIVE]
    assert _recent(attrs["Activation Date"][0])

    kmip.fails(Operation.DESTROY, uid_payload(uid), ResultReason.PERMISSION_DENIED)
    assert kmip.get_attributes(uid, "State") == {"State": [State.ACTIVE]}
    _revoke_compromised(kmip, uid)
    assert uid_of(kmip.ok(Operation.DESTROY, uid_payload(uid))) == uid


def test_sklc_m_3_14_activation_date_is_fixed_once_active(kmip: KmipConn) -> None:
    """SKLC-M-3-14: the Activation Date of an Active key cannot be modified.

    1. Create (Name "SKLC-M-3-14").  2. Get Attributes as in SKLC-M-1-14.
    3. Activate.  4. Get Attributes (State, Activation Date, Deactivation Date) → Active.
    5. Modify Attribute (Activation Date = now), Unique Batch Item ID 0752c951bb9926cc
       → Operation Failed, Permission Denied, the batch item ID echoed; the date unchanged.
    6. Revoke (Key Compromise, 1970-01-01T00:00:06Z) → Success.
    7. Get Attributes (State) → Compromised.  8. Destroy → Success.
    """
    uid = kmip.create(name_attr("SKLC-M-3-14"))
    _check_created(kmip, uid)
    kmip.activate(uid)
    before = kmip.get_attributes(uid, "State", "Activation Date", "Deactivation Date")
    assert before["State"] == [State.ACTIVE]
    assert "Deactivation Date" not in before

    batch_id = bytes.fromhex("0752c951bb9926cc")
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    response = _exchange(kmip, _request((Operation.MODIFY_ATTRIBUTE, batch_id, attribute_payload(
        uid, attribute("Activation Date", later)))))
    (item,) = response.items
    assert item.operation == Operation.MODIFY_ATTRIBUTE
    assert item.batch_id == batch_id
    assert item.status is ResultStatus.OPERATION_FAILED
    assert item.reason == ResultReason.PERMISSION_DENIED
    assert item.message
    after = kmip.get_attributes(uid, "Activation Date")
    assert after["Activation Date"] == before["Activation Date"]

    _revoke_compromised(kmip, uid)
    assert uid_of(kmip.ok(Operation.DESTROY, uid_payload(uid))) == uid


# --- Tape Library ------------------------------------------------------------------------

#: The cartridge's Application Specific Information in TL-M-2-14 and TL-M-3-14.
TAPE_DATA = "123456789ABCDEF123456789123456789ABCDEF123456789ABCDEF1234000000"
TAPE_NAME = "AAAAAAA1A1AA12345678901234567"
BARCODE = "XXA012A1"


def _asi(namespace: str, data: str) -> Attribute:
    """An Application Specific Information attribute."""
    return attribute("Application Specific Information", structure(
        Tag.ATTRIBUTE_VALUE, text(Tag.APPLICATION_NAMESPACE, namespace),
        text(Tag.APPLICATION_DATA, data)))


def _alternative_name(value: str) -> Attribute:
    return attribute("Alternative Name", structure(
        Tag.ATTRIBUTE_VALUE, text(Tag.ALTERNATIVE_NAME_VALUE, value),
        enum(Tag.ALTERNATIVE_NAME_TYPE, AlternativeNameType.UNINTERPRETED_TEXT_STRING)))


TAPE_ASI = _asi("LIBRARY-LTO", TAPE_DATA)


def _locate_tape() -> Item:
    return structure(
        Tag.REQUEST_PAYLOAD,
        attribute("Object Type", ObjectType.SYMMETRIC_KEY).to_item(),
        TAPE_ASI.to_item(),
    )


def _empty() -> Item:
    return structure(Tag.REQUEST_PAYLOAD)


def _check_key(payload: Item | None, uid: str) -> bytes:
    """A Get response: Symmetric Key, the identifier, a Raw AES-256 Key Block."""
    assert payload is not None
    assert get_enum(payload, Tag.OBJECT_TYPE) == ObjectType.SYMMETRIC_KEY
    assert uid_of(payload) == uid
    key = find(payload, Tag.SYMMETRIC_KEY)
    assert key is not None
    block = find(key, Tag.KEY_BLOCK)
    assert block is not None
    assert get_enum(block, Tag.KEY_FORMAT_TYPE) == KeyFormatType.RAW
    assert get_enum(block, Tag.CRYPTOGRAPHIC_ALGORITHM) == CryptographicAlgorithm.AES
    length = find(block, Tag.CRYPTOGRAPHIC_LENGTH)
    assert length is not None and length.value == 256
    material = key_material(payload)
    assert len(material) == 32
    return material


def _tl_m_2_14(kmip: KmipConn) -> tuple[str, bytes, datetime]:
    """The TL-M-2-14 exchange; the new key's identifier, material and x-VendorAttribute3."""
    stamp = datetime.now(UTC).replace(microsecond=0)
    template = [
        attribute("x-ID", "TL-M-2-14"),
        _alternative_name(BARCODE),
        name_attr(TAPE_NAME),
        attribute("Cryptographic Algorithm", CryptographicAlgorithm.AES),
        attribute("Cryptographic Length", 256),
        attribute("Cryptographic Usage Mask", ENCRYPT_DECRYPT),
        TAPE_ASI,
        attribute("x-Barcode", BARCODE),
        attribute("x-VendorAttribute1", BARCODE),
        attribute("x-VendorAttribute2", 0),
        attribute("x-VendorAttribute3", stamp),
    ]
    create = structure(
        Tag.REQUEST_PAYLOAD, enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        structure(Tag.TEMPLATE_ATTRIBUTE, *(a.to_item() for a in template)))
    response = _exchange(kmip, _request((Operation.CREATE, b"\x01", create),
                                        (Operation.GET, b"\x02", _empty()), batch_order=True))
    created, got = response.items
    assert (created.operation, created.batch_id, created.status) == (
        Operation.CREATE, b"\x01", ResultStatus.SUCCESS)
    assert created.payload is not None
    assert get_enum(created.payload, Tag.OBJECT_TYPE) == ObjectType.SYMMETRIC_KEY
    uid = uid_of(created.payload)
    assert (got.operation, got.batch_id, got.status) == (
        Operation.GET, b"\x02", ResultStatus.SUCCESS)
    return uid, _check_key(got.payload, uid), stamp


def test_tl_m_1_14_query_server(kmip: KmipConn) -> None:
    """TL-M-1-14: a tape library asks what the server offers.

    1. Query (Unique Batch Item ID 01; Query Operations, Query Objects, Query Server
       Information, Query Application Namespaces) → Success with the batch item ID, the
       operations a tape library needs (Query, Locate, Destroy, Get, Create, Register,
       Get Attributes, Get Attribute List, Add/Modify/Delete Attribute, Activate, Revoke),
       Object Type Symmetric Key, a Vendor Identification and a Server Information
       structure. This server knows no application namespaces, so it lists none.
       (The reference response also lists Check and Template, which the profile does not
       require and this server does not offer.)
    """
    payload = structure(Tag.REQUEST_PAYLOAD, *(enum(Tag.QUERY_FUNCTION, f) for f in (
        QueryFunction.QUERY_OPERATIONS, QueryFunction.QUERY_OBJECTS,
        QueryFunction.QUERY_SERVER_INFORMATION, QueryFunction.QUERY_APPLICATION_NAMESPACES)))
    (item,) = _exchange(kmip, _request((Operation.QUERY, b"\x01", payload))).items
    assert (item.operation, item.batch_id, item.status) == (
        Operation.QUERY, b"\x01", ResultStatus.SUCCESS)
    assert item.payload is not None
    operations = {i.value for i in find_all(item.payload, Tag.OPERATION)}
    assert {Operation.QUERY, Operation.LOCATE, Operation.DESTROY, Operation.GET,
            Operation.CREATE, Operation.REGISTER, Operation.GET_ATTRIBUTES,
            Operation.GET_ATTRIBUTE_LIST, Operation.ADD_ATTRIBUTE, Operation.MODIFY_ATTRIBUTE,
            Operation.DELETE_ATTRIBUTE, Operation.ACTIVATE, Operation.REVOKE} <= operations
    assert [i.value for i in find_all(item.payload, Tag.OBJECT_TYPE)] == [
        ObjectType.SYMMETRIC_KEY]
    vendor = find(item.payload, Tag.VENDOR_IDENTIFICATION)
    assert vendor is not None and isinstance(vendor.value, str) and vendor.value
    assert find(item.payload, Tag.SERVER_INFORMATION) is not None
    assert find(item.payload, Tag.APPLICATION_NAMESPACE) is None


def test_tl_m_2_14_create_with_tape_attributes_and_get_in_one_batch(kmip: KmipConn) -> None:
    """TL-M-2-14: a library creates a cartridge's key and fetches it in one message.

    1. One request, Batch Order Option true, two items:
       Create (01) with x-ID "TL-M-2-14", Alternative Name "XXA012A1", Name
       "AAAAAAA1A1AA12345678901234567", AES 256 Decrypt|Encrypt, Application Specific
       Information {LIBRARY-LTO, 123456789ABCDEF…}, x-Barcode and x-VendorAttribute1
       "XXA012A1", x-VendorAttribute2 (Integer 0), x-VendorAttribute3 (Date-Time now);
       Get (02) with an empty payload (the ID Placeholder set by Create)
       → both Success with their batch item IDs; Get returns the new (Pre-Active) key as a
       Raw AES-256 Key Block under the same identifier.
    """
    uid, material, _stamp = _tl_m_2_14(kmip)
    assert kmip.key_bytes(uid) == material


def test_tl_m_3_14_locate_by_cartridge_then_read_and_modify(kmip: KmipConn) -> None:
    """TL-M-3-14: the library finds the cartridge's key again, reads it, updates it.

    Runs after TL-M-2-14 on the same server (its key is what Locate finds).
    1. Batch Order Option; Locate (01: Object Type Symmetric Key + the cartridge's
       Application Specific Information) and Get (02, empty payload: Locate's single
       match is the ID Placeholder) → that identifier, then its key material.
    2. Locate (01) + Get Attribute List (02) → the names of every attribute the key has,
       among them x-Barcode, x-ID, x-VendorAttribute1/2/3, Alternative Name, Application
       Specific Information, Digest, Name, Original Creation Date and State.
    3. Locate (01) + Get Attributes (02, no names: all) → every value as created: x-ID
       "TL-M-2-14", x-Barcode, x-VendorAttribute1 "XXA012A1", x-VendorAttribute2 0,
       x-VendorAttribute3 the creation time, the Alternative Name and ASI structures,
       Decrypt|Encrypt, a Digest (SHA-256 of the key), the Name, State Pre-Active.
       (The reference also shows Fresh, Lease Time and Random Number Generator, which
       this server does not keep.)
    4. Locate (01) + Modify Attribute (02: x-VendorAttribute3 = now) + Modify Attribute
       (03: x-VendorAttribute2 = 1) → three successes; each Modify echoes the identifier
       and the new attribute.
    5. Destroy (the identifier) → Success.
    """
    uid, material, stamp = _tl_m_2_14(kmip)

    response = _exchange(kmip, _request((Operation.LOCATE, b"\x01", _locate_tape()),
                                        (Operation.GET, b"\x02", _empty()), batch_order=True))
    located, got = response.items
    assert (located.batch_id, located.status) == (b"\x01", ResultStatus.SUCCESS)
    assert located.payload is not None
    assert [i.value for i in find_all(located.payload, Tag.UNIQUE_IDENTIFIER)] == [uid]
    assert (got.batch_id, got.status) == (b"\x02", ResultStatus.SUCCESS)
    assert _check_key(got.payload, uid) == material

    response = _exchange(kmip, _request(
        (Operation.LOCATE, b"\x01", _locate_tape()),
        (Operation.GET_ATTRIBUTE_LIST, b"\x02", _empty()), batch_order=True))
    listed = response.items[1]
    assert (listed.operation, listed.status) == (Operation.GET_ATTRIBUTE_LIST,
                                                 ResultStatus.SUCCESS)
    assert listed.payload is not None and uid_of(listed.payload) == uid
    names = {i.value for i in find_all(listed.payload, Tag.ATTRIBUTE_NAME)}
    assert {"x-Barcode", "x-ID", "x-VendorAttribute1", "x-VendorAttribute2",
            "x-VendorAttribute3", "Unique Identifier", "Object Type", "Cryptographic Algorithm",
            "Cryptographic Length", "Alternative Name", "Application Specific Information",
            "Cryptographic Usage Mask", "Digest", "Initial Date", "Last Change Date", "Name",
            "Original Creation Date", "State"} <= names

    response = _exchange(kmip, _request(
        (Operation.LOCATE, b"\x01", _locate_tape()),
        (Operation.GET_ATTRIBUTES, b"\x02", _empty()), batch_order=True))
    read = response.items[1]
    assert read.status is ResultStatus.SUCCESS and read.payload is not None
    attrs = attributes_of(read.payload)
    assert attrs["x-ID"] == ["TL-M-2-14"]
    assert attrs["x-Barcode"] == attrs["x-VendorAttribute1"] == [BARCODE]
    assert attrs["x-VendorAttribute2"] == [0]
    assert attrs["x-VendorAttribute3"] == [stamp]
    assert attrs["Unique Identifier"] == [uid]
    assert attrs["Object Type"] == [ObjectType.SYMMETRIC_KEY]
    assert attrs["Cryptographic Algorithm"] == [CryptographicAlgorithm.AES]
    assert attrs["Cryptographic Length"] == [256]
    assert attrs["Alternative Name"] == [_alternative_name(BARCODE).value]
    assert attrs["Application Specific Information"] == [TAPE_ASI.value]
    assert attrs["Cryptographic Usage Mask"] == [ENCRYPT_DECRYPT]
    assert _check_digest(attrs["Digest"][0]) == hashlib.sha256(material).digest()
    assert attrs["Name"] == [TAPE_NAME]
    assert attrs["State"] == [State.PRE_ACTIVE]
    for date in ("Initial Date", "Last Change Date", "Original Creation Date"):
        assert _recent(attrs[date][0])

    now = datetime.now(UTC).replace(microsecond=0)
    response = _exchange(kmip, _request(
        (Operation.LOCATE, b"\x01", _locate_tape()),
        (Operation.MODIFY_ATTRIBUTE, b"\x02", structure(
            Tag.REQUEST_PAYLOAD, attribute("x-VendorAttribute3", now).to_item())),
        (Operation.MODIFY_ATTRIBUTE, b"\x03", structure(
            Tag.REQUEST_PAYLOAD, attribute("x-VendorAttribute2", 1).to_item())),
        batch_order=True))
    assert [(i.batch_id, i.status) for i in response.items] == [
        (b"\x01", ResultStatus.SUCCESS), (b"\x02", ResultStatus.SUCCESS),
        (b"\x03", ResultStatus.SUCCESS)]
    for modified, (name, value) in zip(response.items[1:], (("x-VendorAttribute3", now),
                                                           ("x-VendorAttribute2", 1)),
                                       strict=True):
        assert modified.payload is not None and uid_of(modified.payload) == uid
        assert attributes_of(modified.payload) == {name: [value]}
    assert kmip.get_attributes(uid, "x-VendorAttribute2", "x-VendorAttribute3") == {
        "x-VendorAttribute2": [1], "x-VendorAttribute3": [now]}

    assert uid_of(kmip.ok(Operation.DESTROY, uid_payload(uid))) == uid


def test_digest_is_sha256_of_the_key_material(kmip: KmipConn) -> None:
    """The Digest the cases expect is the SHA-256 of the Raw key, for Create and Register."""
    uid = kmip.create()
    digest = _check_digest(kmip.get_attributes(uid, "Digest")["Digest"][0])
    assert digest == hashlib.sha256(kmip.key_bytes(uid)).digest()
    key = bytes(range(32))
    block = structure(
        Tag.KEY_BLOCK, enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
        structure(Tag.KEY_VALUE, Item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, key)),
        enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
        integer(Tag.CRYPTOGRAPHIC_LENGTH, 256))
    registered = kmip.ok(Operation.REGISTER, structure(
        Tag.REQUEST_PAYLOAD, enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        structure(Tag.TEMPLATE_ATTRIBUTE, attribute(
            "Cryptographic Usage Mask", ENCRYPT_DECRYPT).to_item()),
        structure(Tag.SYMMETRIC_KEY, block)))
    other = uid_of(registered)
    assert _check_digest(kmip.get_attributes(other, "Digest")["Digest"][0]) == (
        hashlib.sha256(key).digest())


def test_locate_with_several_matches_sets_no_id_placeholder(kmip: KmipConn) -> None:
    """Only a single Locate match becomes the ID Placeholder: with two, Get must not guess."""
    kmip.create(attribute("x-Barcode", "TWIN"))
    kmip.create(attribute("x-Barcode", "TWIN"))
    payload = structure(Tag.REQUEST_PAYLOAD, attribute("x-Barcode", "TWIN").to_item())
    response = _exchange(kmip, _request((Operation.LOCATE, b"\x01", payload),
                                        (Operation.GET, b"\x02", _empty())))
    located, got = response.items
    assert located.status is ResultStatus.SUCCESS and located.payload is not None
    assert len(find_all(located.payload, Tag.UNIQUE_IDENTIFIER)) == 2
    assert got.status is ResultStatus.OPERATION_FAILED
    assert got.reason == ResultReason.MISSING_DATA
