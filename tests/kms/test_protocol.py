"""Protocol robustness: versions, Query, batches and their error options, malformed input.

Whatever arrives, the server answers with a well-formed Response Message (KMIP 1.4, 7)
and keeps the connection usable when it can; only an oversized length header closes it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kms.conftest import (
    MASTER_KEY,
    V1_0,
    V1_1,
    V1_2,
    V1_3,
    V1_4,
    KmipConn,
    create_payload,
    key_material,
    open_tls,
    recv_message,
    tls_client,
    uid_of,
    uid_payload,
)
from vmcrypt.kmip.items import byte_string, enum, find, find_all, integer, structure, text
from vmcrypt.kmip.messages import (
    SUPPORTED_VERSIONS,
    ProtocolVersion,
    RequestBatchItem,
    ResponseMessage,
    build_request,
    parse_response,
)
from vmcrypt.kmip.tags import (
    BatchErrorContinuationOption,
    ObjectType,
    Operation,
    QueryFunction,
    ResultReason,
    ResultStatus,
    Tag,
)
from vmcrypt.kmip.ttlv import Item, decode, encode
from vmcrypt.kms.dispatch import OPERATIONS, Dispatcher
from vmcrypt.kms.server import KmsServer
from vmcrypt.kms.store import Store
from vmcrypt.pki.layout import PkiLayout

EMPTY = structure(Tag.REQUEST_PAYLOAD)
V2_0 = ProtocolVersion(2, 0)
MISSING = uid_payload("no-such-key")


def _versions(payload: Item | None) -> list[ProtocolVersion]:
    assert payload is not None
    return [ProtocolVersion.from_item(v) for v in find_all(payload, Tag.PROTOCOL_VERSION)]


def _discover(*versions: ProtocolVersion) -> Item:
    return structure(Tag.REQUEST_PAYLOAD, *(v.to_item() for v in versions))


def _failure(response: ResponseMessage, reason: ResultReason) -> None:
    assert len(response.items) == 1
    item = response.items[0]
    assert item.status is ResultStatus.OPERATION_FAILED
    assert item.reason == reason, (item.reason, item.message)
    assert item.message


# --- Discover Versions and Query -------------------------------------------------------


def test_discover_versions_without_a_client_list_lists_all_newest_first(
        kmip: KmipConn) -> None:
    payload = kmip.ok(Operation.DISCOVER_VERSIONS, EMPTY)
    assert _versions(payload) == [V1_4, V1_3, V1_2, V1_1, V1_0]


def test_discover_versions_keeps_the_clients_order_of_common_versions(kmip: KmipConn) -> None:
    payload = kmip.ok(Operation.DISCOVER_VERSIONS, _discover(V2_0, V1_1, V1_3))
    assert _versions(payload) == [V1_1, V1_3]
    assert _versions(kmip.ok(Operation.DISCOVER_VERSIONS, _discover(V2_0))) == []


def test_query_operations_objects_and_server_information(kmip: KmipConn) -> None:
    payload = kmip.ok(Operation.QUERY, structure(
        Tag.REQUEST_PAYLOAD,
        enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_OPERATIONS),
        enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_OBJECTS),
        enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_SERVER_INFORMATION),
    ))
    operations = {i.value for i in find_all(payload, Tag.OPERATION)}
    assert operations == set(OPERATIONS)
    assert {Operation.CREATE, Operation.GET, Operation.LOCATE, Operation.DESTROY,
            Operation.DISCOVER_VERSIONS, Operation.QUERY} <= operations
    assert [i.value for i in find_all(payload, Tag.OBJECT_TYPE)] == [ObjectType.SYMMETRIC_KEY]
    vendor = find(payload, Tag.VENDOR_IDENTIFICATION)
    assert vendor is not None and str(vendor.value).startswith("vmcrypt")
    # Only what was asked: no query function, no answer.
    assert kmip.ok(Operation.QUERY, EMPTY).value == ()


# --- batches ---------------------------------------------------------------------------


def test_a_batch_answers_every_item_in_order_with_its_id(kmip: KmipConn) -> None:
    ids = [b"a", b"\x00\x01", b"QLKC\x01\x00\x00\x00", b"z" * 20]
    response = kmip.batch([
        RequestBatchItem(Operation.CREATE, create_payload(), ids[0]),
        RequestBatchItem(Operation.GET, uid_payload(), ids[1]),  # ID Placeholder
        RequestBatchItem(Operation.DISCOVER_VERSIONS, EMPTY, ids[2]),
        RequestBatchItem(Operation.ACTIVATE, uid_payload(), ids[3]),
    ])
    assert [i.batch_id for i in response.items] == ids
    assert [i.operation for i in response.items] == [
        Operation.CREATE, Operation.GET, Operation.DISCOVER_VERSIONS, Operation.ACTIVATE]
    assert all(i.status is ResultStatus.SUCCESS for i in response.items)
    assert response.items[0].payload is not None and response.items[1].payload is not None
    uid = uid_of(response.items[0].payload)
    assert uid_of(response.items[1].payload) == uid
    assert len(key_material(response.items[1].payload)) == 32


def _three(kmip: KmipConn, option: BatchErrorContinuationOption | None) -> ResponseMessage:
    return kmip.batch([
        RequestBatchItem(Operation.CREATE, create_payload(), b"1"),
        RequestBatchItem(Operation.GET, MISSING, b"2"),
        RequestBatchItem(Operation.CREATE, create_payload(), b"3"),
    ], option=option)


@pytest.mark.parametrize("option", [None, BatchErrorContinuationOption.STOP])
def test_batch_stop_leaves_later_items_unexecuted(
        kmip: KmipConn, server: KmsServer, option: BatchErrorContinuationOption | None) -> None:
    """Stop (the default, 6.7): no item after the failed one runs; earlier ones stay done."""
    response = _three(kmip, option)
    assert [i.batch_id for i in response.items] == [b"1", b"2"]
    assert [i.status for i in response.items] == [
        ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED]
    assert response.items[1].reason == ResultReason.ITEM_NOT_FOUND
    assert server.store.count() == 1


def test_batch_continue_runs_every_item(kmip: KmipConn, server: KmsServer) -> None:
    response = _three(kmip, BatchErrorContinuationOption.CONTINUE)
    assert [i.status for i in response.items] == [
        ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED, ResultStatus.SUCCESS]
    assert server.store.count() == 2


def test_batch_undo_rolls_back_earlier_items(kmip: KmipConn, server: KmsServer) -> None:
    """Undo: Create, then a failing item → the Create is reported Undone and never existed."""
    before = kmip.create()
    response = kmip.batch([
        RequestBatchItem(Operation.CREATE, create_payload(), b"1"),
        RequestBatchItem(Operation.ACTIVATE, uid_payload(before), b"2"),
        RequestBatchItem(Operation.GET, MISSING, b"3"),
    ], option=BatchErrorContinuationOption.UNDO)
    assert [i.status for i in response.items] == [
        ResultStatus.OPERATION_UNDONE, ResultStatus.OPERATION_UNDONE,
        ResultStatus.OPERATION_FAILED]
    assert response.items[2].reason == ResultReason.ITEM_NOT_FOUND
    assert server.store.count() == 1
    assert kmip.get_attributes(before, "State")["State"] == [1]  # still Pre-Active
    assert kmip.locate() == [before]


def test_batch_undo_of_a_good_batch_keeps_everything(kmip: KmipConn, server: KmsServer) -> None:
    response = kmip.batch([
        RequestBatchItem(Operation.CREATE, create_payload(), b"1"),
        RequestBatchItem(Operation.ACTIVATE, uid_payload(), b"2"),
    ], option=BatchErrorContinuationOption.UNDO)
    assert [i.status for i in response.items] == [ResultStatus.SUCCESS] * 2
    assert response.items[0].payload is not None
    uid = uid_of(response.items[0].payload)
    assert kmip.get_attributes(uid, "State")["State"] == [2]


@pytest.mark.parametrize("ids", [[b"x", b"x"], [b"x", None], [None, None]],
                         ids=["duplicate", "one-missing", "both-missing"])
def test_multi_item_batches_need_distinct_batch_ids(
        kmip: KmipConn, server: KmsServer, ids: list[bytes | None]) -> None:
    response = kmip.batch([RequestBatchItem(Operation.CREATE, create_payload(), i) for i in ids])
    _failure(response, ResultReason.INVALID_MESSAGE)
    assert server.store.count() == 0


@pytest.mark.parametrize("count", [0, 2, 3])
def test_a_wrong_batch_count_is_an_invalid_message(
        kmip: KmipConn, server: KmsServer, count: int) -> None:
    wrong = structure(
        Tag.REQUEST_MESSAGE,
        structure(Tag.REQUEST_HEADER, V1_4.to_item(), integer(Tag.BATCH_COUNT, count)),
        structure(Tag.BATCH_ITEM, enum(Tag.OPERATION, Operation.CREATE), create_payload()),
    )
    _failure(kmip.send(wrong), ResultReason.INVALID_MESSAGE)
    assert server.store.count() == 0


@pytest.mark.parametrize("operation", [Operation.SIGN, Operation.REKEY, Operation.CERTIFY,
                                       Operation.CREATE_KEY_PAIR, 0x7F])
def test_unsupported_operations_are_answered_not_supported(
        kmip: KmipConn, operation: int) -> None:
    item = kmip.fails(operation, EMPTY, ResultReason.OPERATION_NOT_SUPPORTED)
    assert item.operation == operation


def test_protocol_2_0_is_refused_but_discover_versions_answers(kmip: KmipConn) -> None:
    _failure(kmip.batch([RequestBatchItem(Operation.CREATE, create_payload())],
                        version=V2_0), ResultReason.INVALID_MESSAGE)
    response = kmip.batch([RequestBatchItem(Operation.DISCOVER_VERSIONS, EMPTY)],
                          version=V2_0)
    assert response.items[0].status is ResultStatus.SUCCESS
    assert V1_4 in _versions(response.items[0].payload)
    assert response.version in SUPPORTED_VERSIONS


# --- malformed input, in process -------------------------------------------------------


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dispatcher]:
    store = Store(tmp_path_factory.mktemp("dispatch") / "kms.db", MASTER_KEY)
    yield Dispatcher(store)
    store.close()


def _answer(dispatcher: Dispatcher, data: bytes) -> ResponseMessage:
    """The dispatcher's answer, which must always be a well-formed Response Message."""
    raw = dispatcher.handle(data)
    response = parse_response(decode(raw))
    assert encode(decode(raw)) == raw
    assert response.version in SUPPORTED_VERSIONS
    assert response.items
    for item in response.items:
        if item.status is not ResultStatus.SUCCESS:
            assert item.reason is not None and item.message
    return response


