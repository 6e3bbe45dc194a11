"""An in-process API over a fresh SQLite database, and a token per built-in role."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import Database, open_database
from vmcrypt.control.db.repo import create_user, issue_token
from vmcrypt.control.privileges import ADMINISTRATOR, NO_CRYPTOGRAPHY_ADMINISTRATOR, READ_ONLY

ROLES = {"admin": ADMINISTRATOR, "nocrypto": NO_CRYPTOGRAPHY_ADMINISTRATOR,
         "readonly": READ_ONLY}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "control.db"


@pytest.fixture
def database(db_path: Path) -> Iterator[Database]:
    db = open_database(db_path)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def master_key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def app(database: Database, master_key: bytes) -> FastAPI:
    return create_app(database, master_key=master_key)


@pytest.fixture
def tokens(database: Database) -> dict[str, str]:
    """One user per built-in role (named after the key), and its token."""
    issued = {}
    with database.transaction() as session:
        for key, role in ROLES.items():
            user = create_user(session, name=key, role=role)
            issued[key] = issue_token(session, user_id=user.id).token
    return issued


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://control") as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
