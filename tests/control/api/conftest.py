"""An in-process API over a fresh SQLite database, and a token per built-in role.

``app``/``client`` is the API without hosts (inventory, providers, users, enrolment);
``full_app``/``full_client`` mounts every route, as ``vmcrypt control serve`` does: it
has a CA for enrolment and reaches in-process host agents (:class:`InProcessHosts`).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import Database, open_database
from vmcrypt.control.db.models import Host
from vmcrypt.control.db.repo import create_user, issue_token
from vmcrypt.control.hostclient import HostClient
from vmcrypt.control.privileges import ADMINISTRATOR, NO_CRYPTOGRAPHY_ADMINISTRATOR, READ_ONLY
from vmcrypt.host.api.app import create_app as create_host_app
from vmcrypt.host.api.state import HostState
from vmcrypt.host.datastore import Datastore
from vmcrypt.pki import CertificateAuthority

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


class InProcessHosts:
    """A host connector to in-process agents on one shared datastore folder.

    A host is started the first time it is reached (an empty key cache, as a fresh
    process), so hosts created by a test are reachable too; :meth:`start` restarts one.
    """

    def __init__(self, datastore: Path) -> None:
        self.datastore = datastore
        self.states: dict[str, HostState] = {}
        self._apps: dict[str, FastAPI] = {}

    def start(self, name: str) -> HostState:
        """(Re)start host ``name``: a new state, an empty key cache."""
        state = HostState(name=name, hardware_uuid=str(uuid.uuid4()),
                          datastore=Datastore(self.datastore))
        self.states[name] = state
        self._apps[name] = create_host_app(state)
        return state

    def client(self, host: Host) -> HostClient:
        if host.name not in self._apps:
            self.start(host.name)
        return HostClient(host.name, TestClient(self._apps[host.name], base_url="http://h"))


@pytest.fixture(scope="session")
def enrolment_ca() -> CertificateAuthority:
    return CertificateAuthority.create("vmcrypt test CA", key_type="ec")


@pytest.fixture
def in_process_hosts(tmp_path: Path) -> InProcessHosts:
    (tmp_path / "ds").mkdir()
    return InProcessHosts(tmp_path / "ds")


@pytest.fixture
def full_app(database: Database, master_key: bytes, in_process_hosts: InProcessHosts,
             enrolment_ca: CertificateAuthority) -> FastAPI:
    app = create_app(database, master_key=master_key, hosts=in_process_hosts)
    app.state.enrolment_ca = enrolment_ca
    return app


@pytest.fixture
async def full_client(full_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=full_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://control") as c:
        yield c
