"""``/api/v1/attestation`` and ``/api/v1/trusted-providers``: the host's Trust Authority.

The control plane asks a host whether a trusted key provider is reachable *from that
host* before creating a VM there (seeds: "checks if the default trusted key provider is
accessible to the ESXi host where the encrypted VM is to be created"): only the host
can answer, since only an attested host gets keys. Answers carry the attestation
outcome and the provider's public description — never a token or a key.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import APIRouter

from vmcrypt.exceptions import VmcryptError
from vmcrypt.host.api.schemas import AttestationPublic, TrustedProviderPublic
from vmcrypt.host.api.state import HostState, StateDep
from vmcrypt.host.trust import AttestationStatus, TrustedProviderUnavailable, TrustLink

__all__ = ["attestation_public", "router"]

log = logging.getLogger("vmcrypt.host.api")
router = APIRouter(tags=["trust"])


def attestation_public(state: HostState) -> AttestationPublic:
    """The host's attestation status (``unset`` without a Trust Authority)."""
    status = state.trust.status() if state.trust is not None else AttestationStatus("unset")
    return AttestationPublic(**status.to_dict())


def _link(state: HostState, provider_id: str = "") -> TrustLink:
    if state.trust is None:
        raise TrustedProviderUnavailable(
            provider_id or "-", "this host has no Trust Authority configured (start it with "
            "--trust-url, --trust-ca, --trust-cert, --trust-key and --trust-identity)")
    return state.trust


@router.get("/attestation")
def get_attestation(state: StateDep) -> AttestationPublic:
    """The last attestation's outcome: attested (baseline, expiry), failed (reason), unset."""
    return attestation_public(state)


@router.post("/attestation")
def attest(state: StateDep) -> AttestationPublic:
    """Attest now, e.g. after the host's software was restored; the outcome either way."""
    link = _link(state)
    with contextlib.suppress(VmcryptError):  # the status records why: it is the answer
        link.attest()
    return attestation_public(state)


@router.get("/trusted-providers/{provider_id}")
def trusted_provider(provider_id: str, state: StateDep) -> TrustedProviderPublic:
    """Whether this host can use a trusted provider now: attested, and it is published.

    409 ``host_not_attested`` (with the reason) or 503 ``trusted_provider_unavailable``
    when it cannot.
    """
    described = _link(state, provider_id).provider(provider_id)
    log.info("trusted key provider %s reachable", provider_id)
    return TrustedProviderPublic(provider_id=provider_id, reachable=True,
                                 key_id=described.get("key_id"),
                                 attestation=attestation_public(state))
