"""Request and response bodies of the Trust Authority API (Pydantic, validated first).

Binary values travel as standard base64 (``kek``, ``kek_ciphertext``); evidence parts as
base64url, as JWS does. Unknown fields are refused so a typo is an error, not ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BaselineIn",
    "BaselineOut",
    "EvidenceIn",
    "HostIn",
    "HostOut",
    "KekOut",
    "KmsServerIn",
    "NonceOut",
    "ProviderIn",
    "ProviderOut",
    "TokenOut",
    "UnwrapIn",
    "UnwrapOut",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NonceOut(_Strict):
    nonce: str
    expires_at: float


class EvidenceIn(_Strict):
    statement: str = Field(min_length=1, max_length=32_768)
    signature: str = Field(min_length=1, max_length=512)


class TokenOut(_Strict):
    token: str
    token_type: str = "Bearer"  # noqa: S105 - the scheme name, not a secret
    expires_at: float
    host: str
    hardware_uuid: str
    baseline: str


class BaselineIn(_Strict):
    name: str
    measurements: dict[str, str]


class BaselineOut(_Strict):
    name: str
    measurements: dict[str, str]
    created_at: float


class HostIn(_Strict):
    name: str
    hardware_uuid: str = Field(min_length=1, max_length=128)
    public_key_pem: str = Field(min_length=1, max_length=4096)


class HostOut(_Strict):
    name: str
    hardware_uuid: str
    public_key_pem: str
    registered_at: float
    #: The latest attestation event of this host (type, time, reason), if any.
    last_attestation: dict[str, Any] | None = None


class KmsServerIn(_Strict):
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=5696, ge=1, le=65535)
    ca_file: str = Field(min_length=1)
    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)
    server_hostname: str | None = None


class ProviderIn(_Strict):
    name: str
    servers: list[KmsServerIn] = Field(min_length=1, max_length=16)


class ProviderOut(_Strict):
    name: str
    key_id: str
    servers: list[str]
    created_at: float


class KekOut(_Strict):
    provider: str
    key_id: str
    kek: str
    kek_ciphertext: str


class UnwrapIn(_Strict):
    kek_ciphertext: str = Field(min_length=1, max_length=1024)


class UnwrapOut(_Strict):
    provider: str
    key_id: str
    kek: str
