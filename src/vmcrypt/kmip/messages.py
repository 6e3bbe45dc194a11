"""KMIP request and response messages — KMIP 1.4, section 7 (Message Contents) and 6.

A message is a header and one or more batch items. This module only frames: it turns
an :class:`~vmcrypt.kmip.ttlv.Item` into typed envelopes and back, and leaves each
payload as an ``Item`` for the operation code that understands it. Parsing is strict in
the ways that matter to a server (Batch Count must match, Unique Batch Item IDs must be
present and distinct when there are several items — 6.4) and raises
:class:`~vmcrypt.kmip.exceptions.MessageError` carrying the Result Reason to answer with.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import total_ordering

from vmcrypt.kmip.exceptions import MessageError
from vmcrypt.kmip.items import byte_string as _bytes
from vmcrypt.kmip.items import (
    children,
    date_time,
    enum,
    find,
    find_all,
    get_bytes,
    get_enum,
    get_int,
    get_text,
    integer,
    structure,
    text,
)
from vmcrypt.kmip.tags import (
    BatchErrorContinuationOption,
    Operation,
    ResultReason,
    ResultStatus,
    Tag,
)
from vmcrypt.kmip.ttlv import Item, ItemType

__all__ = [
    "SUPPORTED_VERSIONS",
    "ProtocolVersion",
    "RequestBatchItem",
    "RequestMessage",
    "ResponseBatchItem",
    "ResponseMessage",
    "build_request",
    "build_response",
    "operation_name",
    "parse_request",
    "parse_response",
]


@total_ordering
@dataclass(frozen=True)
class ProtocolVersion:
    """Protocol Version (6.1): major and minor, ordered."""

    major: int
    minor: int

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ProtocolVersion):
            return NotImplemented
        return (self.major, self.minor) < (other.major, other.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def to_item(self) -> Item:
        """The Protocol Version structure (built once per version: items are immutable)."""
        return _version_item(self.major, self.minor)

    @classmethod
    def from_item(cls, item: Item) -> ProtocolVersion:
        """Parse a Protocol Version structure."""
        major = get_int(item, Tag.PROTOCOL_VERSION_MAJOR)
        minor = get_int(item, Tag.PROTOCOL_VERSION_MINOR)
        assert major is not None and minor is not None
        return cls(major, minor)


#: Newest first, as DiscoverVersions answers (KMIP 1.4, 4.26).
SUPPORTED_VERSIONS: tuple[ProtocolVersion, ...] = tuple(
    ProtocolVersion(1, minor) for minor in (4, 3, 2, 1, 0)
)


@dataclass(frozen=True)
class RequestBatchItem:
    """One operation of a request; ``payload`` is the Request Payload structure."""

    operation: int
    payload: Item
    batch_id: bytes | None = None


@dataclass(frozen=True)
class RequestMessage:
    """A parsed Request Message."""

    version: ProtocolVersion
    items: tuple[RequestBatchItem, ...]
    error_continuation: BatchErrorContinuationOption = BatchErrorContinuationOption.STOP
    maximum_response_size: int | None = None


@dataclass(frozen=True)
class ResponseBatchItem:
    """One operation's result; a failure carries a reason and a message, no payload."""

    operation: int | None
    status: ResultStatus
    batch_id: bytes | None = None
    reason: ResultReason | int | None = None
    message: str | None = None
    payload: Item | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ResponseMessage:
    """A parsed Response Message."""

    version: ProtocolVersion
    time_stamp: datetime
    items: tuple[ResponseBatchItem, ...]


def _root(item: Item, tag: Tag) -> Item:
    if item.tag != tag or item.type is not ItemType.STRUCTURE:
        raise MessageError(
            ResultReason.INVALID_MESSAGE,
            f"expected a {tag.name.replace('_', ' ').title()} structure, "
            f"got tag {item.tag:#08x} of type {item.type.name}",
        )
    return item


def _header_and_items(message: Item, header_tag: Tag) -> tuple[Item, list[Item]]:
    header = find(message, header_tag)
    if header is None:
        raise MessageError(ResultReason.INVALID_MESSAGE, "the message has no header")
    children(header)
    items = find_all(message, Tag.BATCH_ITEM)
    if not items:
        raise MessageError(ResultReason.INVALID_MESSAGE, "the message has no batch item")
    count = get_int(header, Tag.BATCH_COUNT)
    if count != len(items):
        raise MessageError(
            ResultReason.INVALID_MESSAGE,
            f"Batch Count says {count} but the message holds {len(items)} batch items",
        )
    return header, items


