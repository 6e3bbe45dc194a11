"""A live control plane for the browser tests, and headless Chromium driving it.

The control plane is the in-process app (every route mounted, in-process host agents on
a temporary datastore, as ``tests/control/api`` uses) served by uvicorn over **HTTPS** on
a free port in a thread — the session cookie is ``Secure``, so the browser must see TLS.
Chromium is the system package (``/usr/bin/chromium``, installed by ``make sysdeps``)
driven by Playwright's Python package with ``executable_path``: no browser download.

Screenshots go to ``$VMCRYPT_ARTIFACTS/ui`` (else the test's ``tmp_path``); with
``VMCRYPT_UPDATE_SCREENSHOTS=1`` they are also copied to ``docs/screenshots/``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control.api.conftest import InProcessHosts
from vmcrypt.control.api import create_app
from vmcrypt.control.db.engine import open_database
from vmcrypt.control.db.repo import create_user, issue_token, set_password
from vmcrypt.control.privileges import ADMINISTRATOR, READ_ONLY
from vmcrypt.pki import CertificateAuthority

CHROMIUM = Path(os.environ.get("VMCRYPT_CHROMIUM", "/usr/bin/chromium"))
PASSWORD = "a web password for tests"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Control:
    """The live control plane: its URL, an admin API client, and the seeded IDs."""

    url: str
    api: httpx.Client
    ids: dict[str, int]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(api: httpx.Client, path: str, body: object | None = None) -> dict[str, Any]:
    response = api.post(f"/api/v1{path}", json=body)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def _seed(api: httpx.Client, datastore: Path) -> dict[str, int]:
    """The first-run demo in small: a cluster of two hosts, a standalone host, providers."""
    import uuid

    ids: dict[str, int] = {}
    ids["cluster"] = _post(api, "/clusters", {"name": "cluster-1"})["id"]
    for name in ("esx-1", "esx-2"):
        ids[name] = _post(api, "/hosts", {
            "name": name, "hardware_uuid": str(uuid.uuid4()), "cluster_id": ids["cluster"],
            "api_url": f"https://{name}:8443"})["id"]
    ids["datastore"] = _post(api, "/datastores", {
        "name": "cluster-1", "path": str(datastore), "cluster_id": ids["cluster"]})["id"]
    ids["native"] = _post(api, "/key-providers/native", {"name": "native-1",
                                                         "is_default": True})["id"]
    _post(api, f"/key-providers/{ids['native']}/acknowledge-no-backup")
    ids["standard"] = _post(api, "/key-providers/standard", {
        "name": "embedded-kms", "kms_servers": [{"name": "kms-1", "address": "127.0.0.1"}]})["id"]
    ids["policy"] = _post(api, "/storage-policies", {"name": "vm-encryption",
                                                      "encryption": True})["id"]
    return ids


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    import uvicorn

    (tmp_path / "ds").mkdir()
    database = open_database(tmp_path / "control.db")
    with database.transaction() as session:
        admin = create_user(session, name="administrator", role=ADMINISTRATOR)
        reader = create_user(session, name="auditor", role=READ_ONLY)
        set_password(session, user_id=admin.id, password=PASSWORD)
        set_password(session, user_id=reader.id, password=PASSWORD)
        token = issue_token(session, user_id=admin.id).token
    hosts = InProcessHosts(tmp_path / "ds")
    app = create_app(database, master_key=secrets.token_bytes(32), hosts=hosts)
    ca = CertificateAuthority.create("ui test CA", key_type="ec")
    ca.issue("localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"]).write(
        tmp_path / "server.pem", tmp_path / "server.key")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
        lifespan="off", ssl_certfile=str(tmp_path / "server.pem"),
        ssl_keyfile=str(tmp_path / "server.key")))
    thread = threading.Thread(target=server.run, name="ui-control", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "control did not start"
        time.sleep(0.01)
    url = f"https://127.0.0.1:{port}"
    try:
        trust = ssl.create_default_context(cadata=ca.as_issued().certificate_pem().decode())
        with httpx.Client(base_url=url, verify=trust,
                          headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            ids = _seed(api, tmp_path / "ds")  # the in-process hosts' shared folder
            yield Control(url=url, api=api, ids=ids)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        database.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module: Playwright's sync API runs an event loop of its own
    while started, which async tests of other modules (anyio) must not run under."""
    if not CHROMIUM.exists():
        # `make test` installs it (make sysdeps): a missing browser is a set-up bug, not
        # a reason to pass without testing the web UI.
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make sysdeps` (Debian package "
                    "chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path: Path) -> Iterator[Any]:
    """``shot(page, name)``: a full-page PNG in the artifacts folder (and docs/, on request)."""
    root = os.environ.get("VMCRYPT_ARTIFACTS")
    folder = Path(root) / "ui" if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    taken: list[Path] = []

    def shot(page: Any, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        taken.append(path)
        return path

    yield shot
    if os.environ.get("VMCRYPT_UPDATE_SCREENSHOTS") == "1":
        docs = REPO / "docs" / "screenshots"
        docs.mkdir(exist_ok=True)
        for path in taken:
            shutil.copy(path, docs / path.name)
