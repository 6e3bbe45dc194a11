"""The Trust Authority's persisted configuration: baselines, hosts, trusted providers.

This file is the service's only state besides its event log and signing key (nonces
live in memory for a minute; KEKs are never stored). It holds no secret: host *public*
keys, measurement digests, KMS addresses, the paths of the KMS client certificate, and
primary key *IDs* — the primary keys themselves never leave the key server. It is still
written 0600 (who may attest is the administrator's business), atomically (temporary
file, fsync, rename), so a crash leaves the old or the new configuration, never half.

:class:`ConfigStore` is the one writer: every change is made on a copy under a lock
and saved before it becomes visible, so a failed save changes nothing.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vmcrypt.exceptions import UsageError
from vmcrypt.pki.ca import write_pem
from vmcrypt.trust.exceptions import TrustConfigError, TrustConflict, TrustObjectNotFound
from vmcrypt.trust.measure import MEASUREMENTS

__all__ = [
    "CONFIG_VERSION",
    "Baseline",
    "ConfigStore",
    "KmsServer",
    "RegisteredHost",
    "TrustConfig",
    "TrustedProvider",
    "check_name",
    "load_public_key",
]

CONFIG_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX256 = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


def check_name(name: str, what: str) -> str:
    """A name usable in a URL path and a file: letters, digits, ``.``, ``_``, ``-``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"{what} name {name!r}: use letters, digits, '.', '_' and '-' "
                         "(at most 64, starting with a letter or digit)")
    return name


def load_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """A host identity public key (EC P-256, SubjectPublicKeyInfo PEM)."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise UsageError("the host public key is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise UsageError("a host identity public key must be EC P-256")
    return key


@dataclass(frozen=True)
class Baseline:
    """An approved set of measurements: a host matching all of them is trusted."""

    name: str
    measurements: dict[str, str]
    created_at: float

    def __post_init__(self) -> None:
        check_name(self.name, "baseline")
        if set(self.measurements) != set(MEASUREMENTS):
            raise UsageError(f"baseline {self.name!r} needs exactly the measurements "
                             f"{', '.join(MEASUREMENTS)}")
        for which, value in self.measurements.items():
            if not isinstance(value, str) or not _HEX256.fullmatch(value):
                raise UsageError(f"baseline {self.name!r}: measurement {which!r} must be "
                                 "a SHA-256 in lowercase hex (64 digits)")


@dataclass(frozen=True)
class RegisteredHost:
    """A host allowed to attest: its name, hardware UUID and identity public key."""

    name: str
    hardware_uuid: str
    public_key_pem: str
    registered_at: float

    def __post_init__(self) -> None:
        check_name(self.name, "host")
        if not self.hardware_uuid or len(self.hardware_uuid) > 128:
            raise UsageError(f"host {self.name!r}: a hardware UUID is required")
        load_public_key(self.public_key_pem)


@dataclass(frozen=True)
class KmsServer:
    """A KMIP server of a trusted provider and the client certificate the service uses.

    Paths are as the Trust Authority process sees them; the files stay where they are.
    """

    host: str
    port: int
    ca_file: str
    cert_file: str
    key_file: str
    server_hostname: str | None = None

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TrustedProvider:
    """A trusted key provider: its primary key's ID in its key servers."""

    name: str
    key_id: str
    servers: tuple[KmsServer, ...]
    created_at: float

    def __post_init__(self) -> None:
        check_name(self.name, "key provider")
        if not self.servers:
            raise UsageError(f"key provider {self.name!r} needs at least one key server")


