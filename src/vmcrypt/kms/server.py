"""KMIP over TLS: the listening socket and one thread per client connection.

KMIP 1.4 profiles (3.1, "Basic Authentication Suite"): TLS 1.2 or later, port 5696,
mutual authentication with certificates; the client identity is the client
certificate's subject CN. Each connection carries any number of request messages, one
after the other; every request gets a response, including the ones that cannot be
parsed (see :mod:`vmcrypt.kms.dispatch`). A request larger than the configured limit is
answered with a failure and the connection is closed, since its body cannot be skipped
safely. A peer that fails the TLS handshake is logged and dropped (there is no channel
to answer it on).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from vmcrypt.kmip.messages import SUPPORTED_VERSIONS, ResponseBatchItem, build_response
from vmcrypt.kmip.tags import ResultReason, ResultStatus
from vmcrypt.kmip.ttlv import HEADER_SIZE, encode
from vmcrypt.kms.dispatch import Dispatcher
from vmcrypt.kms.master_key import load_master_key
from vmcrypt.kms.store import Store
from vmcrypt.pki.tls import peer_identity, server_context

__all__ = ["DEFAULT_PORT", "KmsConfig", "KmsServer"]

DEFAULT_PORT = 5696
log = logging.getLogger("vmcrypt.kms")


@dataclass(frozen=True)
class KmsConfig:
    """Where the server listens, what it trusts, and where it keeps its keys."""

    database: Path
    cert_file: Path
    key_file: Path
    ca_file: Path
    master_key_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_message_size: int = 1 << 20
    idle_timeout: float = 300.0
    handshake_timeout: float = 10.0
    max_connections: int = 512


class KmsServer:
    """A running key server; ``start()`` returns once it accepts connections."""

    def __init__(self, config: KmsConfig, *, master_key: bytes | None = None) -> None:
        self.config = config
        key = master_key if master_key is not None else load_master_key(config.master_key_file)
        self.store = Store(config.database, key)
        self.dispatcher = Dispatcher(self.store)
        self._context = server_context(
            cert_file=config.cert_file, key_file=config.key_file, ca_file=config.ca_file
        )
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._connections: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was asked for."""
        if self._listener is None:
            raise RuntimeError("the server is not started")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        """Bind, listen, and accept on a background thread."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.config.host, self.config.port))
        listener.listen(128)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="kms-accept", daemon=True)
        self._thread.start()
        log.info("KMIP server listening on %s:%d", *self.address)
        return self.address

    def serve_forever(self) -> None:
        """Block until :meth:`shutdown` (or a signal handler calling it)."""
        self._stopping.wait()

    def shutdown(self) -> None:
        """Stop accepting, close every connection, close the database."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._guard:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            workers = list(self._workers)
        if self._thread is not None:
            self._thread.join(timeout=5)
        # A stopped server must look stopped: no connection may answer from a closed store.
        for worker in workers:
            worker.join(timeout=5)
        self.store.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                log.warning("refusing %s: %d connections already open", peer,
                            self.config.max_connections)
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            worker = threading.Thread(
                target=self._serve_connection, args=(conn, peer), name=f"kms-{peer}", daemon=True
            )
            with self._guard:
                self._workers.add(worker)
            worker.start()

    def _serve_connection(self, raw: socket.socket, peer: tuple[str, int]) -> None:
        tracked: socket.socket = raw
        with self._guard:
            self._connections.add(raw)
        try:
            raw.settimeout(self.config.handshake_timeout)
            try:
                conn = self._context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS handshake with %s failed: %s", peer[0], exc)
                return
            # wrap_socket detaches ``raw``: track the TLS socket so shutdown() reaches it.
            with self._guard:
                self._connections.discard(raw)
                self._connections.add(conn)
                tracked = conn
            identity = peer_identity(conn)
            conn.settimeout(self.config.idle_timeout)
            log.debug("client %s connected from %s (%s)", identity, peer[0], conn.version())
            try:
                self._serve_requests(conn, identity)
            except (OSError, ssl.SSLError) as exc:
                log.debug("connection from %s ended: %s", peer[0], exc)
            finally:
                with contextlib.suppress(OSError):
                    conn.close()
        finally:
            with self._guard:
                self._connections.discard(tracked)
                self._workers.discard(threading.current_thread())
            raw.close()
            self._slots.release()

    def _serve_requests(self, conn: ssl.SSLSocket, identity: str | None) -> None:
        """Answer request messages in order until the peer closes.

        Reads are buffered: a whole request usually arrives in one TLS record, so one
        ``recv`` per request instead of one for the header and one for the body.
        """
        buffer = bytearray()
        while not self._stopping.is_set():
            if not _fill(conn, buffer, HEADER_SIZE):
                return
            (length,) = struct.unpack_from(">I", buffer, 4)
            total = HEADER_SIZE + length + (-length % 8)
            if total > self.config.max_message_size:
                conn.sendall(_too_large(total, self.config.max_message_size))
                return
            if not _fill(conn, buffer, total):
                raise ConnectionError("peer closed the connection in the middle of a request")
            message = bytes(buffer[:total])
            del buffer[:total]
            conn.sendall(self.dispatcher.handle(message, identity=identity))


def _fill(conn: ssl.SSLSocket, buffer: bytearray, size: int) -> bool:
    """Read until ``buffer`` holds ``size`` bytes; False on a clean close before any byte."""
    while len(buffer) < size:
        chunk = conn.recv(max(_READ_SIZE, size - len(buffer)))
        if not chunk:
            if not buffer:
                return False
            raise ConnectionError(f"peer closed the connection {size - len(buffer)} bytes early")
        buffer += chunk
    return True


_READ_SIZE = 65536


def _too_large(total: int, limit: int) -> bytes:
    item = ResponseBatchItem(
        operation=None, status=ResultStatus.OPERATION_FAILED,
        reason=ResultReason.INVALID_MESSAGE,
        message=f"request of {total} bytes exceeds this server's limit of {limit} bytes",
    )
    return encode(build_response(SUPPORTED_VERSIONS[-1], [item]))
