"""The control plane's client for one host agent (``vmcrypt host serve``, docs/host.md).

A strict point of cut-off between the control plane and the network: above it,
services speak in VM IDs and key IDs; below it, HTTP over mutual TLS. Host error
bodies (``{"error": code, "message": text}``) become typed exceptions here, and
connection failures become :class:`HostUnreachable`::

    VmcryptError
    ├── providers.AddKeysToHostFailed  — "adding keys to the host failed due to host
    │   │                                connection or host support issues"
    │   ├── HostUnreachable            — the host did not answer (connection, TLS, timeout)
    │   │   └── HostCertificateMismatch — it answered with a certificate other than the
    │   │                                one issued at its enrolment (pinning.py)
    │   └── HostNotEnrolled            — no enrolment certificate to pin: no connection
    └── control.ControlError
        ├── NotFound
        │   └── HostNotFound           — vm_not_found, no_such_disk, job_not_found
        └── Conflict
            ├── HostRefused            — an order rule, vm_busy, vm_exists, invalid_request
            └── HostKeyMissing         — key_not_on_host: the "key missing on host" reason

The client is synchronous (services run in the API's worker threads). Tests pass any
``httpx.Client`` — e.g. Starlette's ``TestClient(host_app)`` — instead of a TLS one.

:meth:`HostClient.health` has its own short timeout (:data:`HEALTH_TIMEOUT`): monitors
probe every host each few seconds, and a hung host must cost them seconds, not the
30 s a data call (a disk range, a bundle) may legitimately take.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Final

import httpx

from vmcrypt.control.exceptions import Conflict, NotFound
from vmcrypt.providers.exceptions import AddKeysToHostFailed

__all__ = [
    "HEALTH_TIMEOUT",
    "HostCertificateMismatch",
    "HostClient",
    "HostKeyMissing",
    "HostNotEnrolled",
    "HostNotFound",
    "HostRefused",
    "HostUnreachable",
]

_PREFIX: Final = "/api/v1"
_TIMEOUT: Final = 30.0
#: Seconds a health probe may take (connect, TLS, answer) before the host counts as down.
HEALTH_TIMEOUT: Final = 3.0


class HostUnreachable(AddKeysToHostFailed):
    """The host agent could not be reached (connection, TLS handshake or timeout)."""


class HostCertificateMismatch(HostUnreachable):
    """The host presented a certificate other than the one issued at its enrolment.

    Raised inside the TLS handshake by :func:`vmcrypt.control.pinning.pinned_context`,
    before any request (which may carry a KEK) is written.
    """

    event: ClassVar[str] = "host.certificate.mismatch"


class HostNotEnrolled(AddKeysToHostFailed):
    """The host has no certificate recorded from enrolment: nothing to pin, no keys."""

    event: ClassVar[str] = "host.not.enrolled"


class HostNotFound(NotFound):
    """The host does not know the VM, disk or job."""


class HostRefused(Conflict):
    """The host refused: an order rule, a busy VM, or a request it does not support."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class HostKeyMissing(HostRefused):
    """The host lacks a KEK the operation needs: the "key missing on host" lock reason."""

    event: ClassVar[str] = "host.key.missing"


