"""The Trust Authority's REST API under ``/api/v1`` (FastAPI), served over mutual TLS.

Who may call what is decided in two dependencies, never in handlers:

- :data:`AdminDep` — the caller's certificate CN is one of the configured
  administrators (baselines, hosts, provider creation, events);
- :data:`ClaimsDep` — a valid bearer attestation token presented by the host it was
  issued to (KEK creation and unwrapping).

The caller's certificate CN reaches the app in the ASGI scope (``extensions.tls``, set
by :mod:`vmcrypt.trust.server` from the verified TLS session), so tests run the same app
in-process by putting a CN there. Errors are ``{"detail": …, "error": CLASS}`` with the
status of the :class:`~vmcrypt.trust.exceptions.TrustError` class (and ``reason`` for a
refused attestation); validation errors never echo the input back (it may be a KEK
ciphertext). KEK responses carry ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from vmcrypt import __version__
from vmcrypt.exceptions import UsageError
from vmcrypt.trust.attestation import TokenClaims
from vmcrypt.trust.config import KmsServer
from vmcrypt.trust.exceptions import (
    AttestationFailed,
    KekCiphertextInvalid,
    TrustError,
)
from vmcrypt.trust.schemas import (
    BaselineIn,
    BaselineOut,
    EvidenceIn,
    HostIn,
    HostOut,
    KekOut,
    NonceOut,
    ProviderIn,
    ProviderOut,
    TokenOut,
    UnwrapIn,
    UnwrapOut,
)
from vmcrypt.trust.service import TrustService

__all__ = ["API_PREFIX", "create_app", "peer_of"]

API_PREFIX = "/api/v1"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _Forbidden(TrustError):
    status = 403


def peer_of(request: Request) -> str | None:
    """The CN of the caller's verified client certificate, if any."""
    tls = request.scope.get("extensions", {}).get("tls", {})
    cn = tls.get("client_cert_cn") if isinstance(tls, dict) else None
    return cn if isinstance(cn, str) else None


def _service(request: Request) -> TrustService:
    service: TrustService = request.app.state.trust
    return service


ServiceDep = Annotated[TrustService, Depends(_service)]


def _peer(request: Request) -> str:
    peer = peer_of(request)
    if peer is None:
        raise _Forbidden("a client certificate from the Trust Authority's CA is required")
    return peer


PeerDep = Annotated[str, Depends(_peer)]


def _admin(service: ServiceDep, peer: PeerDep) -> str:
    if not service.is_admin(peer):
        raise _Forbidden(f"{peer!r} is not an administrator of this Trust Authority")
    return peer


AdminDep = Annotated[str, Depends(_admin)]


def _claims(request: Request, service: ServiceDep, peer: PeerDep) -> TokenClaims:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        token = ""
    return service.authorize(token.strip() or None, peer=peer)


ClaimsDep = Annotated[TokenClaims, Depends(_claims)]

router = APIRouter(prefix=API_PREFIX)


@router.get("/health", tags=["health"])
def health(service: ServiceDep, peer: PeerDep) -> dict[str, Any]:
    """Liveness and counts, for monitors (no names, no keys)."""
    config = service.config.config
    return {"status": "ok", "version": __version__, "providers": len(config.providers),
            "hosts": len(config.hosts), "baselines": len(config.baselines)}


@router.get("/attestation/key", tags=["attestation"])
def token_key(service: ServiceDep, peer: PeerDep) -> dict[str, str]:
    """The public key tokens are signed with (ES256), for relying parties."""
    return {"alg": "ES256", "public_key_pem": service.issuer.public_key_pem()}


@router.post("/attestation/nonce", tags=["attestation"])
def nonce(service: ServiceDep, peer: PeerDep) -> NonceOut:
    """A fresh single-use nonce for the next evidence."""
    value, expires = service.new_nonce()
    return NonceOut(nonce=value, expires_at=expires)


@router.post("/attestation/token", tags=["attestation"])
def attest(evidence: EvidenceIn, service: ServiceDep, peer: PeerDep) -> TokenOut:
    """Verify signed evidence; a trusted host gets a short-lived token."""
    issued = service.attest(evidence.model_dump(), peer=peer)
    return TokenOut(token=issued.token, expires_at=issued.expires_at,
                    host=issued.attested.host, hardware_uuid=issued.attested.hardware_uuid,
                    baseline=issued.attested.baseline)


def _provider_out(provider: Any) -> ProviderOut:
    return ProviderOut(name=provider.name, key_id=provider.key_id,
                       servers=[s.address for s in provider.servers],
                       created_at=provider.created_at)


@router.get("/key-providers", tags=["key providers"])
def list_providers(service: ServiceDep, peer: PeerDep) -> list[ProviderOut]:
    """The trusted key providers this Trust Authority publishes."""
    providers = service.config.config.providers.values()
    return [_provider_out(p) for p in sorted(providers, key=lambda p: p.name)]


@router.post("/key-providers", tags=["key providers"], status_code=201)
def add_provider(body: ProviderIn, service: ServiceDep, admin: AdminDep) -> ProviderOut:
    """Create the provider's primary key in its key server and publish the provider."""
    servers = [KmsServer(**s.model_dump()) for s in body.servers]
    return _provider_out(service.add_provider(body.name, servers, by=admin))


