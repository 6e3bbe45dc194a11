"""TTLV codec: spec examples byte for byte, strict rejection of malformed input, fuzzing."""

from __future__ import annotations

import contextlib
import io
import struct
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmcrypt.exceptions import VmcryptError
from vmcrypt.kmip import Item, ItemType, KmipError, TtlvDecodeError, decode, decode_stream, encode
from vmcrypt.kmip.tags import Operation, Tag

T = ItemType


def spec_hex(text: str) -> bytes:
    """The spec writes encodings as hex bytes separated by spaces and '|'."""
    return bytes.fromhex(text.replace("|", " "))


# KMIP 1.4, section 9.1.2 "Examples": all use the tag 420020 (Compromise Date).
SPEC_EXAMPLES = [
    pytest.param(
        Item(0x420020, T.INTEGER, 8),
        "42 00 20 | 02 | 00 00 00 04 | 00 00 00 08 00 00 00 00",
        id="integer-8",
    ),
    pytest.param(
        Item(0x420020, T.LONG_INTEGER, 123456789000000000),
        "42 00 20 | 03 | 00 00 00 08 | 01 B6 9B 4B A5 74 92 00",
        id="long-integer",
    ),
    pytest.param(
        Item(0x420020, T.BIG_INTEGER, 1234567890000000000000000000),
        "42 00 20 | 04 | 00 00 00 10 | 00 00 00 00 03 FD 35 EB 6B C2 DF 46 18 08 00 00",
        id="big-integer",
    ),
    pytest.param(
        Item(0x420020, T.ENUMERATION, 255),
        "42 00 20 | 05 | 00 00 00 04 | 00 00 00 FF 00 00 00 00",
        id="enumeration-255",
    ),
    pytest.param(
        Item(0x420020, T.BOOLEAN, True),
        "42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 01",
        id="boolean-true",
    ),
    pytest.param(
        Item(0x420020, T.TEXT_STRING, "Hello World"),
        "42 00 20 | 07 | 00 00 00 0B | 48 65 6C 6C 6F 20 57 6F 72 6C 64 00 00 00 00 00",
        id="text-string",
    ),
    pytest.param(
        Item(0x420020, T.BYTE_STRING, b"\x01\x02\x03"),
        "42 00 20 | 08 | 00 00 00 03 | 01 02 03 00 00 00 00 00",
        id="byte-string",
    ),
    pytest.param(
        Item(0x420020, T.DATE_TIME, datetime(2008, 3, 14, 11, 56, 40, tzinfo=UTC)),
        "42 00 20 | 09 | 00 00 00 08 | 00 00 00 00 47 DA 67 F8",
        id="date-time",
    ),
    pytest.param(
        Item(0x420020, T.INTERVAL, 10 * 24 * 3600),
        "42 00 20 | 0A | 00 00 00 04 | 00 0D 2F 00 00 00 00 00",
        id="interval-10-days",
    ),
    pytest.param(
        Item(
            0x420020,
            T.STRUCTURE,
            (Item(0x420004, T.ENUMERATION, 254), Item(0x420005, T.INTEGER, 255)),
        ),
        "42 00 20 | 01 | 00 00 00 20 | 42 00 04 | 05 | 00 00 00 04 | 00 00 00 FE "
        "00 00 00 00 | 42 00 05 | 02 | 00 00 00 04 | 00 00 00 FF 00 00 00 00",
        id="structure",
    ),
]


@pytest.mark.parametrize(("item", "wire"), SPEC_EXAMPLES)
def test_spec_examples_encode_and_decode_byte_exact(item: Item, wire: str) -> None:
    assert encode(item) == spec_hex(wire)
    assert decode(spec_hex(wire)) == item


def request_header() -> Item:
    version = Item(
        Tag.PROTOCOL_VERSION,
        T.STRUCTURE,
        (
            Item(Tag.PROTOCOL_VERSION_MAJOR, T.INTEGER, 1),
            Item(Tag.PROTOCOL_VERSION_MINOR, T.INTEGER, 1),
        ),
    )
    return Item(Tag.REQUEST_HEADER, T.STRUCTURE, (version, Item(Tag.BATCH_COUNT, T.INTEGER, 1)))


REQUEST_HEADER_WIRE = (
    "42 00 77 | 01 | 00 00 00 38"
    " | 42 00 69 | 01 | 00 00 00 20"
    " | 42 00 6A | 02 | 00 00 00 04 | 00 00 00 01 00 00 00 00"
    " | 42 00 6B | 02 | 00 00 00 04 | 00 00 00 01 00 00 00 00"
    " | 42 00 0D | 02 | 00 00 00 04 | 00 00 00 01 00 00 00 00"
)


def test_request_header_byte_exact() -> None:
    assert encode(request_header()) == spec_hex(REQUEST_HEADER_WIRE)
    assert decode(spec_hex(REQUEST_HEADER_WIRE)) == request_header()


