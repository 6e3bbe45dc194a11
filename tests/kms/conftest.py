"""Fixtures for the key server tests: an EC PKI, an in-process server, raw KMIP senders.

The raw helpers speak KMIP with nothing but :mod:`vmcrypt.kmip` (messages, items, TTLV)
and an ``ssl`` socket, so they test the server independently of any KMIP client; PyKMIP's
``ProxyKmipClient`` is the second, independent client (see :func:`pykmip`).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from vmcrypt.kmip.attributes import Attribute, attribute
from vmcrypt.kmip.items import enum, find, find_all, integer, structure, text
from vmcrypt.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    ResponseBatchItem,
    ResponseMessage,
    build_request,
    parse_response,
)
from vmcrypt.kmip.tags import (
    BatchErrorContinuationOption,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    Tag,
)
from vmcrypt.kmip.ttlv import HEADER_SIZE, Item, ItemType, decode, encode
from vmcrypt.kms.server import KmsConfig, KmsServer
from vmcrypt.pki.layout import PkiLayout, init_pki
from vmcrypt.pki.tls import client_context

V1_0, V1_1, V1_2, V1_3, V1_4 = (ProtocolVersion(1, minor) for minor in range(5))
MASTER_KEY = bytes(range(32))
ENC_DEC = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT


# --- PKI ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    """One EC CA with a server identity and the clients ``admin`` and ``other``."""
    return init_pki(tmp_path_factory.mktemp("pki"), key_type="ec", clients=("admin", "other"))


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    """A second, unrelated CA: its client certificates must be refused."""
    return init_pki(tmp_path_factory.mktemp("foreign"), key_type="ec", clients=("admin",))


# --- the server ---------------------------------------------------------------------


def make_config(pki: PkiLayout, data: Path, **overrides: Any) -> KmsConfig:
    """A config on port 0 with the database and master key file in ``data``."""
    values: dict[str, Any] = {
        "database": data / "kms.db",
        "master_key_file": data / "master.key",
        "cert_file": pki.server.cert,
        "key_file": pki.server.key,
        "ca_file": pki.ca.cert,
        "port": 0,
        "idle_timeout": 30.0,
        "handshake_timeout": 5.0,
    }
    values.update(overrides)
    return KmsConfig(**values)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "kms"
    path.mkdir()
    return path


@pytest.fixture
def server(pki: PkiLayout, data_dir: Path) -> Iterator[KmsServer]:
    """A started in-process key server on a free port."""
    srv = KmsServer(make_config(pki, data_dir), master_key=MASTER_KEY)
    srv.start()
    yield srv
    srv.shutdown()


# --- raw KMIP over TLS --------------------------------------------------------------


def recv_message(sock: ssl.SSLSocket) -> bytes:
    """One whole TTLV message (header, then the length it declares, padded)."""
    header = _recv(sock, HEADER_SIZE)
    (length,) = struct.unpack_from(">I", header, 4)
    return header + _recv(sock, length + (-length % 8))


def _recv(sock: ssl.SSLSocket, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise ConnectionError(f"server closed the connection {size - len(out)} bytes early")
        out += chunk
    return bytes(out)


class KmipConn:
    """One TLS connection to the server that sends request messages and reads responses."""

    def __init__(self, sock: ssl.SSLSocket, version: ProtocolVersion = V1_4) -> None:
        self.sock = sock
        self.version = version

    def close(self) -> None:
        self.sock.close()

    def send_bytes(self, data: bytes) -> bytes:
        """Send raw bytes and return the raw response message."""
        self.sock.sendall(data)
        return recv_message(self.sock)

    def send(self, message: Item | bytes) -> ResponseMessage:
        """Send a request message and parse the response."""
        data = message if isinstance(message, bytes) else encode(message)
        return parse_response(decode(self.send_bytes(data)))

    def batch(self, items: list[RequestBatchItem], *,
              option: BatchErrorContinuationOption | None = None,
              version: ProtocolVersion | None = None) -> ResponseMessage:
        """Send several operations in one message."""
        return self.send(build_request(version or self.version, items,
                                       error_continuation=option))

    def call(self, operation: int, payload: Item, *,
             version: ProtocolVersion | None = None) -> ResponseBatchItem:
        """One operation; the single response batch item."""
        response = self.batch([RequestBatchItem(operation, payload)], version=version)
        assert len(response.items) == 1
        return response.items[0]

    def ok(self, operation: int, payload: Item, **kwargs: Any) -> Item:
        """One operation that must succeed; its response payload."""
        item = self.call(operation, payload, **kwargs)
        assert item.status is ResultStatus.SUCCESS, (item.reason, item.message)
        assert item.operation == operation
        assert item.payload is not None
        return item.payload

    def fails(self, operation: int, payload: Item, reason: ResultReason | None = None,
              **kwargs: Any) -> ResponseBatchItem:
        """One operation that must fail (with ``reason`` when given)."""
        item = self.call(operation, payload, **kwargs)
        assert item.status is ResultStatus.OPERATION_FAILED, item
        if reason is not None:
            assert item.reason == reason, (item.reason, item.message)
        assert item.message
        return item

    # Operation shorthands (each returns the response payload of a success).

    def create(self, *attributes: Attribute, length: int = 256) -> str:
        payload = self.ok(Operation.CREATE, create_payload(*attributes, length=length))
        return uid_of(payload)

    def get_attributes(self, uid: str, *names: str) -> dict[str, list[Any]]:
        payload = self.ok(Operation.GET_ATTRIBUTES, get_attributes_payload(uid, *names))
        return attributes_of(payload)

    def key_bytes(self, uid: str) -> bytes:
        payload = self.ok(Operation.GET, uid_payload(uid))
        return key_material(payload)

    def activate(self, uid: str) -> None:
        self.ok(Operation.ACTIVATE, uid_payload(uid))

    def revoke(self, uid: str,
               code: RevocationReasonCode = RevocationReasonCode.CESSATION_OF_OPERATION) -> None:
        self.ok(Operation.REVOKE, revoke_payload(uid, code))

    def destroy(self, uid: str) -> None:
        self.ok(Operation.DESTROY, uid_payload(uid))

    def locate(self, *attributes: Attribute, maximum: int | None = None,
               offset: int | None = None) -> list[str]:
        payload = self.ok(Operation.LOCATE, locate_payload(*attributes, maximum=maximum,
                                                           offset=offset))
        return [item.value for item in find_all(payload, Tag.UNIQUE_IDENTIFIER)]  # type: ignore[misc]


def tls_client(pki: PkiLayout, name: str = "admin", *, with_cert: bool = True) -> ssl.SSLContext:
    """A client context trusting ``pki``'s CA, presenting ``name``'s certificate."""
    if not with_cert:
        return client_context(ca_file=pki.ca.cert, check_hostname=False)
    files = pki.clients[name]
    return client_context(ca_file=pki.ca.cert, cert_file=files.cert, key_file=files.key,
                          check_hostname=False)


def open_tls(address: tuple[str, int], context: ssl.SSLContext,
             timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


@pytest.fixture
def connect(server: KmsServer, pki: PkiLayout) -> Iterator[Callable[..., KmipConn]]:
    """``connect(version=V1_4, name="admin")`` → a :class:`KmipConn` to ``server``."""
    opened: list[KmipConn] = []

    def _connect(version: ProtocolVersion = V1_4, name: str = "admin") -> KmipConn:
        conn = KmipConn(open_tls(server.address, tls_client(pki, name)), version)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def kmip(connect: Callable[..., KmipConn]) -> KmipConn:
    """One KMIP 1.4 connection to ``server``."""
    return connect()


# --- payload builders and readers ----------------------------------------------------


def aes_attributes(length: int = 256) -> list[Attribute]:
    return [
        attribute("Cryptographic Algorithm", CryptographicAlgorithm.AES),
        attribute("Cryptographic Length", length),
        attribute("Cryptographic Usage Mask", int(ENC_DEC)),
    ]


def create_payload(*attributes: Attribute, length: int = 256) -> Item:
    """Create a symmetric AES key with the extra ``attributes``."""
    return structure(
        Tag.REQUEST_PAYLOAD,
        enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        structure(Tag.TEMPLATE_ATTRIBUTE,
                  *(a.to_item() for a in [*aes_attributes(length), *attributes])),
    )


def uid_payload(uid: str | None = None, *extra: Item | None) -> Item:
    return structure(Tag.REQUEST_PAYLOAD,
                     text(Tag.UNIQUE_IDENTIFIER, uid) if uid is not None else None, *extra)


def get_attributes_payload(uid: str | None, *names: str) -> Item:
    return uid_payload(uid, *(text(Tag.ATTRIBUTE_NAME, n) for n in names))


def attribute_payload(uid: str | None, attr: Attribute) -> Item:
    return uid_payload(uid, attr.to_item())


def delete_attribute_payload(uid: str | None, name: str, index: int | None = None) -> Item:
    return uid_payload(uid, text(Tag.ATTRIBUTE_NAME, name),
                       integer(Tag.ATTRIBUTE_INDEX, index) if index is not None else None)


def revoke_payload(uid: str | None, code: RevocationReasonCode, *,
                   occurred: datetime | None = None) -> Item:
    from vmcrypt.kmip.items import date_time

    return uid_payload(
        uid,
        structure(Tag.REVOCATION_REASON, enum(Tag.REVOCATION_REASON_CODE, code)),
        date_time(Tag.COMPROMISE_OCCURRENCE_DATE, occurred) if occurred is not None else None,
    )


def locate_payload(*attributes: Attribute, maximum: int | None = None,
                   offset: int | None = None) -> Item:
    return structure(
        Tag.REQUEST_PAYLOAD,
        integer(Tag.MAXIMUM_ITEMS, maximum) if maximum is not None else None,
        integer(Tag.OFFSET_ITEMS, offset) if offset is not None else None,
        *(a.to_item() for a in attributes),
    )


def uid_of(payload: Item) -> str:
    item = find(payload, Tag.UNIQUE_IDENTIFIER)
    assert item is not None and isinstance(item.value, str)
    return item.value


def attributes_of(payload: Item) -> dict[str, list[Any]]:
    """GetAttributes response → name → values (Python form) in index order."""
    out: dict[str, list[Any]] = {}
    for raw in find_all(payload, Tag.ATTRIBUTE):
        attr = Attribute.from_item(raw)
        out.setdefault(attr.name, []).append(attr.python)
    return out


def key_material(get_payload: Item) -> bytes:
    """The Raw key bytes of a Get response."""
    key = find(get_payload, Tag.SYMMETRIC_KEY)
    assert key is not None
    block = find(key, Tag.KEY_BLOCK)
    assert block is not None
    value = find(block, Tag.KEY_VALUE)
    assert value is not None
    material = find(value, Tag.KEY_MATERIAL)
    assert material is not None and material.type is ItemType.BYTE_STRING
    assert isinstance(material.value, bytes)
    return material.value


def name_attr(value: str) -> Attribute:
    return attribute("Name", value)


# --- PyKMIP -------------------------------------------------------------------------


@pytest.fixture
def pykmip(server: KmsServer, pki: PkiLayout) -> Iterator[Callable[..., Any]]:
    """``pykmip(kmip_version)`` → an open ``ProxyKmipClient`` to ``server``."""
    from kmip.pie.client import ProxyKmipClient

    opened: list[Any] = []
    host, port = server.address

    def _open(version: Any = None) -> Any:
        files = pki.clients["admin"]
        client = ProxyKmipClient(
            hostname=host, port=port, cert=str(files.cert), key=str(files.key),
            ca=str(pki.ca.cert), kmip_version=version,
            config_file=os.devnull,
        )
        client.open()
        opened.append(client)
        return client

    yield _open
    for client in opened:
        client.close()


@contextmanager
def captured_logs(name: str = "vmcrypt.kms") -> Iterator[list[str]]:
    """Every record of ``name`` (and children) at DEBUG, formatted with its arguments."""
    lines: list[str] = []

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    logger = logging.getLogger(name)
    handler = _Handler(level=logging.DEBUG)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
