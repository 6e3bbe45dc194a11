"""The standard key provider: KEKs live in KMIP key servers, vmcrypt keeps only key IDs.

As vSphere's standard key provider (seeds: "Standard Key Provider Encryption Process
Flow"): an encryption task makes the control plane ask the key server for a new key
(KMIP Create, AES-256), store its key ID, fetch the key (KMIP Get) and push it to the
hosts; after a host restart the KEK is fetched again by its ID.

Custom attributes (seeds: "Custom Attributes for Key Servers", KMIP 1.4 3.39 ``x-``
names): ``x-Vendor``, ``x-Product`` and ``x-Product_Version`` go into the Create
template, so they are set "when the key server creates a key"; ``x-Component``,
``x-Name`` and ``x-Identifier`` are set "when the key is used", in one batched Add
Attribute message (Modify when they already exist). The key is activated right after
Create (KMIP 1.4, 4.19), because a KEK in use is an Active key.

A provider lists one or more key servers of one KMS cluster. They must share their keys
— replicas, or nodes over shared storage, such as two ``vmcrypt kms serve`` processes on
one SQLite file and master key — since any of them may be asked for a key created on
another. Servers are tried in order starting with the last one that answered; one that
cannot be reached (connection, TLS or timeout) is skipped for ``retry_after`` seconds.

Errors follow the seeds' key error events: no server reachable →
:class:`~.KeyServerUnreachable`; "Item Not Found" (or a destroyed key) →
:class:`~.KeyMissing`; any other refusal → :class:`~.ProviderError` with the server's
reason. Messages name key IDs and servers, never key bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from vmcrypt.crypto.keys import KEK_SIZE
from vmcrypt.kmip.client import ItemFailed, KmipClient
from vmcrypt.kmip.connection import TlsRefused
from vmcrypt.kmip.exceptions import KmipConnectionError, KmipError, OperationFailed
from vmcrypt.kmip.tags import ResultReason
from vmcrypt.pki.tls import client_context
from vmcrypt.providers.base import (
    HealthState,
    KekRef,
    KeyOwner,
    KeyProvider,
    NewKek,
    ProviderHealth,
    ServerHealth,
)
from vmcrypt.providers.exceptions import KeyMissing, KeyServerUnreachable, ProviderError

__all__ = [
    "DEFAULT_PRODUCT",
    "DEFAULT_VENDOR",
    "KmsServerConfig",
    "StandardKeyProvider",
]

#: ``x-Vendor`` and ``x-Product`` unless the caller names others (vCenter sets
#: "VMware, Inc." and "VMware vSphere"; vmcrypt names itself).
DEFAULT_VENDOR = "vmcrypt project"
DEFAULT_PRODUCT = "vmcrypt"

#: Result Reasons that mean "this key is not (or no longer) there": Item Not Found, and
#: Key Value Not Present, which some servers answer for a destroyed key's metadata.
_MISSING = (ResultReason.ITEM_NOT_FOUND, ResultReason.KEY_VALUE_NOT_PRESENT)

T = TypeVar("T")


@dataclass(frozen=True)
class KmsServerConfig:
    """One key server of the provider and the client certificate to reach it with."""

    host: str
    port: int = 5696
    ca_file: Path = field(kw_only=True)
    cert_file: Path = field(kw_only=True)
    key_file: Path = field(kw_only=True)
    #: The name the server certificate must carry, when not ``host``.
    server_hostname: str | None = field(default=None, kw_only=True)

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class _Server:
    """A configured server, its reused client, and when it may be tried again."""

    def __init__(self, config: KmsServerConfig, timeout: float) -> None:
        self.config = config
        self.timeout = timeout
        self.down_until: float | None = None
        self.error: str | None = None
        self._client: KmipClient | None = None

    @property
    def client(self) -> KmipClient:
        if self._client is None:
            context = client_context(ca_file=self.config.ca_file, cert_file=self.config.cert_file,
                                     key_file=self.config.key_file)
            self._client = KmipClient(self.config.host, self.config.port, ssl_context=context,
                                      timeout=self.timeout,
                                      server_hostname=self.config.server_hostname)
        return self._client


class StandardKeyProvider(KeyProvider):
    """KEKs from KMIP key servers, named by key ID, with failover between servers."""

    kind = "standard"

    def __init__(self, provider_id: str, servers: Sequence[KmsServerConfig], *,
                 product_version: str, vendor: str = DEFAULT_VENDOR,
                 product: str = DEFAULT_PRODUCT, timeout: float = 5.0,
                 retry_after: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(provider_id)
        if not servers:
            raise ValueError("a standard key provider needs at least one key server")
        self.vendor = vendor
        self.product = product
        self.product_version = product_version
        self.retry_after = retry_after
        self._servers = [_Server(config, timeout) for config in servers]
        self._clock = clock
        self._preferred = 0
        self._lock = threading.Lock()

    @property
    def servers(self) -> tuple[KmsServerConfig, ...]:
        """The configured key servers, in order."""
        return tuple(server.config for server in self._servers)

    def __repr__(self) -> str:
        return (f"StandardKeyProvider(provider_id={self.provider_id!r}, "
                f"servers={[s.config.address for s in self._servers]!r})")

    def close(self) -> None:
        """Close every server connection (they reopen on the next call)."""
        for server in self._servers:
            if server._client is not None:
                server._client.close()

    # -- keys ---------------------------------------------------------------------------

    def new_kek(self, *, owner: KeyOwner | None = None) -> NewKek:
        """Create, activate and fetch an AES-256 KEK, tagged as the seeds' table says.

        All steps run on one server; if it fails after Create, the next server makes a
        new key and the first one stays Pre-Active, unused, on the failed server.
        """
        created = {"x-Vendor": self.vendor, "x-Product": self.product,
                   "x-Product_Version": self.product_version}

        def create(client: KmipClient) -> NewKek:
            uid = client.create_symmetric_key(length=KEK_SIZE * 8, attributes=created)
            client.activate(uid)
            if owner is not None:
                client.add_attributes(uid, _owner_attributes(owner))
            return NewKek(ref=KekRef(key_id=uid), kek=self._checked(client.get_key(uid), uid,
                                                                    client))

        return self._run(create, "create a KEK")

    def get_kek(self, ref: KekRef) -> bytes:
        """The KEK named by the keySafe's key ID (KMIP Get)."""
        uid = self._key_id(ref)
        return self._run(lambda client: self._checked(client.get_key(uid), uid, client),
                         f"get key {uid!r}", uid=uid)

    def get_keks(self, refs: Sequence[KekRef]) -> list[bytes]:
        """Several KEKs in batched Get messages (a host restart needs them all at once)."""
        uids = [self._key_id(ref) for ref in refs]
        if not uids:
            return []

        def get(client: KmipClient) -> list[bytes]:
            keys = client.get_keys(uids)
            return [self._checked(key, uid, client) for key, uid in zip(keys, uids, strict=True)]

        return self._run(get, f"get {len(uids)} keys")

    def get_keys(self, refs: Sequence[KekRef]) -> list[bytes]:
        """Alias of :meth:`get_keks`."""
        return self.get_keks(refs)

    def set_owner(self, ref: KekRef, owner: KeyOwner) -> None:
        """Record what the key is used for: ``x-Component``, ``x-Name``, ``x-Identifier``.

        Absent attributes are added in one batched message; present ones are modified
        (Add Attribute would create a second instance of a custom attribute).
        """
        uid = self._key_id(ref)
        wanted = _owner_attributes(owner)

        def tag(client: KmipClient) -> None:
            have = {a.name for a in client.get_attributes(uid, list(wanted))}
            client.add_attributes(uid, {k: v for k, v in wanted.items() if k not in have})
            for name in have & wanted.keys():
                client.modify_attribute(uid, name, wanted[name])

        self._run(tag, f"tag key {uid!r}", uid=uid)

    # -- failover -----------------------------------------------------------------------

    def _run(self, operation: Callable[[KmipClient], T], what: str, *,
             uid: str | None = None) -> T:
        """Run ``operation`` on the first usable server, starting with the last good one."""
        with self._lock:
            start = self._preferred
        count = len(self._servers)
        failures: list[str] = []
        for step in range(count):
            index = (start + step) % count
            server = self._servers[index]
            now = self._clock()
            with self._lock:
                down_until = server.down_until
            if down_until is not None and now < down_until:
                failures.append(f"{server.config.address}: skipped for another "
                                f"{down_until - now:.0f} s after: {server.error}")
                continue
            try:
                result = operation(server.client)
            except KmipConnectionError as exc:
                self._mark_down(server, str(exc))
                failures.append(f"{server.config.address}: {exc}")
                continue
            except OperationFailed as exc:
                raise self._refused(exc, server, what, uid) from None
            except KmipError as exc:
                raise ProviderError(
                    f"key server {server.config.address} of standard key provider "
                    f"{self.provider_id!r} could not {what}: {exc}"
                ) from None
            with self._lock:
                server.down_until, server.error = None, None
                self._preferred = index
            return result
        raise KeyServerUnreachable(
            f"no key server of standard key provider {self.provider_id!r} could {what}: "
            + "; ".join(failures)
            + ". Check that the key servers are running and reachable, and that their "
            "certificates and this provider's client certificate are trusted"
        )

    def _mark_down(self, server: _Server, error: str) -> None:
        with self._lock:
            server.down_until = self._clock() + self.retry_after
            server.error = error

    def _refused(self, exc: OperationFailed, server: _Server, what: str,
                 uid: str | None) -> ProviderError:
        missing = exc.uid if isinstance(exc, ItemFailed) else uid
        detail = exc.result_message or "no message"
        if exc.reason in _MISSING and missing is not None:
            return KeyMissing(
                f"key {missing!r} is missing in key server {server.config.address} of "
                f"standard key provider {self.provider_id!r} ({detail}); it was deleted or "
                "destroyed, or the provider points at another key server cluster"
            )
        reason = exc.reason.name.replace("_", " ").title() if isinstance(
            exc.reason, ResultReason) else f"reason {exc.reason}"
        return ProviderError(
            f"key server {server.config.address} of standard key provider "
            f"{self.provider_id!r} refused to {what}: {exc.operation} failed: {reason}: "
            f"{detail}"
        )

    def _key_id(self, ref: KekRef) -> str:
        if ref.key_id is None:
            raise KeyMissing(
                f"standard key provider {self.provider_id!r} names keys by key ID, but was "
                "given a wrapped KEK; the keySafe belongs to a native or trusted provider"
            )
        return ref.key_id

    def _checked(self, key: bytes, uid: str, client: KmipClient) -> bytes:
        if len(key) != KEK_SIZE:
            raise ProviderError(
                f"key {uid!r} on key server {client.address} is {len(key) * 8} bits long; "
                f"a KEK is AES-256 ({KEK_SIZE * 8} bits)"
            )
        return key

    # -- health -------------------------------------------------------------------------

    def health(self) -> ProviderHealth:
        """Probe every server now: Discover Versions and Query, with latency in ms."""
        reports = [self._probe(server) for server in self._servers]
        up = sum(1 for report in reports if report.error is None)
        state: HealthState = (
            "healthy" if up == len(reports) else "degraded" if up else "unreachable")
        return ProviderHealth(
            provider_id=self.provider_id, kind=self.kind, state=state, servers=tuple(reports),
            warnings=tuple(f"key server {r.address} is down: {r.error}"
                           for r in reports if r.error is not None),
        )

    def _probe(self, server: _Server) -> ServerHealth:
        address = server.config.address
        started = time.perf_counter()
        try:
            versions = server.client.discover_versions()
            info = server.client.query()
        except KmipConnectionError as exc:
            self._mark_down(server, str(exc))
            return ServerHealth(address=address, reachable=isinstance(exc, TlsRefused),
                                tls_ok=False, error=str(exc))
        except KmipError as exc:  # it answered, but not as a KMIP server should
            return ServerHealth(address=address, reachable=True, tls_ok=True, error=str(exc))
        latency = (time.perf_counter() - started) * 1000
        with self._lock:
            server.down_until, server.error = None, None
        version = f"KMIP {versions[0]}" if versions else "KMIP"
        if info.vendor:
            version += f" ({info.vendor})"
        return ServerHealth(address=address, reachable=True, tls_ok=True,
                            latency_ms=round(latency, 2), version=version,
                            certificate_expires_at=_peer_not_after(server.client))


def _peer_not_after(client: KmipClient) -> datetime | None:
    """The notAfter of the certificate the server presented on the open connection."""
    return client.peer_certificate_expiry


def _owner_attributes(owner: KeyOwner) -> dict[str, object]:
    """The seeds' "when the key is used" attributes."""
    return {"x-Component": owner.component, "x-Name": owner.name,
            "x-Identifier": owner.identifier}
