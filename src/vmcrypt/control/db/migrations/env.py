"""Alembic environment: migrate the connection the caller hands over, or the URL given.

:func:`vmcrypt.control.db.engine.open_database` passes its open connection in
``config.attributes["connection"]``, so migrations run inside the caller's transaction
and need no ``alembic.ini``. A developer running the ``alembic`` command instead sets
``sqlalchemy.url`` (``alembic -x`` is not needed). Offline (SQL script) mode is not
supported: the control plane always migrates a live database.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from vmcrypt.control.db.models import Base


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables where needed.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run() -> None:
    if context.is_offline_mode():
        raise RuntimeError("vmcrypt migrations run online only (against a live database)")
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _migrate(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    engine = create_engine(url)
    try:
        with engine.begin() as own:
            _migrate(own)
    finally:
        engine.dispose()


_run()
