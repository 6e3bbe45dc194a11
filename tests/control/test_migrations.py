"""The migrations build exactly the models' schema, on a database opened as a server would."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from vmcrypt.control.db.engine import Database, alembic_config, database_url, open_database
from vmcrypt.control.db.models import Base, Role, RolePrivilege
from vmcrypt.control.privileges import ADMINISTRATOR, ALL_PRIVILEGES, BUILTIN_ROLES


def test_head_builds_exactly_the_models_schema(database: Database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_there_is_one_head_and_the_database_is_at_it(database: Database) -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1
    with database.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_heads() == tuple(heads)


def test_sqlite_is_opened_with_wal_and_foreign_keys(database: Database) -> None:
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_foreign_keys_are_enforced(database: Database) -> None:
    with pytest.raises(Exception, match="FOREIGN KEY"), database.engine.begin() as connection:
        connection.execute(text("INSERT INTO users (name, role_id, disabled, created_at) "
                                "VALUES ('ghost', 999, 0, '2026-01-01')"))


def test_downgrade_to_base_and_upgrade_again(database: Database) -> None:
    with database.engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        assert set(inspect(connection).get_table_names()) == {"alembic_version"}
        command.upgrade(config, "head")
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_reopening_keeps_data_and_resynchronises_builtin_roles(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    first = open_database(path)
    with first.transaction() as session:
        admin = session.scalars(select(Role).where(Role.name == ADMINISTRATOR)).one()
        admin.privileges = admin.privileges[:1]  # as if an older release had fewer
    first.close()

    second = open_database(path)
    try:
        with second.sessions() as session:
            for name, privileges in BUILTIN_ROLES.items():
                role = session.scalars(select(Role).where(Role.name == name)).one()
                assert role.builtin
                assert {p.privilege for p in role.privileges} == privileges
            assert session.scalar(select(RolePrivilege).where(
                RolePrivilege.privilege.not_in(ALL_PRIVILEGES))) is None
    finally:
        second.close()


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("postgresql://u:p@db/vmcrypt", "postgresql+psycopg://u:p@db/vmcrypt"),
        ("postgres://u@db/vmcrypt", "postgresql+psycopg://u@db/vmcrypt"),
        ("postgresql+psycopg://db/x", "postgresql+psycopg://db/x"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
    ],
)
def test_database_url(target: str, expected: str) -> None:
    assert database_url(target) == expected


def test_a_plain_path_means_a_sqlite_file(tmp_path: Path) -> None:
    assert database_url(tmp_path / "c.db") == f"sqlite:///{tmp_path / 'c.db'}"


def test_revision_0004_moves_packed_host_job_references_into_columns(
        database: Database) -> None:
    """Jobs written before 0004 packed their host job into ``type``; after it, columns."""
    config = alembic_config()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
        connection.execute(text(
            "INSERT INTO clusters (name, created_at) VALUES ('c', '2026-01-01')"))
        connection.execute(text(
            "INSERT INTO hosts (name, hardware_uuid, connection_state, created_at) "
            "VALUES ('h', '4c4c4544-0000-1000-8000-000000000001', 'connected', '2026-01-01')"))
        host_id = connection.execute(text("SELECT id FROM hosts")).scalar_one()
        for kind in (f"vm.encrypt:disk-0@{host_id}:5f0c-job", "vm.rekey-deep:all@999:gone",
                     "disk.rekey"):
            connection.execute(text(
                "INSERT INTO jobs (type, target_type, target_id, state, progress_percent, "
                "bytes_done, cancel_requested, created_at) "
                "VALUES (:t, 'vm', '1', 'running', 0, 0, 0, '2026-01-01')"), {"t": kind})
        command.upgrade(config, "head")
        rows = connection.execute(text(
            "SELECT type, component, host_id, host_job_id FROM jobs ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [
            ("vm.encrypt", "disk-0", host_id, "5f0c-job"),
            ("vm.rekey-deep", "all", None, "gone"),  # its host record is gone
            ("disk.rekey", None, None, None),
        ]
        command.downgrade(config, "0003")
        packed = connection.execute(text("SELECT type FROM jobs ORDER BY id")).scalars().all()
        assert packed == [f"vm.encrypt:disk-0@{host_id}:5f0c-job", "vm.rekey-deep",
                          "disk.rekey"]
        command.upgrade(config, "head")
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
