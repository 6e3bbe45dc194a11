"""The servers' listening socket: TCP named, so asyncio turns Nagle off on connections.

Without it every HTTPS response (uvicorn writes headers and body separately) waited
for the client's delayed ACK: ~45 ms per request. The second test measures that
effect directly on a tiny asyncio server, so it fails if the socket loses its proto.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
import time

import pytest

from vmcrypt.exceptions import UsageError
from vmcrypt.listen import listen


def test_the_socket_is_tcp_and_says_so() -> None:
    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_a_taken_port_is_one_clear_line() -> None:
    first = listen("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port} is already in use"):
            # SO_REUSEADDR does not let two sockets listen on one port.
            listen("127.0.0.1", port)
    except OSError as exc:  # pragma: no cover - platform without the clash
        assert exc.errno != errno.EADDRINUSE
    finally:
        first.close()


def test_accepted_connections_send_small_writes_at_once() -> None:
    """Two writes per answer, 50 answers: with Nagle on this takes > 2 s, off ~10 ms."""
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readexactly(4):
                writer.write(b"head")
                writer.write(b"body")
        except asyncio.IncompleteReadError:
            writer.close()  # the client left

    async def start() -> asyncio.Server:
        return await asyncio.start_server(answer, sock=sock)

    server = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.perf_counter()
            for _ in range(50):
                client.sendall(b"ping")
                received = b""
                while len(received) < 8:
                    received += client.recv(64)
            elapsed = time.perf_counter() - started
        assert elapsed < 1.0, f"50 round trips took {elapsed:.2f} s: Nagle is on"
    finally:
        asyncio.run_coroutine_threadsafe(_close(server), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


async def _close(server: asyncio.Server) -> None:
    server.close()
    await asyncio.sleep(0.05)  # let the answer task see the client's EOF and end
