"""The clusters table.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(512), primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("account", sa.String(255), nullable=False),
        sa.Column("location", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("ca_data", sa.Text(), nullable=True),
        sa.Column("kubernetes_version", sa.String(64), nullable=True),
        sa.Column("provider_status", sa.String(64), nullable=True),
        sa.Column("labels", _JSON, nullable=False),
        sa.Column("auth", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("missed_count", sa.Integer(), nullable=False),
        sa.Column("last_probe", _JSON, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_clusters_state", "clusters", ["state"])


def downgrade() -> None:
    op.drop_index("ix_clusters_state", table_name="clusters")
    op.drop_table("clusters")
