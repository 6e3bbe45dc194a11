"""The UI's pages without a browser: who may see them, what they hide, what they never show.

The pages live outside ``/api/v1`` (a mounted app), so the API's privilege matrix does not
list them; this file is their privilege test. Every page needs a live session cookie of a
user holding ``System.Read``; controls a role lacks are rendered disabled, naming the
privilege; the API refuses them anyway (``test_browser.py`` forces one).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.control.api.conftest import InProcessHosts
from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import Database, open_database
from vmcrypt.control.db.models import LockReason
from vmcrypt.control.db.repo import create_user, issue_token, set_lock_state, set_password
from vmcrypt.control.privileges import ADMINISTRATOR, NO_CRYPTOGRAPHY_ADMINISTRATOR, READ_ONLY

PASSWORD = "a web password for tests"
PAGES = ("/ui/", "/ui/key-providers", "/ui/events", "/ui/events/rows", "/ui/vms/{vm}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = open_database(tmp_path / "control.db")
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
async def world(database: Database, tmp_path: Path) -> AsyncIterator[tuple[FastAPI, int, str]]:
    """The app, an encrypted VM's ID, and the admin's API token."""
    (tmp_path / "ds").mkdir()
    app = create_app(database, master_key=secrets.token_bytes(32),
                     hosts=InProcessHosts(tmp_path / "ds"))
    with database.transaction() as session:
        for name, role in (("admin", ADMINISTRATOR), ("nocrypto", NO_CRYPTOGRAPHY_ADMINISTRATOR),
                           ("reader", READ_ONLY)):
            user = create_user(session, name=name, role=role)
            set_password(session, user_id=user.id, password=PASSWORD)
            if name == "admin":
                token = issue_token(session, user_id=user.id).token
    admin = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://control/api/v1", headers=admin) as api:
        async def new(path: str, body: object) -> int:
            response = await api.post(path, json=body)
            assert response.status_code == 201, response.text
            return int(response.json()["id"])

        cluster = await new("/clusters", {"name": "c"})
        host = await new("/hosts", {"name": "h", "hardware_uuid": str(uuid.uuid4()),
                                    "cluster_id": cluster, "api_url": "https://h:8443"})
        store = await new("/datastores", {"name": "d", "path": str(tmp_path / "ds"),
                                          "cluster_id": cluster})
        native = await new("/key-providers/native", {"name": "n", "is_default": True})
        await api.post(f"/key-providers/{native}/acknowledge-no-backup")
        policy = await new("/storage-policies", {"name": "enc", "encryption": True})
        vm = await new("/vms", {"name": "vm", "datastore_id": store, "host_id": host,
                                "disks": [65536], "storage_policy_id": policy})
    yield app, vm, token


@contextlib.asynccontextmanager
async def _session(app: FastAPI, name: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client (https, cookies kept), logged in as ``name`` unless None."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://control") as client:
        if name is not None:
            response = await client.post("/api/v1/sessions",
                                         json={"name": name, "password": PASSWORD})
            assert response.status_code == 201
        yield client


@pytest.mark.anyio
async def test_no_session_means_the_login_page(world: tuple[FastAPI, int, str]) -> None:
    app, vm, token = world
    async with _session(app, None) as client:
        for page in PAGES:
            response = await client.get(page.format(vm=vm))
            assert response.status_code == 303 and response.headers["location"] == "/ui/login"
        # An API token is not a UI session, nor a forged or revoked cookie.
        client.cookies.set("vmcrypt_session", "vmct_forged")
        assert (await client.get("/ui/")).status_code == 303
        assert (await client.get("/ui/", headers={"Authorization": f"Bearer {token}"})
                ).status_code == 303
        assert (await client.get("/ui/login")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(("who", "decrypt", "manage_keys", "create"), [
    ("admin", True, True, True),
    ("nocrypto", False, False, False),  # VirtualMachine.* but no Cryptographer.*
    ("reader", False, False, False),
])
async def test_controls_follow_the_role(world: tuple[FastAPI, int, str], who: str,
                                        decrypt: bool, manage_keys: bool, create: bool) -> None:
    app, vm, _ = world
    async with _session(app, who) as client:
        for page in PAGES:
            assert (await client.get(page.format(vm=vm))).status_code == 200, page
        vm_page = (await client.get(f"/ui/vms/{vm}")).text
        button = re.search(r'<button id="decrypt-disk-0"[^>]*>', vm_page, re.S)
        assert button is not None
        assert ("disabled" not in button.group(0)) == decrypt
        if not decrypt:
            assert 'title="needs Cryptographer.Decrypt"' in button.group(0)
        providers = (await client.get("/ui/key-providers")).text
        assert ("needs Cryptographer.ManageKeyServers" not in providers) == manage_keys
        inventory = (await client.get("/ui/")).text
        assert ('id="create-vm"' in inventory) == create


@pytest.mark.anyio
async def test_pages_show_key_ids_never_secrets(world: tuple[FastAPI, int, str]) -> None:
    app, vm, token = world
    async with _session(app, "admin") as client:
        cookie = client.cookies["vmcrypt_session"]
        text = "".join([(await client.get(page.format(vm=vm))).text for page in PAGES])
    assert "wrapped KEK (native)" in text  # what a native component shows instead of bytes
    assert cookie not in text and token not in text
    assert "scrypt$" not in text


@pytest.mark.anyio
async def test_static_files_are_served_from_the_package(world: tuple[FastAPI, int, str]) -> None:
    app, _, _ = world
    async with _session(app, None) as client:
        htmx = await client.get("/ui/static/htmx-2.0.11.min.js")
        assert htmx.status_code == 200 and "htmx" in htmx.text
        assert (await client.get("/ui/static/vmcrypt.js")).status_code == 200


@pytest.mark.anyio
async def test_a_locked_vm_shows_its_reason_and_unlock(world: tuple[FastAPI, int, str],
                                                      database: Database) -> None:
    app, vm, _ = world
    with database.transaction() as session:
        set_lock_state(session, vm_id=vm, reason=LockReason.KMS_UNREACHABLE)
    async with _session(app, "admin") as client:
        page = (await client.get(f"/ui/vms/{vm}")).text
        assert "Locked: <strong>kms_unreachable</strong>" in page
        assert re.search(r'<button id="unlock" hx-post="/api/v1/vms/\d+/unlock"', page)
        assert "locked: kms_unreachable" in (await client.get("/ui/")).text
    async with _session(app, "reader") as client:
        button = re.search(r'<button id="unlock"[^>]*>', (await client.get(f"/ui/vms/{vm}")).text)
        assert button is not None and "needs Cryptographer.RegisterVM" in button.group(0)
