"""Pin each host's certificate: the control plane talks only to the one it issued.

Chaining to the system CA is not enough to hand a host its KEKs: every enrolled host
holds a certificate from that CA, so a compromised host could answer on another
host's address (a DNS or ARP trick, a moved IP) and receive that host's keys. At
enrolment the control plane records the SHA-256 fingerprint of the certificate it
signed (``Host.certificate_fingerprint``); :func:`pinned_context` refuses a TLS session
whose peer presents any other certificate.

The check runs **inside the handshake**, before one byte of the request — which may
carry a KEK — is written: the context's socket class verifies the chain as usual,
then compares the peer's DER certificate with the pin in constant time. A mismatch
raises :class:`HostCertificateMismatch`, which is not an ``OSError``, so the HTTP
layers below :class:`~vmcrypt.control.hostclient.HostClient` let it through unchanged
and callers see its message and its event type (``host.certificate.mismatch``), not a
generic connection error.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from pathlib import Path

# The errors live with the client whose error tree they belong to (callers catch the
# client's types); re-exported here, where they are raised.
from vmcrypt.control.hostclient import HostCertificateMismatch, HostNotEnrolled
from vmcrypt.pki import client_context

__all__ = ["HostCertificateMismatch", "HostNotEnrolled", "certificate_fingerprint",
           "pinned_context"]


def certificate_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, lower-case hex (as enrolment records it)."""
    return hashlib.sha256(der).hexdigest()


def pinned_context(*, ca_file: Path, cert_file: Path, key_file: Path, host_name: str,
                   fingerprint: str) -> ssl.SSLContext:
    """A mutual-TLS client context that accepts only the certificate ``fingerprint``."""
    context = client_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    pin = fingerprint.lower()

    class _PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            der = self.getpeercert(binary_form=True)
            presented = certificate_fingerprint(der) if der else ""
            if not hmac.compare_digest(presented, pin):
                # ssl closes a failed socket only on OSError; the pool above has
                # detached the raw socket, so close it here or the fd lingers.
                self.close()
                raise HostCertificateMismatch(
                    f"host {host_name!r} presented a certificate (SHA-256 {presented[:16]}…) "
                    f"other than the one issued at its enrolment ({pin[:16]}…): no keys "
                    "were sent; if the host was re-enrolled on purpose, remove and enrol "
                    "it again, otherwise check who answers at its address")

    context.sslsocket_class = _PinnedSocket
    return context
