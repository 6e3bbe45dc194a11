"""The request pipeline: bytes in, bytes out, a KMIP answer for every input.

This is the only place that knows the operation table, the batch rules and the audit
log (``../shared/STYLE.md``: audit in the pipeline, not in handlers). Whatever arrives —
undecodable bytes, an unknown operation, a payload missing a field, a bug — the client
gets a Response Message with Result Status "Operation Failed", a Result Reason and a
Result Message saying what was wrong; never a dropped connection or a traceback.

Batches (KMIP 1.4, 6.7 and 6.8): items run in order; with Batch Error Continuation
Option Stop (the default) processing stops at the first failure and later items are
not answered; Continue runs every item; Undo runs the batch as one transaction and, on a
failure, rolls it back and reports the earlier items as "Operation Undone".
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from vmcrypt.kmip.exceptions import KmipError, MessageError
from vmcrypt.kmip.items import find
from vmcrypt.kmip.messages import (
    SUPPORTED_VERSIONS,
    ProtocolVersion,
    RequestMessage,
    ResponseBatchItem,
    build_response,
    operation_name,
    parse_request,
)
from vmcrypt.kmip.tags import (
    BatchErrorContinuationOption,
    Operation,
    ResultReason,
    ResultStatus,
    Tag,
)
from vmcrypt.kmip.ttlv import Item, decode, encode
from vmcrypt.kms.context import Context
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.operations import (
    activate,
    add_attribute,
    create,
    decrypt,
    delete_attribute,
    destroy,
    discover_versions,
    encrypt,
    get,
    get_attribute_list,
    get_attributes,
    locate,
    modify_attribute,
    query,
    register,
    revoke,
)
from vmcrypt.kms.store import Store

__all__ = ["OPERATIONS", "Dispatcher"]

OperationFn = Callable[[Context, Item], Item]

OPERATIONS: dict[int, OperationFn] = {
    Operation.CREATE: create.run,
    Operation.REGISTER: register.run,
    Operation.LOCATE: locate.run,
    Operation.GET: get.run,
    Operation.GET_ATTRIBUTES: get_attributes.run,
    Operation.GET_ATTRIBUTE_LIST: get_attribute_list.run,
    Operation.ADD_ATTRIBUTE: add_attribute.run,
    Operation.MODIFY_ATTRIBUTE: modify_attribute.run,
    Operation.DELETE_ATTRIBUTE: delete_attribute.run,
    Operation.ACTIVATE: activate.run,
    Operation.REVOKE: revoke.run,
    Operation.DESTROY: destroy.run,
    Operation.ENCRYPT: encrypt.run,
    Operation.DECRYPT: decrypt.run,
    Operation.QUERY: query.run,
    Operation.DISCOVER_VERSIONS: discover_versions.run,
}

#: Operations that change nothing run without a transaction of their own (each of their
#: statements sees a consistent snapshot; WAL readers never block writers).
READ_ONLY = frozenset({
    Operation.GET, Operation.GET_ATTRIBUTES, Operation.GET_ATTRIBUTE_LIST, Operation.LOCATE,
    Operation.QUERY, Operation.DISCOVER_VERSIONS, Operation.ENCRYPT, Operation.DECRYPT,
})

_LOWEST = SUPPORTED_VERSIONS[-1]
_HIGHEST = SUPPORTED_VERSIONS[0]
audit = logging.getLogger("vmcrypt.kms.audit")
log = logging.getLogger("vmcrypt.kms")


class Dispatcher:
    """Turns one request message into one response message."""

    def __init__(self, store: Store, *, clock: Callable[[], datetime] | None = None,
                 max_items: int = 10_000) -> None:
        self.store = store
        self._clock = clock or (lambda: datetime.now(UTC))
        self._max_items = max_items
        self._parsed = _Memo(_MEMO_ENTRIES)

    def handle(self, data: bytes, *, identity: str | None = None) -> bytes:
        """Answer the encoded request ``data`` with an encoded response."""
        return encode(self.handle_item(data, identity=identity))

    def handle_item(self, data: bytes | Item, *, identity: str | None = None) -> Item:
        """Like :meth:`handle`, returning the response item (tests read it directly)."""
        now = self._clock().replace(microsecond=0)
        request = self._parsed.get(data) if isinstance(data, bytes) else None
        if request is None:
            try:
                message = decode(data, max_items=self._max_items) if isinstance(
                    data, bytes) else data
            except KmipError as exc:
                return self._refuse(_LOWEST, ResultReason.INVALID_MESSAGE, str(exc), now,
                                    identity)
            try:
                request = parse_request(message)
            except MessageError as exc:
                return self._refuse(_version_of(message), exc.reason, str(exc), now, identity)
            except KmipError as exc:
                return self._refuse(
                    _version_of(message), ResultReason.INVALID_MESSAGE, str(exc), now, identity
                )
            if isinstance(data, bytes) and len(data) <= _MEMO_MAX_BYTES and not any(
                    item.operation in _CARRIES_SECRETS for item in request.items):
                self._parsed.put(data, request)
        version = request.version
        if version not in SUPPORTED_VERSIONS:
            only_discovery = all(
                item.operation == Operation.DISCOVER_VERSIONS for item in request.items
            )
            answer_in = min(max(version, _LOWEST), _HIGHEST)
            if not only_discovery:
                return self._refuse(
                    answer_in, ResultReason.INVALID_MESSAGE,
                    f"protocol version {version} is not supported; this server speaks KMIP "
                    f"{_LOWEST}-{_HIGHEST} (ask with Discover Versions)", now, identity,
                )
            version = answer_in
        items = self._run_batch(request, version, now, identity)
        response = build_response(version, items, now=now)
        limit = request.maximum_response_size
        if limit is not None and len(encode(response)) > limit:
            too_large = [
                ResponseBatchItem(
                    operation=item.operation, batch_id=item.batch_id,
                    status=ResultStatus.OPERATION_FAILED, reason=ResultReason.RESPONSE_TOO_LARGE,
                    message=f"the response exceeds the Maximum Response Size of {limit} bytes",
                )
                for item in request.items
            ]
            response = build_response(version, too_large, now=now)
        return response

    def _run_batch(self, request: RequestMessage, version: ProtocolVersion, now: datetime,
                   identity: str | None) -> list[ResponseBatchItem]:
        ctx = Context(store=self.store, version=version, identity=identity, now=now)
        option = request.error_continuation
        out: list[ResponseBatchItem] = []
        if option is BatchErrorContinuationOption.UNDO:
            try:
                with self.store.transaction():
                    for item in request.items:
                        out.append(self._run_item(ctx, item.operation, item.batch_id,
                                                  item.payload, identity))
                        if out[-1].status is not ResultStatus.SUCCESS:
                            raise _Undo
            except _Undo:
                out = [
                    ResponseBatchItem(
                        operation=done.operation, batch_id=done.batch_id,
                        status=ResultStatus.OPERATION_UNDONE, reason=done.reason,
                        message="undone: a later item of the batch failed",
                    ) if done.status is ResultStatus.SUCCESS else done
                    for done in out
                ]
            return out
        for item in request.items:
            out.append(self._run_item(ctx, item.operation, item.batch_id, item.payload, identity))
            if out[-1].status is not ResultStatus.SUCCESS and (
                    option is BatchErrorContinuationOption.STOP):
                break
        return out

    def _run_item(self, ctx: Context, operation: int, batch_id: bytes | None, payload: Item,
                  identity: str | None) -> ResponseBatchItem:
        name = operation_name(operation)
        function = OPERATIONS.get(operation)
        try:
            if function is None:
                raise OperationError(
                    ResultReason.OPERATION_NOT_SUPPORTED,
                    f"{name} is not supported by this server (see Query Operations)",
                )
            if operation in READ_ONLY:
                result = function(ctx, payload)
            else:
                with self.store.transaction():
                    result = function(ctx, payload)
        except (OperationError, MessageError) as exc:
            audit.info("%s %s by %s: failed: %s", name, _uid_of(payload), identity, exc)
            return ResponseBatchItem(
                operation=operation, batch_id=batch_id, status=ResultStatus.OPERATION_FAILED,
                reason=exc.reason, message=str(exc),
            )
        except KmipError as exc:
            audit.info("%s by %s: invalid: %s", name, identity, exc)
            return ResponseBatchItem(
                operation=operation, batch_id=batch_id, status=ResultStatus.OPERATION_FAILED,
                reason=ResultReason.INVALID_MESSAGE, message=str(exc),
            )
        except Exception:
            log.exception("%s failed with an internal error", name)
            return ResponseBatchItem(
                operation=operation, batch_id=batch_id, status=ResultStatus.OPERATION_FAILED,
                reason=ResultReason.GENERAL_FAILURE,
                message="internal server error; the server log has the details",
            )
        if audit.isEnabledFor(logging.INFO):  # finding the uid costs more than the check
            audit.info("%s %s by %s: success", name, _uid_of(result) or _uid_of(payload),
                       identity)
        return ResponseBatchItem(
            operation=operation, batch_id=batch_id, status=ResultStatus.SUCCESS, payload=result
        )

    def _refuse(self, version: ProtocolVersion, reason: ResultReason, message: str,
                now: datetime, identity: str | None) -> Item:
        audit.info("request from %s refused: %s", identity, message)
        item = ResponseBatchItem(
            operation=None, status=ResultStatus.OPERATION_FAILED, reason=reason, message=message
        )
        return build_response(version, [item], now=now)


#: Parsed requests kept by their bytes: clients repeat the same Create (vCenter's keys
#: all come from one template; so do ours), and decoding plus parsing is about a tenth of
#: a Create. Items are immutable, so a parsed request can be shared.
_MEMO_ENTRIES = 64
#: Requests that carry key material or data are never kept beyond their own handling.
_CARRIES_SECRETS = frozenset({Operation.REGISTER, Operation.ENCRYPT, Operation.DECRYPT})
_MEMO_MAX_BYTES = 2048


class _Memo:
    """A small least-recently-used map; thread-safe enough for this use (a lost update
    only costs a re-parse)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, RequestMessage] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> RequestMessage | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: bytes, value: RequestMessage) -> None:
        with self._lock:
            self._entries[key] = value
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)


class _Undo(Exception):
    """Unwinds an Undo batch's transaction after a failed item."""


def _version_of(message: Item) -> ProtocolVersion:
    """The request's version if it can be read, so the refusal is in the client's version."""
    try:
        header = find(message, Tag.REQUEST_HEADER)
        version = find(header, Tag.PROTOCOL_VERSION) if header is not None else None
        if version is not None:
            found = ProtocolVersion.from_item(version)
            return min(max(found, _LOWEST), _HIGHEST)
    except KmipError:
        pass
    return _LOWEST


def _uid_of(payload: Item) -> str:
    try:
        uid = find(payload, Tag.UNIQUE_IDENTIFIER)
    except KmipError:
        return ""
    return uid.value if uid is not None and isinstance(uid.value, str) else ""
