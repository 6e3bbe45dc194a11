"""Trusted key providers, cluster defaults and host attestation (docs/trust.md).

- ``GET /key-providers/trusted/published`` — what a Trust Authority publishes;
- ``POST /key-providers/trusted`` / ``GET /key-providers/trusted`` — register one / list;
- ``PUT /clusters/{id}/default-key-provider`` — a cluster's own default provider;
- ``GET|POST /hosts/{id}/attestation`` — a host's attestation, read from (or renewed
  through) the host; a change is an event and locks or unlocks its trusted VMs.

No route here carries a key: the control plane never holds a trusted provider's KEK.
Schemas live beside their routes (one file per resource, as in Vault's ``path_*.go``).
This router is mounted before ``/key-providers/{provider_id}`` so that ``trusted`` is
never read as a provider ID.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from vmcrypt.control.api.deps import AuditedRoute, CurrentUser, SessionDep, requires
from vmcrypt.control.api.schemas import KeyProviderPublic
from vmcrypt.control.db.models import Cluster, Host, KeyProvider, ProviderKind
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.exceptions import Conflict
from vmcrypt.control.privileges import (
    CRYPTO_MANAGE_KEY_SERVERS,
    CRYPTO_REGISTER_HOST,
    HOST_EDIT_CLUSTER,
    SYSTEM_READ,
)
from vmcrypt.control.services import trusted
from vmcrypt.control.services.keys import HostConnector
from vmcrypt.exceptions import UsageError

__all__ = [
    "ClusterDefaultProvider",
    "ClusterDefaultPublic",
    "HostAttestationPublic",
    "PublishedProvider",
    "TrustedProviderCreate",
    "TrustedProviderPublic",
    "router",
]

router = APIRouter(tags=["trusted key providers"], route_class=AuditedRoute)
_MANAGE = requires(CRYPTO_MANAGE_KEY_SERVERS)
_READ = requires(SYSTEM_READ)
_PATH = Field(min_length=1, max_length=1024)
_URL = Field(min_length=1, max_length=255, pattern=r"^https://\S+$")


class TrustedProviderCreate(BaseModel):
    """Register a provider the Trust Authority at ``url`` publishes as ``name``.

    The files are on the control plane's machine: the authority's CA, and the client
    certificate (issued from that CA) and key the control plane presents to it.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    url: str = _URL
    ca_file: str = _PATH
    cert_file: str = _PATH
    key_file: str = _PATH
    is_default: bool = False
    verify: bool = Field(default=True, description="ask the authority first (404 when it "
                         "publishes no such provider); false registers it offline")

    def endpoint(self) -> trusted.TrustEndpoint:
        """The service's endpoint."""
        return trusted.TrustEndpoint(self.url, Path(self.ca_file), Path(self.cert_file),
                                     Path(self.key_file))


class PublishedProvider(BaseModel):
    """A trusted provider as its Trust Authority publishes it; ``registered`` here or not."""

    name: str
    key_id: str | None = Field(default=None, description="its primary key, in the KMS")
    servers: list[str] = Field(default_factory=list)
    registered: bool


class TrustedProviderPublic(BaseModel):
    """A registered trusted provider, its Trust Authority and the clusters it defaults."""

    id: int
    name: str
    url: str
    is_default: bool
    default_for_clusters: list[int]
    created_at: datetime


class ClusterDefaultProvider(BaseModel):
    """The provider to make a cluster's default (``null``: back to the global one)."""

    model_config = ConfigDict(extra="forbid")

    key_provider_id: int | None


class ClusterDefaultPublic(BaseModel):
    """A cluster's own default key provider."""

    cluster_id: int
    default_key_provider_id: int | None


class HostAttestationPublic(BaseModel):
    """A host's attestation as the host reports it: never a token."""

    host_id: int
    host: str
    state: str = Field(description="attested, failed, unset, or unknown (host down)")
    reason: str | None = None
    code: str | None = None
    at: float | None = None
    baseline: str | None = None
    expires_at: float | None = None
    url: str | None = None


def _hosts(request: Request) -> HostConnector:
    hosts: HostConnector | None = getattr(request.app.state, "hosts", None)
    if hosts is None:
        raise Conflict("this control plane reaches no hosts: start it with its host CA")
    return hosts


Hosts = Annotated[HostConnector, Depends(_hosts)]


def _public(session: SessionDep, row: KeyProvider) -> TrustedProviderPublic:
    clusters = session.scalars(select(Cluster.id).where(
        Cluster.default_key_provider_id == row.id).order_by(Cluster.id))
    return TrustedProviderPublic(id=row.id, name=row.name,
                                 url=trusted.endpoint_of(row).url, is_default=row.is_default,
                                 default_for_clusters=list(clusters), created_at=row.created_at)


