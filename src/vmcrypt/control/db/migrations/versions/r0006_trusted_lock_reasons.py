"""Two lock reasons of the trusted key provider flow.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

A VM whose keys come from a trusted key provider is locked when its host is not
attested (``host_not_attested``: a tampered file, an unknown baseline) or when the
Trust Authority or the provider's key server does not answer
(``trusted_provider_unavailable``). ``virtual_machines.lock_reason`` stores enum values
under a CHECK constraint, so the constraint is rebuilt with the two new values.
Downgrade first unlocks nothing silently: a VM locked for a new reason keeps its lock
as ``key_missing_on_host``, the nearest older reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = ("key_missing_in_kms", "kms_unreachable", "key_missing_on_host")
_NEW = (*_OLD, "host_not_attested", "trusted_provider_unavailable")


def _enum(values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name="lock_reason", native_enum=False, create_constraint=True,
                   length=32)


def upgrade() -> None:
    """Upgrade the schema."""
    with op.batch_alter_table("virtual_machines") as batch:
        batch.alter_column("lock_reason", existing_type=_enum(_OLD), type_=_enum(_NEW),
                           existing_nullable=True)


def downgrade() -> None:
    """Downgrade the schema."""
    op.execute(sa.text("UPDATE virtual_machines SET lock_reason = 'key_missing_on_host' "
                       "WHERE lock_reason IN ('host_not_attested', "
                       "'trusted_provider_unavailable')"))
    with op.batch_alter_table("virtual_machines") as batch:
        batch.alter_column("lock_reason", existing_type=_enum(_NEW), type_=_enum(_OLD),
                           existing_nullable=True)
