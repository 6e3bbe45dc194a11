"""Trusted providers against in-process key servers: wrap, unwrap, failover, recovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmcrypt.kmip.client import KmipClient
from vmcrypt.kms.server import KmsConfig, KmsServer
from vmcrypt.pki.layout import PkiLayout
from vmcrypt.pki.tls import client_context
from vmcrypt.trust.config import KmsServer as KmsServerEntry
from vmcrypt.trust.exceptions import KekCiphertextInvalid, KeyProviderUnavailable
from vmcrypt.trust.providers import ProviderPool, kek_aad


def _node(pki: PkiLayout, database: Path, master: bytes, port: int = 0) -> KmsServer:
    server = KmsServer(KmsConfig(database=database, cert_file=pki.server.cert,
                                 key_file=pki.server.key, ca_file=pki.ca.cert, port=port),
                       master_key=master)
    server.start()
    return server


def _entry(pki: PkiLayout, port: int) -> KmsServerEntry:
    trust = pki.clients["trust"]
    return KmsServerEntry(host="127.0.0.1", port=port, ca_file=str(pki.ca.cert),
                          cert_file=str(trust.cert), key_file=str(trust.key))


def test_failover_and_recovery(kms_pki: PkiLayout, tmp_path: Path) -> None:
    master, database = os.urandom(32), tmp_path / "shared.db"
    first, second = _node(kms_pki, database, master), _node(kms_pki, database, master)
    ports = [first.address[1], second.address[1]]
    servers = [_entry(kms_pki, port) for port in ports]
    pool = ProviderPool(timeout=2)
    try:
        key_id = pool.create_primary_key("tp", servers)
        wrapped = pool.new_kek("tp", key_id, servers)
        first.shutdown()
        assert pool.unwrap("tp", key_id, servers, wrapped.ciphertext) == wrapped.kek
        second.shutdown()
        with pytest.raises(KeyProviderUnavailable, match="no key server answered") as caught:
            pool.new_kek("tp", key_id, servers)
        assert str(ports[0]) in str(caught.value) and str(ports[1]) in str(caught.value)
        back = _node(kms_pki, database, master, port=ports[0])
        try:
            assert pool.unwrap("tp", key_id, servers, wrapped.ciphertext) == wrapped.kek
        finally:
            back.shutdown()
    finally:
        pool.close()


def test_primary_key_is_active_encrypt_decrypt_and_aad_binds(kms: KmsServer,
                                                             kms_entry: KmsServerEntry,
                                                             kms_pki: PkiLayout) -> None:
    pool = ProviderPool(timeout=2)
    try:
        key_id = pool.create_primary_key("tp", [kms_entry])
        wrapped = pool.new_kek("tp", key_id, [kms_entry])
        assert wrapped.kek.hex() not in repr(wrapped) and str(wrapped.kek) not in repr(wrapped)
        admin = kms_pki.clients["admin"]
        context = client_context(ca_file=kms_pki.ca.cert, cert_file=admin.cert,
                                 key_file=admin.key)
        with KmipClient("127.0.0.1", kms.address[1], ssl_context=context) as client:
            names = {a.name: a.value.value for a in client.get_attributes(key_id)}
            assert names["State"] == 2  # Active
            assert names["Cryptographic Usage Mask"] == 12  # Encrypt | Decrypt
        # The same bytes under another provider's name do not open.
        with pytest.raises(KekCiphertextInvalid):
            pool.unwrap("other", key_id, [kms_entry], wrapped.ciphertext)
        assert kek_aad("tp") != kek_aad("other")
        # A revoked primary key: new KEKs are refused (503 upstream), old ones still open.
        with KmipClient("127.0.0.1", kms.address[1], ssl_context=context) as client:
            client.revoke(key_id)
        with pytest.raises(KeyProviderUnavailable, match="refused"):
            pool.new_kek("tp", key_id, [kms_entry])
        assert pool.unwrap("tp", key_id, [kms_entry], wrapped.ciphertext) == wrapped.kek
    finally:
        pool.close()
