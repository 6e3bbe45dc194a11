"""The table of every API route: what it needs, and a request that succeeds.

One row per route. The privilege matrix, the audit tests and the OpenAPI test are all
generated from it, and a test fails when the app has a route without a row — so adding
a route means appending a row to :data:`ROUTES` (plain ``_r(...)`` calls, in any order).

A row is ``_r(method, path, privileges, ok_status, body)``:

- ``path`` is formatted with the seeded IDs below (``"/vms/{enc_vm}/unlock"``); a query
  string may follow (``"/vms/{vm}/disks/{disk}/data?offset=0&length=4096"``);
- ``body(ids)`` returns the JSON body, or ``bytes`` sent as the raw request body;
  ``ids["n"]`` is the caller's index (0..3), for names that must differ per caller;
- ``public=True`` marks a route that takes no bearer token (host enrolment): every
  caller, even without credentials, gets ``ok``.

The IDs seeded before each row runs (:func:`tests.control.api.seed.seed`, as admin, over
an app with an in-process host connector, so every route is mounted):

==================  ===================================================================
``cluster``         a cluster holding ``host`` and ``datastore``
``host``            host ``seed`` of ``cluster``, an in-process agent (empty key cache)
``other_host``      host ``seed-2`` of the same cluster (a migration target)
``datastore``       the cluster's datastore (a temporary folder the hosts share)
``standard``        a standard key provider (its KMS is not running: never reached),
                    with two KMS servers; ``standard_server`` is the second one's ID
``native``          a native provider, not backed up (for the backup routes)
``enc_provider``    the default provider: native, usable (risk acknowledged), on the hosts
``policy``          a storage policy without encryption
``enc_policy``      a storage policy encrypting with ``enc_provider``
``vm``              an unencrypted VM on ``host``, one disk (index ``disk``)
``enc_vm``          a VM encrypted with ``enc_provider`` (home and one disk) on ``host``
``spare_vm``        an unencrypted VM of its own **per caller**: for routes that destroy
                    or move the VM, so each allowed caller finds one
``unreg_vm``        a VM encrypted with ``enc_provider``, unregistered (files on ``datastore``)
``found_uuid``      the instance UUID of a clear VM on ``datastore`` the control plane
                    does not know (made by the host library directly)
``job_vm``          a VM whose home is being encrypted by ``job``
``job``             a control-plane job (encrypt ``job_vm`` home), never polled yet
``disk``            ``0``: the disk index of ``vm`` and ``enc_vm``
``disk_size``       the size of that disk in bytes (64 KiB)
``user``            a Read-only user
``backup``          a native provider backup (base64) and ``backup_password`` its password
``enrol_token``     a fresh enrolment token **per caller** for a new host ``enrol-{n}``
``csr``             a PEM CSR made for that call (a new EC key)
==================  ===================================================================

There is no running KMS: a row that needs one (a standard-provider VM) must bring its
own fixture rather than slow every row down.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmcrypt.control import privileges as p

Ids = dict[str, Any]


@dataclass(frozen=True)
class Route:
    """One route: method, path template, body maker, privileges, status on success."""

    method: str
    path: str
    privileges: frozenset[str]
    ok: int
    body: Callable[[Ids], Any] | None = None
    public: bool = False

    @property
    def writes(self) -> bool:
        return self.method not in ("GET", "HEAD")

    def __str__(self) -> str:
        return f"{self.method} {self.path.split('?', 1)[0]}"


def _r(method: str, path: str, privs: set[str], ok: int,
       body: Callable[[Ids], Any] | None = None, *, public: bool = False) -> Route:
    return Route(method, path, frozenset(privs), ok, body, public)


READ = {p.SYSTEM_READ}
KEYS = {p.CRYPTO_MANAGE_KEY_SERVERS}
DATA = {p.VM_GUEST_DATA, p.CRYPTO_ACCESS}

ROUTES: tuple[Route, ...] = (
    _r("POST", "/clusters", {p.HOST_CREATE_CLUSTER}, 201, lambda ids: {"name": f"new-{ids['n']}"}),
    _r("GET", "/clusters", READ, 200),
    _r("GET", "/clusters/{cluster}", READ, 200),
    _r("POST", "/hosts", {p.HOST_ADD_TO_CLUSTER}, 201, lambda ids: {
        "name": f"new-{ids['n']}", "hardware_uuid": str(uuid.uuid4()), "cluster_id": ids["cluster"],
        "api_url": "https://new:8443"}),
    _r("GET", "/hosts", READ, 200),
    _r("GET", "/hosts/{host}", READ, 200),
    _r("POST", "/hosts/{host}/reconnect", {p.CRYPTO_REGISTER_HOST}, 200),
    _r("POST", "/datastores", {p.DATASTORE_CONFIG}, 201, lambda ids: {
        "name": f"new-{ids['n']}", "path": "/srv/new", "host_id": ids["host"]}),
    _r("GET", "/datastores", READ, 200),
    _r("GET", "/datastores/{datastore}", READ, 200),
    _r("POST", "/key-providers/standard", KEYS, 201, lambda ids: {
        "name": f"new-{ids['n']}", "kms_servers": [{"name": "a", "address": "kms"}]}),
    _r("POST", "/key-providers/native", KEYS, 201, lambda ids: {"name": f"new-{ids['n']}"}),
    _r("GET", "/key-providers", READ, 200),
    _r("GET", "/key-providers/{standard}", READ, 200),
    _r("POST", "/key-providers/{standard}/default", KEYS, 200),
    _r("DELETE", "/key-providers/{standard}", KEYS, 204),
    _r("POST", "/key-providers/{native}/backup", KEYS, 200,
       lambda ids: {"password": "correct horse battery"}),
    _r("POST", "/key-providers/{native}/acknowledge-no-backup", KEYS, 200),
    _r("POST", "/key-providers/restore", KEYS, 200, lambda ids: {
        "backup": ids["backup"], "password": ids["backup_password"], "dry_run": True}),
    _r("POST", "/storage-policies",
       {p.CRYPTO_MANAGE_ENCRYPTION_POLICY, p.STORAGE_PROFILE_UPDATE}, 201,
       lambda ids: {"name": f"new-{ids['n']}", "encryption": True}),
    _r("GET", "/storage-policies", READ, 200),
    _r("GET", "/storage-policies/{policy}", READ, 200),
    _r("POST", "/users", {p.AUTHORIZATION_MODIFY_PERMISSIONS}, 201,
       lambda ids: {"name": f"new-{ids['n']}", "role": p.READ_ONLY}),
    _r("GET", "/users", READ, 200),
    _r("GET", "/users/{user}", READ, 200),
    _r("POST", "/users/{user}/tokens", {p.AUTHORIZATION_MODIFY_PERMISSIONS}, 201,
       lambda ids: {"label": "new"}),
    _r("GET", "/events", READ, 200),
    # Host enrolment: the token route is an administrator's; /enrol* are the hosts'.
    _r("POST", "/enrolment-tokens", {p.CRYPTO_REGISTER_HOST}, 201,
       lambda ids: {"host_name": f"token-{ids['n']}"}),
    _r("GET", "/enrol/ca", set(), 200, public=True),
    _r("POST", "/enrol", set(), 200, lambda ids: {
        "token": ids["enrol_token"], "csr": ids["csr"], "hardware_uuid": str(uuid.uuid4()),
        "address": "127.0.0.1", "api_url": "https://127.0.0.1:8443"}, public=True),
    # VMs and jobs (mounted when the app has a host connector).
    _r("POST", "/vms", {p.VM_CREATE, p.CRYPTO_ENCRYPT_NEW}, 201, lambda ids: {
        "name": f"new-{ids['n']}", "datastore_id": ids["datastore"], "host_id": ids["host"],
        "disks": [4096], "storage_policy_id": ids["enc_policy"]}),
    _r("GET", "/vms", READ, 200),
    _r("GET", "/vms/{enc_vm}", READ, 200),
    _r("POST", "/vms/{spare_vm}/unregister", {p.VM_UNREGISTER, p.CRYPTO_REGISTER_VM}, 200),
    _r("DELETE", "/vms/{spare_vm}", {p.VM_DELETE}, 204),
    _r("POST", "/vms/{enc_vm}/unlock", {p.CRYPTO_REGISTER_VM}, 200),
    _r("POST", "/vms/{vm}/encrypt", {p.CRYPTO_ENCRYPT}, 202, lambda ids: {"component": "home"}),
    _r("POST", "/vms/{enc_vm}/decrypt", {p.CRYPTO_DECRYPT}, 202,
       lambda ids: {"component": ids["disk"]}),
    _r("POST", "/vms/{enc_vm}/rekey", {p.CRYPTO_RECRYPT}, 202, lambda ids: {"deep": True}),
    _r("GET", "/vms/{enc_vm}/disks/{disk}/data?offset=0&length=4096", DATA, 200),
    _r("PUT", "/vms/{enc_vm}/disks/{disk}/data?offset=4096", DATA, 200,
       lambda ids: b"matrix" * 100),
    _r("GET", "/jobs", READ, 200),
    _r("GET", "/jobs/{job}", READ, 200),
    _r("POST", "/jobs/{job}/cancel", {p.CRYPTO_ACCESS}, 202),
    _r("POST", "/vms/{spare_vm}/clone", {p.VM_CLONE, p.CRYPTO_CLONE}, 202,
       lambda ids: {"name": f"seed-clone-{ids['n']}"}),
    _r("GET", "/vms/{job_vm}/jobs/{job}", READ, 200),
    # Within the cluster (registration only; more moves: tests/control/api/test_vm_moves.py).
    _r("POST", "/vms/{spare_vm}/migrate", {p.RESOURCE_COLD_MIGRATE, p.CRYPTO_MIGRATE}, 200,
       lambda ids: {"host_id": ids["other_host"]}),
    # New rows go here (append; keep one row per route).
    # Add disk: AddNewDisk always; Cryptographer.AddDisk only for an encrypted disk (a
    # second dependency, tested in test_vm_components.py) — a clear VM here.
    _r("POST", "/vms/{vm}/disks", {p.VM_ADD_NEW_DISK}, 201, lambda ids: {"size": 4096}),
    _r("POST", "/vms/{enc_vm}/vtpm", {p.VM_CHANGE_SETTINGS, p.CRYPTO_ENCRYPT}, 201),
    _r("DELETE", "/vms/{enc_vm}/vtpm", {p.VM_CHANGE_SETTINGS, p.CRYPTO_DECRYPT}, 200),
    # Register: a known, unregistered VM; a VM found on the datastore.
    _r("POST", "/vms/{unreg_vm}/register", {p.VM_REGISTER, p.CRYPTO_REGISTER_VM}, 200,
       lambda ids: {"host_id": ids["other_host"]}),
    _r("POST", "/vms/register", {p.VM_REGISTER, p.CRYPTO_REGISTER_VM}, 201,
       lambda ids: {"datastore_id": ids["datastore"], "instance_uuid": ids["found_uuid"],
                    "host_id": ids["host"]}),
    # Health from the monitors' board (tests/control/api/test_health.py).
    _r("GET", "/key-providers/{standard}/health", READ, 200),
    _r("POST", "/key-providers/{standard}/kms-servers", KEYS, 201, lambda ids: {
        "name": f"c-{ids['n']}", "address": "kms-3"}),
    _r("DELETE", "/key-providers/{standard}/kms-servers/{standard_server}", KEYS, 204),
    # Web sessions (sessions.py): logout, and setting a password. POST /sessions (log in)
    # is a plain route outside this table — its credential is a password, which no seeded
    # user has; tests/control/test_passwords.py covers it.
    _r("DELETE", "/sessions/current", {p.SYSTEM_ANONYMOUS}, 200),
    _r("PUT", "/users/{user}/password", {p.AUTHORIZATION_MODIFY_PERMISSIONS}, 204,
       lambda ids: {"password": "a matrix password"}),
    # Trusted key providers (trusted_providers.py). The seed has no Trust Authority: the
    # listing asks the authorities of registered trusted providers (none), registering
    # is offline (verify false); the real flows are in
    # tests/control/api/test_trusted_providers.py. A host without one reports "unset".
    _r("GET", "/key-providers/trusted", READ, 200),
    _r("GET", "/key-providers/trusted/published", READ, 200),
    _r("POST", "/key-providers/trusted", KEYS, 201, lambda ids: {
        "name": f"tp-{ids['n']}", "url": "https://127.0.0.1:1", "ca_file": "/srv/ta/ca.pem",
        "cert_file": "/srv/ta/control.pem", "key_file": "/srv/ta/control.key",
        "verify": False}),
    _r("PUT", "/clusters/{cluster}/default-key-provider", {p.HOST_EDIT_CLUSTER, *KEYS}, 200,
       lambda ids: {"key_provider_id": ids["enc_provider"]}),
    _r("GET", "/hosts/{host}/attestation", READ, 200),
    _r("POST", "/hosts/{host}/attestation", {p.CRYPTO_REGISTER_HOST}, 200),
)
