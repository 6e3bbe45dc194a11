"""The control plane database holds key IDs, sealed and wrapped keys — never a key.

Two views of one promise: the schema has no column meant for key material (every binary
column is a named ciphertext), and after a realistic scenario the bytes of the database
files contain none of the keys that existed, in any common encoding, nor an API token.
"""

from __future__ import annotations

import base64
from pathlib import Path

from sqlalchemy import LargeBinary

from vmcrypt.control.db import repo
from vmcrypt.control.db.engine import open_database
from vmcrypt.control.db.models import KEY_BEARING_COLUMNS, Base, ProviderKind
from vmcrypt.control.privileges import ADMINISTRATOR
from vmcrypt.crypto.aead import seal
from vmcrypt.crypto.keys import generate_aead_key, generate_kek, generate_xts_key
from vmcrypt.crypto.keywrap import wrap_key

#: Columns whose name mentions a key or secret, each of which names one, never holds one.
_KEY_NAMED = {
    "encryption_records.key_id": "the KMS's identifier of a KEK",
    "encryption_records.key_provider_id": "a foreign key",
    "encryption_records.wrapped_kek": "ciphertext under a primary key",
    "key_providers.sealed_primary_key": "ciphertext under the master key",
    "kms_servers.client_key_path": "a file path",
    "storage_policies.key_provider_id": "a foreign key",
    "api_tokens.token_hash": "SHA-256 of a token",
    "clusters.default_key_provider_id": "a foreign key",
    "users.password_hash": "a salted scrypt hash of a password",
}
_SUSPECT_WORDS = ("key", "secret", "token", "password", "kek", "dek", "pem")


def _columns() -> dict[str, object]:
    return {
        f"{table.name}.{column.name}": column
        for table in Base.metadata.tables.values()
        for column in table.columns
    }


def test_the_only_binary_columns_are_the_named_ciphertexts() -> None:
    binary = {
        name for name, column in _columns().items()
        if isinstance(getattr(column, "type", None), LargeBinary)
    }
    assert binary == KEY_BEARING_COLUMNS


def test_every_key_named_column_is_an_id_a_path_or_a_ciphertext() -> None:
    suspects = {
        name for name in _columns()
        if any(word in name.split(".")[1] for word in _SUSPECT_WORDS)
        and not name.endswith(("ca_pem", "client_cert_pem"))  # certificates: public
    }
    assert suspects == set(_KEY_NAMED)


def _encodings(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def test_scenario_leaves_no_key_and_no_token_in_the_database_files(tmp_path: Path) -> None:
    master_key = generate_aead_key()  # the control plane's sealing key: lives elsewhere
    primary_key = generate_kek()
    standard_kek = generate_kek()
    native_kek = generate_kek()
    deks = [generate_aead_key(), generate_xts_key(), generate_xts_key()]
    sealed_primary = seal(master_key, primary_key, associated_data=b"nkp")
    wrapped_native_kek = wrap_key(primary_key, native_kek)

    database = open_database(tmp_path / "control.db")
    with database.transaction() as session:
        kmip = repo.create_key_provider(session, name="kmip", kind=ProviderKind.STANDARD,
                                        is_default=True)
        repo.add_kms_server(session, provider_id=kmip.id, name="kms-1", address="kms.local")
        native = repo.create_key_provider(session, name="nkp", kind=ProviderKind.NATIVE,
                                          sealed_primary_key=sealed_primary)
        cluster = repo.create_cluster(session, name="prod")
        host = repo.create_host(session, name="esx-1", cluster_id=cluster.id,
                                hardware_uuid="11111111-2222-3333-4444-555555555555")
        store = repo.create_datastore(session, name="shared", path="/srv/ds",
                                      cluster_id=cluster.id)
        std_vm = repo.create_vm(session, name="std", datastore_id=store.id, host_id=host.id)
        nat_vm = repo.create_vm(session, name="nat", datastore_id=store.id, host_id=host.id)
        std_disk = repo.add_disk(session, vm_id=std_vm.id, size_bytes=1 << 20)
        nat_disk = repo.add_disk(session, vm_id=nat_vm.id, size_bytes=1 << 20)
        repo.record_encryption(session, vm_id=std_vm.id, key_provider_id=kmip.id,
                               key_id="kmip-key-0001")
        repo.record_encryption(session, vm_id=std_vm.id, disk_id=std_disk.id,
                               key_provider_id=kmip.id, key_id="kmip-key-0001")
        repo.record_encryption(session, vm_id=nat_vm.id, key_provider_id=native.id,
                               wrapped_kek=wrapped_native_kek)
        repo.record_encryption(session, vm_id=nat_vm.id, disk_id=nat_disk.id,
                               key_provider_id=native.id, wrapped_kek=wrapped_native_kek)
        repo.append_event(session, type="vm.encrypted", message="encrypted VM std",
                          object_type="vm", object_id=std_vm.id,
                          details={"key_id": "kmip-key-0001", "provider": "kmip"})
        admin = repo.create_user(session, name="admin", role=ADMINISTRATOR)
        issued = repo.issue_token(session, user_id=admin.id, label="scripts")
    with database.sessions() as session:
        assert repo.authenticate_token(session, token=issued.token).user_name == "admin"
    database.close()

    files = [path for path in tmp_path.iterdir() if path.is_file()]
    assert any(path.name == "control.db" for path in files)
    stored = b"".join(path.read_bytes() for path in files)

    # The scan sees what is there (so an empty result means something) ...
    assert b"kmip-key-0001" in stored
    assert sealed_primary in stored
    assert wrapped_native_kek in stored
    # ... and none of what must never be.
    secrets = {
        "master key": master_key, "primary key": primary_key,
        "standard KEK": standard_kek, "native KEK": native_kek,
        **{f"DEK {n}": dek for n, dek in enumerate(deks)},
        "API token": issued.token.encode(),
        "API token body": issued.token.removeprefix("vmct_").encode(),
    }
    for name, secret in secrets.items():
        for encoded in _encodings(secret):
            assert encoded not in stored, f"the {name} is in the database files"
