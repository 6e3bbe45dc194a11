"""A KMIP client on vmcrypt's own codec: symmetric keys and their attributes.

One :class:`KmipClient` keeps one TLS connection (:mod:`vmcrypt.kmip.connection`) and
reuses it for every call, under a lock, because a KMIP server handles any number of
requests per connection (KMIP 1.4 profiles, 3.1) and a TLS handshake costs more than a
Get. A connection the server closed while idle is reopened once, transparently; any
other failure surfaces as :class:`~vmcrypt.kmip.exceptions.KmipConnectionError`.

Each method is one KMIP operation of KMIP 1.4 section 4, sent as a KMIP 1.2 message by
default (what vCenter speaks). A failed batch item raises
:class:`~vmcrypt.kmip.exceptions.OperationFailed` with the server's Result Status,
Result Reason and Result Message; :meth:`KmipClient.send` returns raw results for
callers that batch on their own. Payload shapes are the spec's tables; they also work
against PyKMIP's server (tested in ``tests/kmip/test_client_pykmip_server.py``).
"""

from __future__ import annotations

import functools
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType

from vmcrypt.kmip.attributes import Attribute, attribute
from vmcrypt.kmip.connection import Connection, StaleConnection
from vmcrypt.kmip.exceptions import ItemFailed, KmipError, MessageError, OperationFailed
from vmcrypt.kmip.items import (
    enum,
    find,
    find_all,
    get_bytes,
    get_int,
    get_text,
    integer,
    structure,
    text,
)
from vmcrypt.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    ResponseBatchItem,
    build_request,
    operation_name,
    parse_response,
)
from vmcrypt.kmip.payloads import (
    AttributesArg,
    add_fields,
    attribute_list,
    cipher_fields,
    get_fields,
    ints,
    key_bytes,
    named,
    raw_symmetric_key,
    read_attribute,
    template,
    unique_identifier,
)
from vmcrypt.kmip.tags import (
    BatchErrorContinuationOption,
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    ObjectType,
    Operation,
    QueryFunction,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    Tag,
)
from vmcrypt.kmip.ttlv import Item, decode, encode

__all__ = [
    "DEFAULT_USAGE_MASK",
    "DEFAULT_VERSION",
    "MAX_BATCH_RESPONSE_SIZE",
    "MAX_REQUEST_SIZE",
    "MAX_RESPONSE_SIZE",
    "Encrypted",
    "ItemFailed",
    "KmipClient",
    "ServerInfo",
]

#: vCenter speaks KMIP 1.2; servers answer in the request's version (KMIP 1.4, 6.1).
DEFAULT_VERSION = ProtocolVersion(1, 2)
#: Encrypt | Decrypt: what a KEK wrapping DEKs is used for.
DEFAULT_USAGE_MASK = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT
#: The largest response read for one operation.
MAX_RESPONSE_SIZE = 16 << 20
#: The largest response read for a batched :meth:`KmipClient.get_keys` message.
MAX_BATCH_RESPONSE_SIZE = 64 << 20
#: Requests stay below this; vmcrypt's server refuses larger ones by default (1 MiB).
MAX_REQUEST_SIZE = (1 << 20) - 4096


@dataclass(frozen=True)
class ServerInfo:
    """What Query (KMIP 1.4, 4.25) reported: operations, object types and vendor."""

    operations: list[int] = field(default_factory=list)
    object_types: list[int] = field(default_factory=list)
    vendor: str | None = None


@dataclass(frozen=True)
class Encrypted:
    """What Encrypt (KMIP 1.4, 4.29) returned: the ciphertext, the IV the server chose
    (None when the request gave one), and the GCM tag (None for the key wraps)."""

    data: bytes = field(repr=False)
    iv: bytes | None = None
    tag: bytes | None = None


