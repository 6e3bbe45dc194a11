"""The standard key provider against two real vmcrypt key servers.

The two servers share one SQLite database file and one master key: two KMS nodes over
shared storage, a legitimate deployment, and what lets a key created through one node be
fetched through the other after a failover.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kmip.test_client import start_server
from vmcrypt.kmip.client import KmipClient
from vmcrypt.kmip.tags import State
from vmcrypt.kms.server import KmsConfig, KmsServer
from vmcrypt.pki import PkiLayout, client_context, init_pki
from vmcrypt.providers import (
    COMPONENT_VM,
    KekRef,
    KeyMissing,
    KeyOwner,
    KeyServerUnreachable,
    KmsServerConfig,
    ProviderError,
    StandardKeyProvider,
)

OWNER = KeyOwner(COMPONENT_VM, "vm-01", "5029a1c2-3f4e-4b5a-9c8d-7e6f5a4b3c2d")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    return init_pki(tmp_path_factory.mktemp("pki"), key_type="ec")


class FakeClock:
    """A monotonic clock the test moves by hand (``retry_after`` without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Cluster:
    """Two KMS nodes on one database; ``stop``/``restart`` keep each node's port."""

    pki: PkiLayout
    database: Path
    master_key: bytes
    ports: list[int]
    nodes: list[KmsServer | None]

    def start(self, n: int) -> None:
        config = KmsConfig(database=self.database, cert_file=self.pki.server.cert,
                           key_file=self.pki.server.key, ca_file=self.pki.ca.cert,
                           port=self.ports[n])
        node = start_server(config, self.master_key)
        self.ports[n] = node.address[1]
        self.nodes[n] = node

    def stop(self, n: int) -> None:
        node, self.nodes[n] = self.nodes[n], None
        if node is not None:
            node.shutdown()

    def configs(self) -> list[KmsServerConfig]:
        admin = self.pki.clients["admin"]
        return [KmsServerConfig("127.0.0.1", port, ca_file=self.pki.ca.cert,
                                cert_file=admin.cert, key_file=admin.key)
                for port in self.ports]

    def client(self, n: int) -> KmipClient:
        admin = self.pki.clients["admin"]
        context = client_context(ca_file=self.pki.ca.cert, cert_file=admin.cert,
                                 key_file=admin.key)
        return KmipClient("127.0.0.1", self.ports[n], ssl_context=context, timeout=2)


@pytest.fixture
def cluster(pki: PkiLayout, tmp_path: Path) -> Iterator[Cluster]:
    kms = Cluster(pki, tmp_path / "shared.db", os.urandom(32), [0, 0], [None, None])
    kms.start(0)
    kms.start(1)
    yield kms
    kms.stop(0)
    kms.stop(1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def provider(cluster: Cluster, clock: FakeClock) -> Iterator[StandardKeyProvider]:
    p = StandardKeyProvider("kms-cluster", cluster.configs(), product_version="0.1.0",
                            timeout=1.0, retry_after=30.0, clock=clock)
    yield p
    p.close()


def _attributes(client: KmipClient, uid: str) -> dict[str, object]:
    return {a.name: a.python for a in client.get_attributes(uid)}


def test_new_kek_sets_creation_and_owner_attributes(provider: StandardKeyProvider,
                                                    cluster: Cluster,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vmcrypt.kms.audit")
    plain = provider.new_kek()
    # x-Vendor & co. travel in the Create template: no Add Attribute without an owner.
    assert not [r for r in caplog.records if r.getMessage().startswith("AddAttribute")]
    tagged = provider.new_kek(owner=OWNER)
    adds = [r for r in caplog.records if r.getMessage().startswith("AddAttribute")]
    assert len(adds) == 3
    assert plain.ref.key_id is not None and len(plain.kek) == 32
    assert tagged.ref.key_id is not None
    with cluster.client(0) as client:
        created = _attributes(client, plain.ref.key_id)
        assert created["x-Vendor"] == "vmcrypt project"
        assert created["x-Product"] == "vmcrypt"
        assert created["x-Product_Version"] == "0.1.0"
        assert created["State"] == State.ACTIVE
        assert "x-Component" not in created
        used = _attributes(client, tagged.ref.key_id)
        assert client.get_key(tagged.ref.key_id) == tagged.kek
    assert (used["x-Component"], used["x-Name"], used["x-Identifier"]) == (
        COMPONENT_VM, "vm-01", OWNER.identifier)
    assert used["x-Vendor"] == "vmcrypt project"


def test_vendor_and_product_are_configurable(cluster: Cluster, clock: FakeClock) -> None:
    p = StandardKeyProvider("p", cluster.configs(), product_version="8.0.3", vendor="Acme",
                            product="Acme VMs", clock=clock)
    uid = p.new_kek().ref.key_id
    assert uid is not None
    with cluster.client(1) as client:
        got = _attributes(client, uid)
    assert (got["x-Vendor"], got["x-Product"], got["x-Product_Version"]) == (
        "Acme", "Acme VMs", "8.0.3")
    p.close()


def test_set_owner_adds_then_modifies(provider: StandardKeyProvider, cluster: Cluster) -> None:
    new = provider.new_kek()
    provider.set_owner(new.ref, OWNER)
    provider.set_owner(new.ref, KeyOwner(COMPONENT_VM, "vm-01-renamed", OWNER.identifier))
    assert new.ref.key_id is not None
    with cluster.client(0) as client:
        names = client.get_attributes(new.ref.key_id, ["x-Component", "x-Name", "x-Identifier"])
    # Modified in place: still one instance of each.
    assert sorted((a.name, a.python) for a in names) == [
        ("x-Component", COMPONENT_VM), ("x-Identifier", OWNER.identifier),
        ("x-Name", "vm-01-renamed")]


def test_get_kek_and_get_keks(provider: StandardKeyProvider) -> None:
    keks = [provider.new_kek() for _ in range(3)]
    assert provider.get_kek(keks[0].ref) == keks[0].kek
    refs = [k.ref for k in reversed(keks)]
    assert provider.get_keks(refs) == [k.kek for k in reversed(keks)]
    assert provider.get_keys(refs) == provider.get_keks(refs)
    assert provider.get_keks([]) == []


def test_unknown_key_is_key_missing(provider: StandardKeyProvider) -> None:
    with pytest.raises(KeyMissing, match=r"key 'no-such-key' is missing in key server "
                                         r"127\.0\.0\.1:\d+") as caught:
        provider.get_kek(KekRef(key_id="no-such-key"))
    assert caught.value.event == "kms.key.missing"
    good = provider.new_kek()
    with pytest.raises(KeyMissing, match="'gone'"):
        provider.get_keks([good.ref, KekRef(key_id="gone")])
    with pytest.raises(KeyMissing, match="wrapped KEK"):
        provider.get_kek(KekRef(wrapped_kek=b"\x00" * 40))


def test_destroyed_key_is_key_missing(provider: StandardKeyProvider, cluster: Cluster) -> None:
    new = provider.new_kek()
    assert new.ref.key_id is not None
    with cluster.client(0) as client:
        client.revoke(new.ref.key_id)
        client.destroy(new.ref.key_id)
    with pytest.raises(KeyMissing, match=new.ref.key_id):
        provider.get_kek(new.ref)


def test_other_refusals_are_provider_errors(provider: StandardKeyProvider,
                                            cluster: Cluster) -> None:
    new = provider.new_kek()
    # Activating an Active key: the server refuses with Illegal Operation.
    with pytest.raises(ProviderError, match=r"refused to activate: Activate failed: "
                                            r"Illegal Operation: .*Active") as caught:
        provider._run(lambda c: c.activate(str(new.ref.key_id)), "activate")
    assert not isinstance(caught.value, KeyMissing | KeyServerUnreachable)
    with cluster.client(0) as client:
        short = client.register_symmetric_key(os.urandom(16))
    with pytest.raises(ProviderError, match="128 bits long; a KEK is AES-256"):
        provider.get_kek(KekRef(key_id=short))


def test_failover_to_the_second_server(provider: StandardKeyProvider, cluster: Cluster) -> None:
    before = provider.new_kek(owner=OWNER)
    assert provider.get_kek(before.ref) == before.kek
    cluster.stop(0)
    started = time.monotonic()
    assert provider.get_kek(before.ref) == before.kek
    after = provider.new_kek(owner=OWNER)
    assert provider.get_keks([before.ref, after.ref]) == [before.kek, after.kek]
    assert time.monotonic() - started < 3
    with cluster.client(1) as client:
        assert _attributes(client, str(after.ref.key_id))["x-Name"] == "vm-01"


def test_all_servers_down(provider: StandardKeyProvider, cluster: Cluster) -> None:
    ref = provider.new_kek().ref
    cluster.stop(0)
    cluster.stop(1)
    started = time.monotonic()
    with pytest.raises(KeyServerUnreachable) as caught:
        provider.get_kek(ref)
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert f"127.0.0.1:{cluster.ports[0]}" in message
    assert f"127.0.0.1:{cluster.ports[1]}" in message
    assert caught.value.event == "kms.connection.failed"
    assert "refused" in message


def test_retry_after_brings_a_restarted_server_back(provider: StandardKeyProvider,
                                                    cluster: Cluster,
                                                    clock: FakeClock) -> None:
    ref = provider.new_kek().ref
    kek = provider.get_kek(ref)
    cluster.stop(0)
    assert provider.get_kek(ref) == kek  # node 0 marked down at t=1000, node 1 answers
    cluster.start(0)
    cluster.stop(1)
    clock.now += 10  # node 0 is still skipped, node 1 now fails too
    with pytest.raises(KeyServerUnreachable, match="skipped for another 20 s"):
        provider.get_kek(ref)
    clock.now += 21  # past node 0's retry_after; node 1 stays skipped
    assert provider.get_kek(ref) == kek
    cluster.start(1)
    clock.now += 40
    cluster.stop(0)  # the last good node (0) fails; node 1 is back in rotation
    assert provider.get_kek(ref) == kek


def test_health_states(provider: StandardKeyProvider, cluster: Cluster) -> None:
    healthy = provider.health()
    assert healthy.state == "healthy" and healthy.kind == "standard"
    assert healthy.warnings == ()
    for server in healthy.servers:
        assert server.reachable and server.tls_ok and server.error is None
        assert server.latency_ms is not None and server.latency_ms >= 0
        assert server.version is not None and server.version.startswith("KMIP 1.4")
    cluster.stop(0)
    degraded = provider.health()
    assert degraded.state == "degraded"
    down, up = degraded.servers
    assert not down.reachable and not down.tls_ok and "refused" in str(down.error)
    assert up.reachable and up.tls_ok
    assert len(degraded.warnings) == 1 and down.address in degraded.warnings[0]
    cluster.stop(1)
    assert provider.health().state == "unreachable"


def test_health_reports_tls_failure(cluster: Cluster, tmp_path: Path,
                                    clock: FakeClock) -> None:
    stranger = init_pki(tmp_path / "stranger", key_type="ec")
    config = KmsServerConfig("127.0.0.1", cluster.ports[0], ca_file=stranger.ca.cert,
                             cert_file=stranger.clients["admin"].cert,
                             key_file=stranger.clients["admin"].key)
    p = StandardKeyProvider("p", [config], product_version="1", clock=clock)
    report = p.health()
    assert report.state == "unreachable"
    [server] = report.servers
    assert server.reachable and not server.tls_ok
    assert "certificate" in str(server.error)


def test_repr_and_messages_never_show_keys(provider: StandardKeyProvider) -> None:
    new = provider.new_kek()
    assert new.kek.hex() not in repr(new) and "kms-cluster" in repr(provider)
    with pytest.raises(KeyMissing) as caught:
        provider.get_kek(KekRef(key_id="x"))
    assert new.kek.hex() not in str(caught.value)


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="at least one key server"):
        StandardKeyProvider("p", [], product_version="1")
