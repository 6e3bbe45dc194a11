"""User passwords, and a default key provider per cluster.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

``users.password_hash`` lets a person log in to the web client with a password (API
tokens stay the way scripts authenticate); it holds a salted scrypt hash, never the
password. ``clusters.default_key_provider_id`` lets an administrator make a key
provider (a trusted one, for a cluster of attested hosts) the default for one cluster,
ahead of the system-wide default.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("password_hash", sa.String(length=255), nullable=True))
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("default_key_provider_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_clusters_default_key_provider_id_key_providers"), "key_providers",
            ["default_key_provider_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    """Downgrade the schema."""
    with op.batch_alter_table("clusters") as batch:
        batch.drop_constraint(op.f("fk_clusters_default_key_provider_id_key_providers"),
                              type_="foreignkey")
        batch.drop_column("default_key_provider_id")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("password_hash")
