"""The API in-process, with the real provider pool against an in-process KMS."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from vmcrypt.kms.server import KmsServer
from vmcrypt.trust.config import KmsServer as KmsServerEntry
from vmcrypt.trust.measure import build_evidence, public_key_pem
from vmcrypt.trust.service import TrustService

GOOD = {"vmcrypt": "a" * 64, "config": "b" * 64}
Peer = Callable[[str | None], TestClient]


class Host:
    def __init__(self, as_peer: Peer, name: str) -> None:
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.http = as_peer(name)

    def register(self, admin: TestClient) -> None:
        answer = admin.post("/api/v1/hosts", json={
            "name": self.name, "hardware_uuid": f"u-{self.name}",
            "public_key_pem": public_key_pem(self.key)})
        assert answer.status_code == 201, answer.text

    def evidence(self, measurements: dict[str, str] = GOOD) -> dict[str, str]:
        nonce = self.http.post("/api/v1/attestation/nonce").json()["nonce"]
        return build_evidence(key=self.key, host_name=self.name,
                              hardware_uuid=f"u-{self.name}", nonce=nonce,
                              measurements=measurements)

    def token(self) -> str:
        answer = self.http.post("/api/v1/attestation/token", json=self.evidence())
        assert answer.status_code == 200, answer.text
        return str(answer.json()["token"])


@pytest.fixture
def setup(as_peer: Peer, kms_entry: KmsServerEntry) -> tuple[TestClient, Host, Host]:
    admin = as_peer("admin")
    assert admin.post("/api/v1/baselines", json={"name": "b1", "measurements": GOOD}
                      ).status_code == 201
    server = {k: v for k, v in vars(kms_entry).items()}
    answer = admin.post("/api/v1/key-providers", json={"name": "p1", "servers": [server]})
    assert answer.status_code == 201, answer.text
    answer = admin.post("/api/v1/key-providers", json={"name": "p2", "servers": [server]})
    assert answer.status_code == 201, answer.text
    a, b = Host(as_peer, "host-a"), Host(as_peer, "host-b")
    a.register(admin)
    b.register(admin)
    return admin, a, b


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_kek_round_trip_and_provider_binding(setup: tuple[TestClient, Host, Host]) -> None:
    _, a, _ = setup
    token = a.token()
    made = a.http.post("/api/v1/key-providers/p1/keks", headers=_bearer(token))
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    body = made.json()
    kek = base64.b64decode(body["kek"])
    again = a.http.post("/api/v1/key-providers/p1/unwrap", headers=_bearer(token),
                        json={"kek_ciphertext": body["kek_ciphertext"]})
    assert again.status_code == 200 and base64.b64decode(again.json()["kek"]) == kek
    # p2 shares nothing with p1 but the KMS: its AAD names p2, so p1's ciphertext fails.
    other = a.http.post("/api/v1/key-providers/p2/unwrap", headers=_bearer(token),
                        json={"kek_ciphertext": body["kek_ciphertext"]})
    assert other.status_code == 400 and other.json()["error"] == "KekCiphertextInvalid"
    assert body["kek_ciphertext"] not in other.text
    for bad in ("!!notbase64", base64.b64encode(b"\x01" * 61).decode(),
                base64.b64encode(b"\x02" + base64.b64decode(body["kek_ciphertext"])[1:]).decode()):
        refused = a.http.post("/api/v1/key-providers/p1/unwrap", headers=_bearer(token),
                              json={"kek_ciphertext": bad})
        assert refused.status_code == 400, refused.text


def test_tokens_are_required_and_bound_to_their_host(setup: tuple[TestClient, Host, Host],
                                                     service: TrustService) -> None:
    admin, a, b = setup
    missing = a.http.post("/api/v1/key-providers/p1/keks")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    token = a.token()
    stolen = b.http.post("/api/v1/key-providers/p1/keks", headers=_bearer(token))
    assert stolen.status_code == 401 and "another host" in stolen.json()["detail"]
    unknown = a.http.post("/api/v1/key-providers/nope/keks", headers=_bearer(token))
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["detail"]
    assert admin.delete("/api/v1/hosts/host-a").status_code == 204
    gone = a.http.post("/api/v1/key-providers/p1/keks", headers=_bearer(token))
    assert gone.status_code == 401 and "no longer registered" in gone.json()["detail"]


def test_attestation_needs_the_hosts_own_certificate(setup: tuple[TestClient, Host, Host]
                                                     ) -> None:
    _, a, b = setup
    evidence = a.evidence()
    refused = b.http.post("/api/v1/attestation/token", json=evidence)
    assert refused.status_code == 403
    assert refused.json()["reason"] == "the client certificate ('host-b') is not the host's"


def test_admin_only_and_bad_input(setup: tuple[TestClient, Host, Host], as_peer: Peer
                                  ) -> None:
    admin, a, _ = setup
    for method, path in [("GET", "/baselines"), ("GET", "/hosts"), ("GET", "/events"),
                         ("POST", "/key-providers"), ("DELETE", "/baselines/b1")]:
        answer = a.http.request(method, f"/api/v1{path}", json={})
        assert answer.status_code == 403, (method, path)
    anonymous = as_peer(None).post("/api/v1/attestation/nonce")
    assert anonymous.status_code == 403 and "client certificate" in anonymous.json()["detail"]
    bad = admin.post("/api/v1/baselines", json={"name": "b2", "measurements": {"vmcrypt": "x"}})
    assert bad.status_code == 400 and "exactly the measurements" in bad.json()["detail"]
    assert admin.post("/api/v1/baselines", json={"name": "b1", "measurements": GOOD}
                      ).status_code == 409
    assert admin.delete("/api/v1/baselines/zz").status_code == 404
    assert admin.post("/api/v1/hosts", json={"name": "h", "hardware_uuid": "u",
                                             "public_key_pem": "x"}).status_code == 400
    junk = a.http.post("/api/v1/attestation/token", content=b"{oops",
                       headers={"content-type": "application/json"})
    assert junk.status_code == 422
    secret = "c2VjcmV0LWNpcGhlcnRleHQ=" * 60
    echoed = a.http.post("/api/v1/key-providers/p1/unwrap", json={"kek_ciphertext": secret},
                         headers=_bearer(a.token()))
    assert echoed.status_code == 422 and secret not in echoed.text
    malformed = a.http.post("/api/v1/attestation/token",
                            json={"statement": "AAAA", "signature": "AAAA"})
    assert malformed.status_code == 400 and "statement" in malformed.json()["detail"]


def test_kms_down_is_503_and_an_event(setup: tuple[TestClient, Host, Host], kms: KmsServer
                                      ) -> None:
    admin, a, _ = setup
    token = a.token()
    kms.shutdown()
    down = a.http.post("/api/v1/key-providers/p1/keks", headers=_bearer(token))
    assert down.status_code == 503
    assert down.json()["detail"].startswith("key provider unavailable: 'p1'")
    events = admin.get("/api/v1/events", params={"type": "key_provider."}).json()
    assert events[-1]["type"] == "key_provider.unavailable" and events[-1]["host"] == "host-a"
    hosts = admin.get("/api/v1/hosts").json()
    assert hosts[0]["last_attestation"]["type"] == "attestation.passed"