@dataclass
class TrustConfig:
    """Everything the Trust Authority is configured with, by name."""

    baselines: dict[str, Baseline] = field(default_factory=dict)
    hosts: dict[str, RegisteredHost] = field(default_factory=dict)
    providers: dict[str, TrustedProvider] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON document."""
        return {
            "version": CONFIG_VERSION,
            "baselines": [asdict(b) for b in self.baselines.values()],
            "hosts": [asdict(h) for h in self.hosts.values()],
            "providers": [asdict(p) for p in self.providers.values()],
        }

    @classmethod
    def from_json(cls, data: Any) -> TrustConfig:
        """Parse the file's JSON document (``TrustConfigError`` when it is not one)."""
        if not isinstance(data, dict) or data.get("version") != CONFIG_VERSION:
            raise TrustConfigError("not a version 1 Trust Authority configuration")
        try:
            baselines = [Baseline(**b) for b in data.get("baselines", [])]
            hosts = [RegisteredHost(**h) for h in data.get("hosts", [])]
            providers = [
                TrustedProvider(**{**p, "servers": tuple(KmsServer(**s) for s in p["servers"])})
                for p in data.get("providers", [])
            ]
        except (TypeError, KeyError, UsageError) as exc:
            raise TrustConfigError(f"malformed configuration entry: {exc}") from None
        return cls(baselines={b.name: b for b in baselines}, hosts={h.name: h for h in hosts},
                   providers={p.name: p for p in providers})


class ConfigStore:
    """The configuration file and its in-memory copy; the one place that writes it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._config = self._load()

    def _load(self) -> TrustConfig:
        if not self.path.exists():
            return TrustConfig()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TrustConfigError(f"{self.path}: cannot read the configuration: {exc}; "
                                   "restore it from a backup") from None
        try:
            return TrustConfig.from_json(data)
        except TrustConfigError as exc:
            raise TrustConfigError(f"{self.path}: {exc}") from None

    @property
    def config(self) -> TrustConfig:
        """The current configuration; treat it as read-only (changes go through update)."""
        return self._config

    def update(self, change: Callable[[TrustConfig], T]) -> T:
        """Apply ``change`` to a copy, save it atomically, then make it current."""
        with self._lock:
            draft = copy.deepcopy(self._config)
            result = change(draft)
            data = json.dumps(draft.to_json(), indent=2, sort_keys=True) + "\n"
            write_pem(self.path, data.encode("utf-8"), private=True)
            self._config = draft
            return result

    # -- the edits the API offers ---------------------------------------------------------

    def add_baseline(self, baseline: Baseline) -> Baseline:
        """Approve a baseline (``TrustConflict`` if the name is taken)."""
        def change(config: TrustConfig) -> Baseline:
            _absent(config.baselines, baseline.name, "baseline")
            config.baselines[baseline.name] = baseline
            return baseline
        return self.update(change)

    def remove_baseline(self, name: str) -> None:
        """Withdraw a baseline: hosts matching only it fail their next attestation."""
        def change(config: TrustConfig) -> None:
            _present(config.baselines, name, "baseline")
            del config.baselines[name]
        self.update(change)

    def add_host(self, host: RegisteredHost) -> RegisteredHost:
        """Register a host identity (``TrustConflict`` if the name is taken)."""
        def change(config: TrustConfig) -> RegisteredHost:
            _absent(config.hosts, host.name, "host")
            config.hosts[host.name] = host
            return host
        return self.update(change)

    def remove_host(self, name: str) -> None:
        """Unregister a host: it can no longer attest (tokens it holds expire soon)."""
        def change(config: TrustConfig) -> None:
            _present(config.hosts, name, "host")
            del config.hosts[name]
        self.update(change)

    def add_provider(self, provider: TrustedProvider) -> TrustedProvider:
        """Publish a trusted key provider (``TrustConflict`` if the name is taken)."""
        def change(config: TrustConfig) -> TrustedProvider:
            _absent(config.providers, provider.name, "key provider")
            config.providers[provider.name] = provider
            return provider
        return self.update(change)


def _absent(table: dict[str, Any], name: str, what: str) -> None:
    if name in table:
        raise TrustConflict(f"a {what} named {name!r} already exists; choose another name")


def _present(table: dict[str, Any], name: str, what: str) -> None:
    if name not in table:
        raise TrustObjectNotFound(f"no {what} named {name!r}")