class HostClient:
    """Calls to one host agent; every method maps to one route of docs/host.md."""

    def __init__(self, name: str, http: httpx.Client, *,
                 health_timeout: float = HEALTH_TIMEOUT) -> None:
        self.name = name
        self._http = http
        self.health_timeout = health_timeout

    @classmethod
    def over_tls(cls, name: str, base_url: str, context: ssl.SSLContext) -> HostClient:
        """A client presenting the control plane's certificate (from ``pki.tls.client_context``)."""
        return cls(name, httpx.Client(base_url=base_url, verify=context, timeout=_TIMEOUT))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # --- keys -------------------------------------------------------------------------

    def put_kek(self, provider_id: str, key_id: str, kek: bytes, *,
                vm_ids: list[str] | None = None) -> None:
        """Hand the host a KEK to hold in memory (``PUT /keys/{provider}/{key_id}``)."""
        body = {"kek": base64.b64encode(kek).decode("ascii"), "vm_ids": vm_ids or []}
        self._call("PUT", f"/keys/{provider_id}/{key_id}", json=body)

    def delete_kek(self, provider_id: str, key_id: str) -> bool:
        """Drop a KEK from the host's cache; ``False`` if it did not hold it."""
        try:
            self._call("DELETE", f"/keys/{provider_id}/{key_id}")
        except HostKeyMissing:
            return False
        return True

    def keys(self) -> dict[str, Any]:
        """IDs of the KEKs and native providers the host holds — never key bytes."""
        result: dict[str, Any] = self._call("GET", "/keys").json()
        return result

    def put_primary_key(self, provider_id: str, primary_key: bytes, *,
                        fingerprint: str | None = None) -> None:
        """Hand the host a native provider's primary key."""
        body = {"primary_key": base64.b64encode(primary_key).decode("ascii"),
                "fingerprint": fingerprint}
        self._call("PUT", f"/native-providers/{provider_id}", json=body)

    def delete_primary_key(self, provider_id: str) -> None:
        """Remove a native provider's primary key from the host."""
        self._call("DELETE", f"/native-providers/{provider_id}")

    # --- VMs --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Name, hardware UUID and counts; a cheap liveness probe (short timeout)."""
        result: dict[str, Any] = self._call("GET", "/health",
                                            timeout=self.health_timeout).json()
        return result

    def create_vm(self, vm_id: str, name: str, disk_sizes: list[int], *,
                  provider_id: str | None = None, key_id: str | None = None) -> dict[str, Any]:
        """Create a VM home and disks; encrypted when ``provider_id`` is given.

        ``key_id=None`` with a provider asks the host for a new native KEK of its own.
        """
        body: dict[str, Any] = {"id": vm_id, "name": name,
                                "disks": [{"size": size} for size in disk_sizes]}
        if provider_id is not None:
            body["encryption"] = {"provider_id": provider_id, "key_id": key_id}
        result: dict[str, Any] = self._call("POST", "/vms", json=body).json()
        return result

    def get_vm(self, vm_id: str) -> dict[str, Any]:
        """The host's view of a VM: components, key IDs, ``key_on_host`` per component."""
        result: dict[str, Any] = self._call("GET", f"/vms/{vm_id}").json()
        return result

    def unregister_vm(self, vm_id: str) -> list[dict[str, str]]:
        """Forget the VM's KEKs on this host (files stay); the key IDs removed."""
        removed: list[dict[str, str]] = self._call(
            "POST", f"/vms/{vm_id}/unregister").json()["removed_keys"]
        return removed

    def delete_vm(self, vm_id: str) -> None:
        """Delete the VM's files and forget its KEKs on this host."""
        self._call("DELETE", f"/vms/{vm_id}")

    def read_disk(self, vm_id: str, index: int, *, offset: int, length: int) -> bytes:
        """Plaintext bytes of a disk range, decrypted by the host."""
        return self._call("GET", f"/vms/{vm_id}/disks/{index}/data",
                          params={"offset": offset, "length": length}).content

    def write_disk(self, vm_id: str, index: int, *, offset: int, data: bytes) -> int:
        """Write bytes at ``offset`` (the host encrypts them when the disk is)."""
        written: int = self._call("PUT", f"/vms/{vm_id}/disks/{index}/data",
                                  params={"offset": offset}, content=data).json()["written"]
        return written

    # --- encryption state and jobs ----------------------------------------------------

    def encrypt(self, vm_id: str, disk: int | None, *, provider_id: str | None = None,
                key_id: str | None = None) -> str:
        """Start encrypting VM home (``disk=None``) or one disk; the host job's ID.

        Without ``provider_id`` a disk is encrypted under VM home's KEK.
        """
        body: dict[str, Any] = {"disk": disk}
        if provider_id is not None:
            body["key"] = {"provider_id": provider_id, "key_id": key_id}
        job_id: str = self._call("POST", f"/vms/{vm_id}/encrypt", json=body).json()["job_id"]
        return job_id

    def decrypt(self, vm_id: str, disk: int | None) -> str:
        """Start decrypting VM home (``disk=None``) or one disk; the host job's ID."""
        job_id: str = self._call("POST", f"/vms/{vm_id}/decrypt",
                                 json={"disk": disk}).json()["job_id"]
        return job_id

    def shallow_rekey(self, vm_id: str, *, provider_id: str, key_id: str | None,
                      home: bool = True, disks: list[int] | None = None) -> dict[str, Any]:
        """Re-wrap DEKs under the KEK named; the host's new view of the VM.

        ``key_id=None`` asks the host for a new KEK of a native provider (wrapped by its
        primary key). ``home``/``disks`` choose the components (default: VM home and
        every encrypted disk; ``disks=[]`` none).
        """
        body: dict[str, Any] = {"mode": "shallow", "home": home, "disks": disks,
                                "key": {"provider_id": provider_id, "key_id": key_id}}
        result: dict[str, Any] = self._call("POST", f"/vms/{vm_id}/rekey", json=body).json()
        return result

    def deep_rekey(self, vm_id: str, *, home: bool = True,
                   disks: list[int] | None = None) -> str:
        """Start a deep re-key (new DEKs, data re-encrypted, KEKs kept); the host job's ID.

        ``home``/``disks`` choose the components as for :meth:`shallow_rekey`.
        """
        body: dict[str, Any] = {"mode": "deep", "home": home, "disks": disks}
        job_id: str = self._call("POST", f"/vms/{vm_id}/rekey", json=body).json()["job_id"]
        return job_id

    def add_disk(self, vm_id: str, size: int, *, encrypted: bool | None = None) -> int:
        """Add a disk (encrypted under VM home's KEK when ``encrypted``); its index."""
        index: int = self._call("POST", f"/vms/{vm_id}/disks",
                                json={"size": size, "encrypted": encrypted}).json()["index"]
        return index

    def add_vtpm(self, vm_id: str) -> dict[str, Any]:
        """Add a vTPM, its state sealed by VM home's DEK; the host's new view of the VM."""
        result: dict[str, Any] = self._call("POST", f"/vms/{vm_id}/vtpm", json={}).json()
        return result

    def remove_vtpm(self, vm_id: str) -> dict[str, Any]:
        """Remove the vTPM and its sealed state; the host's new view of the VM."""
        result: dict[str, Any] = self._call("DELETE", f"/vms/{vm_id}/vtpm").json()
        return result

    def get_job(self, job_id: str) -> dict[str, Any]:
        """State, percent, bytes, rate and error of a host job."""
        result: dict[str, Any] = self._call("GET", f"/jobs/{job_id}").json()
        return result

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Ask a host job to stop at its next safe point."""
        result: dict[str, Any] = self._call("POST", f"/jobs/{job_id}/cancel").json()
        return result

    # --- plumbing ---------------------------------------------------------------------

    def _call(self, method: str, path: str, *, timeout: float | None = None,
              **kwargs: Any) -> httpx.Response:
        try:
            if timeout is None:
                response = self._http.request(method, _PREFIX + path, **kwargs)
            else:  # built then sent: the per-request timeout reaches the transport as is
                response = self._http.send(self._http.build_request(
                    method, _PREFIX + path, timeout=timeout, **kwargs))
        except (HostCertificateMismatch, HostNotEnrolled):
            raise  # already typed, with its own message and event: keep them
        except httpx.TransportError as exc:
            raise HostUnreachable(
                f"host {self.name!r} could not be reached ({type(exc).__name__}): "
                "check that its agent runs and that its certificate is valid"
            ) from exc
        if response.status_code < 400:
            return response
        raise _mapped(self.name, response)


    # --- clone and move (docs/mobility.md) ---------------------------------------------

    def clone_vm(self, vm_id: str, *, clone_id: str, name: str,
                 provider_id: str | None = None, key_id: str | None = None) -> str:
        """Start cloning a VM with new keys on this host's datastore; the host job's ID.

        With ``provider_id`` the clone's DEKs are wrapped by KEK ``key_id`` (pushed
        first), or by a new native KEK the host makes (``key_id=None``).
        """
        body: dict[str, Any] = {"id": clone_id, "name": name}
        if provider_id is not None:
            body["key"] = {"provider_id": provider_id, "key_id": key_id}
        job_id: str = self._call("POST", f"/vms/{vm_id}/clone", json=body).json()["job_id"]
        return job_id

    def vm_busy(self, vm_id: str) -> bool:
        """Whether a job of this VM is queued or running on this host."""
        jobs: list[dict[str, Any]] = self._call("GET", "/jobs").json()
        return any(j["vm_id"] == vm_id and j["state"] in ("queued", "running") for j in jobs)

    @contextlib.contextmanager
    def export_bundle(self, vm_id: str) -> Iterator[Iterator[bytes]]:
        """The VM folder as a tar stream (ciphertext and wrapped keys only), in chunks.

        The host holds the VM locked until the stream is consumed or closed.
        """
        try:
            with self._http.stream("GET", f"{_PREFIX}/vms/{vm_id}/bundle") as response:
                if response.status_code >= 400:
                    response.read()
                    raise _mapped(self.name, response)
                yield response.iter_bytes(1 << 20)
        except httpx.TransportError as exc:
            raise HostUnreachable(
                f"host {self.name!r} could not be reached while sending VM {vm_id} "
                f"({type(exc).__name__}); nothing was moved"
            ) from exc

    @contextlib.contextmanager
    def export_bundle_sized(self, vm_id: str) -> Iterator[tuple[int | None, Iterator[bytes]]]:
        """:meth:`export_bundle` with the stream's exact length (its ``Content-Length``),
        so a relay can report percent done; None when the host does not say."""
        try:
            with self._http.stream("GET", f"{_PREFIX}/vms/{vm_id}/bundle") as response:
                if response.status_code >= 400:
                    response.read()
                    raise _mapped(self.name, response)
                length = response.headers.get("content-length", "")
                yield (int(length) if length.isdigit() else None,
                       response.iter_bytes(1 << 20))
        except httpx.TransportError as exc:
            raise HostUnreachable(
                f"host {self.name!r} could not be reached while sending VM {vm_id} "
                f"({type(exc).__name__}); nothing was moved"
            ) from exc

    def import_bundle(self, vm_id: str, chunks: Iterable[bytes]) -> dict[str, Any]:
        """Send a VM bundle; the host checks its keySafes open, then commits it at once."""
        result: dict[str, Any] = self._call("PUT", f"/vms/{vm_id}/bundle",
                                            content=chunks).json()
        return result

    # --- trusted key providers (docs/trust.md) -----------------------------------------

    def create_trusted_vm(self, vm_id: str, name: str, disk_sizes: list[int], *,
                          provider_id: str) -> dict[str, Any]:
        """Create an encrypted VM whose KEK the host gets from trusted ``provider_id``.

        The host attests if it must and asks the Key Provider Service itself: nothing
        key-bearing travels here, and the answer carries only the KEK ciphertext.
        """
        body = {"id": vm_id, "name": name, "disks": [{"size": s} for s in disk_sizes],
                "encryption": {"provider_id": provider_id, "trusted": True}}
        result: dict[str, Any] = self._call("POST", "/vms", json=body).json()
        return result

    def trusted_provider(self, provider_id: str) -> dict[str, Any]:
        """Whether the host can use a trusted provider now (it attests if it must).

        :class:`HostRefused` with code ``host_not_attested`` or
        ``trusted_provider_unavailable`` when it cannot.
        """
        result: dict[str, Any] = self._call("GET", f"/trusted-providers/{provider_id}").json()
        return result

    def attest(self) -> dict[str, Any]:
        """Have the host attest now; its attestation status either way."""
        result: dict[str, Any] = self._call("POST", "/attestation").json()
        return result


def _mapped(host: str, response: httpx.Response) -> Exception:
    try:
        body = response.json()
        code, message = str(body["error"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {response.status_code}"
    text = f"host {host!r}: {message}"
    if code == "key_not_on_host":
        return HostKeyMissing(code, text)
    if response.status_code == 404:
        return HostNotFound(text)
    if response.status_code in (409, 422, 423):
        return HostRefused(code, text)
    # 5xx or anything unexpected: the host failed, which is a host support issue.
    return AddKeysToHostFailed(text) if "/keys/" in str(response.url) else HostRefused(code, text)
