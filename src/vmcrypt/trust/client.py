"""A client of the Trust Authority API over mutual TLS — for the CLI and host agents.

The strict point of cut-off between callers and HTTP: methods return Python values or
raise the :mod:`vmcrypt.trust.exceptions` class matching the answer's status (403 from
attestation → :class:`AttestationFailed` carrying the service's ``reason``, 401 →
:class:`TokenInvalid`, 503 → :class:`KeyProviderUnavailable`, 404 →
:class:`TrustObjectNotFound`, 409 → :class:`TrustConflict`, other 4xx →
:class:`UsageError`); an unreachable service is :class:`TrustUnreachable`. No ``httpx``
exception leaves this module. Tokens go only into the ``Authorization`` header; KEKs
only into return values.

A host agent's sequence (see ``docs/trust.md``)::

    client = TrustClient(url, ca_file=…, cert_file=HOST.pem, key_file=HOST.key)
    nonce = client.nonce()
    token = client.attest(build_evidence(key=identity, host_name=…, hardware_uuid=…,
                                         nonce=nonce, measurements=measure_host(…)))
    kek, ciphertext, key_id = client.new_kek("provider", token["token"])
    kek = client.unwrap("provider", ciphertext, token["token"])   # after a restart
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx

from vmcrypt.exceptions import UsageError, VmcryptError
from vmcrypt.pki.tls import client_context
from vmcrypt.trust.exceptions import (
    AttestationFailed,
    KekCiphertextInvalid,
    KeyProviderUnavailable,
    TokenInvalid,
    TrustConflict,
    TrustError,
    TrustObjectNotFound,
)

__all__ = ["DEFAULT_URL", "TrustClient", "TrustUnreachable"]

DEFAULT_URL = "https://127.0.0.1:8443"
_PREFIX = "/api/v1"


class TrustUnreachable(TrustError):
    """The Trust Authority could not be reached (connection, TLS or timeout)."""


def _detail(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}", {}
    if isinstance(body, dict):
        return str(body.get("detail", f"HTTP {response.status_code}")), body
    return f"HTTP {response.status_code}", {}


class _Unavailable(KeyProviderUnavailable):
    """A 503 answer: the service's own message, already naming the provider."""

    def __init__(self, message: str) -> None:
        TrustError.__init__(self, message)
        self.provider = ""
        self.detail = message


_BY_STATUS: dict[int, type[TrustError]] = {401: TokenInvalid, 404: TrustObjectNotFound,
                                           409: TrustConflict, 503: _Unavailable}


def error_from_response(response: httpx.Response) -> VmcryptError:
    """The error an answer with a failure status stands for."""
    detail, body = _detail(response)
    status = response.status_code
    if status == 403 and "reason" in body:
        return AttestationFailed(str(body["reason"]))
    if status == 400 and body.get("error") == "KekCiphertextInvalid":
        return KekCiphertextInvalid(detail)
    if status in _BY_STATUS:
        return _BY_STATUS[status](detail)
    if 400 <= status < 500:
        return UsageError(detail)
    return TrustError(f"the Trust Authority failed: {detail}")


class TrustClient:
    """One HTTPS connection pool to a Trust Authority, authenticated by a certificate."""

    def __init__(self, url: str = DEFAULT_URL, *, ca_file: Path, cert_file: Path,
                 key_file: Path, timeout: float = 30.0) -> None:
        context = client_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url + _PREFIX, verify=context,
                                  timeout=timeout)

    @classmethod
    def over(cls, http: httpx.Client, url: str = "") -> TrustClient:
        """A client over any ``httpx.Client`` whose base URL ends in ``/api/v1``.

        For tests (Starlette's ``TestClient`` around the service app) and for callers
        that build their own TLS client; the TLS checks are then the caller's.
        """
        client = cls.__new__(cls)
        client.url = url.rstrip("/") or str(http.base_url).rstrip("/")
        client._http = http
        return client

    def request(self, method: str, path: str, *, token: str | None = None,
                **kwargs: Any) -> Any:
        """``method path`` → decoded JSON, or the error the answer stands for."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise TrustUnreachable(f"cannot reach the Trust Authority at {self.url}: "
                                   f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return None if response.status_code == 204 else response.json()

    # -- hosts ----------------------------------------------------------------------------

    def nonce(self) -> str:
        """A fresh nonce to sign."""
        return str(self.request("POST", "/attestation/nonce")["nonce"])

    def attest(self, evidence: dict[str, str]) -> dict[str, Any]:
        """Send evidence; the token answer (``token``, ``expires_at``, ``baseline``)."""
        answer: dict[str, Any] = self.request("POST", "/attestation/token", json=evidence)
        return answer

    def new_kek(self, provider: str, token: str) -> tuple[bytes, bytes, str]:
        """A new KEK: (plaintext, ciphertext, primary key ID)."""
        answer = self.request("POST", f"/key-providers/{provider}/keks", token=token)
        return (base64.b64decode(answer["kek"]), base64.b64decode(answer["kek_ciphertext"]),
                str(answer["key_id"]))

    def unwrap(self, provider: str, ciphertext: bytes, token: str) -> bytes:
        """The KEK inside ``ciphertext``."""
        answer = self.request("POST", f"/key-providers/{provider}/unwrap", token=token,
                              json={"kek_ciphertext": base64.b64encode(ciphertext).decode()})
        return base64.b64decode(answer["kek"])

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> TrustClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