@router.get("/key-providers/{name}", tags=["key providers"])
def show_provider(name: str, service: ServiceDep, peer: PeerDep) -> ProviderOut:
    """One trusted key provider."""
    return _provider_out(service.provider(name))


@router.post("/key-providers/{name}/keks", tags=["key providers"], status_code=201)
def new_kek(name: str, service: ServiceDep, claims: ClaimsDep, response: Response) -> KekOut:
    """A new KEK for an attested host: plaintext (for the host) and ciphertext."""
    wrapped = service.new_kek(name, claims)
    response.headers.update(_NO_STORE)
    return KekOut(provider=name, key_id=wrapped.key_id,
                  kek=base64.b64encode(wrapped.kek).decode("ascii"),
                  kek_ciphertext=base64.b64encode(wrapped.ciphertext).decode("ascii"))


@router.post("/key-providers/{name}/unwrap", tags=["key providers"])
def unwrap(name: str, body: UnwrapIn, service: ServiceDep, claims: ClaimsDep,
           response: Response) -> UnwrapOut:
    """The KEK inside a ciphertext this provider made, for an attested host."""
    provider = service.provider(name)
    try:
        ciphertext = base64.b64decode(body.kek_ciphertext, validate=True)
    except (binascii.Error, ValueError):
        raise KekCiphertextInvalid("kek_ciphertext is not base64") from None
    kek = service.unwrap(name, ciphertext, claims)
    response.headers.update(_NO_STORE)
    return UnwrapOut(provider=name, key_id=provider.key_id,
                     kek=base64.b64encode(kek).decode("ascii"))


@router.get("/baselines", tags=["admin"])
def list_baselines(service: ServiceDep, admin: AdminDep) -> list[BaselineOut]:
    """The approved baselines."""
    baselines = sorted(service.config.config.baselines.values(), key=lambda b: b.name)
    return [BaselineOut(name=b.name, measurements=b.measurements, created_at=b.created_at)
            for b in baselines]


@router.post("/baselines", tags=["admin"], status_code=201)
def add_baseline(body: BaselineIn, service: ServiceDep, admin: AdminDep) -> BaselineOut:
    """Approve a baseline (exactly the measurements ``config`` and ``vmcrypt``)."""
    b = service.add_baseline(body.name, body.measurements, by=admin)
    return BaselineOut(name=b.name, measurements=b.measurements, created_at=b.created_at)


@router.delete("/baselines/{name}", tags=["admin"], status_code=204)
def remove_baseline(name: str, service: ServiceDep, admin: AdminDep) -> Response:
    """Withdraw a baseline."""
    service.remove_baseline(name, by=admin)
    return Response(status_code=204)


def _host_out(host: Any, last: dict[str, dict[str, Any]]) -> HostOut:
    return HostOut(name=host.name, hardware_uuid=host.hardware_uuid,
                   public_key_pem=host.public_key_pem, registered_at=host.registered_at,
                   last_attestation=last.get(host.name))


@router.get("/hosts", tags=["admin"])
def list_hosts(service: ServiceDep, admin: AdminDep) -> list[HostOut]:
    """Registered hosts and their latest attestation result."""
    hosts = sorted(service.config.config.hosts.values(), key=lambda h: h.name)
    last = service.last_attestations()
    return [_host_out(h, last) for h in hosts]


@router.post("/hosts", tags=["admin"], status_code=201)
def add_host(body: HostIn, service: ServiceDep, admin: AdminDep) -> HostOut:
    """Register a host identity (name, hardware UUID, P-256 public key)."""
    host = service.add_host(body.name, body.hardware_uuid, body.public_key_pem, by=admin)
    return _host_out(host, service.last_attestations())


@router.delete("/hosts/{name}", tags=["admin"], status_code=204)
def remove_host(name: str, service: ServiceDep, admin: AdminDep) -> Response:
    """Unregister a host."""
    service.remove_host(name, by=admin)
    return Response(status_code=204)


@router.get("/events", tags=["admin"])
def events(service: ServiceDep, admin: AdminDep,
           limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
           kind: Annotated[str | None, Query(alias="type", max_length=64)] = None,
           host: Annotated[str | None, Query(max_length=64)] = None) -> list[dict[str, Any]]:
    """The latest events, oldest first (``type`` is a prefix: ``attestation.``)."""
    return service.events.read(limit=limit, type_prefix=kind, host=host)


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """TrustError → its status; UsageError → 400; validation → 422 without the input."""

    async def trust_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TrustError)
        name = type(exc).__name__.lstrip("_")
        if isinstance(exc, AttestationFailed):
            return _error(exc.status, str(exc), error=name, reason=exc.reason)
        return _error(exc.status, str(exc), error=name)

    async def usage_error(_request: Request, exc: Exception) -> JSONResponse:
        return _error(400, str(exc))

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
                  for e in exc.errors()]
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return _error(422, f"invalid request: {where}", errors=errors)

    app.add_exception_handler(TrustError, trust_error)
    app.add_exception_handler(UsageError, usage_error)
    app.add_exception_handler(RequestValidationError, invalid)


def create_app(service: TrustService) -> FastAPI:
    """The Trust Authority API over ``service``."""
    app = FastAPI(title="vmcrypt Trust Authority", version=__version__,
                  description="Attestation Service and Key Provider Service.")
    app.state.trust = service
    app.include_router(router)
    install_error_handlers(app)
    return app
