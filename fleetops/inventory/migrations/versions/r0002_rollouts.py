"""The rollout history: rollouts, per-cluster results, passed waves, approvals, blocklist,
last known good.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _rollout_fk() -> sa.Column[object]:
    return sa.Column(
        "rollout_id",
        sa.String(128),
        sa.ForeignKey("rollouts.rollout_id", ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sa.String(128), primary_key=True),
        sa.Column("app", sa.String(253), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("parameters", _JSON, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        _time("started_at", nullable=False),
        _time("finished_at", nullable=True),
        _time("updated_at", nullable=False),
    )
    op.create_index("ix_rollouts_app", "rollouts", ["app"])
    op.create_table(
        "rollout_clusters",
        _rollout_fk(),
        sa.Column("cluster_id", sa.String(512), nullable=False),
        sa.Column("wave", sa.String(63), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("rollback_point", _JSON, nullable=True),
        _time("applied_at", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _time("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", "cluster_id"),
    )
    op.create_table(
        "rollout_waves",
        _rollout_fk(),
        sa.Column("wave", sa.String(63), nullable=False),
        _time("passed_at", nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", "wave"),
    )
    op.create_table(
        "rollout_approvals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _rollout_fk(),
        sa.Column("wave", sa.String(63), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("approver", sa.String(100), nullable=False),
        sa.Column("approver_key", sa.String(100), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False),
        _time("at", nullable=True),
        sa.UniqueConstraint(
            "rollout_id", "wave", "approver_key", "decision", name="uq_rollout_approvals_decision"
        ),
    )
    op.create_index("ix_rollout_approvals_rollout_id", "rollout_approvals", ["rollout_id"])
    op.create_table(
        "app_blocklist",
        sa.Column("app", sa.String(253), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rollout_id", sa.String(128), nullable=True),
        _time("blocked_at", nullable=False),
        sa.Column("cleared_by", sa.String(100), nullable=True),
        _time("cleared_at", nullable=True),
        sa.PrimaryKeyConstraint("app", "version"),
    )
    op.create_table(
        "last_known_good",
        sa.Column("app", sa.String(253), nullable=False),
        sa.Column("cluster_id", sa.String(512), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("rollout_id", sa.String(128), nullable=True),
        _time("at", nullable=False),
        sa.PrimaryKeyConstraint("app", "cluster_id"),
    )


def downgrade() -> None:
    op.drop_table("last_known_good")
    op.drop_table("app_blocklist")
    op.drop_index("ix_rollout_approvals_rollout_id", table_name="rollout_approvals")
    op.drop_table("rollout_approvals")
    op.drop_table("rollout_waves")
    op.drop_table("rollout_clusters")
    op.drop_index("ix_rollouts_app", table_name="rollouts")
    op.drop_table("rollouts")
