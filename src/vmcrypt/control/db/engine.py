"""Open the control plane database and bring its schema to the newest revision.

SQLite (a file) is the default; PostgreSQL is chosen by URL (``postgresql://…`` uses
psycopg 3). Migrations run at every start, programmatically: the Alembic
configuration is built here, the scripts live inside the package, and no
``alembic.ini`` is needed at run time.

SQLite is opened the way a server needs it:

- ``foreign_keys=ON`` — SQLite ignores foreign keys unless asked, per connection;
- WAL journal — readers do not block the writer, and a crash never tears a page;
- the driver's own transaction handling is switched off and every transaction starts
  with ``BEGIN IMMEDIATE``, so DDL (migrations) is transactional and two writers wait
  for each other (``busy_timeout``) instead of failing on a lock upgrade.

On PostgreSQL, replicas that start together serialise their migration on an advisory
lock held for the migration's transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from vmcrypt.control.db.repo.access import sync_builtin_roles

__all__ = ["Database", "alembic_config", "database_url", "open_database"]

_MIGRATIONS: Final = Path(__file__).with_name("migrations")
# An arbitrary constant: the key of the PostgreSQL advisory lock around migrations.
_MIGRATION_LOCK_KEY: Final = 0x766D63727970  # "vmcryp"
_BUSY_TIMEOUT_MS: Final = 10_000


@dataclass(frozen=True)
class Database:
    """An open database: the engine and a factory of ORM sessions bound to it."""

    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits when the block ends, and rolls back on error."""
        with self.sessions.begin() as session:
            yield session

    def close(self) -> None:
        """Close every pooled connection (the file stays as it is)."""
        self.engine.dispose()


def database_url(target: str | Path) -> str:
    """The SQLAlchemy URL for a URL or a plain file path (a path means SQLite).

    ``postgresql://`` and ``postgres://`` select the psycopg 3 driver explicitly, since
    SQLAlchemy would otherwise look for psycopg2, which vmcrypt does not ship.
    """
    raw = str(target)
    if "://" not in raw:
        return f"sqlite:///{Path(raw).resolve()}"
    url = make_url(raw)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def alembic_config() -> Config:
    """Alembic's configuration, in code: the scripts inside the package, no ini file."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def open_database(target: str | Path, *, migrate: bool = True) -> Database:
    """Open (creating if needed) the database at ``target`` and migrate it to head.

    Also re-synchronises the built-in roles with :mod:`vmcrypt.control.privileges`,
    in the migration's transaction, so a privilege added in a new release reaches
    ``Administrator`` at the next start.
    """
    engine = create_engine(database_url(target))
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    if migrate:
        _upgrade(engine)
    return Database(engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))


def _upgrade(engine: Engine) -> None:
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        with Session(bind=connection) as session:
            sync_builtin_roles(session)
            session.flush()


def _configure_sqlite(engine: Engine) -> None:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
