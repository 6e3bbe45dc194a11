"""Store a native key provider's public fingerprint beside its sealed primary key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

``NativeKeyProvider.from_record`` checks the unsealed key against the fingerprint in
its record, so without this column a stored native provider could never be loaded
again (for a backup, or for the push to hosts). The fingerprint is 64 bits of a
labelled SHA-256 of the key: public, and no help in recovering it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    with op.batch_alter_table("key_providers") as batch:
        batch.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Downgrade the schema."""
    with op.batch_alter_table("key_providers") as batch:
        batch.drop_column("fingerprint")
