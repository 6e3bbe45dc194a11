"""Fixtures for the Trust Authority tests: an in-process KMS and an in-process service.

The API runs in-process through Starlette's TestClient; the caller's certificate CN is
put into the ASGI scope exactly where :class:`vmcrypt.trust.server.PeerCertH11Protocol`
puts it from a verified TLS session.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from vmcrypt.kms.server import KmsConfig, KmsServer
from vmcrypt.pki.layout import PkiLayout, init_pki
from vmcrypt.trust.api import create_app
from vmcrypt.trust.attestation import NonceStore, TokenIssuer
from vmcrypt.trust.config import ConfigStore
from vmcrypt.trust.config import KmsServer as KmsServerEntry
from vmcrypt.trust.events import EventLog
from vmcrypt.trust.providers import ProviderPool
from vmcrypt.trust.service import TrustService


@pytest.fixture(scope="module")
def kms_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    return init_pki(tmp_path_factory.mktemp("kms-pki"), key_type="ec",
                    clients=("admin", "trust"))


@pytest.fixture
def kms(kms_pki: PkiLayout, tmp_path: Path) -> Iterator[KmsServer]:
    config = KmsConfig(database=tmp_path / "kms.db", cert_file=kms_pki.server.cert,
                       key_file=kms_pki.server.key, ca_file=kms_pki.ca.cert, port=0)
    server = KmsServer(config, master_key=os.urandom(32))
    server.start()
    yield server
    server.shutdown()


@pytest.fixture
def kms_entry(kms: KmsServer, kms_pki: PkiLayout) -> KmsServerEntry:
    client = kms_pki.clients["trust"]
    return KmsServerEntry(host="127.0.0.1", port=kms.address[1], ca_file=str(kms_pki.ca.cert),
                          cert_file=str(client.cert), key_file=str(client.key))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[TrustService]:
    svc = TrustService(config=ConfigStore(tmp_path / "trust.json"),
                       events=EventLog(tmp_path / "events.jsonl"),
                       issuer=TokenIssuer(ec.generate_private_key(ec.SECP256R1()), ttl=600),
                       nonces=NonceStore(ttl=60), providers=ProviderPool(timeout=2),
                       admins=("admin",))
    yield svc
    svc.providers.close()


@pytest.fixture
def as_peer(service: TrustService) -> Iterator[Callable[[str | None], TestClient]]:
    app = create_app(service)
    clients: list[TestClient] = []

    def make(cn: str | None) -> TestClient:
        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope.setdefault("extensions", {})["tls"] = {"client_cert_cn": cn}
            await app(scope, receive, send)

        client = TestClient(wrapped, base_url="https://trust", raise_server_exceptions=True)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
