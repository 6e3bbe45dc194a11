"""Persistence across restarts, the master key's rules, and a scan for leaked key material.

The store seals key material under the master key before SQLite sees it, so neither the
database files (main file, WAL, shared memory) nor the server's log lines may contain
any key — raw, hex or base64 — and a server started with another master key must refuse
to open the database instead of failing on the first Get.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from tests.kms.conftest import (
    MASTER_KEY,
    KmipConn,
    captured_logs,
    make_config,
    name_attr,
    open_tls,
    tls_client,
    uid_of,
    uid_payload,
)
from vmcrypt.kmip.attributes import Attribute, attribute
from vmcrypt.kmip.items import byte_string, enum, get_enum, integer, structure
from vmcrypt.kmip.tags import (
    CryptographicAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    RevocationReasonCode,
    State,
    Tag,
)
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.errors import MasterKeyError
from vmcrypt.kms.master_key import ENV_VAR
from vmcrypt.kms.server import KmsServer
from vmcrypt.pki.layout import PkiLayout


@pytest.fixture(autouse=True)
def _no_master_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def _start(pki: PkiLayout, data: Path, **kwargs: object) -> KmsServer:
    server = KmsServer(make_config(pki, data), **kwargs)  # type: ignore[arg-type]
    server.start()
    return server


def _conn(server: KmsServer, pki: PkiLayout) -> KmipConn:
    return KmipConn(open_tls(server.address, tls_client(pki)))


def _register_payload(material: bytes, *attributes: Attribute) -> Item:
    block = structure(
        Tag.KEY_BLOCK,
        enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
        structure(Tag.KEY_VALUE, byte_string(Tag.KEY_MATERIAL, material)),
        enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
        integer(Tag.CRYPTOGRAPHIC_LENGTH, len(material) * 8),
    )
    return structure(
        Tag.REQUEST_PAYLOAD,
        enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        structure(Tag.TEMPLATE_ATTRIBUTE, *(a.to_item() for a in attributes)),
        structure(Tag.SYMMETRIC_KEY, block),
    )


def test_a_restart_keeps_every_key_attribute_and_state(pki: PkiLayout, data_dir: Path) -> None:
    server = _start(pki, data_dir)
    kmip = _conn(server, pki)
    uids = {
        "pre-active": kmip.create(name_attr("p"), attribute("x-Vendor", "VMware, Inc.")),
        "active": kmip.create(name_attr("a")),
        "deactivated": kmip.create(name_attr("d")),
        "compromised": kmip.create(),
        "destroyed": kmip.create(),
    }
    kmip.activate(uids["active"])
    kmip.activate(uids["deactivated"])
    kmip.revoke(uids["deactivated"])
    kmip.revoke(uids["compromised"], RevocationReasonCode.KEY_COMPROMISE)
    kmip.destroy(uids["destroyed"])
    registered = os.urandom(24)
    payload = kmip.ok(Operation.REGISTER, _register_payload(registered, name_attr("r")))
    uids["registered"] = uid_of(payload)
    before = {k: kmip.get_attributes(uid) for k, uid in uids.items()}
    keys = {k: kmip.key_bytes(uid) for k, uid in uids.items() if k != "destroyed"}
    assert keys["registered"] == registered
    located = kmip.locate(attribute("State", State.ACTIVE))
    kmip.close()
    server.shutdown()

    again = _start(pki, data_dir)
    try:
        kmip = _conn(again, pki)
        assert {k: kmip.get_attributes(uid) for k, uid in uids.items()} == before
        assert {k: kmip.key_bytes(uid) for k, uid in uids.items() if k != "destroyed"} == keys
        assert kmip.locate(attribute("State", State.ACTIVE)) == located
        assert kmip.locate(attribute("x-Vendor", "VMware, Inc.")) == [uids["pre-active"]]
        assert before["destroyed"]["State"] == [State.DESTROYED]
        kmip.fails(Operation.GET, uid_payload(uids["destroyed"]))
        # New keys continue after the old ones (Locate order is creation order).
        new = kmip.create()
        assert kmip.locate()[-1] == new
        kmip.close()
    finally:
        again.shutdown()


def test_another_master_key_is_refused_at_start(pki: PkiLayout, data_dir: Path) -> None:
    _start(pki, data_dir, master_key=MASTER_KEY).shutdown()
    with pytest.raises(MasterKeyError, match="does not open"):
        KmsServer(make_config(pki, data_dir), master_key=bytes(32))


def test_the_master_key_file_is_created_0600_and_a_readable_one_refused(
        pki: PkiLayout, data_dir: Path) -> None:
    server = _start(pki, data_dir)
    server.shutdown()
    key_file = data_dir / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    _start(pki, data_dir).shutdown()  # the same file opens the same store
    key_file.chmod(0o644)
    with pytest.raises(MasterKeyError, match=r"chmod 600"):
        KmsServer(make_config(pki, data_dir))


def test_the_environment_master_key_takes_precedence(
        pki: PkiLayout, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _start(pki, data_dir).shutdown()  # store sealed under the key in master.key
    file_key = bytes.fromhex((data_dir / "master.key").read_text())
    monkeypatch.setenv(ENV_VAR, os.urandom(32).hex())
    with pytest.raises(MasterKeyError, match="does not open"):
        KmsServer(make_config(pki, data_dir))
    monkeypatch.setenv(ENV_VAR, base64.b64encode(file_key).decode())
    _start(pki, data_dir).shutdown()
    monkeypatch.setenv(ENV_VAR, "not a key")
    with pytest.raises(MasterKeyError, match=ENV_VAR):
        KmsServer(make_config(pki, data_dir))


def test_an_environment_key_creates_no_key_file(
        pki: PkiLayout, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, os.urandom(32).hex())
    _start(pki, data_dir).shutdown()
    assert not (data_dir / "master.key").exists()


def _forms(key: bytes) -> list[bytes]:
    return [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key),
            base64.urlsafe_b64encode(key), base64.b64encode(key).rstrip(b"=")]


def _scan(blobs: dict[str, bytes], keys: list[bytes]) -> list[str]:
    return [f"{where}: key #{n}" for n, key in enumerate(keys) for form in _forms(key)
            for where, blob in blobs.items() if form in blob]


def _db_files(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in data.glob("kms.db*")}


def test_no_key_leaks_into_the_database_or_the_log(pki: PkiLayout, data_dir: Path) -> None:
    with captured_logs("vmcrypt") as lines:
        server = _start(pki, data_dir, master_key=MASTER_KEY)
        kmip = _conn(server, pki)
        keys: list[bytes] = []
        for n in range(40):
            uid = kmip.create(name_attr(f"leak-{n}"), length=(128, 192, 256)[n % 3])
            keys.append(kmip.key_bytes(uid))
            if n % 4 == 0:
                kmip.activate(uid)
        for n in range(10):
            material = os.urandom(32)
            kmip.ok(Operation.REGISTER, _register_payload(material, name_attr(f"reg-{n}")))
            keys.append(material)
        # Failures log too: a Register whose length disagrees with its key.
        bad = os.urandom(32)
        block_payload = _register_payload(bad, attribute("Cryptographic Length", 128))
        kmip.fails(Operation.REGISTER, block_payload)
        keys.append(bad)
        transparent = uid_payload(
            uid, enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY))
        got = kmip.ok(Operation.GET, transparent)
        assert get_enum(got, Tag.OBJECT_TYPE) == ObjectType.SYMMETRIC_KEY
        assert len(set(keys)) == len(keys)
        files_running = _db_files(data_dir)
        assert "kms.db-wal" in files_running
        kmip.close()
        server.shutdown()
    files_stopped = _db_files(data_dir)
    log = "\n".join(lines).encode()
    assert any(b"Create" in line.encode() for line in lines), "the audit log was not captured"
    assert _scan({f"running {k}": v for k, v in files_running.items()}, keys) == []
    assert _scan({f"stopped {k}": v for k, v in files_stopped.items()}, keys) == []
    assert _scan({"log": log}, keys) == []
    # The master key is not in the database or the log either.
    assert _scan({**files_stopped, "log": log}, [MASTER_KEY]) == []


def test_locate_uses_the_value_index_for_searchable_attributes(tmp_path: Path) -> None:
    """Names and custom attributes are found through the index, not by scanning."""
    from vmcrypt.kmip.attributes import attribute, name_value
    from vmcrypt.kms.store import Store

    store = Store(tmp_path / "kms.db", os.urandom(32))
    try:
        searches = ([("Name", name_value("k1"))],
                    [("x-Vendor", attribute("x-Vendor", "v").value)],
                    [("State", attribute("State", 2).value)])
        for equal in searches:
            plan = store.query_plan(equal)
            assert "attributes_by_value" in plan, plan
            assert "SCAN attributes" not in plan, plan
    finally:
        store.close()


def _old_store(path: Path, master_key: bytes) -> tuple[str, bytes]:
    """A schema-1 database, as the first releases wrote it: every attribute instance a
    row of ``attributes``, no packed attributes on the object. Returns (uid, material)."""
    import sqlite3

    from vmcrypt.crypto.aead import seal
    from vmcrypt.kmip.attributes import name_value
    from vmcrypt.kmip.ttlv import encode

    material = os.urandom(32)
    uid = "old-key-1"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("""
        CREATE TABLE objects (seq INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE,
            object_type INTEGER NOT NULL, owner TEXT, material BLOB);
        CREATE TABLE attributes (uid TEXT NOT NULL REFERENCES objects(uid),
            name TEXT NOT NULL, idx INTEGER NOT NULL, value BLOB NOT NULL,
            PRIMARY KEY (uid, name, idx)) WITHOUT ROWID;
        CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    """)
    label = b"vmcrypt-kms master key check v1"
    db.execute("INSERT INTO meta VALUES ('master-key-check', ?)",
               (seal(master_key, label, associated_data=label),))
    db.execute("INSERT INTO objects (uid, object_type, owner, material) VALUES (?, 2, 'a', ?)",
               (uid, seal(master_key, material,
                          associated_data=b"vmcrypt-kms/v1 object " + uid.encode())))
    rows = [("Cryptographic Algorithm", attribute("Cryptographic Algorithm", 3).value),
            ("Cryptographic Length", attribute("Cryptographic Length", 256).value),
            ("State", attribute("State", 2).value),
            ("Name", name_value("legacy")),
            ("x-Vendor", attribute("x-Vendor", "VMware").value)]
    for name, value in rows:
        db.execute("INSERT INTO attributes VALUES (?, ?, 0, ?)", (uid, name, encode(value)))
    db.close()
    return uid, material


def test_a_schema_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    from vmcrypt.kmip.attributes import name_value
    from vmcrypt.kms.store import Store

    master_key = os.urandom(32)
    uid, material = _old_store(tmp_path / "kms.db", master_key)
    for _ in range(2):  # the second open finds schema 2 and changes nothing
        store = Store(tmp_path / "kms.db", master_key)
        try:
            obj, got = store.load_with_material(uid)
            assert got == material
            assert set(obj.attributes) == {"Cryptographic Algorithm", "Cryptographic Length",
                                           "State", "Name", "x-Vendor"}
            assert store.candidates([("Name", name_value("legacy"))]) == [uid]
            assert store.candidates([("x-Vendor", attribute("x-Vendor", "VMware").value),
                                     ("Cryptographic Length",
                                      attribute("Cryptographic Length", 256).value)]) == [uid]
            assert store.candidates([("Cryptographic Length",
                                      attribute("Cryptographic Length", 128).value)]) == []
            # Unindexed attributes left the attributes table; searchable ones stayed.
            names = {row[0] for row in store._db.execute("SELECT name FROM attributes")}
            assert names == {"State", "Name", "x-Vendor"}
        finally:
            store.close()


def test_attribute_changes_reach_both_the_object_and_the_index(tmp_path: Path) -> None:
    from vmcrypt.kms.store import ManagedObject, Store

    store = Store(tmp_path / "kms.db", os.urandom(32))
    try:
        obj = ManagedObject(uid="k", object_type=ObjectType.SYMMETRIC_KEY, owner=None,
                            attributes={"Cryptographic Length": {
                                0: attribute("Cryptographic Length", 256).value}})
        store.insert(obj, os.urandom(32))
        tag = attribute("x-Tag", "a").value
        store.put_attribute("k", "x-Tag", 0, tag)
        store.put_attribute("k", "x-Tag", 1, attribute("x-Tag", "b").value)
        store.put_attribute("k", "Cryptographic Length", 0,
                            attribute("Cryptographic Length", 128).value)
        assert store.candidates([("x-Tag", tag)]) == ["k"]
        assert store.load("k").first("Cryptographic Length").value == 128  # type: ignore[union-attr]
        store.delete_attribute("k", "x-Tag", 0)
        assert store.candidates([("x-Tag", tag)]) == []
        assert [v.value for v in store.load("k").values("x-Tag")] == ["b"]
        assert store.load("k", names=["x-Tag"]).attributes.keys() == {"x-Tag"}
    finally:
        store.close()
