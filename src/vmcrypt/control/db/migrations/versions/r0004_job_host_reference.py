"""Give jobs columns for the component, host and host job they follow.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Until now a control-plane job that follows a host job packed that reference into
``jobs.type`` (``vm.encrypt:disk-0@3:<host job UUID>``: operation, component, host ID,
host job ID). This revision adds ``component``, ``host_id`` (a foreign key: set to
NULL if the host record goes) and ``host_job_id``, moves the packed rows into them and
leaves ``type`` holding the operation alone (``vm.encrypt``), so jobs can be filtered
by operation and joined to their host. Downgrade packs them back.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_jobs = sa.table(
    "jobs",
    sa.column("id", sa.Integer()),
    sa.column("type", sa.String()),
    sa.column("component", sa.String()),
    sa.column("host_id", sa.Integer()),
    sa.column("host_job_id", sa.String()),
)
_hosts = sa.table("hosts", sa.column("id", sa.Integer()))


def _unpack(packed: str) -> tuple[str, str, int, str] | None:
    """``op:component@host:job`` → its four parts; None for a type of another shape."""
    head, sep, tail = packed.partition("@")
    host_id, sep2, host_job_id = tail.partition(":")
    operation, sep3, component = head.partition(":")
    if not (sep and sep2 and sep3 and host_id.isdigit() and host_job_id):
        return None
    return operation, component, int(host_id), host_job_id


def upgrade() -> None:
    """Upgrade the schema, then move packed host-job references into the new columns."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("component", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("host_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("host_job_id", sa.String(length=64), nullable=True))
        batch.create_index(batch.f("ix_jobs_host_id"), ["host_id"])
        batch.create_foreign_key(
            batch.f("fk_jobs_host_id_hosts"), "hosts", ["host_id"], ["id"],
            ondelete="SET NULL",
        )
    bind = op.get_bind()
    hosts = {row.id for row in bind.execute(sa.select(_hosts.c.id))}
    rows = bind.execute(sa.select(_jobs.c.id, _jobs.c.type).where(_jobs.c.type.contains("@")))
    for job_id, packed in rows.all():
        parts = _unpack(packed)
        if parts is None:
            continue
        operation, component, host_id, host_job_id = parts
        bind.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(
            type=operation, component=component[:32], host_job_id=host_job_id[:64],
            host_id=host_id if host_id in hosts else None))


def downgrade() -> None:
    """Pack the references back into ``type``, then drop the columns."""
    bind = op.get_bind()
    rows = bind.execute(sa.select(_jobs.c.id, _jobs.c.type, _jobs.c.component,
                                  _jobs.c.host_id, _jobs.c.host_job_id)
                        .where(_jobs.c.host_job_id.is_not(None), _jobs.c.host_id.is_not(None)))
    for job_id, operation, component, host_id, host_job_id in rows.all():
        packed = f"{operation}:{component or 'all'}@{host_id}:{host_job_id}"
        bind.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(type=packed[:128]))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(batch.f("fk_jobs_host_id_hosts"), type_="foreignkey")
        batch.drop_index(batch.f("ix_jobs_host_id"))
        batch.drop_column("host_job_id")
        batch.drop_column("host_id")
        batch.drop_column("component")
