"""Replay of a real vCenter 7.0.3 KMIP 1.1 session against our server, over mutual TLS.

The capture (``../shared/interop``, see ``tests/kmip/test_vcenter_capture.py``) holds the
requests in session order. Its Unique Identifiers '1' and '2' are keys the capturing
server had created earlier in the session: we create two keys with the capture's own
Create request first, and rewrite '1' and '2' in every later request to their real
identifiers. Everything goes over one connection, in order, as vCenter sends it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.kms.conftest import V1_1, KmipConn, attributes_of, key_material, uid_of
from vmcrypt.kmip.items import find, find_all, get_enum, get_int
from vmcrypt.kmip.messages import ProtocolVersion, ResponseMessage, parse_request
from vmcrypt.kmip.tags import (
    CryptographicAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    ResultStatus,
    Tag,
)
from vmcrypt.kmip.ttlv import Item, ItemType, decode, encode

CAPTURE = (
    Path(__file__).resolve().parents[3] / "shared" / "interop"
    / "vcenter-7.0.3-kmip-1.1-requests.json"
)
PRODUCT_VERSION = "7.0.3 build-19480866"


def _capture() -> list[bytes]:
    if not CAPTURE.exists():
        pytest.fail(f"{CAPTURE} is missing: the shared folder must sit beside the repository")
    data: dict[str, Any] = json.loads(CAPTURE.read_text())
    assert data["protocol_version"] == "1.1"
    return [bytes.fromhex(r["ttlv_hex"]) for r in data["requests"]]


def _map_uids(item: Item, uids: dict[str, str]) -> Item:
    """The item with every Unique Identifier text '1'/'2' replaced by a real one."""
    if item.type is ItemType.STRUCTURE:
        assert isinstance(item.value, tuple)
        return Item(item.tag, item.type, tuple(_map_uids(c, uids) for c in item.value))
    if item.tag == Tag.UNIQUE_IDENTIFIER and item.value in uids:
        return Item(item.tag, item.type, uids[str(item.value)])
    return item


def _check_envelope(request: bytes, response: ResponseMessage) -> None:
    """Success, version 1.1, one answer per item, operations and batch IDs echoed."""
    parsed = parse_request(decode(request))
    assert response.version == ProtocolVersion(1, 1)
    assert len(response.items) == len(parsed.items)
    for asked, answered in zip(parsed.items, response.items, strict=True):
        assert answered.status is ResultStatus.SUCCESS, (answered.reason, answered.message)
        assert answered.operation == asked.operation
        assert answered.batch_id == asked.batch_id  # byte for byte, None when not sent


def test_vcenter_session_replays_over_tls(kmip: KmipConn) -> None:
    requests = _capture()
    by_operation = {parse_request(decode(r)).items[0].operation: r for r in requests}
    create = by_operation[Operation.CREATE]

    # The keys the capture calls '1' and '2', made by the capture's own Create.
    made = []
    for _ in range(2):
        response = kmip.send(create)
        _check_envelope(create, response)
        assert response.items[0].payload is not None
        made.append(uid_of(response.items[0].payload))
    uids = {"1": made[0], "2": made[1]}

    answers: list[tuple[bytes, ResponseMessage]] = []
    for raw in requests:
        request = encode(_map_uids(decode(raw), uids))
        response = kmip.send(request)
        _check_envelope(request, response)
        answers.append((request, response))

    operations = [parse_request(decode(r)).items[0].operation for r, _ in answers]
    assert operations == [
        Operation.DISCOVER_VERSIONS, Operation.DISCOVER_VERSIONS, Operation.QUERY,
        Operation.CREATE, Operation.GET_ATTRIBUTES, Operation.ADD_ATTRIBUTE, Operation.GET,
    ]
    discover_plain, discover_id, query, created, get_attrs, add, get = (
        resp for _, resp in answers
    )
    # The Unique Batch Item ID vCenter sends is echoed exactly.
    assert discover_plain.items[0].batch_id is None
    assert discover_id.items[0].batch_id == b"QLKC\x01\x00\x00\x00"
    assert add.items[2].batch_id == b"QLKC\x03\x00\x00\x00"

    for discover in (discover_plain, discover_id):
        payload = discover.items[0].payload
        assert payload is not None
        versions = [ProtocolVersion.from_item(v) for v in find_all(payload, Tag.PROTOCOL_VERSION)]
        assert ProtocolVersion(1, 1) in versions

    query_payload = query.items[0].payload
    assert query_payload is not None
    vendor = find(query_payload, Tag.VENDOR_IDENTIFICATION)
    assert vendor is not None and vendor.type is ItemType.TEXT_STRING and vendor.value

    created_payload = created.items[0].payload
    assert created_payload is not None
    assert get_enum(created_payload, Tag.OBJECT_TYPE) == ObjectType.SYMMETRIC_KEY
    assert uid_of(created_payload) not in made

    # GetAttributes of key '1' (which has no x-Product_Version): the uid, no attribute.
    first = get_attrs.items[0].payload
    assert first is not None
    assert uid_of(first) == made[0]
    assert "x-Product_Version" not in attributes_of(first)

    # AddAttribute x3 on key '2': three successes, each with its attribute.
    assert len(add.items) == 3
    added = []
    for item in add.items:
        assert item.payload is not None
        assert uid_of(item.payload) == made[1]
        attrs = attributes_of(item.payload)
        assert len(attrs) == 1
        added.append(attrs)
    assert added == [
        {"x-Product_Version": [PRODUCT_VERSION]},
        {"x-Vendor": ["VMware, Inc."]},
        {"x-Product": ["VMware vSphere"]},
    ]

    # After the AddAttribute batch, vCenter's GetAttributes on key '2' sees the version.
    again = encode(_map_uids(decode(by_operation[Operation.GET_ATTRIBUTES]), {"1": made[1]}))
    after = kmip.send(again)
    _check_envelope(again, after)
    payload = after.items[0].payload
    assert payload is not None
    assert uid_of(payload) == made[1]
    assert attributes_of(payload) == {"x-Product_Version": [PRODUCT_VERSION]}

    # Get of key '2': a 256-bit AES Symmetric Key in Raw format.
    get_payload = get.items[0].payload
    assert get_payload is not None
    assert uid_of(get_payload) == made[1]
    assert get_enum(get_payload, Tag.OBJECT_TYPE) == ObjectType.SYMMETRIC_KEY
    assert len(key_material(get_payload)) == 32
    key = find(get_payload, Tag.SYMMETRIC_KEY)
    assert key is not None
    block = find(key, Tag.KEY_BLOCK)
    assert block is not None
    assert get_enum(block, Tag.KEY_FORMAT_TYPE) == KeyFormatType.RAW
    assert get_enum(block, Tag.CRYPTOGRAPHIC_ALGORITHM) == CryptographicAlgorithm.AES
    assert get_int(block, Tag.CRYPTOGRAPHIC_LENGTH) == 256


def test_replay_answers_in_protocol_1_1_even_on_a_1_4_connection(kmip: KmipConn) -> None:
    """The response version follows the request, not what the connection used before."""
    kmip.call(Operation.QUERY, Item(Tag.REQUEST_PAYLOAD, ItemType.STRUCTURE, ()))
    discover = _capture()[0]
    response = kmip.send(discover)
    _check_envelope(discover, response)
    assert response.version == V1_1
