"""Real TLS handshakes over localhost between contexts built from ``init_pki`` files."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from vmcrypt.exceptions import UsageError
from vmcrypt.pki import (
    CertificateError,
    PkiLayout,
    certificate_expiry,
    client_context,
    load_certificate,
    peer_identity,
    server_context,
)

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@dataclass
class Outcome:
    """What each side saw: the server's view of the client, the client's greeting."""

    server_identity: str | None = None
    server_error: BaseException | None = None
    server_version: str | None = None
    client_reply: bytes | None = None
    client_error: BaseException | None = None


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, *,
              server_hostname: str = "localhost") -> Outcome:
    """Accept one connection on 127.0.0.1:0; the server greets the verified client by name.

    The client reads the greeting because with TLS 1.3 it learns that the server rejected
    its certificate only after its own handshake has finished.
    """
    outcome = Outcome()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    outcome.server_identity = peer_identity(tls)
                    outcome.server_version = tls.version()
                    tls.sendall(f"hello {outcome.server_identity}".encode())
                    tls.recv(1)  # until the client closes
            except (ssl.SSLError, OSError) as exc:
                outcome.server_error = exc
            finally:
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                outcome.client_reply = tls.recv(100) or None
        except (ssl.SSLError, OSError) as exc:
            outcome.client_error = exc
        thread.join(10)
    return outcome


def server_of(pki: PkiLayout, *, require_client_cert: bool = True) -> ssl.SSLContext:
    return server_context(cert_file=pki.server.cert, key_file=pki.server.key,
                          ca_file=pki.ca.cert, require_client_cert=require_client_cert)


def client_of(pki: PkiLayout, name: str | None = "admin", *, ca: PkiLayout | None = None,
              version: ssl.TLSVersion | None = None, check_hostname: bool = True
              ) -> ssl.SSLContext:
    files = pki.clients[name] if name else None
    context = client_context(ca_file=(ca or pki).ca.cert, cert_file=files and files.cert,
                             key_file=files and files.key, check_hostname=check_hostname)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_mutual_tls_handshake(pki: PkiLayout, version: ssl.TLSVersion) -> None:
    outcome = handshake(server_of(pki), client_of(pki, "kms-client", version=version))
    assert outcome.client_error is None and outcome.server_error is None
    assert outcome.server_identity == "kms-client"
    assert outcome.client_reply == b"hello kms-client"
    assert outcome.server_version == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                      ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def test_tls_1_3_is_chosen_when_both_sides_offer_it(pki: PkiLayout) -> None:
    assert handshake(server_of(pki), client_of(pki)).server_version == "TLSv1.3"


def test_ip_address_san_verifies(pki: PkiLayout) -> None:
    outcome = handshake(server_of(pki), client_of(pki), server_hostname="127.0.0.1")
    assert outcome.client_reply == b"hello admin"


def test_both_sides_refuse_tls_1_1(pki: PkiLayout) -> None:
    for context in (server_of(pki), client_of(pki)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_client_without_certificate_is_refused(pki: PkiLayout, version: ssl.TLSVersion) -> None:
    outcome = handshake(server_of(pki), client_of(pki, None, version=version))
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert "certificate" in str(outcome.server_error).lower()
    assert outcome.server_identity is None
    assert outcome.client_reply is None


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_client_certificate_from_another_ca_is_refused(
        pki: PkiLayout, other_pki: PkiLayout, version: ssl.TLSVersion) -> None:
    # Same CN "admin", but signed by a CA the server does not trust.
    outcome = handshake(server_of(pki), client_of(other_pki, ca=pki, version=version))
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert outcome.server_identity is None
    assert outcome.client_reply is None


def test_server_from_another_ca_is_refused(pki: PkiLayout, other_pki: PkiLayout) -> None:
    outcome = handshake(server_of(other_pki), client_of(pki))
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    # OpenSSL sends the server's CA along (auto chain), so the client sees an untrusted root.
    assert "self-signed" in outcome.client_error.verify_message


def test_wrong_hostname_fails(pki: PkiLayout) -> None:
    outcome = handshake(server_of(pki), client_of(pki), server_hostname="kms.example")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(outcome.client_error)


def test_hostname_check_can_be_dropped_but_not_the_ca_check(
        pki: PkiLayout, other_pki: PkiLayout) -> None:
    outcome = handshake(server_of(pki), client_of(pki, check_hostname=False),
                        server_hostname="kms.example")
    assert outcome.client_reply == b"hello admin"
    outcome = handshake(server_of(other_pki), client_of(pki, check_hostname=False))
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)


def test_optional_client_certificate(pki: PkiLayout) -> None:
    server = server_of(pki, require_client_cert=False)
    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert handshake(server, client_of(pki, None)).client_reply == b"hello None"
    assert handshake(server, client_of(pki, "admin")).server_identity == "admin"


def test_certificate_expiry(pki: PkiLayout) -> None:
    expiry = certificate_expiry(pki.server.cert)
    assert expiry.tzinfo is not None
    assert expiry == load_certificate(pki.server.cert).not_valid_after_utc
    assert timedelta(days=820) < expiry - load_certificate(
        pki.server.cert).not_valid_before_utc < timedelta(days=830)


def test_context_errors_name_the_files(pki: PkiLayout, tmp_path: Path) -> None:
    admin = pki.clients["admin"]
    with pytest.raises(CertificateError, match=r"admin\.key is not the key of .*server\.pem"):
        server_context(cert_file=pki.server.cert, key_file=admin.key, ca_file=pki.ca.cert)
    with pytest.raises(CertificateError, match="no such certificate file"):
        client_context(ca_file=tmp_path / "ca.pem")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        client_context(ca_file=pki.ca.key)
    with pytest.raises(UsageError, match="both"):
        client_context(ca_file=pki.ca.cert, cert_file=admin.cert)
