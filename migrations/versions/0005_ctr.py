"""CTR: catalogue items, behaviour events (with a per-user row), model deployments

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments INTEGER PRIMARY KEY; Postgres gets a real BIGINT identity.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("external_id", sa.String(512), nullable=False),
        sa.Column("category", sa.String(256), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
        sa.UniqueConstraint("external_id", name=op.f("uq_items_external_id")),
    )
    op.create_table(
        "event_users",
        sa.Column("user_id", sa.String(512), nullable=False),
        sa.Column("n_events", sa.BigInteger(), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.Column("last_event_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_event_users")),
    )
    op.create_table(
        "events",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(512), nullable=False),
        sa.Column("item_id", sa.String(512), nullable=False),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("rating", sa.Float(), nullable=True),
        sa.Column("label", sa.Integer(), nullable=True),
        sa.Column("client_id", sa.String(128), nullable=True),
        sa.Column("dedup_key", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_events_dedup_key")),
    )
    op.create_index("ix_events_user_time", "events", ["user_id", "occurred_at", "id"])
    op.create_index("ix_events_user_id", "events", ["user_id", "id"])
    op.create_table(
        "ctr_deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("source", sa.String(1024), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("users", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("activated_at", _TS, nullable=True),
        sa.Column("retired_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ctr_deployments")),
    )
    # At most one active deployment per name: the switch retires the old one first.
    op.create_index(
        "uq_ctr_deployments_active_name",
        "ctr_deployments",
        ["name"],
        unique=True,
        postgresql_where=sa.text("state = 'active'"),
        sqlite_where=sa.text("state = 'active'"),
    )
    op.create_index("ix_ctr_deployments_name_state", "ctr_deployments", ["name", "state"])


def downgrade() -> None:
    op.drop_index("ix_ctr_deployments_name_state", table_name="ctr_deployments")
    op.drop_index("uq_ctr_deployments_active_name", table_name="ctr_deployments")
    op.drop_table("ctr_deployments")
    op.drop_index("ix_events_user_id", table_name="events")
    op.drop_index("ix_events_user_time", table_name="events")
    op.drop_table("events")
    op.drop_table("event_users")
    op.drop_table("items")
    # Jobs of the kind this revision added would name a runner that no longer exists.
    op.execute("DELETE FROM jobs WHERE kind = 'ctr_rebuild'")
