"""Trusted key providers: KEKs wrapped by a primary key that never leaves the key server.

Creating a provider creates its primary key in a KMIP server (Create AES-256 with usage
mask Encrypt|Decrypt, then Activate); the Trust Authority keeps only its ID and never
asks for the key itself (no KMIP Get, ever). A KEK is 32 bytes from the OS CSPRNG,
encrypted *inside* the key server by KMIP Encrypt (KMIP 1.4, 4.29) in AES-256-GCM with
a server-chosen 96-bit IV and a 128-bit tag, and decrypted by KMIP Decrypt (4.30).

The additional authenticated data binds the ciphertext to its provider and purpose::

    AAD = b"vmcrypt-trust/kek\\x00" || version || b"\\x00" || provider name (UTF-8)

so a ciphertext made for provider A does not open as provider B's, even if both share
one primary key, and a ciphertext of some other use of the same key does not open as a
KEK. The opaque ciphertext handed to hosts (and stored by them in the keySafe) is::

    version (1 byte, 0x01) || IV (12) || tag (16) || encrypted KEK (32)

Every failure to authenticate — wrong length, wrong version, altered bytes, another
provider's — is one :class:`KekCiphertextInvalid`. No key server answering is
:class:`KeyProviderUnavailable`. Neither message carries key or ciphertext bytes.

Key servers of a provider are tried in order, starting with the last one that answered
(failover between nodes sharing their keys, as for the standard provider).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from vmcrypt.crypto.keys import KEK_SIZE, generate_kek
from vmcrypt.kmip.client import DEFAULT_USAGE_MASK, Encrypted, KmipClient
from vmcrypt.kmip.exceptions import KmipConnectionError, KmipError, OperationFailed
from vmcrypt.kmip.messages import ProtocolVersion
from vmcrypt.kmip.tags import BlockCipherMode, ResultReason
from vmcrypt.pki.exceptions import PkiError
from vmcrypt.pki.tls import client_context
from vmcrypt.trust.config import KmsServer
from vmcrypt.trust.exceptions import KekCiphertextInvalid, KeyProviderUnavailable

__all__ = [
    "CIPHERTEXT_VERSION",
    "KMIP_VERSION",
    "ProviderPool",
    "WrappedKek",
    "kek_aad",
]

CIPHERTEXT_VERSION = 1
#: GCM's Additional Data and tag are KMIP 1.4 fields.
KMIP_VERSION = ProtocolVersion(1, 4)
_IV_SIZE = 12
_TAG_SIZE = 16
_CIPHERTEXT_SIZE = 1 + _IV_SIZE + _TAG_SIZE + KEK_SIZE
_INVALID = ("the KEK ciphertext does not open under this key provider: it is damaged or "
            "belongs to another provider")
T = TypeVar("T")


def kek_aad(provider: str, version: int = CIPHERTEXT_VERSION) -> bytes:
    """The GCM additional data binding a KEK ciphertext to ``provider``."""
    return b"vmcrypt-trust/kek\x00" + bytes([version]) + b"\x00" + provider.encode("utf-8")


@dataclass(frozen=True)
class WrappedKek:
    """A new KEK: the plaintext (for the host only) and its opaque ciphertext."""

    kek: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    key_id: str


def _pack(iv: bytes, tag: bytes, data: bytes) -> bytes:
    if len(iv) != _IV_SIZE or len(tag) != _TAG_SIZE or len(data) != KEK_SIZE:
        raise KmipError("the key server answered Encrypt with an unexpected IV, tag or length")
    return bytes([CIPHERTEXT_VERSION]) + iv + tag + data


def _unpack(ciphertext: bytes) -> tuple[bytes, bytes, bytes]:
    if len(ciphertext) != _CIPHERTEXT_SIZE or ciphertext[0] != CIPHERTEXT_VERSION:
        raise KekCiphertextInvalid(_INVALID)
    iv = ciphertext[1:1 + _IV_SIZE]
    tag = ciphertext[1 + _IV_SIZE:1 + _IV_SIZE + _TAG_SIZE]
    return iv, tag, ciphertext[1 + _IV_SIZE + _TAG_SIZE:]


class _Servers:
    """One provider's key servers, one reused client each, tried with failover."""

    def __init__(self, name: str, servers: Sequence[KmsServer], timeout: float) -> None:
        self.name = name
        self.servers = tuple(servers)
        self._timeout = timeout
        self._clients: dict[int, KmipClient] = {}
        self._preferred = 0

    def _client(self, index: int) -> KmipClient:
        client = self._clients.get(index)
        if client is None:
            server = self.servers[index]
            context = client_context(ca_file=Path(server.ca_file),
                                     cert_file=Path(server.cert_file),
                                     key_file=Path(server.key_file))
            client = KmipClient(server.host, server.port, ssl_context=context,
                                timeout=self._timeout, version=KMIP_VERSION,
                                server_hostname=server.server_hostname)
            self._clients[index] = client
        return client

    def run(self, what: str, call: Callable[[KmipClient], T]) -> T:
        """``call(client)`` on the first server that answers, else unavailable."""
        errors: list[str] = []
        count = len(self.servers)
        for step in range(count):
            index = (self._preferred + step) % count
            server = self.servers[index]
            try:
                result = call(self._client(index))
            except KmipConnectionError as exc:
                errors.append(f"{server.address}: {exc}")
                continue
            except PkiError as exc:
                errors.append(f"{server.address}: client certificate: {exc}")
                continue
            self._preferred = index
            return result
        raise KeyProviderUnavailable(self.name, f"{what}: no key server answered ("
                                     + "; ".join(errors) + ")")

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


