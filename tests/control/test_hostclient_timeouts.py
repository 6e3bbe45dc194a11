"""The host client's timeouts: a hung host costs a health probe seconds, not 30 s.

A listening socket that never answers stands in for a hung host agent (accepted by the
kernel's backlog, never served).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from vmcrypt.control.hostclient import HEALTH_TIMEOUT, HostClient, HostUnreachable


@pytest.fixture
def hung() -> Iterator[str]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_health_gives_up_after_its_own_short_timeout(hung: str) -> None:
    client = HostClient("hung", httpx.Client(base_url=hung, timeout=30.0), health_timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(HostUnreachable, match="'hung' could not be reached"):
            client.health()
    finally:
        client.close()
    assert time.monotonic() - started < 5  # not the 30 s of data calls


def test_the_default_health_timeout_is_short() -> None:
    assert HEALTH_TIMEOUT <= 5
    client = HostClient("h", httpx.Client())
    assert client.health_timeout == HEALTH_TIMEOUT
    client.close()


def test_data_calls_keep_the_client_timeout(hung: str) -> None:
    client = HostClient("hung", httpx.Client(base_url=hung, timeout=0.3))
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match="ReadTimeout"):
        client.keys()
    assert 0.25 < time.monotonic() - started < 5
    client.close()
