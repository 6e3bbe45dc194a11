"""``vmcrypt vm clone`` and ``vmcrypt vm migrate`` against a real control plane server.

The harness of ``test_control_cli.py`` (uvicorn in a thread, the CLI as a child
process) with three in-process hosts: ``esx1`` and ``esx2`` share ``ds1`` (cluster
``prod``), ``esx3`` has ``ds2`` (cluster ``dr``). Native-provider and plain VMs: a
standard provider's would need a real KMS (the API test covers it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from tests.cli.test_control_cli import Control, serve_control
from vmcrypt.control.db.models import Host
from vmcrypt.control.hostclient import HostClient
from vmcrypt.host.api.app import create_app as create_host_app
from vmcrypt.host.api.state import HostState
from vmcrypt.host.datastore import Datastore

pytestmark = pytest.mark.xdist_group("vm-moves-cli")


class Fleet:
    """Three in-process host agents on two datastore folders."""

    def __init__(self, ds1: Path, ds2: Path) -> None:
        self.roots = {"esx1": ds1, "esx2": ds1, "esx3": ds2}
        self.apps: dict[str, FastAPI] = {}
        for name, root in self.roots.items():
            root.mkdir(exist_ok=True)
            self.apps[name] = create_host_app(HostState(
                name=name, hardware_uuid=str(uuid.uuid4()), datastore=Datastore(root)))

    def client(self, host: Host) -> HostClient:
        return HostClient(host.name, TestClient(self.apps[host.name], base_url="http://h"))


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    tmp = tmp_path_factory.mktemp("moves")
    with serve_control(tmp, Fleet(tmp / "ds1", tmp / "ds2")) as running:
        yield running


def test_clone_and_migrate(control: Control) -> None:
    tmp = control.tmp
    control.ok("cluster", "create", "prod")
    control.ok("cluster", "create", "dr")
    for n, cluster in ((1, "prod"), (2, "prod"), (3, "dr")):
        control.ok("host", "add", f"esx{n}", "--cluster", cluster, "--hardware-uuid",
                   f"4c4c4544-0000-1000-8000-00000000000{n}", "--api-url",
                   f"https://esx{n}:8443")
    control.ok("datastore", "add", "ds1", "--path", str(tmp / "ds1"), "--cluster", "prod")
    control.ok("datastore", "add", "ds2", "--path", str(tmp / "ds2"), "--cluster", "dr")
    control.ok("kp", "add-native", "nkp")
    control.ok("kp", "ack-no-backup", "nkp")
    control.ok("policy", "create", "native-enc", "--provider", "nkp")
    control.ok("vm", "create", "web1", "--host", "esx1", "--datastore", "ds1", "--disk", "1M",
               "--policy", "native-enc")
    data = os.urandom(20_000)
    source = tmp / "data.bin"
    source.write_bytes(data)
    control.ok("vm", "disk", "write", "web1", "0", source, "--offset", "4096")

    def read(name: str) -> bytes:
        return control.ok("vm", "disk", "read", name, "0", "--offset", "4096", "--length",
                          str(len(data))).stdout

    made = control.ok("vm", "clone", "web1", "web2", "--json").json
    assert made["name"] == "web2" and made["encrypted"] is True
    assert read("web2") == data
    line = control.ok("vm", "clone", "web1", "web3", "--quiet")
    assert "cloned web1 as web3" in line.stdout.decode()

    control.fails("vm", "clone", "web1", "web2", code="Conflict", phrase="already exists")
    control.fails("vm", "clone", "web9", "x", code="NotFound", phrase="no vm named")
    control.fails("vm", "migrate", "web1", "--host", "esx1", code="Conflict",
                  phrase="already registered")
    control.fails("vm", "migrate", "web1", "--host", "esx9", code="NotFound",
                  phrase="no host named")

    inside = control.ok("vm", "migrate", "web2", "--host", "esx2", "--json").json
    assert inside["host_id"] != made["host_id"]
    assert read("web2") == data
    across = control.ok("vm", "migrate", "web2", "--host", "esx3")
    assert "migrated web2 to esx3" in across.stdout.decode()
    assert read("web2") == data
    assert not (tmp / "ds1" / made["instance_uuid"]).exists()
    assert (tmp / "ds2" / made["instance_uuid"] / "vm.json").exists()
    assert read("web1") == data
    # Across, as a job followed to its end: --json prints the VM where it landed, and
    # the job is listed with its operation.
    landed = control.ok("vm", "migrate", "web3", "--host", "esx3", "--json").json
    assert landed["name"] == "web3" and landed["registered"] and not landed["locked"]
    assert read("web3") == data
    jobs = control.ok("vm", "jobs", "web3", "--json").json
    assert [(j["type"], j["state"]) for j in jobs] == [("vm.migrate", "succeeded")]
