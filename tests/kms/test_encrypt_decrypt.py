"""Encrypt and Decrypt (KMIP 1.4, 4.29/4.30): a key used inside the server, never sent out.

- the OASIS case CS-BC-M-GCM-1-14 step by step as published;
- NIST CAVP vectors, read from ``cryptography-vectors`` at test time: AES-256-GCM
  (``gcmEncryptExtIV256.rsp``, ``gcmDecrypt256.rsp`` with its FAIL records) and the
  SP 800-38F key wraps (``KW_AE_256``/``KW_AD_256``, ``KWP_AE_256``/``KWP_AD_256``),
  each vector's key Registered and used through ``KmipClient.encrypt``/``decrypt``;
- the rules: state, usage mask, destroyed keys, modes without integrity, streaming,
  sizes; and that no plaintext reaches the server's database or its DEBUG log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.crypto.vectors import load_nist_rsp, unhex, vectors_path
from tests.kms.conftest import (
    V1_4,
    KmipConn,
    captured_logs,
    revoke_payload,
    tls_client,
    uid_of,
    uid_payload,
)
from vmcrypt.kmip.attributes import attribute
from vmcrypt.kmip.client import KmipClient
from vmcrypt.kmip.exceptions import ItemFailed
from vmcrypt.kmip.items import byte_string, children, enum, find, integer, structure, text
from vmcrypt.kmip.messages import ProtocolVersion, RequestBatchItem
from vmcrypt.kmip.tags import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    KeyFormatType,
    ObjectType,
    Operation,
    ResultReason,
    RevocationReasonCode,
    Tag,
)
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.server import KmsServer
from vmcrypt.pki.layout import PkiLayout

ENC_DEC = int(CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT)
ZERO_IV = bytes(12)
#: CS-BC-M-GCM-1-14's expected ciphertext and tag for 16 zero bytes under a zero AES-128
#: key and zero IV (also test case 2 of the GCM specification).
GCM1_DATA = bytes.fromhex("0388dace60b6a392f328c2b971b2fe78")
GCM1_TAG = bytes.fromhex("ab6e47d42cec13bdf53a67b21257bddf")


@pytest.fixture
def client(server: KmsServer, pki: PkiLayout) -> Iterator[KmipClient]:
    with KmipClient("127.0.0.1", server.address[1], ssl_context=tls_client(pki),
                    timeout=10, version=ProtocolVersion(1, 4)) as kmip:
        yield kmip


def _register_payload(key: bytes, *, mask: int = ENC_DEC, active: bool = True,
                      x_id: str | None = None) -> Item:
    """Register as CS-BC-M-GCM-1-14 does: Raw AES key, usage mask, Activation Date an hour
    ago (so the key is Active at once)."""
    attrs = [attribute("Cryptographic Usage Mask", mask)]
    if x_id is not None:
        attrs.append(attribute("x-ID", x_id))
    if active:
        attrs.append(attribute("Activation Date",
                               datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)))
    return structure(
        Tag.REQUEST_PAYLOAD, enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        structure(Tag.TEMPLATE_ATTRIBUTE, *(a.to_item() for a in attrs)),
        structure(Tag.SYMMETRIC_KEY, structure(
            Tag.KEY_BLOCK, enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
            structure(Tag.KEY_VALUE, byte_string(Tag.KEY_MATERIAL, key)),
            enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
            integer(Tag.CRYPTOGRAPHIC_LENGTH, len(key) * 8))))


def _cipher_payload(uid: str, data: bytes, *, tag_length: int | None = 16,
                    iv: bytes | None = ZERO_IV, tag: bytes | None = None,
                    mode: int = BlockCipherMode.GCM) -> Item:
    return structure(
        Tag.REQUEST_PAYLOAD, text(Tag.UNIQUE_IDENTIFIER, uid),
        structure(Tag.CRYPTOGRAPHIC_PARAMETERS, enum(Tag.BLOCK_CIPHER_MODE, mode),
                  integer(Tag.TAG_LENGTH, tag_length) if tag_length is not None else None),
        byte_string(Tag.DATA, data),
        byte_string(Tag.IV_COUNTER_NONCE, iv) if iv is not None else None,
        byte_string(Tag.AUTHENTICATED_ENCRYPTION_TAG, tag) if tag is not None else None)


def _bytes(payload: Item, tag: int) -> bytes | None:
    item = find(payload, tag)
    return None if item is None else bytes(item.value)  # type: ignore[arg-type]


def _register(client: KmipClient, key: bytes, *, mask: int = ENC_DEC,
              active: bool = True) -> str:
    (result,) = client.send([RequestBatchItem(Operation.REGISTER, _register_payload(
        key, mask=mask, active=active))])
    assert result.payload is not None, result
    return uid_of(result.payload)


# --- OASIS ---------------------------------------------------------------------------


def test_cs_bc_m_gcm_1_14(kmip: KmipConn) -> None:
    """CS-BC-M-GCM-1-14: AES-128-GCM inside the server, and what it refuses.

    1. Register (zero AES-128 key, Encrypt|Decrypt, x-ID, Activation Date an hour ago) →
       Success: the key is Active at once.
    2. Encrypt (GCM, Tag Length 16, 16 zero bytes, zero 12-byte IV) → Success with Data
       0388dace… and tag ab6e47d4…; no IV returned (the client gave one).
    3. Decrypt of that → the 16 zero bytes.
    4. Decrypt with the tag's first byte changed, the IV's, the data's → each Operation
       Failed, Cryptographic Failure.
    5. Decrypt with Tag Length 12 and the tag cut to 12 bytes → Success (GCM allows 96-bit
       tags).
    6. Encrypt with Tag Length 1, then 32 → Operation Failed. The reference capture shows
       General Failure; this server answers Invalid Field, the reason KMIP gives for a
       field value it cannot take.
    7. Revoke (Unspecified) → Success.  8. Destroy → Success.
    """
    uid = uid_of(kmip.ok(Operation.REGISTER, _register_payload(bytes(16),
                                                               x_id="CS-BC-M-GCM-1-14")))
    sealed = kmip.ok(Operation.ENCRYPT, _cipher_payload(uid, bytes(16)))
    assert uid_of(sealed) == uid
    assert _bytes(sealed, Tag.DATA) == GCM1_DATA
    assert _bytes(sealed, Tag.AUTHENTICATED_ENCRYPTION_TAG) == GCM1_TAG
    assert find(sealed, Tag.IV_COUNTER_NONCE) is None

    opened = kmip.ok(Operation.DECRYPT, _cipher_payload(uid, GCM1_DATA, tag=GCM1_TAG))
    assert uid_of(opened) == uid and _bytes(opened, Tag.DATA) == bytes(16)

    for data, iv, tag in ((GCM1_DATA, ZERO_IV, b"\x00" + GCM1_TAG[1:]),
                          (GCM1_DATA, b"\xff" + ZERO_IV[1:], GCM1_TAG),
                          (b"\xff" + GCM1_DATA[1:], ZERO_IV, GCM1_TAG)):
        failed = kmip.fails(Operation.DECRYPT, _cipher_payload(uid, data, iv=iv, tag=tag),
                            ResultReason.CRYPTOGRAPHIC_FAILURE)
        assert failed.message and GCM1_DATA.hex() not in failed.message

    short = kmip.ok(Operation.DECRYPT, _cipher_payload(uid, GCM1_DATA, tag_length=12,
                                                       tag=GCM1_TAG[:12]))
    assert _bytes(short, Tag.DATA) == bytes(16)
    for bad in (1, 32):
        kmip.fails(Operation.ENCRYPT, _cipher_payload(uid, bytes(16), tag_length=bad),
                   ResultReason.INVALID_FIELD)

    kmip.ok(Operation.REVOKE, revoke_payload(uid, RevocationReasonCode.UNSPECIFIED))
    assert uid_of(kmip.ok(Operation.DESTROY, uid_payload(uid))) == uid


# --- NIST vectors --------------------------------------------------------------------


def _sample(records: list[dict[str, str]], count: int) -> list[dict[str, str]]:
    """An even spread of ``count`` records (every IV, AAD and tag length group)."""
    usable = [r for r in records if len(r["iv"]) >= 16]  # IVs of 8 bytes or more
    step = max(1, len(usable) // count)
    return usable[::step][:count]


def test_nist_gcm_encrypt_vectors(client: KmipClient) -> None:
    records = _sample(load_nist_rsp(vectors_path(
        "ciphers", "AES", "GCM", "gcmEncryptExtIV256.rsp")), 120)
    assert len(records) >= 100
    for record in records:
        uid = _register(client, unhex(record["key"]))
        tag = unhex(record["tag"])
        sealed = client.encrypt(uid, unhex(record["pt"]), iv=unhex(record["iv"]),
                                aad=unhex(record["aad"]), tag_length=len(tag))
        assert (sealed.data, sealed.tag, sealed.iv) == (unhex(record["ct"]), tag, None), record


def test_nist_gcm_decrypt_vectors_including_failures(client: KmipClient) -> None:
    records = _sample(load_nist_rsp(vectors_path(
        "ciphers", "AES", "GCM", "gcmDecrypt256.rsp")), 120)
    failing = [r for r in records if "fail" in r]
    assert len(records) >= 100 and len(failing) >= 20
    for record in records:
        uid = _register(client, unhex(record["key"]))
        iv, aad, tag = unhex(record["iv"]), unhex(record["aad"]), unhex(record["tag"])
        if "fail" in record:
            with pytest.raises(ItemFailed) as failed:
                client.decrypt(uid, unhex(record["ct"]), iv=iv, aad=aad, tag=tag)
            assert failed.value.reason == ResultReason.CRYPTOGRAPHIC_FAILURE
        else:
            assert client.decrypt(uid, unhex(record["ct"]), iv=iv, aad=aad,
                                  tag=tag) == unhex(record["pt"])


@pytest.mark.parametrize(("mode", "name"), [
    (BlockCipherMode.NIST_KEY_WRAP, "KW"), (BlockCipherMode.AES_KEY_WRAP_PADDING, "KWP")])
def test_nist_key_wrap_vectors(client: KmipClient, mode: BlockCipherMode, name: str) -> None:
    wrap = load_nist_rsp(vectors_path("keywrap", "kwtestvectors", f"{name}_AE_256.txt"))[::12]
    unwrap = load_nist_rsp(vectors_path("keywrap", "kwtestvectors", f"{name}_AD_256.txt"))[::12]
    assert any("fail" in r for r in unwrap)
    for record in wrap:
        uid = _register(client, unhex(record["k"]))
        sealed = client.encrypt(uid, unhex(record["p"]), mode=mode)
        assert (sealed.data, sealed.iv, sealed.tag) == (unhex(record["c"]), None, None)
    for record in unwrap:
        uid = _register(client, unhex(record["k"]))
        if "fail" in record:
            with pytest.raises(ItemFailed) as failed:
                client.decrypt(uid, unhex(record["c"]), mode=mode)
            assert failed.value.reason == ResultReason.CRYPTOGRAPHIC_FAILURE
        else:
            assert client.decrypt(uid, unhex(record["c"]), mode=mode) == unhex(record["p"])


# --- rules ---------------------------------------------------------------------------


def test_server_chosen_iv_round_trip(client: KmipClient) -> None:
    uid = client.create_symmetric_key()
    client.activate(uid)
    first = client.encrypt(uid, b"a KEK to wrap", aad=b"host-1")
    second = client.encrypt(uid, b"a KEK to wrap", aad=b"host-1")
    assert first.iv is not None and len(first.iv) == 12 and first.iv != second.iv
    assert first.tag is not None and len(first.tag) == 16
    assert client.decrypt(uid, first.data, iv=first.iv, aad=b"host-1",
                          tag=first.tag) == b"a KEK to wrap"
    with pytest.raises(ItemFailed) as failed:
        client.decrypt(uid, first.data, iv=first.iv, aad=b"host-2", tag=first.tag)
    assert failed.value.reason == ResultReason.CRYPTOGRAPHIC_FAILURE


def test_state_and_usage_rules(client: KmipClient) -> None:
    pre_active = client.create_symmetric_key()
    with pytest.raises(ItemFailed, match="Active") as refused:
        client.encrypt(pre_active, b"x" * 16)
    assert refused.value.reason == ResultReason.PERMISSION_DENIED

    uid = client.create_symmetric_key()
    client.activate(uid)
    sealed = client.encrypt(uid, b"y" * 32, mode=BlockCipherMode.AES_KEY_WRAP_PADDING)
    client.revoke(uid)  # Deactivated: may still process (decrypt), not protect (encrypt)
    assert client.decrypt(uid, sealed.data, mode=BlockCipherMode.AES_KEY_WRAP_PADDING) == (
        b"y" * 32)
    with pytest.raises(ItemFailed) as refused:
        client.encrypt(uid, b"y" * 32, mode=BlockCipherMode.AES_KEY_WRAP_PADDING)
    assert refused.value.reason == ResultReason.PERMISSION_DENIED
    client.destroy(uid)
    with pytest.raises(ItemFailed) as refused:
        client.decrypt(uid, sealed.data, mode=BlockCipherMode.AES_KEY_WRAP_PADDING)
    assert refused.value.reason in (ResultReason.PERMISSION_DENIED, ResultReason.ITEM_NOT_FOUND)

    encrypt_only = _register(client, bytes(range(32)),
                             mask=int(CryptographicUsageMask.ENCRYPT))
    sealed = client.encrypt(encrypt_only, b"z" * 16)
    with pytest.raises(ItemFailed, match="Usage Mask") as refused:
        client.decrypt(encrypt_only, sealed.data, iv=sealed.iv, tag=sealed.tag)
    assert refused.value.reason == ResultReason.PERMISSION_DENIED

    with pytest.raises(ItemFailed) as missing:
        client.encrypt("no-such-key", b"z" * 16)
    assert missing.value.reason == ResultReason.ITEM_NOT_FOUND


@pytest.mark.parametrize(("payload_fn", "reason"), [
    (lambda uid: _cipher_payload(uid, b"q" * 16, mode=BlockCipherMode.CBC),
     ResultReason.FEATURE_NOT_SUPPORTED),
    (lambda uid: structure(Tag.REQUEST_PAYLOAD, text(Tag.UNIQUE_IDENTIFIER, uid),
                           byte_string(Tag.DATA, b"q" * 16)),
     ResultReason.MISSING_DATA),
    (lambda uid: _cipher_payload(uid, b"q" * 17, iv=None, tag_length=None,
                                 mode=BlockCipherMode.NIST_KEY_WRAP),
     ResultReason.INVALID_FIELD),
    (lambda uid: _cipher_payload(uid, b"q" * 16, iv=b"short"), ResultReason.INVALID_FIELD),
    (lambda uid: _cipher_payload(uid, b"q" * 16, tag=b"t" * 16), ResultReason.INVALID_FIELD),
    (lambda uid: structure(Tag.REQUEST_PAYLOAD, *children(_cipher_payload(uid, b"q" * 16)),
                           byte_string(Tag.CORRELATION_VALUE, b"c")),
     ResultReason.FEATURE_NOT_SUPPORTED),
])
def test_refused_requests_say_why(kmip: KmipConn, payload_fn: object,
                                  reason: ResultReason) -> None:
    uid = uid_of(kmip.ok(Operation.REGISTER, _register_payload(bytes(32))))
    assert callable(payload_fn)
    failed = kmip.fails(Operation.ENCRYPT, payload_fn(uid), reason)
    assert failed.message


def test_plaintext_never_at_rest_nor_logged(client: KmipClient, server: KmsServer,
                                            data_dir: Path) -> None:
    secret = bytes.fromhex("5e" * 8) + b"-a plaintext KEK-" + bytes(range(15))
    with captured_logs() as lines:
        logging.getLogger("vmcrypt.kms").setLevel(logging.DEBUG)
        uid = client.create_symmetric_key()
        client.activate(uid)
        sealed = client.encrypt(uid, secret, mode=BlockCipherMode.AES_KEY_WRAP_PADDING)
        assert client.decrypt(uid, sealed.data,
                              mode=BlockCipherMode.AES_KEY_WRAP_PADDING) == secret
    needles = (secret, secret.hex().encode(), secret.hex().encode().upper())
    joined = "\n".join(lines)
    assert lines and not any(n.decode("latin-1") in joined for n in needles)
    for path in data_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(n in blob for n in needles), path


def test_query_lists_encrypt_and_decrypt(client: KmipClient) -> None:
    operations = client.query().operations
    assert Operation.ENCRYPT in operations and Operation.DECRYPT in operations


def test_encrypt_in_a_kmip_1_4_batch_with_id_placeholder(kmip: KmipConn) -> None:
    """Register then Encrypt without a Unique Identifier: the ID Placeholder names the key."""
    payload = _cipher_payload("unused", bytes(16))
    without_uid = structure(Tag.REQUEST_PAYLOAD, *(
        i for i in children(payload) if i.tag != Tag.UNIQUE_IDENTIFIER))
    response = kmip.batch([
        RequestBatchItem(Operation.REGISTER, _register_payload(bytes(16)), b"\x01"),
        RequestBatchItem(Operation.ENCRYPT, without_uid, b"\x02")], version=V1_4)
    sealed = response.items[1].payload
    assert sealed is not None and _bytes(sealed, Tag.DATA) == GCM1_DATA


def test_pykmip_client_encrypts_and_decrypts(pykmip: Any) -> None:
    """PyKMIP's ``ProxyKmipClient``, an independent client, wraps and unwraps a KEK with a
    key that stays in the server (NIST Key Wrap; PyKMIP 0.11 sends no GCM tag fields)."""
    from kmip.core.enums import KMIPVersion

    from kmip import enums as pykmip_enums

    proxy = pykmip(KMIPVersion.KMIP_1_2)
    uid = proxy.create(pykmip_enums.CryptographicAlgorithm.AES, 256)
    proxy.activate(uid)
    kek = bytes(range(32))
    params = {"block_cipher_mode": pykmip_enums.BlockCipherMode.NIST_KEY_WRAP}
    wrapped, iv = proxy.encrypt(kek, uid=uid, cryptographic_parameters=params)
    assert iv is None and len(wrapped) == 40 and kek not in wrapped
    assert proxy.decrypt(wrapped, uid=uid, cryptographic_parameters=params) == kek
