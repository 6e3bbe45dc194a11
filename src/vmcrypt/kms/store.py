"""The key server's SQLite store: managed objects, their attributes, sealed key material.

Key material is sealed with AES-256-GCM under the server master key, with the object's
Unique Identifier as associated data (so sealed material cannot be moved between rows)
before it reaches SQLite; it is unsealed only for the Get that asked for it.

Attributes live in two places (schema 2):

- every instance, in the object's own row (``objects.attrs``, see :func:`_pack`), so a
  Create writes one row and a Get reads one;
- the searchable instances (names not in :data:`UNINDEXED`) once more, one row each in
  ``attributes`` with a value index, so Locate by Name or by a custom ``x-`` attribute is
  an index lookup. Locate by an unindexed attribute scans ``objects.attrs``.

Values are kept as their TTLV encoding, so any attribute — custom ones included — can be
stored, returned and matched. Measured here, this halved the SQLite work of a Create
(one object row and two attribute rows instead of eleven rows).

Attribute indices follow KMIP 1.4, 2.1.1: they start at 0 and never change when other
instances of the same attribute are added or deleted.

One connection serves every thread under a lock: SQLite serialises writers anyway, and
a KMIP operation is a handful of indexed statements.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vmcrypt.crypto.aead import seal, unseal
from vmcrypt.crypto.exceptions import IntegrityError
from vmcrypt.kmip.tags import ObjectType
from vmcrypt.kmip.ttlv import Item, decode, encode
from vmcrypt.kms.errors import MasterKeyError, item_not_found

__all__ = ["ManagedObject", "Store", "StoreCorrupt"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    object_type INTEGER NOT NULL,
    owner TEXT,
    material BLOB,
    attrs BLOB
);
CREATE TABLE IF NOT EXISTS attributes (
    uid TEXT NOT NULL REFERENCES objects(uid),
    name TEXT NOT NULL,
    idx INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (uid, name, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attributes_by_value ON attributes (name, value)
    WHERE name NOT IN ({unindexed});
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
#: Attributes every key gets at creation and that nobody searches by value: Locate by them
#: still works (a scan), but leaving them out of the value index makes a Create write 3
#: index entries instead of 11 — about a quarter of its cost.
UNINDEXED = (
    "Unique Identifier", "Object Type", "Cryptographic Algorithm", "Cryptographic Length",
    "Cryptographic Usage Mask", "Initial Date", "Last Change Date", "Original Creation Date",
)
_UNINDEXED_SQL = ", ".join(f"'{name}'" for name in UNINDEXED)
_UNINDEXED_SET = frozenset(UNINDEXED)
_CHECK_LABEL = b"vmcrypt-kms master key check v1"
_SCHEMA_VERSION = 2
_PACK_VERSION = b"\x01"
_RECORD = struct.Struct(">HII")  # name length, index, value length

#: Attributes by name → {index: encoded value}, as packed in ``objects.attrs``.
_Raw = dict[str, dict[int, bytes]]


class StoreCorrupt(Exception):
    """The database holds something this server did not write; restore it from a backup."""


def _aad(uid: str) -> bytes:
    return b"vmcrypt-kms/v1 object " + uid.encode()


@dataclass
class ManagedObject:
    """An object's public face: type and attributes by name → {index: value item}."""

    uid: str
    object_type: ObjectType
    owner: str | None
    attributes: dict[str, dict[int, Item]] = field(default_factory=dict)

    def values(self, name: str) -> list[Item]:
        """Every instance of an attribute, by index."""
        return [self.attributes[name][i] for i in sorted(self.attributes.get(name, {}))]

    def first(self, name: str) -> Item | None:
        """The lowest-index instance, or None."""
        instances = self.attributes.get(name)
        return instances[min(instances)] if instances else None