def _valid_requests() -> list[bytes]:
    return [
        encode(build_request(V1_4, [RequestBatchItem(Operation.CREATE, create_payload())])),
        encode(build_request(V1_1, [
            RequestBatchItem(Operation.DISCOVER_VERSIONS, EMPTY, b"1"),
            RequestBatchItem(Operation.LOCATE, EMPTY, b"2"),
            RequestBatchItem(Operation.GET, MISSING, b"3"),
        ], error_continuation=BatchErrorContinuationOption.CONTINUE)),
    ]


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"garbage that is not TTLV at all", b"\xff" * 64,
    _valid_requests()[0][:-8], _valid_requests()[0][:20], _valid_requests()[0] + b"\x00" * 8,
    encode(structure(Tag.RESPONSE_MESSAGE)),
    encode(text(Tag.REQUEST_MESSAGE, "not a structure")),
    encode(structure(Tag.REQUEST_MESSAGE)),
    encode(structure(Tag.REQUEST_MESSAGE, structure(Tag.REQUEST_HEADER))),
    encode(structure(Tag.REQUEST_MESSAGE, structure(Tag.BATCH_ITEM))),
    encode(structure(Tag.REQUEST_MESSAGE, structure(
        Tag.REQUEST_HEADER, V1_4.to_item(), integer(Tag.BATCH_COUNT, 1)),
        structure(Tag.BATCH_ITEM, byte_string(Tag.OPERATION, b"\x01")))),
    encode(structure(Tag.REQUEST_MESSAGE, structure(
        Tag.REQUEST_HEADER, V1_4.to_item(), integer(Tag.BATCH_COUNT, 1)),
        structure(Tag.BATCH_ITEM, enum(Tag.OPERATION, Operation.GET),
                  text(Tag.REQUEST_PAYLOAD, "x")))),
], ids=lambda d: f"{len(d)}B")
def test_malformed_requests_get_a_failure_response(dispatcher: Dispatcher, data: bytes) -> None:
    response = _answer(dispatcher, data)
    assert all(i.status is ResultStatus.OPERATION_FAILED for i in response.items)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=512))