@pytest.mark.parametrize(
    "item",
    [
        Item(0x420020, T.INTEGER, -(2**31)),
        Item(0x420020, T.LONG_INTEGER, -(2**63)),
        Item(0x420020, T.BIG_INTEGER, -1),
        Item(0x420020, T.BIG_INTEGER, 0),
        Item(0x420020, T.BIG_INTEGER, 2**64),
        Item(0x420020, T.BIG_INTEGER, -(2**63)),
        Item(Tag.OPERATION, T.ENUMERATION, Operation.GET),
        Item(0x420020, T.BOOLEAN, False),
        Item(0x420020, T.TEXT_STRING, ""),
        Item(0x420020, T.TEXT_STRING, "x-Vendor ü €"),
        Item(0x420020, T.BYTE_STRING, bytes(range(16))),
        Item(0x420020, T.DATE_TIME, datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)),
        Item(0x420020, T.INTERVAL, 2**32 - 1),
        Item(0x420020, T.STRUCTURE, ()),
        Item(0x540001, T.TEXT_STRING, "custom attribute in the extension range"),
    ],
)
def test_round_trip_every_type(item: Item) -> None:
    wire = encode(item)
    assert len(wire) % 8 == 0
    assert decode(wire) == item


def test_date_time_in_another_zone_is_the_same_instant() -> None:
    local = datetime(2008, 3, 14, 12, 56, 40, tzinfo=timezone(timedelta(hours=1)))
    decoded = decode(encode(Item(0x420020, T.DATE_TIME, local))).value
    assert decoded == local
    assert isinstance(decoded, datetime)
    assert decoded.tzinfo is UTC


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (T.INTEGER, 2**31),
        (T.INTEGER, True),
        (T.ENUMERATION, -1),
        (T.INTERVAL, 2**32),
        (T.BOOLEAN, 1),
        (T.TEXT_STRING, b"bytes"),
        (T.TEXT_STRING, "\ud800"),
        (T.BYTE_STRING, "text"),
        (T.DATE_TIME, datetime(2008, 3, 14)),  # naive: no defined instant
        (T.DATE_TIME, datetime(2008, 3, 14, microsecond=5, tzinfo=UTC)),
        (T.STRUCTURE, [Item(0x420020, T.INTEGER, 1)]),
    ],
)
def test_item_rejects_values_that_do_not_fit(kind: ItemType, value: object) -> None:
    with pytest.raises(KmipError):
        Item(0x420020, kind, value)  # type: ignore[arg-type]


def test_item_rejects_bad_tags() -> None:
    for tag in (0x430000, -1, 0x1420000):
        with pytest.raises(KmipError):
            Item(tag, T.INTEGER, 1)


def test_errors_are_vmcrypt_errors() -> None:
    assert issubclass(TtlvDecodeError, KmipError)
    assert issubclass(KmipError, VmcryptError)


INTEGER_8 = spec_hex("42 00 20 | 02 | 00 00 00 04 | 00 00 00 08 00 00 00 00")


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        pytest.param(INTEGER_8[:-1] + b"\x01", "offset 15: non-zero padding", id="bad-padding"),
        pytest.param(
            spec_hex("42 00 20 | 07 | 00 00 00 01 | 41 00 00 00 00 00 00 02"),
            "offset 15: non-zero padding",
            id="bad-text-padding",
        ),
        pytest.param(
            spec_hex("42 00 20 | 02 | 00 00 00 08 | 00 00 00 00 00 00 00 08"),
            "offset 4: INTEGER length must be 4",
            id="integer-length-8",
        ),
        pytest.param(
            spec_hex("42 00 20 | 06 | 00 00 00 04 | 00 00 00 01 00 00 00 00"),
            "BOOLEAN length must be 8",
            id="boolean-length-4",
        ),
        pytest.param(
            spec_hex("42 00 20 | 04 | 00 00 00 04 | 00 00 00 01 00 00 00 00"),
            "Big Integer length 4",
            id="big-integer-length-4",
        ),
        pytest.param(INTEGER_8[:-3], "offset 4: length 4 runs past", id="truncated-value"),
        pytest.param(INTEGER_8[:5], "offset 0: truncated header", id="truncated-header"),
        pytest.param(b"", "offset 0: truncated header", id="empty"),
        pytest.param(INTEGER_8 + bytes(8), "offset 16: 8 trailing bytes", id="trailing-bytes"),
        pytest.param(
            spec_hex("42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 02"),
            "offset 8: Boolean value must be 0 or 1",
            id="boolean-2",
        ),
        pytest.param(
            spec_hex("42 00 20 | 07 | 00 00 00 02 | C3 28 00 00 00 00 00 00"),
            "offset 8: Text String is not valid UTF-8",
            id="invalid-utf8",
        ),
        pytest.param(
            spec_hex("42 00 20 | 01 | 00 00 00 08") + INTEGER_8,
            "offset 12: length 4 runs past",
            id="child-overruns-structure",
        ),
        pytest.param(
            spec_hex("42 00 20 | 01 | 00 00 00 0C") + INTEGER_8,
            "structure length 12 is not a multiple of 8",
            id="structure-length-unaligned",
        ),
        pytest.param(
            spec_hex("42 00 20 | 0B | 00 00 00 00"), "offset 3: unknown item type", id="type-0b"
        ),
        pytest.param(
            spec_hex("43 00 20 | 02 | 00 00 00 04 | 00 00 00 08 00 00 00 00"),
            "does not start with 0x42 or 0x54",
            id="tag-prefix",
        ),
        pytest.param(
            spec_hex("42 00 20 | 09 | 00 00 00 08 | 7F FF FF FF FF FF FF FF"),
            "outside years 1-9999",
            id="date-time-out-of-range",
        ),
        pytest.param(
            spec_hex("42 00 20 | 08 | FF FF FF F8"),
            "offset 4: length 4294967288 runs past",
            id="huge-length-in-8-bytes",
        ),
    ],
)
def test_malformed_input_is_rejected(wire: bytes, message: str) -> None:
    with pytest.raises(TtlvDecodeError, match=message):
        decode(wire)