class KmipClient:
    """A KMIP client over one persistent, mutually authenticated TLS connection."""

    def __init__(self, host: str, port: int = 5696, *, ssl_context: ssl.SSLContext,
                 timeout: float = 10.0, version: ProtocolVersion = DEFAULT_VERSION,
                 server_hostname: str | None = None) -> None:
        self.version = version
        self._connection = Connection(host, port, ssl_context=ssl_context, timeout=timeout,
                                      server_hostname=server_hostname)
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """``host:port`` of the server."""
        return self._connection.address

    @property
    def tls_version(self) -> str | None:
        """The TLS version of the open connection, if one is open."""
        return self._connection.tls_version

    @property
    def peer_certificate_expiry(self) -> datetime | None:
        """The notAfter of the server certificate on the open connection, if one is open."""
        return self._connection.peer_certificate_expiry

    def __repr__(self) -> str:
        return f"KmipClient({self.address}, version={self.version})"

    # -- connection -------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (operations otherwise connect on first use)."""
        with self._lock:
            self._connection.open()

    def close(self) -> None:
        """Close the connection; a later call opens a new one."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> KmipClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- messages ---------------------------------------------------------------------

    def send(self, items: Sequence[RequestBatchItem], *,
             error_continuation: BatchErrorContinuationOption | None = None,
             max_response_size: int = MAX_RESPONSE_SIZE) -> list[ResponseBatchItem]:
        """Send ``items`` as one request message; return its results without raising.

        Batch items of a multi-item request get Unique Batch Item IDs when they have none
        (6.4 requires them). A message-level refusal comes back as one result with no
        operation.
        """
        if not items:
            raise ValueError("a KMIP request needs at least one batch item")
        if len(items) > 1:
            items = [
                item if item.batch_id is not None else RequestBatchItem(
                    item.operation, item.payload, n.to_bytes(4, "big"))
                for n, item in enumerate(items)
            ]
        request = encode(build_request(self.version, list(items),
                                       error_continuation=error_continuation))
        what = operation_name(items[0].operation) + (
            f" (batch of {len(items)})" if len(items) > 1 else "")
        return self._send_encoded(request, len(items), what, max_response_size)

    def _send_encoded(self, request: bytes, count: int, what: str,
                      max_response_size: int = MAX_RESPONSE_SIZE) -> list[ResponseBatchItem]:
        """Send an encoded request message of ``count`` items; its parsed results."""
        data = self._exchange(request, max_response_size=max_response_size, what=what)
        try:
            message = decode(data, max_items=max(10_000, 64 * count))
            return list(parse_response(message).items)
        except KmipError as exc:
            raise MessageError(
                ResultReason.INVALID_MESSAGE,
                f"the KMIP server {self.address} sent an invalid response to {what}: {exc}",
            ) from None

    def _exchange(self, request: bytes, *, max_response_size: int, what: str) -> bytes:
        with self._lock:
            connection = self._connection
            if connection.looks_closed():
                connection.close()
            try:
                return connection.exchange(request, max_response_size=max_response_size,
                                           what=what)
            except StaleConnection:
                # The server dropped the idle connection before reading the request, so
                # sending it again on a fresh connection cannot run it twice.
                return connection.exchange(request, max_response_size=max_response_size,
                                           what=what)

    def _call(self, operation: Operation, *fields: Item | None, uid: str | None = None) -> Item:
        """One operation; its Response Payload, or :class:`OperationFailed`."""
        payload = structure(Tag.REQUEST_PAYLOAD, *fields)
        results = self.send([RequestBatchItem(operation, payload)])
        return _payload(results[0], operation, uid)

    # -- discovery --------------------------------------------------------------------

    def discover_versions(self) -> list[ProtocolVersion]:
        """The protocol versions the server speaks, best first (4.26)."""
        payload = self._call(Operation.DISCOVER_VERSIONS)
        return [ProtocolVersion.from_item(i) for i in find_all(payload, Tag.PROTOCOL_VERSION)]

    def query(self) -> ServerInfo:
        """Query Operations, Objects and Server Information (4.25)."""
        payload = self._call(
            Operation.QUERY,
            enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_OPERATIONS),
            enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_OBJECTS),
            enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_SERVER_INFORMATION),
        )
        return ServerInfo(
            operations=ints(find_all(payload, Tag.OPERATION)),
            object_types=ints(find_all(payload, Tag.OBJECT_TYPE)),
            vendor=get_text(payload, Tag.VENDOR_IDENTIFICATION, required=False),
        )

    # -- keys -------------------------------------------------------------------------

    def create_symmetric_key(self, *, length: int = 256, usage_mask: int = DEFAULT_USAGE_MASK,
                             name: str | None = None, attributes: AttributesArg = ()) -> str:
        """Create (4.1) an AES key on the server; return its Unique Identifier.

        ``attributes`` go into the Template-Attribute, so custom ``x-`` attributes are set
        "when the key server creates a key", as vCenter does for ``x-Vendor`` & co.
        """
        extra = [*named(name), *attribute_list(attributes)]
        if not extra:
            # The common case is the same message every time: encoded once.
            request = _plain_create_request(self.version, length, int(usage_mask))
            results = self._send_encoded(request, 1, "Create")
            return unique_identifier(_payload(results[0], Operation.CREATE, None))
        payload = self._call(Operation.CREATE, _SYMMETRIC_KEY,
                             _aes_template(length, int(usage_mask), tuple(extra)))
        return unique_identifier(payload)

    def register_symmetric_key(self, key: bytes, *, name: str | None = None,
                               attributes: AttributesArg = ()) -> str:
        """Register (4.3) key material made by the client as an AES key; return its ID."""
        template_attributes = [attribute("Cryptographic Usage Mask", int(DEFAULT_USAGE_MASK)),
                               *named(name), *attribute_list(attributes)]
        payload = self._call(Operation.REGISTER, enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
                             template(template_attributes), raw_symmetric_key(key))
        return unique_identifier(payload)

    def get_key(self, uid: str) -> bytes:
        """Get (4.11) a symmetric key's raw bytes."""
        results = self._send_encoded(_get_request(self.version, uid), 1, "Get")
        return key_bytes(_payload(results[0], Operation.GET, uid), uid)

    def get_keys(self, uids: Sequence[str], *, batch_size: int = 500) -> list[bytes]:
        """Get many keys in few messages, in the order of ``uids``.

        Each message carries up to ``batch_size`` Get items with the Batch Error
        Continuation Option Continue (6.7), so one missing key does not hide the others'
        results; the first failure raises :class:`ItemFailed` naming its uid. Batches
        are split further when a request would exceed :data:`MAX_REQUEST_SIZE`.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        keys: list[bytes] = []
        for start in range(0, len(uids), batch_size):
            keys += self._get_batch(list(uids[start:start + batch_size]))
        return keys

    def _get_batch(self, uids: list[str]) -> list[bytes]:
        items = [
            RequestBatchItem(Operation.GET, structure(Tag.REQUEST_PAYLOAD, *get_fields(uid)),
                             n.to_bytes(4, "big"))
            for n, uid in enumerate(uids)
        ]
        size = len(encode(build_request(self.version, items)))
        if size > MAX_REQUEST_SIZE and len(uids) > 1:
            half = len(uids) // 2
            return self._get_batch(uids[:half]) + self._get_batch(uids[half:])
        results = self.send(items, error_continuation=BatchErrorContinuationOption.CONTINUE,
                            max_response_size=MAX_BATCH_RESPONSE_SIZE)
        by_id = {result.batch_id: result for result in results}
        if len(results) == 1 and results[0].operation is None:
            _payload(results[0], Operation.GET, None)  # a message-level refusal
        keys = []
        for item, uid in zip(items, uids, strict=True):
            result = by_id.get(item.batch_id)
            if result is None:
                raise MessageError(
                    ResultReason.INVALID_MESSAGE,
                    f"the KMIP server {self.address} did not answer the Get of {uid!r}",
                )
            keys.append(key_bytes(_payload(result, Operation.GET, uid), uid))
        return keys

    # -- attributes -------------------------------------------------------------------

    def get_attributes(self, uid: str, names: Sequence[str] | None = None) -> list[Attribute]:
        """Get Attributes (4.12): all of them, or those named (absent names are skipped)."""
        payload = self._call(Operation.GET_ATTRIBUTES, text(Tag.UNIQUE_IDENTIFIER, uid),
                             *(text(Tag.ATTRIBUTE_NAME, n) for n in names or ()), uid=uid)
        return [read_attribute(item) for item in find_all(payload, Tag.ATTRIBUTE)]

    def get_attribute_list(self, uid: str) -> list[str]:
        """Get Attribute List (4.13): the names of the object's attributes."""
        payload = self._call(Operation.GET_ATTRIBUTE_LIST, text(Tag.UNIQUE_IDENTIFIER, uid),
                             uid=uid)
        return [str(item.value) for item in find_all(payload, Tag.ATTRIBUTE_NAME)]

    def add_attribute(self, uid: str, name: str, value: object) -> int:
        """Add Attribute (4.14); returns the Attribute Index the server chose."""
        payload = self._call(Operation.ADD_ATTRIBUTE, *add_fields(uid, name, value), uid=uid)
        returned = find(payload, Tag.ATTRIBUTE)
        index = get_int(returned, Tag.ATTRIBUTE_INDEX, required=False) if returned else None
        return index or 0

    def add_attributes(self, uid: str, attributes: Mapping[str, object]) -> None:
        """Several Add Attribute items in one message, as vCenter sends its x- attributes.

        The batch stops at the first failure (6.7, Stop), which is raised.
        """
        if not attributes:
            return
        items = [
            RequestBatchItem(Operation.ADD_ATTRIBUTE,
                             structure(Tag.REQUEST_PAYLOAD, *add_fields(uid, name, value)))
            for name, value in attributes.items()
        ]
        results = self.send(items)
        for result in results:
            _payload(result, Operation.ADD_ATTRIBUTE, uid)
        if len(results) < len(items):
            raise MessageError(
                ResultReason.INVALID_MESSAGE,
                f"the KMIP server {self.address} answered {len(results)} of {len(items)} "
                "Add Attribute items without reporting a failure",
            )

    def modify_attribute(self, uid: str, name: str, value: object, *,
                         index: int | None = None) -> None:
        """Modify Attribute (4.15) of instance ``index`` (the server assumes 0)."""
        self._call(Operation.MODIFY_ATTRIBUTE, text(Tag.UNIQUE_IDENTIFIER, uid),
                   attribute(name, value, index=index).to_item(), uid=uid)

    def delete_attribute(self, uid: str, name: str, *, index: int | None = None) -> None:
        """Delete Attribute (4.16): KMIP 1.x names it by Attribute Name and Index."""
        self._call(Operation.DELETE_ATTRIBUTE, text(Tag.UNIQUE_IDENTIFIER, uid),
                   text(Tag.ATTRIBUTE_NAME, name),
                   integer(Tag.ATTRIBUTE_INDEX, index) if index is not None else None, uid=uid)

    # -- search and life cycle --------------------------------------------------------

    def locate(self, *, name: str | None = None, attributes: AttributesArg = (),
               maximum_items: int | None = None, offset_items: int | None = None) -> list[str]:
        """Locate (4.9): the IDs of objects matching every attribute given."""
        payload = self._call(
            Operation.LOCATE,
            integer(Tag.MAXIMUM_ITEMS, maximum_items) if maximum_items is not None else None,
            integer(Tag.OFFSET_ITEMS, offset_items) if offset_items is not None else None,
            *(a.to_item() for a in [*named(name), *attribute_list(attributes)]),
        )
        return [str(item.value) for item in find_all(payload, Tag.UNIQUE_IDENTIFIER)]

    def activate(self, uid: str) -> None:
        """Activate (4.19): Pre-Active → Active."""
        self._call(Operation.ACTIVATE, text(Tag.UNIQUE_IDENTIFIER, uid), uid=uid)

    def revoke(self, uid: str, *,
               reason: RevocationReasonCode = RevocationReasonCode.CESSATION_OF_OPERATION,
               message: str | None = None) -> None:
        """Revoke (4.20): Deactivated, or Compromised for ``KEY_COMPROMISE``."""
        self._call(
            Operation.REVOKE, text(Tag.UNIQUE_IDENTIFIER, uid),
            structure(Tag.REVOCATION_REASON, enum(Tag.REVOCATION_REASON_CODE, reason),
                      text(Tag.REVOCATION_MESSAGE, message) if message is not None else None),
            uid=uid,
        )

    def destroy(self, uid: str) -> None:
        """Destroy (4.21) the key material; servers keep the metadata."""
        self._call(Operation.DESTROY, text(Tag.UNIQUE_IDENTIFIER, uid), uid=uid)

    # -- cryptographic services ---------------------------------------------------------

    def encrypt(self, uid: str, data: bytes, *, mode: BlockCipherMode = BlockCipherMode.GCM,
                iv: bytes | None = None, aad: bytes | None = None,
                tag_length: int | None = None) -> Encrypted:
        """Encrypt (4.29) ``data`` with key ``uid`` inside the server; the key stays there.

        GCM's Additional Data and tag are KMIP 1.4 fields: open the client with
        ``version=ProtocolVersion(1, 4)`` for GCM against servers that check versions.
        """
        payload = self._call(Operation.ENCRYPT, *cipher_fields(
            uid, data, mode=mode, iv=iv, aad=aad, tag=None, tag_length=tag_length), uid=uid)
        out = get_bytes(payload, Tag.DATA)
        assert out is not None
        return Encrypted(out, get_bytes(payload, Tag.IV_COUNTER_NONCE, required=False),
                         get_bytes(payload, Tag.AUTHENTICATED_ENCRYPTION_TAG, required=False))

    def decrypt(self, uid: str, data: bytes, *, mode: BlockCipherMode = BlockCipherMode.GCM,
                iv: bytes | None = None, aad: bytes | None = None,
                tag: bytes | None = None) -> bytes:
        """Decrypt (4.30) ``data`` with key ``uid`` inside the server.

        Data that does not authenticate raises :class:`ItemFailed` with Result Reason
        Cryptographic Failure.
        """
        payload = self._call(Operation.DECRYPT, *cipher_fields(
            uid, data, mode=mode, iv=iv, aad=aad, tag=tag, tag_length=None), uid=uid)
        plain = get_bytes(payload, Tag.DATA)
        assert plain is not None
        return plain


