"""Host enrolment: ``/enrolment-tokens`` (administrators) and ``/enrol`` (hosts).

A host has no API token and no certificate yet when it enrols, so ``/enrol`` and
``/enrol/ca`` take no bearer token: the one-time enrolment token in the body is the
credential, checked by :func:`vmcrypt.control.enrolment.enrol`. Both are still
:class:`AuditedRoute`\\ s, so every enrolment attempt is in the event log.

All three are in the OpenAPI document (tag ``enrolment``): hiding them would protect
nothing — a host must find them anyway — while documenting them lets automation
provision hosts and shows plainly that ``/enrol*`` declare no bearer security.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from vmcrypt.control.api.deps import AuditedRoute, CurrentUser, SessionDep, requires
from vmcrypt.control.enrolment import (
    DEFAULT_TTL,
    ca_fingerprint,
    create_enrolment_token,
    enrol,
)
from vmcrypt.control.exceptions import ControlError
from vmcrypt.control.privileges import CRYPTO_REGISTER_HOST
from vmcrypt.pki import CertificateAuthority

__all__ = ["router"]

router = APIRouter(tags=["enrolment"], route_class=AuditedRoute)


class EnrolmentTokenCreate(BaseModel):
    """A token for a registered host (``host_id``) or a new standalone one (``host_name``)."""

    host_id: int | None = None
    host_name: str | None = Field(default=None, min_length=1, max_length=255,
                                  pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    ttl_seconds: int = Field(default=int(DEFAULT_TTL.total_seconds()), gt=0,
                             le=7 * 24 * 3600)


class EnrolmentTokenIssued(BaseModel):
    """The token, shown once, and the CA fingerprint the host should pin."""

    id: int
    token: str
    expires_at: datetime
    ca_fingerprint: str


class EnrolRequest(BaseModel):
    """What a host sends: the token, its CSR (public key only) and how to reach it."""

    token: str = Field(min_length=1, max_length=256)
    csr: str = Field(min_length=1, max_length=16_384, description="PEM CSR")
    hardware_uuid: str = Field(min_length=1, max_length=36)
    address: str = Field(min_length=1, max_length=253, description="IP or DNS name (the SAN)")
    api_url: str = Field(min_length=1, max_length=255, pattern=r"^https://\S+$")


class EnrolResponse(BaseModel):
    """The host's certificate and the CA certificate to trust from now on."""

    host_id: int
    certificate: str
    ca_certificate: str


class CaPublic(BaseModel):
    """The control plane CA certificate, fetched once and checked against a pin."""

    ca_certificate: str
    ca_fingerprint: str


def _ca(request: Request) -> CertificateAuthority:
    ca: CertificateAuthority | None = getattr(request.app.state, "enrolment_ca", None)
    if ca is None:
        raise ControlError("this control plane has no CA configured: enrolment is off")
    return ca


@router.post("/enrolment-tokens", status_code=201,
             dependencies=[requires(CRYPTO_REGISTER_HOST)])
def create_token(body: EnrolmentTokenCreate, session: SessionDep, request: Request,
                 principal: CurrentUser) -> EnrolmentTokenIssued:
    """A one-time, expiring enrolment token (shown once)."""
    issued = create_enrolment_token(
        session, host_id=body.host_id, host_name=body.host_name,
        ttl=timedelta(seconds=body.ttl_seconds), created_by=principal.user_name,
    )
    return EnrolmentTokenIssued(id=issued.token_id, token=issued.token,
                                expires_at=issued.expires_at,
                                ca_fingerprint=ca_fingerprint(_ca(request)))


@router.get("/enrol/ca")
def get_ca(request: Request) -> CaPublic:
    """The CA certificate (public); a host checks its SHA-256 against the pin it was given."""
    ca = _ca(request)
    return CaPublic(ca_certificate=ca.certificate.public_bytes(Encoding.PEM).decode("ascii"),
                    ca_fingerprint=ca_fingerprint(ca))


@router.post("/enrol")
def enrol_host(body: EnrolRequest, session: SessionDep, request: Request) -> EnrolResponse:
    """Redeem an enrolment token: the CSR's key gets a certificate from the control plane CA."""
    done = enrol(session, ca=_ca(request), token=body.token, csr_pem=body.csr,
                 hardware_uuid=body.hardware_uuid, address=body.address, api_url=body.api_url)
    return EnrolResponse(host_id=done.host_id, certificate=done.certificate_pem,
                         ca_certificate=done.ca_certificate_pem)
