"""Request (``*Create``) and response (``*Public``) bodies of the control plane API.

Validation happens here, before any handler or key touches the input: names are
non-empty and bounded, ports are TCP ports, PEM fields must hold certificates only
(a private key is refused — it stays on disk, named by path), backup passwords have a
minimum length. ``*Public`` models are built from ORM rows (``from_attributes``) and
list only what a reader may see: never a sealed key, a token hash or a key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from vmcrypt.control.db.models import ConnectionState, JobState, ProviderKind, Severity
from vmcrypt.control.privileges import BUILTIN_ROLES

__all__ = [
    "BackupInfoPublic",
    "BackupRequest",
    "ClusterCreate",
    "ClusterPublic",
    "ComponentRequest",
    "DatastoreCreate",
    "DatastorePublic",
    "DiskCreate",
    "EventPublic",
    "HostCreate",
    "HostDetailPublic",
    "HostHealthPublic",
    "HostPublic",
    "JobPublic",
    "KeyProviderHealthPublic",
    "KeyProviderPublic",
    "KeyProviderWithHealthPublic",
    "KmsServerCreate",
    "KmsServerPublic",
    "NativeProviderCreate",
    "ProviderHealthPublic",
    "RekeyRequest",
    "RekeyResult",
    "RestoreRequest",
    "ServerHealthPublic",
    "StandardProviderCreate",
    "StoragePolicyCreate",
    "StoragePolicyPublic",
    "TokenCreate",
    "TokenIssued",
    "UserCreate",
    "UserPublic",
]

MIN_BACKUP_PASSWORD: int = 12

Name = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^\S(.*\S)?$")]


def _certificates_only(pem: str | None) -> str | None:
    if pem is None:
        return None
    if "PRIVATE KEY" in pem:
        raise ValueError("must hold certificates only: give the private key as a path")
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError("must be a PEM certificate (-----BEGIN CERTIFICATE-----)")
    return pem


CertificatePem = Annotated[str | None, AfterValidator(_certificates_only)]


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ClusterCreate(BaseModel):
    """A new cluster: a name, unique among clusters."""

    name: Name


class ClusterPublic(_Public):
    """A cluster."""

    id: int
    name: str
    created_at: datetime


class HostCreate(BaseModel):
    """A host record in a cluster; the host enrols (and connects) later, by itself."""

    name: Name
    hardware_uuid: str = Field(description="The host's hardware (SMBIOS) UUID")
    cluster_id: int
    api_url: str = Field(min_length=1, max_length=255, pattern=r"^https?://\S+$")


class HostPublic(_Public):
    """A host; ``connection_state`` is maintained by the control plane, not set here."""

    id: int
    name: str
    hardware_uuid: str
    cluster_id: int | None
    api_url: str | None
    connection_state: ConnectionState
    enrolled_at: datetime | None
    created_at: datetime


class DatastoreCreate(BaseModel):
    """A datastore shared by a cluster or local to one host (exactly one of the two)."""

    name: Name
    path: str = Field(min_length=1, max_length=1024)
    cluster_id: int | None = None
    host_id: int | None = None


class DatastorePublic(_Public):
    """A datastore."""

    id: int
    name: str
    path: str
    cluster_id: int | None
    host_id: int | None


class KmsServerCreate(BaseModel):
    """One KMIP server of a standard provider: address and public material only."""

    name: Name
    address: str = Field(min_length=1, max_length=255)
    port: int = Field(default=5696, gt=0, lt=65536)
    ca_pem: CertificatePem = None
    client_cert_pem: CertificatePem = None
    client_key_path: str | None = Field(default=None, max_length=1024)


class KmsServerPublic(_Public):
    """A KMS server as stored: certificates are public, the key is only a path."""

    id: int
    name: str
    address: str
    port: int
    position: int
    ca_pem: str | None
    client_cert_pem: str | None
    client_key_path: str | None


class StandardProviderCreate(BaseModel):
    """A standard (KMIP) key provider and its KMS servers in failover order."""

    name: Name
    kms_servers: list[KmsServerCreate] = Field(min_length=1, max_length=16)
    is_default: bool = False


class NativeProviderCreate(BaseModel):
    """A native key provider: the control plane generates its primary key."""

    name: Name
    is_default: bool = False


class KeyProviderPublic(_Public):
    """A key provider; a native one's primary key is never shown, sealed or not."""

    id: int
    name: str
    kind: ProviderKind
    is_default: bool
    backed_up: bool
    backup_acknowledged: bool
    created_at: datetime
    kms_servers: list[KmsServerPublic]


class BackupRequest(BaseModel):
    """The password that protects a native provider's ``.p12`` backup."""

    password: str = Field(min_length=MIN_BACKUP_PASSWORD, max_length=1024)


class RestoreRequest(BaseModel):
    """A native provider's backup (base64 of the ``.p12``) and its password."""

    backup: str = Field(min_length=1, description="base64 of the .p12 file")
    password: str = Field(min_length=1, max_length=1024)
    dry_run: bool = False


