"""The host's side of enrolment: get a certificate from the control plane CA.

On first start a host has a one-time enrolment token and the SHA-256 fingerprint of
the control plane's CA (given out of band, e.g. printed by ``vmcrypt control serve``).
:func:`enrol`

1. fetches the CA certificate from ``/api/v1/enrol/ca`` over TLS **without** trusting
   the server yet, and accepts it only if its fingerprint equals the pin — the pin,
   not the network, is what makes the CA trustworthy (trust on first use, checked);
2. generates its private key locally, written 0600 before anything is sent, and
   sends only a CSR (the public key, signed) with the token, now over TLS verified
   against the pinned CA;
3. writes the certificate it gets back and the CA certificate.

The private key never leaves the host. Once the certificate exists, later starts skip
all of this (:func:`enrolled`).
"""

from __future__ import annotations

import hmac
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from vmcrypt.exceptions import UsageError
from vmcrypt.pki import generate_private_key, load_private_key, write_pem
from vmcrypt.pki.exceptions import CertificateError

__all__ = ["EnrolFiles", "EnrolmentFailed", "enrol", "enrolled", "normalise_fingerprint"]

_TIMEOUT = 30.0


class EnrolmentFailed(CertificateError):
    """The control plane refused the enrolment, or could not be reached or trusted."""


@dataclass(frozen=True)
class EnrolFiles:
    """Where the host keeps what enrolment gives it (the paths of ``host serve``)."""

    cert: Path
    key: Path
    ca: Path


def enrolled(files: EnrolFiles) -> bool:
    """Whether this host already holds its certificate, key and CA."""
    return files.cert.exists() and files.key.exists() and files.ca.exists()


def normalise_fingerprint(text: str) -> str:
    """``AB:CD:…`` or ``abcd…`` (optionally ``sha256:``-prefixed) → 64 lower-case hex."""
    value = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise UsageError("--ca-fingerprint must be the CA's SHA-256 fingerprint (64 hex digits)")
    return value


def _fetch_pinned_ca(url: str, pin: str) -> bytes:
    # Unverified on purpose: nothing is sent but a GET, and what comes back is accepted
    # only if it matches the pin given out of band.
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    body = _request("GET", f"{url}/api/v1/enrol/ca", verify=insecure)
    pem = str(body.get("ca_certificate", "")).encode("ascii")
    try:
        ca = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise EnrolmentFailed(f"{url} sent no CA certificate; is it a vmcrypt control plane?"
                              ) from None
    if not hmac.compare_digest(ca.fingerprint(hashes.SHA256()).hex(), pin):
        raise EnrolmentFailed(
            f"the CA of {url} does not match --ca-fingerprint: check the fingerprint "
            "`vmcrypt control serve` printed (someone may be in the middle)"
        )
    return pem


def _request(method: str, url: str, *, verify: ssl.SSLContext, json: Any = None) -> Any:
    try:
        response = httpx.request(method, url, json=json, verify=verify, timeout=_TIMEOUT)
    except httpx.HTTPError as exc:
        raise EnrolmentFailed(f"cannot reach the control plane at {url}: {exc}") from None
    if response.status_code != 200:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        raise EnrolmentFailed(f"enrolment refused by {url} (HTTP {response.status_code}): "
                              f"{message}")
    return response.json()


def _csr(key_file: Path, name: str, address: str) -> str:
    key = load_private_key(key_file)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def enrol(*, url: str, token: str, ca_fingerprint: str, files: EnrolFiles, name: str,
          hardware_uuid: str, address: str, api_url: str) -> None:
    """Enrol this host with the control plane at ``url`` and write its certificate files.

    The key is generated (0600) only if absent, so a retried enrolment after a network
    failure reuses it; the certificate is written last, and its presence means enrolled.
    """
    if not token:
        raise UsageError("enrolling needs --token (or $VMCRYPT_ENROL_TOKEN): ask an "
                         "administrator for a one-time enrolment token")
    url = url.rstrip("/")
    ca_pem = _fetch_pinned_ca(url, normalise_fingerprint(ca_fingerprint))
    for path in (files.cert, files.key, files.ca):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_pem(files.ca, ca_pem)
    if not files.key.exists():
        key = generate_private_key("ec")
        write_pem(files.key, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), private=True)
    trusted = ssl.create_default_context(cafile=str(files.ca))
    body = _request("POST", f"{url}/api/v1/enrol", verify=trusted, json={
        "token": token, "csr": _csr(files.key, name, address),
        "hardware_uuid": hardware_uuid, "address": address, "api_url": api_url,
    })
    write_pem(files.cert, str(body["certificate"]).encode("ascii"))