def test_fuzzed_bytes_never_raise(dispatcher: Dispatcher, data: bytes) -> None:
    response = _answer(dispatcher, data)
    assert all(i.status is ResultStatus.OPERATION_FAILED for i in response.items)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(_valid_requests()), data=st.data())
def test_mutated_valid_requests_never_raise(dispatcher: Dispatcher, which: bytes,
                                            data: st.DataObject) -> None:
    mutated = bytearray(which)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip":
            mutated[position] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del mutated[position:position + data.draw(st.integers(1, 16))]
            if not mutated:
                mutated += b"\x42"
        else:
            mutated[position:position] = data.draw(st.binary(min_size=1, max_size=16))
    _answer(dispatcher, bytes(mutated))


# --- over TLS --------------------------------------------------------------------------


def test_the_connection_survives_a_malformed_request(kmip: KmipConn) -> None:
    bad = encode(structure(Tag.REQUEST_MESSAGE, structure(Tag.REQUEST_HEADER)))
    _failure(kmip.send(bad), ResultReason.INVALID_MESSAGE)
    garbage = b"\x42\x00\x78\x01\x00\x00\x00\x08" + b"\xff" * 8
    _failure(kmip.send(garbage), ResultReason.INVALID_MESSAGE)
    assert len(kmip.key_bytes(kmip.create())) == 32