class BackupInfoPublic(BaseModel):
    """What a backup file holds, as a dry run reports it (no key material)."""

    provider_id: str
    fingerprint: str
    created_at: datetime


class StoragePolicyCreate(BaseModel):
    """A storage policy; an encryption one may name a key provider (none: the default)."""

    name: Name
    description: str = Field(default="", max_length=4096)
    encryption: bool
    key_provider_id: int | None = None


class StoragePolicyPublic(_Public):
    """A storage policy."""

    id: int
    name: str
    description: str
    encryption: bool
    key_provider_id: int | None


def _builtin_role(name: str) -> str:
    if name not in BUILTIN_ROLES:
        raise ValueError(f"must be a built-in role: {', '.join(sorted(BUILTIN_ROLES))}")
    return name


class UserCreate(BaseModel):
    """A user with one of the built-in roles."""

    name: Name
    role: Annotated[str, AfterValidator(_builtin_role)]


class UserPublic(BaseModel):
    """A user and the name of its role."""

    id: int
    name: str
    role: str
    disabled: bool


class TokenCreate(BaseModel):
    """A new API token for a user, optionally expiring."""

    label: str = Field(default="", max_length=255)
    expires_at: AwareDatetime | None = None


class TokenIssued(BaseModel):
    """A freshly issued token: ``token`` is shown this once and never again."""

    id: int
    token: str


class EventPublic(_Public):
    """One entry of the event log."""

    id: int
    time: datetime
    type: str
    severity: Severity
    object_type: str | None
    object_id: str | None
    user_name: str | None
    message: str
    details: dict[str, object]


class ComponentRequest(BaseModel):
    """Which component to encrypt or decrypt: ``"home"`` (VM home) or a disk index."""

    component: Literal["home"] | Annotated[int, Field(ge=0, le=63)]


class RekeyRequest(BaseModel):
    """Shallow (new KEK, DEKs re-wrapped, at once) or deep (new DEKs, a job).

    ``component`` is ``"home"`` (VM home only), a disk index, or ``"all"`` (VM home and
    every encrypted disk, the default: ``{"deep": false}`` keeps its old meaning).
    """

    deep: bool = False
    component: Literal["home", "all"] | Annotated[int, Field(ge=0, le=63)] = "all"


class RekeyResult(BaseModel):
    """A shallow re-key's outcome: the new key ID (None for a native provider's VM)."""

    vm_id: int
    component: str = "all"
    key_id: str | None
    key_ids: dict[str, str | None]


#: The host's limit (16 TiB); sizes are whole 4096-byte sectors.
MAX_DISK_SIZE: int = 1 << 44


class DiskCreate(BaseModel):
    """A new disk: its size, and whether it is encrypted (default: iff VM home is)."""

    size: int = Field(gt=0, le=MAX_DISK_SIZE, multiple_of=4096,
                      description="bytes: a positive multiple of 4096, at most 16 TiB")
    encrypted: bool | None = Field(
        default=None, description="default: encrypted iff VM home is; true on a VM whose "
        "home is clear is refused (409)")


class JobPublic(_Public):
    """A long operation and its progress, as last polled from the host doing it."""

    id: int
    type: str
    component: str | None = None
    host_id: int | None = None
    host_job_id: str | None = None
    target_type: str
    target_id: str
    state: JobState
    user_name: str | None
    progress_percent: float
    bytes_done: int
    bytes_total: int | None
    rate_bytes_per_second: float | None
    cancel_requested: bool
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


# --- health (read from the monitors' board, never from a live probe) -------------------


class ServerHealthPublic(BaseModel):
    """One KMS server as the provider monitor last probed it."""

    address: str
    reachable: bool
    tls_ok: bool
    latency_ms: float | None = None
    version: str | None = None
    certificate_expires_at: datetime | None = Field(
        default=None, description="notAfter of the certificate the server presented")
    error: str | None = None


class ProviderHealthPublic(BaseModel):
    """A key provider's last probe; ``state`` is ``unknown`` until the first one."""

    state: Literal["healthy", "degraded", "unreachable", "unknown"]
    checked_at: datetime | None = None
    servers: list[ServerHealthPublic] = []
    warnings: list[str] = []


class KeyProviderHealthPublic(ProviderHealthPublic):
    """``GET /key-providers/{id}/health``: the provider named, and its last probe."""

    provider_id: int
    name: str
    kind: ProviderKind


class KeyProviderWithHealthPublic(KeyProviderPublic):
    """A key provider in the listing; its last probe with ``?health=true`` (else ``null``)."""

    health: ProviderHealthPublic | None = None


class HostHealthPublic(BaseModel):
    """A host as the host monitor last probed it: counts only, never key IDs."""

    connected: bool
    keks: int | None = Field(default=None, description="KEKs cached in the host's memory")
    native_providers: int | None = None
    vms: int | None = None
    jobs_running: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    attestation: dict[str, Any] | None = Field(
        default=None, description="the host's attestation (state, reason, when), if it "
        "uses a Trust Authority")
    checked_at: datetime


class HostDetailPublic(HostPublic):
    """One host with its last health probe (``null`` before the first, or no monitor)."""

    health: HostHealthPublic | None = None
