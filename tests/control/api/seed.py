"""Objects every route of the table can act on, created through the API as admin.

The IDs are documented at the top of :mod:`tests.control.api.routes`; :func:`call`
fills the per-caller ones (``spare_vm``, ``enrol_token``, ``csr``) for caller ``n``.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.control.api.conftest import auth
from tests.control.api.routes import Ids, Route
from vmcrypt.host.datastore import Datastore as HostDatastore
from vmcrypt.host.keycache import KeyCache
from vmcrypt.host.vm import create_vm

API = "/api/v1"
DISK_SIZE = 1 << 16
CALLERS = 4  # no credentials, and the three built-in roles


async def seed(client: httpx.AsyncClient, admin_token: str, backup: tuple[bytes, str],
               datastore: Path | None = None) -> Ids:
    """Create the objects of the table; VMs only when ``datastore`` (hosts) is given."""
    admin = auth(admin_token)

    async def post(path: str, body: object, status: int = 201) -> dict[str, object]:
        response = await client.post(f"{API}{path}", json=body, headers=admin)
        assert response.status_code == status, response.text
        return dict(response.json())

    async def new(path: str, body: object) -> int:
        return int(str((await post(path, body))["id"]))

    ids: Ids = {"disk": 0, "disk_size": DISK_SIZE}
    ids["cluster"] = await new("/clusters", {"name": "seed"})
    ids["host"] = await new("/hosts", {
        "name": "seed", "hardware_uuid": str(uuid.uuid4()), "cluster_id": ids["cluster"],
        "api_url": "https://seed:8443"})
    ids["other_host"] = await new("/hosts", {
        "name": "seed-2", "hardware_uuid": str(uuid.uuid4()), "cluster_id": ids["cluster"],
        "api_url": "https://seed-2:8443"})
    ids["datastore"] = await new("/datastores", {
        "name": "seed", "path": str(datastore or "/srv/seed"), "cluster_id": ids["cluster"]})
    standard = await post("/key-providers/standard", {
        "name": "seed-kmip", "kms_servers": [{"name": "a", "address": "kms"},
                                             {"name": "b", "address": "kms-2"}]})
    ids["standard"] = int(standard["id"])
    ids["standard_server"] = int(standard["kms_servers"][1]["id"])
    ids["native"] = await new("/key-providers/native", {"name": "seed-native"})
    ids["policy"] = await new("/storage-policies", {"name": "seed", "encryption": False})
    ids["user"] = await new("/users", {"name": "seed", "role": "Read-only"})
    ids["backup"] = base64.b64encode(backup[0]).decode("ascii")
    ids["backup_password"] = backup[1]
    if datastore is None:
        return ids

    ids["enc_provider"] = await new("/key-providers/native", {"name": "seed-enc"})
    await post(f"/key-providers/{ids['enc_provider']}/acknowledge-no-backup", None, 200)
    await post(f"/key-providers/{ids['enc_provider']}/default", None, 200)
    ids["enc_policy"] = await new("/storage-policies", {
        "name": "seed-enc", "encryption": True, "key_provider_id": ids["enc_provider"]})

    async def vm(name: str, policy: int | None = None) -> int:
        return await new("/vms", {"name": name, "datastore_id": ids["datastore"],
                                  "host_id": ids["host"], "disks": [DISK_SIZE],
                                  "storage_policy_id": policy})

    ids["vm"] = await vm("seed-vm")
    ids["enc_vm"] = await vm("seed-enc-vm", ids["enc_policy"])
    ids["spare_vms"] = [await vm(f"seed-spare-{n}") for n in range(CALLERS)]
    ids["unreg_vm"] = await vm("seed-unreg-vm", ids["enc_policy"])
    await post(f"/vms/{ids['unreg_vm']}/unregister", None, 200)
    ids["found_uuid"] = create_vm(HostDatastore(datastore), KeyCache(), name="seed-found",
                                  disk_sizes=[DISK_SIZE]).instance_uuid
    ids["job_vm"] = await vm("seed-job-vm")
    job = await post(f"/vms/{ids['job_vm']}/encrypt", {"component": "home"}, 202)
    ids["job"] = job["id"]
    enrol_tokens = [await post("/enrolment-tokens", {"host_name": f"enrol-{n}"})
                    for n in range(CALLERS)]
    ids["enrol_tokens"] = [t["token"] for t in enrol_tokens]
    return ids


def _csr(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def for_caller(ids: Ids, n: int) -> Ids:
    """The IDs as caller ``n`` sees them: its own spare VM, enrolment token and CSR."""
    mine: Ids = {**ids, "n": n}
    if "spare_vms" in ids:
        mine["spare_vm"] = ids["spare_vms"][n]
    if "enrol_tokens" in ids:
        mine["enrol_token"] = ids["enrol_tokens"][n]
        mine["csr"] = _csr(f"enrol-{n}")
    return mine


async def call(client: httpx.AsyncClient, route: Route, ids: Ids,
               headers: dict[str, str]) -> httpx.Response:
    """Send ``route``'s request with ``ids`` (already :func:`for_caller`'d)."""
    path = API + route.path.format(**ids)
    body = route.body(ids) if route.body is not None else None
    if isinstance(body, bytes):
        return await client.request(route.method, path, content=body, headers=headers)
    return await client.request(route.method, path, json=body, headers=headers)