def test_an_oversized_length_header_gets_a_failure_and_the_connection_closes(
        kmip: KmipConn) -> None:
    kmip.sock.sendall(struct.pack(">3sBI", b"\x42\x00\x78", 1, 0x7FFFFFF8))
    response = parse_response(decode(recv_message(kmip.sock)))
    _failure(response, ResultReason.INVALID_MESSAGE)
    kmip.sock.settimeout(5)
    try:
        closed = kmip.sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        closed = True  # a reset is a closed connection too
    assert closed


def _refused(address: tuple[str, int], context: ssl.SSLContext) -> None:
    """The handshake (or, with TLS 1.3, the first read after it) fails; no answer comes."""
    request = encode(build_request(V1_4, [RequestBatchItem(Operation.DISCOVER_VERSIONS,
                                                           EMPTY)]))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        sock = open_tls(address, context, timeout=5)
        try:
            sock.sendall(request)
            recv_message(sock)
        finally:
            sock.close()


def test_a_client_without_a_certificate_is_refused(server: KmsServer, pki: PkiLayout) -> None:
    _refused(server.address, tls_client(pki, with_cert=False))


def test_a_client_certificate_from_another_ca_is_refused(
        server: KmsServer, pki: PkiLayout, foreign_pki: PkiLayout) -> None:
    files = foreign_pki.clients["admin"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(pki.ca.cert))
    context.load_cert_chain(str(files.cert), str(files.key))
    _refused(server.address, context)


def test_a_plain_tcp_client_does_not_break_the_server(server: KmsServer, kmip: KmipConn) -> None:
    with socket.create_connection(server.address, timeout=5) as plain:
        plain.sendall(encode(build_request(V1_4, [RequestBatchItem(Operation.QUERY, EMPTY)])))
        with contextlib.suppress(ConnectionError, TimeoutError):
            plain.recv(1024)
    assert kmip.create()


