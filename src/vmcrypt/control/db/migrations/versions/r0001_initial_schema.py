"""The initial schema: inventory, keys and policies, access, events and jobs.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24

Generated once from the models with ``alembic revision --autogenerate`` at development
time, then reviewed: timestamps are plain ``DateTime`` (naive UTC; the models' type
decorator adds the zone) and enum values are frozen here, so later model changes need a
new revision rather than silently changing this one. ``tests/control/test_migrations.py``
checks that head builds exactly the models' schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    op.create_table(
        "clusters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clusters")),
        sa.UniqueConstraint("name", name=op.f("uq_clusters_name")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column(
            "severity",
            sa.Enum(
                "info",
                "warning",
                "error",
                name="severity",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("object_type", sa.String(length=64), nullable=True),
        sa.Column("object_id", sa.String(length=64), nullable=True),
        sa.Column("user_name", sa.String(length=255), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_object", "events", ["object_type", "object_id"])
    op.create_index(op.f("ix_events_time"), "events", ["time"])
    op.create_index(op.f("ix_events_type"), "events", ["type"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "queued",
                "running",
                "succeeded",
                "failed",
                "cancelled",
                name="job_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("user_name", sa.String(length=255), nullable=True),
        sa.Column("progress_percent", sa.Float(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=True),
        sa.Column("rate_bytes_per_second", sa.Float(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_state"), "jobs", ["state"])
    op.create_index(op.f("ix_jobs_type"), "jobs", ["type"])

    op.create_table(
        "key_providers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "standard",
                "native",
                "trusted",
                name="provider_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("sealed_primary_key", sa.LargeBinary(), nullable=True),
        sa.Column("backed_up", sa.Boolean(), nullable=False),
        sa.Column("backup_acknowledged", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "kind = 'native' OR sealed_primary_key IS NULL",
            name=op.f("ck_key_providers_sealed_key_is_native"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_providers")),
        sa.UniqueConstraint("name", name=op.f("uq_key_providers_name")),
    )
    op.create_table(
        "roles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roles")),
        sa.UniqueConstraint("name", name=op.f("uq_roles_name")),
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("hardware_uuid", sa.String(length=36), nullable=False),
        sa.Column("cluster_id", sa.Integer(), nullable=True),
        sa.Column("api_url", sa.String(length=255), nullable=True),
        sa.Column(
            "connection_state",
            sa.Enum(
                "connected",
                "disconnected",
                "not_responding",
                name="connection_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("certificate_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name=op.f("fk_hosts_cluster_id_clusters")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("hardware_uuid", name=op.f("uq_hosts_hardware_uuid")),
        sa.UniqueConstraint("name", name=op.f("uq_hosts_name")),
    )
    op.create_index(op.f("ix_hosts_cluster_id"), "hosts", ["cluster_id"])

    op.create_table(
        "kms_servers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("ca_pem", sa.Text(), nullable=True),
        sa.Column("ca_path", sa.String(length=1024), nullable=True),
        sa.Column("client_cert_pem", sa.Text(), nullable=True),
        sa.Column("client_cert_path", sa.String(length=1024), nullable=True),
        sa.Column("client_key_path", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["key_providers.id"],
            name=op.f("fk_kms_servers_provider_id_key_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kms_servers")),
        sa.UniqueConstraint("provider_id", "name", name=op.f("uq_kms_servers_provider_id_name")),
    )
    op.create_table(
        "role_privileges",
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.Column("privilege", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["roles.id"],
            name=op.f("fk_role_privileges_role_id_roles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("role_id", "privilege", name=op.f("pk_role_privileges")),
    )
    op.create_table(
        "storage_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("encryption", sa.Boolean(), nullable=False),
        sa.Column("key_provider_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_provider_id"],
            ["key_providers.id"],
            name=op.f("fk_storage_policies_key_provider_id_key_providers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_policies")),
        sa.UniqueConstraint("name", name=op.f("uq_storage_policies_name")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["role_id"], ["roles.id"], name=op.f("fk_users_role_id_roles")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_index(op.f("ix_users_role_id"), "users", ["role_id"])

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"])

    op.create_table(
        "datastores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("cluster_id", sa.Integer(), nullable=True),
        sa.Column("host_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "(cluster_id IS NULL) <> (host_id IS NULL)", name=op.f("ck_datastores_one_owner")
        ),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name=op.f("fk_datastores_cluster_id_clusters")
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_datastores_host_id_hosts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datastores")),
        sa.UniqueConstraint("name", name=op.f("uq_datastores_name")),
    )
    op.create_index(op.f("ix_datastores_cluster_id"), "datastores", ["cluster_id"])
    op.create_index(op.f("ix_datastores_host_id"), "datastores", ["host_id"])

    op.create_table(
        "virtual_machines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("instance_uuid", sa.String(length=36), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=True),
        sa.Column("cluster_id", sa.Integer(), nullable=True),
        sa.Column("datastore_id", sa.Integer(), nullable=False),
        sa.Column("storage_policy_id", sa.Integer(), nullable=True),
        sa.Column("registered", sa.Boolean(), nullable=False),
        sa.Column("has_vtpm", sa.Boolean(), nullable=False),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.Column(
            "lock_reason",
            sa.Enum(
                "key_missing_in_kms",
                "kms_unreachable",
                "key_missing_on_host",
                name="lock_reason",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "locked = (lock_reason IS NOT NULL)", name=op.f("ck_virtual_machines_lock_has_reason")
        ),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name=op.f("fk_virtual_machines_cluster_id_clusters")
        ),
        sa.ForeignKeyConstraint(
            ["datastore_id"],
            ["datastores.id"],
            name=op.f("fk_virtual_machines_datastore_id_datastores"),
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_virtual_machines_host_id_hosts")
        ),
        sa.ForeignKeyConstraint(
            ["storage_policy_id"],
            ["storage_policies.id"],
            name=op.f("fk_virtual_machines_storage_policy_id_storage_policies"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_virtual_machines")),
        sa.UniqueConstraint("instance_uuid", name=op.f("uq_virtual_machines_instance_uuid")),
    )
    op.create_index(op.f("ix_virtual_machines_cluster_id"), "virtual_machines", ["cluster_id"])
    op.create_index(op.f("ix_virtual_machines_datastore_id"), "virtual_machines", ["datastore_id"])
    op.create_index(op.f("ix_virtual_machines_host_id"), "virtual_machines", ["host_id"])
    op.create_index(op.f("ix_virtual_machines_name"), "virtual_machines", ["name"])

    op.create_table(
        "virtual_disks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vm_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("encrypted", sa.Boolean(), nullable=False),
        sa.Column("storage_policy_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("size_bytes > 0", name=op.f("ck_virtual_disks_positive_size")),
        sa.ForeignKeyConstraint(
            ["storage_policy_id"],
            ["storage_policies.id"],
            name=op.f("fk_virtual_disks_storage_policy_id_storage_policies"),
        ),
        sa.ForeignKeyConstraint(
            ["vm_id"],
            ["virtual_machines.id"],
            name=op.f("fk_virtual_disks_vm_id_virtual_machines"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_virtual_disks")),
        sa.UniqueConstraint("vm_id", "index", name=op.f("uq_virtual_disks_vm_id_index")),
    )
    op.create_table(
        "encryption_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vm_id", sa.Integer(), nullable=False),
        sa.Column(
            "component",
            sa.Enum(
                "vm_home",
                "disk",
                name="component",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("disk_id", sa.Integer(), nullable=True),
        sa.Column("key_provider_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=255), nullable=True),
        sa.Column("wrapped_kek", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "(component = 'vm_home') = (disk_id IS NULL)",
            name=op.f("ck_encryption_records_disk_iff_disk_component"),
        ),
        sa.CheckConstraint(
            "key_id IS NOT NULL OR wrapped_kek IS NOT NULL",
            name=op.f("ck_encryption_records_names_its_kek"),
        ),
        sa.ForeignKeyConstraint(
            ["disk_id"],
            ["virtual_disks.id"],
            name=op.f("fk_encryption_records_disk_id_virtual_disks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["key_provider_id"],
            ["key_providers.id"],
            name=op.f("fk_encryption_records_key_provider_id_key_providers"),
        ),
        sa.ForeignKeyConstraint(
            ["vm_id"],
            ["virtual_machines.id"],
            name=op.f("fk_encryption_records_vm_id_virtual_machines"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_encryption_records")),
        sa.UniqueConstraint("disk_id", name=op.f("uq_encryption_records_disk_id")),
    )
    op.create_index(op.f("ix_encryption_records_key_id"), "encryption_records", ["key_id"])
    op.create_index(
        op.f("ix_encryption_records_key_provider_id"), "encryption_records", ["key_provider_id"]
    )
    op.create_index(op.f("ix_encryption_records_vm_id"), "encryption_records", ["vm_id"])


def downgrade() -> None:
    """Downgrade the schema."""
    op.drop_index(op.f("ix_encryption_records_vm_id"), table_name="encryption_records")
    op.drop_index(op.f("ix_encryption_records_key_provider_id"), table_name="encryption_records")
    op.drop_index(op.f("ix_encryption_records_key_id"), table_name="encryption_records")

    op.drop_table("encryption_records")
    op.drop_table("virtual_disks")
    op.drop_index(op.f("ix_virtual_machines_name"), table_name="virtual_machines")
    op.drop_index(op.f("ix_virtual_machines_host_id"), table_name="virtual_machines")
    op.drop_index(op.f("ix_virtual_machines_datastore_id"), table_name="virtual_machines")
    op.drop_index(op.f("ix_virtual_machines_cluster_id"), table_name="virtual_machines")

    op.drop_table("virtual_machines")
    op.drop_index(op.f("ix_datastores_host_id"), table_name="datastores")
    op.drop_index(op.f("ix_datastores_cluster_id"), table_name="datastores")

    op.drop_table("datastores")
    op.drop_index(op.f("ix_api_tokens_user_id"), table_name="api_tokens")

    op.drop_table("api_tokens")
    op.drop_index(op.f("ix_users_role_id"), table_name="users")

    op.drop_table("users")
    op.drop_table("storage_policies")
    op.drop_table("role_privileges")
    op.drop_table("kms_servers")
    op.drop_index(op.f("ix_hosts_cluster_id"), table_name="hosts")

    op.drop_table("hosts")
    op.drop_table("roles")
    op.drop_table("key_providers")
    op.drop_index(op.f("ix_jobs_type"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_state"), table_name="jobs")

    op.drop_table("jobs")
    op.drop_index(op.f("ix_events_type"), table_name="events")
    op.drop_index(op.f("ix_events_time"), table_name="events")
    op.drop_index("ix_events_object", table_name="events")

    op.drop_table("events")
    op.drop_table("clusters")
