"""One-time enrolment tokens for hosts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

A host presents one of these (once, before it expires) with a certificate signing
request and receives its certificate from the control plane CA. Only the token's
SHA-256 is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    op.create_table(
        "enrolment_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=True),
        sa.Column("host_name", sa.String(length=255), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.Column("certificate_fingerprint", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_enrolment_tokens_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrolment_tokens")),
        sa.UniqueConstraint("digest", name=op.f("uq_enrolment_tokens_digest")),
    )
    op.create_index(op.f("ix_enrolment_tokens_host_id"), "enrolment_tokens", ["host_id"])


def downgrade() -> None:
    """Downgrade the schema."""
    op.drop_index(op.f("ix_enrolment_tokens_host_id"), table_name="enrolment_tokens")
    op.drop_table("enrolment_tokens")
