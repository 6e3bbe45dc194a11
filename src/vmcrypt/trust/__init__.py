"""The Trust Authority: an Attestation Service and a Key Provider Service.

Hosts prove what they run (:mod:`~vmcrypt.trust.measure` on the host,
:mod:`~vmcrypt.trust.attestation` in the service) and get short-lived ES256 tokens;
with a token they get KEKs from trusted key providers, wrapped inside a KMIP key server
by the provider's primary key (:mod:`~vmcrypt.trust.providers`). The configuration
(:mod:`~vmcrypt.trust.config`) and the event log (:mod:`~vmcrypt.trust.events`) are
the only state; :mod:`~vmcrypt.trust.api` and :mod:`~vmcrypt.trust.server` serve it
over mutual TLS. See ``docs/trust.md``.
"""