def _payload(result: ResponseBatchItem, operation: int, uid: str | None) -> Item:
    """The result's payload, or the failure raised."""
    name = operation_name(result.operation if result.operation is not None else operation)
    if result.status is not ResultStatus.SUCCESS:
        if uid is not None and result.operation is not None:
            raise ItemFailed(uid=uid, operation=name, status=result.status,
                             reason=result.reason, message=result.message)
        raise OperationFailed(operation=name, status=result.status, reason=result.reason,
                              message=result.message)
    return result.payload if result.payload is not None else structure(Tag.RESPONSE_PAYLOAD)


_SYMMETRIC_KEY = enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY)


def _aes_template(length: int, usage_mask: int, extra: tuple[Attribute, ...]) -> Item:
    """The Template-Attribute of an AES Create; the common case is built once (items are
    immutable), which matters to a client creating keys in a loop."""
    if not extra:
        return _plain_aes_template(length, usage_mask)
    return template([*_plain_aes_attributes(length, usage_mask), *extra])


@functools.lru_cache(maxsize=16)
def _plain_aes_template(length: int, usage_mask: int) -> Item:
    return template(_plain_aes_attributes(length, usage_mask))


@functools.lru_cache(maxsize=16)
def _plain_create_request(version: ProtocolVersion, length: int, usage_mask: int) -> bytes:
    """The encoded Create message of a plain AES key (no name, no extra attributes)."""
    payload = structure(Tag.REQUEST_PAYLOAD, _SYMMETRIC_KEY,
                        _plain_aes_template(length, usage_mask))
    return encode(build_request(version, [RequestBatchItem(Operation.CREATE, payload)]))


