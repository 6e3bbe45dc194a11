"""PyKMIP's ``ProxyKmipClient`` as an independent KMIP client, over TLS, KMIP 1.0 to 1.4.

PyKMIP cannot build ``x-`` custom attributes (its attribute factory knows only the
standard ones), so custom attributes are tested with the raw helpers in the other files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from kmip.core import enums
from kmip.core.factories import attributes as attribute_factory
from kmip.pie import exceptions as pie_exceptions
from kmip.pie import objects

from vmcrypt.kmip.messages import ProtocolVersion, parse_request
from vmcrypt.kmip.ttlv import decode
from vmcrypt.kms.server import KmsServer

VERSIONS = [
    enums.KMIPVersion.KMIP_1_0, enums.KMIPVersion.KMIP_1_1, enums.KMIPVersion.KMIP_1_2,
    enums.KMIPVersion.KMIP_1_3, enums.KMIPVersion.KMIP_1_4,
]
MASK = [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]


def _values(attributes: list[Any]) -> dict[str, Any]:
    return {a.attribute_name.value: a.attribute_value for a in attributes}


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_pykmip_full_life_cycle(pykmip: Callable[..., Any], version: Any, server: KmsServer,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen: set[ProtocolVersion] = set()
    handle = server.dispatcher.handle

    def recording(data: bytes, **kwargs: Any) -> bytes:
        seen.add(parse_request(decode(data)).version)
        return handle(data, **kwargs)

    monkeypatch.setattr(server.dispatcher, "handle", recording)
    client = pykmip(version)
    name = f"pykmip-{version.name}"
    uid = client.create(enums.CryptographicAlgorithm.AES, 256, name=name,
                        cryptographic_usage_mask=MASK)
    assert isinstance(uid, str) and uid

    key = client.get(uid)
    assert isinstance(key, objects.SymmetricKey)
    assert key.cryptographic_algorithm == enums.CryptographicAlgorithm.AES
    assert key.cryptographic_length == 256 and len(key.value) == 32

    raw = os.urandom(16)
    registered = client.register(objects.SymmetricKey(
        enums.CryptographicAlgorithm.AES, 128, raw, masks=MASK, name=f"{name}-registered"))
    assert client.get(registered).value == raw

    got_uid, attrs = client.get_attributes(uid, ["State", "Cryptographic Length", "Name"])
    assert got_uid == uid
    values = _values(attrs)
    assert values["State"].value == enums.State.PRE_ACTIVE
    assert values["Cryptographic Length"].value == 256
    assert values["Name"].name_value.value == name

    names = client.get_attribute_list(uid)
    assert {"Name", "State", "Cryptographic Algorithm", "Unique Identifier"} <= set(names)

    factory = attribute_factory.AttributeFactory()
    by_name = factory.create_attribute(enums.AttributeType.NAME, name)
    assert client.locate(attributes=[by_name]) == [uid]

    client.activate(uid)
    _, attrs = client.get_attributes(uid, ["State"])
    assert _values(attrs)["State"].value == enums.State.ACTIVE
    with pytest.raises(pie_exceptions.KmipOperationFailure):
        client.destroy(uid)  # Active keys are revoked first (KMIP 1.4, 4.21)
    client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
    _, attrs = client.get_attributes(uid, ["State"])
    assert _values(attrs)["State"].value == enums.State.DEACTIVATED
    client.destroy(uid)
    client.destroy(registered)
    with pytest.raises(pie_exceptions.KmipOperationFailure) as failure:
        client.get(uid)
    assert failure.value.reason == enums.ResultReason.ITEM_NOT_FOUND
    _, attrs = client.get_attributes(uid, ["State"])
    assert _values(attrs)["State"].value == enums.State.DESTROYED
    major, minor = (int(n) for n in version.name.split("_")[1:])
    assert seen == {ProtocolVersion(major, minor)}  # PyKMIP really spoke that version


def test_pykmip_sees_keys_made_by_the_raw_client(pykmip: Callable[..., Any],
                                                  kmip: Any) -> None:
    """Both clients share the server's objects (any certificate of the CA may use any key)."""
    uid = kmip.create()
    raw = kmip.key_bytes(uid)
    assert pykmip(enums.KMIPVersion.KMIP_1_2).get(uid).value == raw


def test_pykmip_locate_with_maximum_items(pykmip: Callable[..., Any]) -> None:
    client = pykmip(enums.KMIPVersion.KMIP_1_4)
    factory = attribute_factory.AttributeFactory()
    made = [client.create(enums.CryptographicAlgorithm.AES, 128, name="many")
            for _ in range(3)]
    name = factory.create_attribute(enums.AttributeType.NAME, "many")
    assert client.locate(attributes=[name]) == made
    assert client.locate(attributes=[name], maximum_items=2) == made[:2]
    assert client.locate(attributes=[name], offset_items=1) == made[1:]