def parse_request(message: Item) -> RequestMessage:
    """Frame a Request Message (7.1); payloads stay unparsed."""
    _root(message, Tag.REQUEST_MESSAGE)
    header, raw_items = _header_and_items(message, Tag.REQUEST_HEADER)
    version_item = find(header, Tag.PROTOCOL_VERSION)
    if version_item is None:
        raise MessageError(ResultReason.INVALID_MESSAGE, "the request header has no version")
    version = ProtocolVersion.from_item(version_item)
    continuation = get_enum(header, Tag.BATCH_ERROR_CONTINUATION_OPTION, required=False)
    try:
        option = BatchErrorContinuationOption(
            continuation or BatchErrorContinuationOption.STOP
        )
    except ValueError:
        raise MessageError(
            ResultReason.INVALID_FIELD, f"unknown Batch Error Continuation Option {continuation}"
        ) from None
    items: list[RequestBatchItem] = []
    seen: set[bytes] = set()
    for raw in raw_items:
        operation = get_enum(raw, Tag.OPERATION)
        assert operation is not None
        batch_id = get_bytes(raw, Tag.UNIQUE_BATCH_ITEM_ID, required=False)
        if len(raw_items) > 1:
            # 6.4: required when the request holds more than one batch item.
            if batch_id is None:
                raise MessageError(
                    ResultReason.INVALID_MESSAGE,
                    "every batch item of a multi-item request needs a Unique Batch Item ID",
                )
            if batch_id in seen:
                raise MessageError(
                    ResultReason.INVALID_MESSAGE,
                    f"Unique Batch Item ID {batch_id.hex()} is used twice",
                )
            seen.add(batch_id)
        payload = find(raw, Tag.REQUEST_PAYLOAD)
        if payload is None:
            payload = structure(Tag.REQUEST_PAYLOAD)
        children(payload)
        items.append(RequestBatchItem(operation=operation, payload=payload, batch_id=batch_id))
    return RequestMessage(
        version=version,
        items=tuple(items),
        error_continuation=option,
        maximum_response_size=get_int(header, Tag.MAXIMUM_RESPONSE_SIZE, required=False),
    )


def build_request(
    version: ProtocolVersion,
    items: list[RequestBatchItem] | tuple[RequestBatchItem, ...],
    *,
    error_continuation: BatchErrorContinuationOption | None = None,
) -> Item:
    """A Request Message item for ``items`` (give each a batch ID when there are several)."""
    header = structure(
        Tag.REQUEST_HEADER,
        version.to_item(),
        enum(Tag.BATCH_ERROR_CONTINUATION_OPTION, error_continuation)
        if error_continuation is not None else None,
        integer(Tag.BATCH_COUNT, len(items)),
    )
    batch = [
        structure(
            Tag.BATCH_ITEM,
            enum(Tag.OPERATION, item.operation),
            _bytes(Tag.UNIQUE_BATCH_ITEM_ID, item.batch_id) if item.batch_id is not None else None,
            item.payload,
        )
        for item in items
    ]
    return structure(Tag.REQUEST_MESSAGE, header, *batch)


@functools.lru_cache(maxsize=64)
def _version_item(major: int, minor: int) -> Item:
    return structure(
        Tag.PROTOCOL_VERSION,
        integer(Tag.PROTOCOL_VERSION_MAJOR, major),
        integer(Tag.PROTOCOL_VERSION_MINOR, minor),
    )


def build_response(
    version: ProtocolVersion, items: list[ResponseBatchItem], *, now: datetime | None = None
) -> Item:
    """A Response Message item (7.2); the Time Stamp is ``now`` (a parameter for tests)."""
    stamp = now or datetime.now(UTC)
    header = structure(
        Tag.RESPONSE_HEADER,
        version.to_item(),
        date_time(Tag.TIME_STAMP, stamp),
        integer(Tag.BATCH_COUNT, len(items)),
    )
    batch = []
    for item in items:
        batch.append(
            structure(
                Tag.BATCH_ITEM,
                enum(Tag.OPERATION, item.operation) if item.operation is not None else None,
                _bytes(Tag.UNIQUE_BATCH_ITEM_ID, item.batch_id)
                if item.batch_id is not None else None,
                enum(Tag.RESULT_STATUS, item.status),
                enum(Tag.RESULT_REASON, item.reason) if item.reason is not None else None,
                text(Tag.RESULT_MESSAGE, item.message) if item.message is not None else None,
                item.payload,
            )
        )
    return structure(Tag.RESPONSE_MESSAGE, header, *batch)


def parse_response(message: Item) -> ResponseMessage:
    """Frame a Response Message, as a client reads it."""
    _root(message, Tag.RESPONSE_MESSAGE)
    header, raw_items = _header_and_items(message, Tag.RESPONSE_HEADER)
    version_item = find(header, Tag.PROTOCOL_VERSION)
    if version_item is None:
        raise MessageError(ResultReason.INVALID_MESSAGE, "the response header has no version")
    stamp = find(header, Tag.TIME_STAMP)
    time_stamp = stamp.value if stamp is not None and isinstance(stamp.value, datetime) else (
        datetime.now(UTC)
    )
    items = []
    for raw in raw_items:
        status = get_enum(raw, Tag.RESULT_STATUS)
        assert status is not None
        try:
            result_status = ResultStatus(status)
        except ValueError:
            raise MessageError(
                ResultReason.INVALID_MESSAGE, f"unknown Result Status {status}"
            ) from None
        reason = get_enum(raw, Tag.RESULT_REASON, required=False)
        result_reason: ResultReason | int | None = reason
        if reason is not None and reason in ResultReason._value2member_map_:
            result_reason = ResultReason(reason)
        items.append(
            ResponseBatchItem(
                operation=get_enum(raw, Tag.OPERATION, required=False),
                status=result_status,
                batch_id=get_bytes(raw, Tag.UNIQUE_BATCH_ITEM_ID, required=False),
                reason=result_reason,
                message=get_text(raw, Tag.RESULT_MESSAGE, required=False),
                payload=find(raw, Tag.RESPONSE_PAYLOAD),
            )
        )
    return ResponseMessage(
        version=ProtocolVersion.from_item(version_item), time_stamp=time_stamp, items=tuple(items)
    )


def operation_name(operation: int | None) -> str:
    """``GetAttributes`` for 0x0B — how logs and errors name an operation."""
    if operation is None:
        return "(no operation)"
    try:
        return Operation(operation).name.title().replace("_", "")
    except ValueError:
        return f"operation {operation:#x}"