def nested(depth: int) -> bytes:
    wire = b""
    for _ in range(depth):
        wire = struct.pack(">3sBI", b"\x42\x00\x20", 1, len(wire)) + wire
    return wire


def test_depth_bomb_is_refused() -> None:
    assert decode(nested(32)).type is T.STRUCTURE
    with pytest.raises(TtlvDecodeError, match="nesting deeper than 32"):
        decode(nested(33))
    started = time.monotonic()
    with pytest.raises(TtlvDecodeError, match="nesting deeper"):
        decode(nested(5000))
    assert time.monotonic() - started < 1


def test_item_count_is_bounded() -> None:
    children = INTEGER_8 * 20
    wire = struct.pack(">3sBI", b"\x42\x00\x20", 1, len(children)) + children
    assert len(decode(wire, max_items=21).value) == 20  # type: ignore[arg-type]
    with pytest.raises(TtlvDecodeError, match="more than 20 items"):
        decode(wire, max_items=20)


def test_decode_stream_reads_one_message_in_pieces() -> None:
    wire = spec_hex(REQUEST_HEADER_WIRE)
    stream = io.BytesIO(wire + b"next message")

    def recv(size: int) -> bytes:  # a socket may return fewer bytes than asked
        return stream.read(min(size, 3))

    assert decode_stream(recv, max_size=1024) == request_header()
    assert stream.read() == b"next message"


def test_decode_stream_refuses_oversize_before_reading_the_body() -> None:
    calls: list[int] = []

    def recv(size: int) -> bytes:
        calls.append(size)
        return spec_hex("42 00 78 | 01 | 7F FF FF F8")

    with pytest.raises(TtlvDecodeError, match="exceeds the maximum of 4096"):
        decode_stream(recv, max_size=4096)
    assert calls == [8]


def test_decode_stream_reports_early_end() -> None:
    stream = io.BytesIO(spec_hex(REQUEST_HEADER_WIRE)[:30])
    with pytest.raises(TtlvDecodeError, match="offset 30: stream ended 34 bytes early"):
        decode_stream(stream.read, max_size=1024)


# --- property-based tests ------------------------------------------------------------

tags = st.integers(0, 0xFFFF).map(lambda low: 0x420000 | low) | st.integers(0x540000, 0x54FFFF)
primitives = st.one_of(
    st.builds(Item, tags, st.just(T.INTEGER), st.integers(-(2**31), 2**31 - 1)),
    st.builds(Item, tags, st.just(T.LONG_INTEGER), st.integers(-(2**63), 2**63 - 1)),
    st.builds(Item, tags, st.just(T.BIG_INTEGER), st.integers(-(2**200), 2**200)),
    st.builds(Item, tags, st.just(T.ENUMERATION), st.integers(0, 2**32 - 1)),
    st.builds(Item, tags, st.just(T.BOOLEAN), st.booleans()),
    st.builds(Item, tags, st.just(T.TEXT_STRING), st.text(max_size=20)),
    st.builds(Item, tags, st.just(T.BYTE_STRING), st.binary(max_size=20)),
    st.builds(
        Item,
        tags,
        st.just(T.DATE_TIME),
        st.datetimes(timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0)),
    ),
    st.builds(Item, tags, st.just(T.INTERVAL), st.integers(0, 2**32 - 1)),
)
trees = st.recursive(
    primitives,
    lambda children: st.builds(
        Item, tags, st.just(T.STRUCTURE), st.lists(children, max_size=5).map(tuple)
    ),
    max_leaves=30,
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(trees)
def test_random_trees_round_trip(item: Item) -> None:
    assert decode(encode(item)) == item


def assert_decodes_or_rejects(wire: bytes) -> None:
    started = time.monotonic()
    with contextlib.suppress(TtlvDecodeError):
        decode(wire)
    assert time.monotonic() - started < 0.5


@FAST
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_decode_error(wire: bytes) -> None:
    assert_decodes_or_rejects(wire)


@FAST
@given(trees, st.data())
def test_mutated_encodings_only_raise_decode_error(item: Item, data: st.DataObject) -> None:
    wire = bytearray(encode(item))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(wire) - 1))
        wire[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    assert_decodes_or_rejects(bytes(wire[:cut]) if data.draw(st.booleans()) else bytes(wire))