class Store:
    """All managed objects of one key server."""

    def __init__(self, path: Path | str, master_key: bytes) -> None:
        self._master_key = master_key
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a key the server handed out must survive a power cut — the data it
        # encrypts is lost with it otherwise. In WAL mode this is one fsync per commit.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA.format(unindexed=_UNINDEXED_SQL))
        self._check_master_key()
        self._migrate()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _check_master_key(self) -> None:
        """Refuse to start with a different master key than the one the store was made with."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'master-key-check'").fetchone()
        if row is None:
            sealed = seal(self._master_key, _CHECK_LABEL, associated_data=_CHECK_LABEL)
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES ('master-key-check', ?)", (sealed,)
            )
            return
        try:
            unseal(self._master_key, row[0], associated_data=_CHECK_LABEL)
        except IntegrityError:
            raise MasterKeyError(
                "the master key does not open this key server's database: start the server "
                "with the master key it was created with"
            ) from None

    def _migrate(self) -> None:
        """Bring a schema-1 database (every attribute a row of its own) to schema 2."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(objects)")}
        with self.transaction():
            if "attrs" not in columns:
                self._db.execute("ALTER TABLE objects ADD COLUMN attrs BLOB")
            row = self._db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is not None and int(row[0]) >= _SCHEMA_VERSION:
                return
            raw: dict[str, _Raw] = {}
            for uid, name, index, value in self._db.execute(
                    "SELECT uid, name, idx, value FROM attributes"):
                raw.setdefault(uid, {}).setdefault(name, {})[index] = value
            for (uid,) in self._db.execute(
                    "SELECT uid FROM objects WHERE attrs IS NULL").fetchall():
                self._db.execute("UPDATE objects SET attrs = ? WHERE uid = ?",
                                 (_pack(raw.get(uid, {})), uid))
            self._db.execute(f"DELETE FROM attributes WHERE name IN ({_UNINDEXED_SQL})")  # noqa: S608
            self._db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('schema', ?)",
                (str(_SCHEMA_VERSION).encode(),),
            )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work; nests (a batch item inside an all-or-nothing batch).

        SQLite savepoints nest, and the outermost one is the transaction itself.
        """
        with self._lock:
            self._depth += 1
            name = f"sp{self._depth}"
            self._db.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                self._db.execute(f"ROLLBACK TO {name}")
                self._db.execute(f"RELEASE {name}")
                raise
            finally:
                self._depth -= 1
            self._db.execute(f"RELEASE {name}")

    def new_uid(self) -> str:
        """A fresh Unique Identifier: a time-ordered UUID (RFC 9562 version 7).

        48 bits of milliseconds then 74 random bits: unique without coordination (two KMS
        nodes may share a database), and new rows land at the end of the B-trees instead
        of on random pages, which roughly halves what a Create writes at commit.
        """
        millis = time.time_ns() // 1_000_000
        value = (millis & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
        value = value & ~(0xF << 76) | 0x7 << 76  # version 7
        value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 9562 variant
        return str(uuid.UUID(int=value))

    def insert(self, obj: ManagedObject, material: bytes) -> None:
        """Store a new object with its material sealed."""
        sealed = seal(self._master_key, material, associated_data=_aad(obj.uid))
        raw = {name: {index: encode(value) for index, value in instances.items()}
               for name, instances in obj.attributes.items()}
        with self._lock:
            self._db.execute(
                "INSERT INTO objects (uid, object_type, owner, material, attrs) "
                "VALUES (?, ?, ?, ?, ?)",
                (obj.uid, int(obj.object_type), obj.owner, sealed, _pack(raw)),
            )
            self._db.executemany(
                "INSERT INTO attributes (uid, name, idx, value) VALUES (?, ?, ?, ?)",
                [
                    (obj.uid, name, index, value)
                    for name, instances in raw.items() if name not in _UNINDEXED_SET
                    for index, value in instances.items()
                ],
            )

    def load(self, uid: str, *, names: Sequence[str] | None = None) -> ManagedObject:
        """An object's type and attributes (only ``names`` if given); ItemNotFound if none.

        Get needs three attributes of a dozen; decoding only those is a third of its cost.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT object_type, owner, attrs FROM objects WHERE uid = ?", (uid,)
            ).fetchone()
        if row is None:
            raise item_not_found(uid)
        return _object(uid, row[0], row[1], row[2], names)

    def load_with_material(
        self, uid: str, *, names: Sequence[str] | None = None
    ) -> tuple[ManagedObject, bytes | None]:
        """:meth:`load` and :meth:`material` in one read (what a Get needs)."""
        with self._lock:
            row = self._db.execute(
                "SELECT object_type, owner, attrs, material FROM objects WHERE uid = ?", (uid,)
            ).fetchone()
        if row is None:
            raise item_not_found(uid)
        obj = _object(uid, row[0], row[1], row[2], names)
        if row[3] is None:
            return obj, None
        return obj, unseal(self._master_key, row[3], associated_data=_aad(uid))

    def material(self, uid: str) -> bytes | None:
        """The unsealed key material, or None once destroyed."""
        with self._lock:
            row = self._db.execute("SELECT material FROM objects WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            raise item_not_found(uid)
        if row[0] is None:
            return None
        return unseal(self._master_key, row[0], associated_data=_aad(uid))

    def destroy_material(self, uid: str) -> None:
        """Forget the key material; the object and its attributes stay (KMIP 1.4, 4.21)."""
        with self._lock:
            self._db.execute("UPDATE objects SET material = NULL WHERE uid = ?", (uid,))

    def put_attribute(self, uid: str, name: str, index: int, value: Item) -> None:
        """Insert or replace one attribute instance."""
        encoded = encode(value)
        with self._lock, self.transaction():
            raw = self._raw(uid)
            raw.setdefault(name, {})[index] = encoded
            self._db.execute("UPDATE objects SET attrs = ? WHERE uid = ?", (_pack(raw), uid))
            if name not in _UNINDEXED_SET:
                self._db.execute(
                    "INSERT OR REPLACE INTO attributes (uid, name, idx, value) "
                    "VALUES (?, ?, ?, ?)",
                    (uid, name, index, encoded),
                )

    def delete_attribute(self, uid: str, name: str, index: int) -> None:
        """Remove one attribute instance."""
        with self._lock, self.transaction():
            raw = self._raw(uid)
            instances = raw.get(name, {})
            instances.pop(index, None)
            if not instances:
                raw.pop(name, None)
            self._db.execute("UPDATE objects SET attrs = ? WHERE uid = ?", (_pack(raw), uid))
            self._db.execute(
                "DELETE FROM attributes WHERE uid = ? AND name = ? AND idx = ?",
                (uid, name, index),
            )

    def _raw(self, uid: str) -> _Raw:
        row = self._db.execute("SELECT attrs FROM objects WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            raise item_not_found(uid)
        return _unpack(row[0])

    def candidates(self, equal: Sequence[tuple[str, Item]]) -> list[str]:
        """Objects having every ``(name, value)`` given, oldest first.

        Searchable attributes are matched in SQL through the value index; the others
        (:data:`UNINDEXED`) by reading the packed attributes of what is left.
        """
        indexed = [(n, v) for n, v in equal if n not in _UNINDEXED_SET]
        others = [(n, encode(v)) for n, v in equal if n in _UNINDEXED_SET]
        sql, params = _candidates_query(indexed)
        if not others:
            with self._lock:
                return [row[0] for row in self._db.execute(sql, params)]
        sql = sql.replace("SELECT uid FROM objects", "SELECT uid, attrs FROM objects", 1)
        wanted = {name for name, _ in others}
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        found = []
        for uid, attrs in rows:
            raw = _unpack(attrs, wanted)
            if all(value in raw.get(name, {}).values() for name, value in others):
                found.append(uid)
        return found

    def query_plan(self, equal: Sequence[tuple[str, Item]]) -> str:
        """SQLite's plan for :meth:`candidates` (tests check that the value index is used)."""
        sql, params = _candidates_query(equal)
        with self._lock:
            rows = self._db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        return "\n".join(str(row[-1]) for row in rows)

    def count(self) -> int:
        """How many objects the store holds."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM objects").fetchone()
        return int(n)


def _candidates_query(equal: Sequence[tuple[str, Item]]) -> tuple[str, list[object]]:
    sql = "SELECT uid FROM objects"
    params: list[object] = []
    for position, (name, value) in enumerate(equal):
        # Only fixed fragments are concatenated; every value is a bound parameter. The
        # partial index is used only when the query repeats its WHERE term verbatim.
        term = (f" uid IN (SELECT uid FROM attributes WHERE name = ? AND value = ?"  # noqa: S608
                f" AND name NOT IN ({_UNINDEXED_SQL}))")
        sql += (" WHERE" if position == 0 else " AND") + term
        params += [name, encode(value)]
    return sql + " ORDER BY seq", params


def _pack(raw: _Raw) -> bytes:
    """Every attribute instance of an object, as stored in ``objects.attrs``.

    A version byte, then per instance: name length, index and value length (big-endian
    u16, u32, u32), the name in UTF-8, the value's TTLV encoding. Plain framing rather
    than TTLV so that a reader skips the instances it does not need without decoding them.
    """
    parts = [_PACK_VERSION]
    for name, instances in raw.items():
        encoded_name = name.encode()
        for index, value in instances.items():
            parts += (_RECORD.pack(len(encoded_name), index, len(value)), encoded_name, value)
    return b"".join(parts)


def _unpack(blob: bytes | None, names: frozenset[str] | set[str] | None = None) -> _Raw:
    """The instances packed by :func:`_pack` (only ``names`` if given), values encoded."""
    raw: _Raw = {}
    if not blob:
        return raw
    if blob[:1] != _PACK_VERSION:
        raise StoreCorrupt("unknown attribute packing")
    offset, size = 1, len(blob)
    header = _RECORD.size
    while offset < size:
        if size - offset < header:
            raise StoreCorrupt("truncated attribute record")
        name_len, index, value_len = _RECORD.unpack_from(blob, offset)
        start = offset + header
        offset = start + name_len + value_len
        if offset > size:
            raise StoreCorrupt("truncated attribute record")
        name = blob[start:start + name_len].decode()
        if names is None or name in names:
            raw.setdefault(name, {})[index] = blob[start + name_len:offset]
    return raw


def _object(uid: str, object_type: int, owner: str | None, attrs: bytes | None,
            names: Sequence[str] | None) -> ManagedObject:
    obj = ManagedObject(uid=uid, object_type=ObjectType(object_type), owner=owner)
    raw = _unpack(attrs, frozenset(names) if names is not None else None)
    for name, instances in raw.items():
        obj.attributes[name] = {index: _decoded(value) for index, value in instances.items()}
    return obj


#: Attribute values already decoded, by their encoding: most are the same few (State,
#: Cryptographic Algorithm and Length, Object Type), and items are immutable. Bounded.
_DECODED: dict[bytes, Item] = {}
_DECODED_MAX = 4096
_DECODED_MAX_SIZE = 64


def _decoded(value: bytes) -> Item:
    item = _DECODED.get(value)
    if item is None:
        item = decode(value)
        if len(value) <= _DECODED_MAX_SIZE and len(_DECODED) < _DECODED_MAX:
            _DECODED[value] = item
    return item
