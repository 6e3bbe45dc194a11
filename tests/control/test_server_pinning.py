"""The control plane talks to a host only if it shows the certificate issued at enrolment.

A small mutual-TLS server stands in for a host agent (it answers ``/api/v1/health``
and counts requests). Two host certificates come from the same CA with the same SAN,
so only the pin tells them apart.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from vmcrypt.control.db.engine import Database
from vmcrypt.control.db.models import Host
from vmcrypt.control.db.repo import list_events
from vmcrypt.control.monitor import HostMonitor
from vmcrypt.control.pinning import HostCertificateMismatch, HostNotEnrolled
from vmcrypt.control.server import TlsHostConnector
from vmcrypt.control.settings import CLIENT_IDENTITY, ControlSettings
from vmcrypt.pki import init_pki, issue_client, server_context


@pytest.fixture
def settings(tmp_path: Path) -> ControlSettings:
    settings = ControlSettings(data_dir=tmp_path / "control")
    init_pki(settings.pki_dir, server_names=("localhost",), clients=(CLIENT_IDENTITY,),
             key_type="ec")
    for name in ("esx-a", "esx-b"):
        issue_client(settings.pki_dir, name, ip_addresses=("127.0.0.1",), server=True)
    return settings


def _fingerprint(pem: Path) -> str:
    return x509.load_pem_x509_certificate(pem.read_bytes()).fingerprint(hashes.SHA256()).hex()


@contextmanager
def _host_server(settings: ControlSettings, identity: str) -> Iterator[tuple[str, list[str]]]:
    """A TLS 'host' presenting ``identity``'s certificate; yields its URL and request log."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = json.dumps({"name": identity, "boot_id": "b1"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_PUT = do_GET  # a KEK push would be logged too

        def log_message(self, *_args: object) -> None:
            pass

    files = settings.pki_dir
    context = server_context(cert_file=files / f"{identity}.pem",
                             key_file=files / f"{identity}.key", ca_file=settings.ca_file)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_enrolled_certificate_is_accepted(settings: ControlSettings) -> None:
    connector = TlsHostConnector(settings)
    with _host_server(settings, "esx-a") as (url, seen):
        host = Host(id=1, name="esx-a", api_url=url,
                    certificate_fingerprint=_fingerprint(settings.pki_dir / "esx-a.pem"))
        assert connector.client(host).health()["name"] == "esx-a"
        assert seen == ["/api/v1/health"]
    connector.close()


def test_another_certificate_of_the_same_ca_is_refused_before_any_request(
        settings: ControlSettings) -> None:
    connector = TlsHostConnector(settings)
    with _host_server(settings, "esx-b") as (url, seen):
        host = Host(id=1, name="esx-a", api_url=url,
                    certificate_fingerprint=_fingerprint(settings.pki_dir / "esx-a.pem"))
        with pytest.raises(HostCertificateMismatch, match="other than the one issued"):
            connector.client(host).put_kek("kmip", "key-1", bytes(32))
        assert seen == []  # the handshake failed: the KEK was never sent
    connector.close()


def test_a_host_never_enrolled_gets_no_connection(settings: ControlSettings) -> None:
    connector = TlsHostConnector(settings)
    with pytest.raises(HostNotEnrolled, match="not enrolled"):
        connector.client(Host(id=1, name="esx-a", api_url="https://127.0.0.1:1"))


def test_the_monitor_records_a_mismatch_event(settings: ControlSettings,
                                              database: Database) -> None:
    connector = TlsHostConnector(settings)
    with _host_server(settings, "esx-b") as (url, seen):
        with database.transaction() as session:
            session.add(Host(name="esx-a", hardware_uuid="hw-a", api_url=url,
                             certificate_fingerprint=_fingerprint(
                                 settings.pki_dir / "esx-a.pem")))
        monitor = HostMonitor(database, connector, sealing_key=bytes(32))
        checks = monitor.check_once() + monitor.check_once()
        assert [c.error for c in checks] == ["HostCertificateMismatch"] * 2
        assert seen == []
    with database.transaction() as session:
        events = list_events(session, type="host.certificate.mismatch", limit=10)
        assert len(events) == 1  # once per change, not once per poll
        assert "other than the one issued at its enrolment" in events[0].message
        assert session.query(Host).one().connection_state.value == "not_responding"
    connector.close()