@router.get("/key-providers/trusted/published", dependencies=[_READ])
def list_published(
    session: SessionDep,
    url: Annotated[str | None, Query(max_length=255)] = None,
    ca_file: Annotated[str | None, Query(max_length=1024)] = None,
    cert_file: Annotated[str | None, Query(max_length=1024)] = None,
    key_file: Annotated[str | None, Query(max_length=1024)] = None,
    via: Annotated[int | None, Query(description="a registered trusted provider's "
                                                 "ID: ask its Trust Authority")] = None,
) -> list[PublishedProvider]:
    """The trusted providers a Trust Authority publishes (the seeds: hosts may use them).

    Name the authority (``url`` and the three files, or ``via`` a registered trusted
    provider); with neither, every authority of the registered trusted providers is
    asked (none registered: an empty list).
    """
    names = set(session.scalars(select(KeyProvider.name).where(
        KeyProvider.kind == ProviderKind.TRUSTED)))
    if via is not None:
        endpoints = [trusted.endpoint_of(fetch(session, KeyProvider, via))]
    elif url or ca_file or cert_file or key_file:
        if not (url and ca_file and cert_file and key_file):
            raise UsageError("name the Trust Authority with url, ca_file, cert_file and "
                             "key_file together (or via=PROVIDER_ID)")
        endpoints = [trusted.TrustEndpoint(url, Path(ca_file), Path(cert_file),
                                           Path(key_file))]
    else:
        rows = session.scalars(select(KeyProvider).where(
            KeyProvider.kind == ProviderKind.TRUSTED).order_by(KeyProvider.id))
        endpoints = list({e.url: e for e in map(trusted.endpoint_of, rows)}.values())
    listed: dict[str, PublishedProvider] = {}
    for endpoint in endpoints:
        for p in trusted.published(endpoint):
            name = str(p["name"])
            listed.setdefault(name, PublishedProvider(
                name=name, key_id=p.get("key_id"), servers=list(p.get("servers") or []),
                registered=name in names))
    return list(listed.values())


@router.get("/key-providers/trusted", dependencies=[_READ])
def list_registered(session: SessionDep) -> list[TrustedProviderPublic]:
    """The trusted providers registered here."""
    rows = session.scalars(select(KeyProvider).where(KeyProvider.kind == ProviderKind.TRUSTED)
                           .order_by(KeyProvider.id))
    return [_public(session, row) for row in rows]


@router.post("/key-providers/trusted", status_code=201, dependencies=[_MANAGE])
def register(body: TrustedProviderCreate, session: SessionDep,
             user: CurrentUser) -> KeyProviderPublic:
    """Register a published trusted provider (404 if the authority publishes no such name)."""
    row = trusted.register(session, name=body.name, endpoint=body.endpoint(),
                           is_default=body.is_default, user_name=user.user_name,
                           verify=body.verify)
    session.refresh(row)
    return KeyProviderPublic.model_validate(row)


@router.put("/clusters/{cluster_id}/default-key-provider",
            dependencies=[requires(HOST_EDIT_CLUSTER, CRYPTO_MANAGE_KEY_SERVERS)])
def set_cluster_default(cluster_id: int, body: ClusterDefaultProvider,
                        session: SessionDep) -> ClusterDefaultPublic:
    """Make a provider the default for VMs created on this cluster's hosts."""
    cluster = trusted.set_cluster_default(session, cluster_id=cluster_id,
                                          provider_id=body.key_provider_id)
    return ClusterDefaultPublic(cluster_id=cluster.id,
                                default_key_provider_id=cluster.default_key_provider_id)


def _attestation(host: Host, status: dict[str, Any]) -> HostAttestationPublic:
    fields = {k: status.get(k) for k in ("reason", "code", "at", "baseline", "expires_at",
                                         "url")}
    return HostAttestationPublic(host_id=host.id, host=host.name, state=status["state"],
                                 **fields)


@router.get("/hosts/{host_id}/attestation", dependencies=[_READ])
def get_attestation(host_id: int, session: SessionDep, hosts: Hosts) -> HostAttestationPublic:
    """The host's attestation, read from its ``/health``; a change is recorded (events, locks)."""
    host = fetch(session, Host, host_id)
    return _attestation(host, trusted.refresh_host(session, hosts, host))


@router.post("/hosts/{host_id}/attestation", dependencies=[requires(CRYPTO_REGISTER_HOST)])
def attest(host_id: int, session: SessionDep, hosts: Hosts) -> HostAttestationPublic:
    """Have the host attest now (after its software was restored); the outcome."""
    host = fetch(session, Host, host_id)
    return _attestation(host, trusted.refresh_host(session, hosts, host, attest=True))
