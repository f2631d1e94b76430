"""collections.bm25_k1, collections.bm25_b: per-collection BM25 parameters

Existing collections get the values every collection used before (k1 0.9, b 0.4). Segments
store raw term counts, so nothing on disk changes: the parameters apply at query time.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("collections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("bm25_k1", sa.Float(), nullable=False, server_default=sa.text("0.9"))
        )
        batch_op.add_column(
            sa.Column("bm25_b", sa.Float(), nullable=False, server_default=sa.text("0.4"))
        )


def downgrade() -> None:
    with op.batch_alter_table("collections", schema=None) as batch_op:
        batch_op.drop_column("bm25_b")
        batch_op.drop_column("bm25_k1")
