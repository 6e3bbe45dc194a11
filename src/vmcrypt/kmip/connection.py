"""One TLS connection to a KMIP server: connect, send a request, read one bounded response.

KMIP 1.4 profiles, 3.1 ("Basic Authentication Suite"): TTLV messages over TLS 1.2 or
later with mutual certificate authentication, by default on port 5696, any number of
request/response pairs one after the other on one connection. This module is the strict
point of cut-off between the network and the protocol: every socket, DNS, TLS and
timeout failure leaves it as :class:`~vmcrypt.kmip.exceptions.KmipConnectionError`
with a message naming ``host:port`` and what to check, never as a raw ``OSError``.

A response is read header first; its length is checked against a limit *before* its
body is read, so a broken or hostile server cannot make the client allocate without
bound (the server side does the same with requests).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import time
from datetime import UTC, datetime

from vmcrypt.kmip.exceptions import KmipConnectionError, MessageError
from vmcrypt.kmip.tags import ResultReason, Tag
from vmcrypt.kmip.ttlv import HEADER_SIZE, ItemType

__all__ = ["Connection", "StaleConnection", "TlsRefused"]

_HEADER = struct.Struct(">3sBI")


class StaleConnection(KmipConnectionError):
    """The server closed a reused connection before answering: safe to reconnect and resend.

    Raised only when not a single byte of the response arrived, which is how a server
    that dropped an idle connection looks; the request was not processed.
    """


class TlsRefused(KmipConnectionError):
    """TCP reached the server, but TLS failed: certificate, hostname, or client refused."""


class Connection:
    """A lazily opened TLS connection; not thread-safe (the client holds the lock)."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext, timeout: float,
                 server_hostname: str | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.server_hostname = server_hostname or host
        self._context = ssl_context
        self._sock: ssl.SSLSocket | None = None
        #: Bytes received but not yet consumed: a response usually arrives in one TLS
        #: record, so reading ahead makes it one ``recv`` instead of header + body.
        self._buffer = bytearray()
        self._last_exchange = 0.0
        #: True once a request went out on the current socket: only then is it "reused".
        self._used = False

    @property
    def address(self) -> str:
        """``host:port`` as messages name the server."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        """A socket exists (it may still turn out to be closed by the server)."""
        return self._sock is not None

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version (``TLSv1.3``) of the open connection."""
        return self._sock.version() if self._sock is not None else None

    @property
    def peer_certificate_expiry(self) -> datetime | None:
        """When the server's certificate (verified at the handshake) expires; None when
        no connection is open. Health checks show it so an operator renews in time."""
        if self._sock is None:
            return None
        try:
            not_after = self._sock.getpeercert().get("notAfter")  # type: ignore[union-attr]
        except (OSError, ValueError):
            return None
        if not isinstance(not_after, str):
            return None
        return datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)

    def open(self) -> None:
        """Connect and complete the TLS handshake, both bounded by ``timeout``."""
        if self._sock is not None:
            return
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.gaierror as exc:
            raise KmipConnectionError(
                f"cannot resolve the KMIP server host {self.host!r} ({exc.strerror}); "
                "check the host name and DNS"
            ) from None
        except TimeoutError:
            raise KmipConnectionError(
                f"connecting to the KMIP server {self.address} timed out after "
                f"{self.timeout:g} s; check the address, the firewall and that the server is up"
            ) from None
        except ConnectionRefusedError:
            raise KmipConnectionError(
                f"the KMIP server {self.address} refused the connection; check that the key "
                f"server is running and listening on port {self.port}"
            ) from None
        except OSError as exc:
            raise KmipConnectionError(
                f"cannot connect to the KMIP server {self.address}: "
                f"{exc.strerror or exc}; check the address and the network"
            ) from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # wrap_socket performs the handshake under the socket's timeout.
            sock = self._context.wrap_socket(raw, server_hostname=self.server_hostname)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            why = str(exc.verify_message).rstrip(".")
            raise TlsRefused(
                f"TLS handshake with the KMIP server {self.address} failed: its certificate "
                f"was not accepted ({why}); check that the CA file is the one that issued the "
                f"server's certificate and that the certificate names {self.server_hostname!r}"
            ) from None
        except TimeoutError:
            raw.close()
            raise KmipConnectionError(
                f"TLS handshake with the KMIP server {self.address} timed out after "
                f"{self.timeout:g} s; check that the port speaks KMIP over TLS"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            raise TlsRefused(
                f"TLS handshake with the KMIP server {self.address} failed ({_describe(exc)}); "
                "check that the client certificate is issued by a CA the server trusts and "
                "that both sides allow TLS 1.2 or later"
            ) from None
        self._sock = sock
        self._buffer.clear()
        self._used = False

    def close(self) -> None:
        """Close the socket (idempotent)."""
        sock, self._sock = self._sock, None
        self._buffer.clear()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def looks_closed(self) -> bool:
        """True when the server already closed this connection (EOF or alert waiting).

        An idle connection never has anything to read: if the socket is readable, the
        server sent a close_notify or a FIN (e.g. after its idle timeout).
        """
        if self._sock is None or not self._used:
            return False
        if time.monotonic() - self._last_exchange < _FRESH:
            # Servers close idle connections after many seconds, not within one; and a
            # close the probe misses is still caught as StaleConnection and retried.
            return False
        if self._sock.pending():
            return True
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def exchange(self, request: bytes, *, max_response_size: int, what: str) -> bytes:
        """Send one request message and return the one response message's bytes.

        ``what`` names the request in messages (``Get``). Any failure closes the
        connection, since its framing can no longer be trusted.
        """
        self.open()
        assert self._sock is not None
        self._last_exchange = time.monotonic()
        reused = self._used
        self._used = True
        received = 0
        try:
            self._sock.sendall(request)
            header = self._recv(HEADER_SIZE)
            received = len(header)
            if len(header) < HEADER_SIZE:
                raise ConnectionResetError("the server closed the connection")
            tag, kind, length = _HEADER.unpack(header)
            if int.from_bytes(tag, "big") != Tag.RESPONSE_MESSAGE or kind != ItemType.STRUCTURE:
                self.close()
                raise MessageError(
                    ResultReason.INVALID_MESSAGE,
                    f"the KMIP server {self.address} answered {what} with something that is "
                    "not a KMIP Response Message; check that the port is a KMIP server's",
                )
            if HEADER_SIZE + length > max_response_size:
                self.close()
                raise MessageError(
                    ResultReason.RESPONSE_TOO_LARGE,
                    f"the KMIP server {self.address} answered {what} with {length} bytes, "
                    f"more than the {max_response_size} this client reads",
                )
            body = self._recv(length)
            if len(body) < length:
                raise ConnectionResetError("the server closed the connection mid-response")
            return header + body
        except TimeoutError:
            self.close()
            raise KmipConnectionError(
                f"the KMIP server {self.address} did not answer {what} within "
                f"{self.timeout:g} s; check the server's health and load, or raise the timeout"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            self.close()
            if reused and received == 0:
                raise StaleConnection(
                    f"the KMIP server {self.address} closed the connection ({_describe(exc)})"
                ) from None
            if received == 0:
                # TLS 1.3 servers check the client certificate after the client's side of
                # the handshake is done, so a refusal shows up here, on the first read.
                raise TlsRefused(
                    f"the KMIP server {self.address} closed the connection right after the "
                    f"TLS handshake ({_describe(exc)}): it most likely refused this client's "
                    "certificate; check that the client certificate is issued by a CA the "
                    "server trusts"
                ) from None
            raise KmipConnectionError(
                f"the connection to the KMIP server {self.address} broke during {what} "
                f"({_describe(exc)}); if this repeats, check that the server accepts this "
                "client's certificate and look at the server's log"
            ) from None

    def _recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at end of stream."""
        assert self._sock is not None
        buffer = self._buffer
        while len(buffer) < size:
            chunk = self._sock.recv(min(max(size - len(buffer), 65536), 1 << 20))
            if not chunk:
                break
            buffer += chunk
        data = bytes(buffer[:size])
        del buffer[:size]
        return data


#: A connection used less than this many seconds ago is not probed before reuse.
_FRESH = 1.0


def _describe(exc: BaseException) -> str:
    """A short cause without a traceback: OpenSSL's reason, or the OS error text."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