def test_sixteen_concurrent_clients_create_and_get(
        connect: Callable[..., KmipConn], server: KmsServer) -> None:
    conns = [connect() for _ in range(16)]
    results: dict[int, list[tuple[str, bytes]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(conns))

    def work(index: int, conn: KmipConn) -> None:
        try:
            barrier.wait(timeout=10)
            made = []
            for _ in range(5):
                uid = conn.create()
                made.append((uid, conn.key_bytes(uid)))
            results[index] = made
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    pairs = [pair for made in results.values() for pair in made]
    assert len(pairs) == 80
    assert len({uid for uid, _ in pairs}) == 80
    assert len({key for _, key in pairs}) == 80
    assert server.store.count() == 80


def test_maximum_response_size_is_honoured(kmip: KmipConn) -> None:
    uid = kmip.create()
    header = structure(Tag.REQUEST_HEADER, V1_4.to_item(),
                       integer(Tag.MAXIMUM_RESPONSE_SIZE, 64), integer(Tag.BATCH_COUNT, 1))
    message = structure(Tag.REQUEST_MESSAGE, header, structure(
        Tag.BATCH_ITEM, enum(Tag.OPERATION, Operation.GET), uid_payload(uid)))
    _failure(kmip.send(message), ResultReason.RESPONSE_TOO_LARGE)




_FUZZ_TAGS = [
    Tag.UNIQUE_IDENTIFIER, Tag.ATTRIBUTE, Tag.ATTRIBUTE_NAME, Tag.ATTRIBUTE_VALUE,
    Tag.ATTRIBUTE_INDEX, Tag.OBJECT_TYPE, Tag.TEMPLATE_ATTRIBUTE, Tag.KEY_FORMAT_TYPE,
    Tag.REVOCATION_REASON, Tag.REVOCATION_REASON_CODE, Tag.COMPROMISE_OCCURRENCE_DATE,
    Tag.MAXIMUM_ITEMS, Tag.OFFSET_ITEMS, Tag.STORAGE_STATUS_MASK, Tag.QUERY_FUNCTION,
    Tag.PROTOCOL_VERSION, Tag.PROTOCOL_VERSION_MAJOR, Tag.PROTOCOL_VERSION_MINOR,
    Tag.SYMMETRIC_KEY, Tag.KEY_BLOCK, Tag.KEY_VALUE, Tag.KEY_MATERIAL, Tag.KEY,
    Tag.CRYPTOGRAPHIC_ALGORITHM, Tag.CRYPTOGRAPHIC_LENGTH, Tag.NAME_VALUE, Tag.NAME_TYPE,
]
_FUZZ_TEXT = ["Name", "State", "x-a", "y-b", "Activation Date", "Cryptographic Length",
              "Application Specific Information", "Initial Date", "Object Group", "1", ""]


def _primitive(tag: int) -> st.SearchStrategy[Item]:
    from datetime import UTC, datetime

    from vmcrypt.kmip.ttlv import ItemType

    def make(kind: ItemType) -> Callable[[object], Item]:
        return lambda value: Item(tag, kind, value)  # type: ignore[arg-type]

    return st.one_of(
        st.integers(-5, 300).map(make(ItemType.INTEGER)),
        st.integers(0, 8).map(make(ItemType.ENUMERATION)),
        st.sampled_from(_FUZZ_TEXT).map(make(ItemType.TEXT_STRING)),
        st.binary(max_size=40).map(make(ItemType.BYTE_STRING)),
        st.booleans().map(make(ItemType.BOOLEAN)),
        st.integers(0, 2**33).map(lambda s: Item(tag, ItemType.DATE_TIME,
                                                  datetime.fromtimestamp(s, UTC))),
        st.integers(0, 300).map(make(ItemType.LONG_INTEGER)),
        st.integers(0, 300).map(make(ItemType.INTERVAL)),
    )


_FUZZ_ITEMS = st.recursive(
    st.sampled_from(_FUZZ_TAGS).flatmap(_primitive),
    lambda kids: st.tuples(st.sampled_from(_FUZZ_TAGS), st.lists(kids, max_size=5)).map(
        lambda pair: structure(pair[0], *pair[1])),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operation=st.sampled_from(sorted(OPERATIONS)), children=st.lists(_FUZZ_ITEMS, max_size=6),
       minor=st.integers(0, 4))
def test_fuzzed_payloads_get_a_kmip_reason_not_an_internal_error(
        dispatcher: Dispatcher, operation: int, children: list[Item], minor: int) -> None:
    """Well-framed requests with nonsense payloads: every failure names a KMIP reason;
    General Failure (an exception inside an operation) would be a server bug."""
    request = build_request(ProtocolVersion(1, minor), [
        RequestBatchItem(operation, structure(Tag.REQUEST_PAYLOAD, *children))])
    response = _answer(dispatcher, encode(request))
    assert all(i.reason != ResultReason.GENERAL_FAILURE for i in response.items), response


def test_a_repeated_request_is_run_again_not_answered_from_memory(tmp_path: Path) -> None:
    """Parsed requests are memoised by their bytes; results never are, and requests that
    carry key material are not kept at all."""
    from vmcrypt.kmip.client import _plain_create_request

    store = Store(tmp_path / "kms.db", bytes(range(32)))
    try:
        dispatcher = Dispatcher(store)
        create = _plain_create_request(ProtocolVersion(1, 4), 256, 12)
        uids = set()
        for _ in range(3):
            response = parse_response(decode(dispatcher.handle(create, identity="t")))
            payload = response.items[0].payload
            assert payload is not None
            uids.add(find(payload, Tag.UNIQUE_IDENTIFIER).value)  # type: ignore[union-attr]
        assert len(uids) == 3 and store.count() == 3
        assert list(dispatcher._parsed._entries) == [create]
        register = encode(build_request(ProtocolVersion(1, 4), [RequestBatchItem(
            Operation.REGISTER, structure(Tag.REQUEST_PAYLOAD,
                                          enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY)))]))
        dispatcher.handle(register, identity="t")
        assert register not in dispatcher._parsed._entries
    finally:
        store.close()
