"""The control plane's database tests again, on a real PostgreSQL ("PostgreSQL by URL").

The same test functions as on SQLite — inventory, keys, events, access, jobs, and the
migrations' schema checks — collected here a second time with a ``database`` fixture
that opens a fresh PostgreSQL database: a private server per test module
(:func:`tests.control.postgres.postgres_server`), one database migrated once as a
template, and a copy of it per test (``CREATE DATABASE … TEMPLATE``), dropped after.
The SQLite-only checks (WAL, the SQLite foreign-key message, file paths) stay out.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.control import (
    test_access,
    test_events,
    test_inventory,
    test_jobs,
    test_keys,
    test_migrations,
)
from tests.control.postgres import postgres_server
from vmcrypt.control.db.engine import Database, open_database

pytestmark = pytest.mark.xdist_group("postgresql")

_TEMPLATE = "vmcrypt_template"
_counter = itertools.count()


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with postgres_server() as url:
        template = open_database(make_url(url).set(database=_TEMPLATE).render_as_string(
            hide_password=False)) if _create(url, _TEMPLATE) else None
        assert template is not None
        template.close()
        yield url


def _create(url: str, name: str, template: str | None = None) -> bool:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            suffix = f" TEMPLATE {template}" if template else ""
            connection.execute(text(f'CREATE DATABASE "{name}"{suffix}'))
    finally:
        admin.dispose()
    return True


def _drop(url: str, name: str) -> None:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def database(server_url: str) -> Iterator[Database]:
    """A migrated PostgreSQL database of its own (a copy of the migrated template)."""
    name = f"vmcrypt_{next(_counter)}"
    _create(server_url, name, template=_TEMPLATE)
    db = open_database(make_url(server_url).set(database=name).render_as_string(
        hide_password=False))
    try:
        assert db.engine.dialect.name == "postgresql"
        yield db
    finally:
        db.close()
        _drop(server_url, name)


_SQLITE_ONLY = {
    "test_sqlite_is_opened_with_wal_and_foreign_keys",
    "test_foreign_keys_are_enforced",
    "test_reopening_keeps_data_and_resynchronises_builtin_roles",
    "test_database_url",
    "test_a_plain_path_means_a_sqlite_file",
    "test_revision_0004_moves_packed_host_job_references_into_columns",
}

for _module in (test_inventory, test_keys, test_events, test_access, test_jobs,
                test_migrations):
    for _name in dir(_module):
        if _name.startswith("test_") and _name not in _SQLITE_ONLY:
            assert _name not in globals(), f"two modules define {_name}"
            globals()[_name] = getattr(_module, _name)


def test_foreign_keys_are_enforced_on_postgresql(database: Database) -> None:
    with pytest.raises(Exception, match="foreign key"), database.engine.begin() as connection:
        connection.execute(text("INSERT INTO users (name, role_id, disabled, created_at) "
                                "VALUES ('ghost', 999, false, '2026-01-01')"))


def test_two_servers_opening_one_database_migrate_once(server_url: str) -> None:
    """Control plane replicas start together: the advisory lock serialises migrations."""
    import threading

    name = f"vmcrypt_race_{next(_counter)}"
    _create(server_url, name)
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    errors: list[BaseException] = []
    opened: list[Database] = []

    def start() -> None:
        try:
            opened.append(open_database(url))
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert errors == [] and len(opened) == 3
        with opened[0].engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version"))
            assert len(list(versions)) == 1
    finally:
        for db in opened:
            db.close()
        _drop(server_url, name)