def _encoded_get(version: ProtocolVersion, uid: str) -> bytes:
    payload = structure(Tag.REQUEST_PAYLOAD, *get_fields(uid))
    return encode(build_request(version, [RequestBatchItem(Operation.GET, payload)]))


@functools.lru_cache(maxsize=64)
def _get_template(version: ProtocolVersion, size: int) -> tuple[bytes, int]:
    """A Get message for a Unique Identifier of ``size`` bytes, and where those bytes go.

    Only the identifier's bytes change from one Get to the next (lengths and padding
    depend on its size alone), so a Get is one slice-and-join instead of building and
    encoding a dozen items; the place is found by encoding two different identifiers.
    """
    first, second = _encoded_get(version, "a" * size), _encoded_get(version, "b" * size)
    start = next(i for i, (x, y) in enumerate(zip(first, second, strict=True)) if x != y)
    return first, start


def _get_request(version: ProtocolVersion, uid: str) -> bytes:
    """The encoded Get message of ``uid`` (see :func:`_get_template`)."""
    raw = uid.encode("utf-8")
    if not raw or len(raw) > 256:
        return _encoded_get(version, uid)  # checked (and refused) the slow way
    template, start = _get_template(version, len(raw))
    return template[:start] + raw + template[start + len(raw):]


def _plain_aes_attributes(length: int, usage_mask: int) -> list[Attribute]:
    return [
        attribute("Cryptographic Algorithm", CryptographicAlgorithm.AES),
        attribute("Cryptographic Length", length),
        attribute("Cryptographic Usage Mask", usage_mask),
    ]
