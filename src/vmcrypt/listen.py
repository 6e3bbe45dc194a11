"""The listening socket of every HTTPS server vmcrypt runs (control plane, host, Trust
Authority), bound before the server announces it so a script may connect at once.

The socket is made with ``IPPROTO_TCP`` named explicitly. asyncio turns Nagle's
algorithm off (``TCP_NODELAY``) only on sockets whose ``proto`` says TCP, and a socket
made with ``socket.socket(family, SOCK_STREAM)`` has ``proto`` 0 — its connections then
kept Nagle on, and uvicorn's two writes per response (headers, body) waited for the
client's delayed ACK: about 45 ms per request, 22 requests/s instead of thousands.
``tests/test_listen.py`` holds that line.
"""

from __future__ import annotations

import errno
import socket

from vmcrypt.exceptions import UsageError

__all__ = ["listen"]


def listen(host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on ``host:port``, or one clear line when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"{host}:{port} is already in use; choose another --port") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    return sock
