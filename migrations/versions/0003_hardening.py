"""Hardening: job leases, cancellation, job rows outlive their collection, segment
checksums, per-collection key grants

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOBS_FK = "fk_jobs_collection_id_collections"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # A job row outlives its collection (a deleted collection's jobs read `cancelled`).
        batch_op.add_column(sa.Column("collection_name", sa.String(128), nullable=True))
        batch_op.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(_JOBS_FK, type_="foreignkey")
        batch_op.create_foreign_key(
            _JOBS_FK, "collections", ["collection_id"], ["id"], ondelete="SET NULL"
        )
    op.execute(
        "UPDATE jobs SET collection_name = "
        "(SELECT name FROM collections WHERE collections.id = jobs.collection_id)"
    )
    with op.batch_alter_table("segments", schema=None) as batch_op:
        # {file name: "sha256:<hex>"} of every file of the segment, checked on load.
        batch_op.add_column(sa.Column("checksums", sa.JSON(), nullable=True))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        # None: every collection; else the names this key may touch.
        batch_op.add_column(sa.Column("collections", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("collections")
    with op.batch_alter_table("segments", schema=None) as batch_op:
        batch_op.drop_column("checksums")
    op.execute("DELETE FROM jobs WHERE collection_id IS NULL AND collection_name IS NOT NULL")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(_JOBS_FK, type_="foreignkey")
        batch_op.create_foreign_key(
            _JOBS_FK, "collections", ["collection_id"], ["id"], ondelete="CASCADE"
        )
        batch_op.drop_column("dispatched_at")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("collection_name")