class ProviderPool:
    """KMIP access for every trusted provider: create primary keys, wrap, unwrap KEKs.

    Stateless apart from reused connections: the caller passes each provider's name,
    primary key ID and servers from the configuration on every call.
    """

    def __init__(self, *, timeout: float = 5.0) -> None:
        self._timeout = timeout
        self._pools: dict[tuple[str, tuple[KmsServer, ...]], _Servers] = {}
        self._locks: dict[tuple[str, tuple[KmsServer, ...]], threading.Lock] = {}
        self._lock = threading.Lock()

    def _run(self, name: str, servers: Sequence[KmsServer], what: str,
             call: Callable[[KmipClient], T], *, decrypting: bool = False) -> T:
        key = (name, tuple(servers))
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = _Servers(name, servers, self._timeout)
                self._locks[key] = threading.Lock()
            lock = self._locks[key]
        with lock:
            try:
                return pool.run(what, call)
            except OperationFailed as exc:
                if decrypting and exc.reason == ResultReason.CRYPTOGRAPHIC_FAILURE:
                    raise KekCiphertextInvalid(_INVALID) from None
                raise KeyProviderUnavailable(
                    name, f"{what}: the key server refused: {exc.result_message or exc}"
                ) from None
            except KmipError as exc:
                raise KeyProviderUnavailable(name, f"{what}: {exc}") from None

    def create_primary_key(self, name: str, servers: Sequence[KmsServer]) -> str:
        """Create and activate provider ``name``'s primary key; return its ID."""
        def create(client: KmipClient) -> str:
            uid = client.create_symmetric_key(length=256, usage_mask=int(DEFAULT_USAGE_MASK),
                                              name=f"vmcrypt-trust/{name}")
            client.activate(uid)
            return uid
        return self._run(name, servers, "creating the primary key", create)

    def new_kek(self, name: str, key_id: str, servers: Sequence[KmsServer]) -> WrappedKek:
        """A fresh KEK and its ciphertext under provider ``name``'s primary key."""
        kek = generate_kek()

        def encrypt(client: KmipClient) -> Encrypted:
            return client.encrypt(key_id, kek, mode=BlockCipherMode.GCM, aad=kek_aad(name),
                                  tag_length=_TAG_SIZE)
        result = self._run(name, servers, "wrapping a KEK", encrypt)
        if result.iv is None or result.tag is None:
            raise KeyProviderUnavailable(name, "wrapping a KEK: the key server returned no "
                                         "IV or tag for GCM")
        return WrappedKek(kek=kek, ciphertext=_pack(result.iv, result.tag, result.data),
                          key_id=key_id)

    def unwrap(self, name: str, key_id: str, servers: Sequence[KmsServer],
               ciphertext: bytes) -> bytes:
        """The KEK inside ``ciphertext``, decrypted by the key server."""
        iv, tag, data = _unpack(ciphertext)
        aad = kek_aad(name, ciphertext[0])

        def decrypt(client: KmipClient) -> bytes:
            return client.decrypt(key_id, data, mode=BlockCipherMode.GCM, iv=iv, aad=aad,
                                  tag=tag)
        kek = self._run(name, servers, "unwrapping a KEK", decrypt, decrypting=True)
        if len(kek) != KEK_SIZE:
            raise KekCiphertextInvalid(_INVALID)
        return kek

    def close(self) -> None:
        """Close every key server connection."""
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()
            self._locks.clear()
