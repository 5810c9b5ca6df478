"""The inventory's tables, as SQLAlchemy 2 typed declarative models.

Table ``clusters``: a row per :class:`fleetops.domain.inventory.InventoryRecord`. Enums are
stored as their string values (no database enum types, so adding a state is no migration on
PostgreSQL), labels and the last probe as JSON (JSONB on PostgreSQL, text on SQLite). Times are
stored in UTC and read back timezone-aware on every backend. There is no column for a credential
and there must never be one: the record says how to obtain a short-lived credential (``auth``).

The rollout history (migration 0002): ``rollouts``, ``rollout_clusters``, ``rollout_waves``,
``rollout_approvals``, ``app_blocklist`` and ``last_known_good``, read and written through
:mod:`fleetops.inventory.rollouts`.

Schema changes go through a new migration in ``migrations/versions``; the migrations do not
import this module, so they keep describing the schema as it was when they were written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JSONDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps the offset (``timestamptz``). SQLite has no such type: the value is converted
    to UTC and stored without offset, and the offset is put back when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: inventory times must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONDocument}


class ClusterRow(Base):
    """One cluster (see :class:`fleetops.domain.Cluster` for the meaning of each column)."""

    __tablename__ = "clusters"

    id: Mapped[str] = mapped_column(String(512), primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    account: Mapped[str] = mapped_column(String(255))
    location: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    endpoint: Mapped[str] = mapped_column(Text)
    ca_data: Mapped[str | None] = mapped_column(Text)
    kubernetes_version: Mapped[str | None] = mapped_column(String(64))
    provider_status: Mapped[str | None] = mapped_column(String(64))
    labels: Mapped[dict[str, Any]] = mapped_column()
    auth: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    first_seen: Mapped[datetime | None] = mapped_column()
    last_seen: Mapped[datetime | None] = mapped_column()
    missed_count: Mapped[int] = mapped_column(Integer, default=0)
    last_probe: Mapped[dict[str, Any] | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column()


# --- rollout history (migration 0002) ---------------------------------------------------------
#
# Written by the rollout flow through :mod:`fleetops.inventory.rollouts`. Every table has a
# natural key, so a retried task writes the same row again instead of adding one. Nothing here
# holds a credential or Secret data: apps may not contain Secrets (the rollback point is the
# live state of the app's own objects).


class RolloutRow(Base):
    """One rollout: what was rolled out, with which parameters, and where it stands."""

    __tablename__ = "rollouts"

    rollout_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    app: Mapped[str] = mapped_column(String(253), index=True)
    version: Mapped[str] = mapped_column(String(128))
    parameters: Mapped[dict[str, Any]] = mapped_column()
    state: Mapped[str] = mapped_column(String(32))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column()


class RolloutClusterRow(Base):
    """One cluster of a rollout: its wave, outcome and rollback point (first one recorded wins)."""

    __tablename__ = "rollout_clusters"

    rollout_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("rollouts.rollout_id", ondelete="CASCADE"), primary_key=True
    )
    cluster_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    wave: Mapped[str] = mapped_column(String(63))
    outcome: Mapped[str] = mapped_column(String(32))
    rollback_point: Mapped[dict[str, Any] | None] = mapped_column()
    applied_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column()


class RolloutWaveRow(Base):
    """A wave that passed its gate (a resumed rollout does not run it again)."""

    __tablename__ = "rollout_waves"

    rollout_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("rollouts.rollout_id", ondelete="CASCADE"), primary_key=True
    )
    wave: Mapped[str] = mapped_column(String(63), primary_key=True)
    passed_at: Mapped[datetime] = mapped_column()
    summary: Mapped[str] = mapped_column(Text)


class RolloutApprovalRow(Base):
    """One approval decision; the same person's same decision on a wave is stored once."""

    __tablename__ = "rollout_approvals"
    __table_args__ = (
        UniqueConstraint(
            "rollout_id", "wave", "approver_key", "decision", name="uq_rollout_approvals_decision"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("rollouts.rollout_id", ondelete="CASCADE"), index=True
    )
    wave: Mapped[str] = mapped_column(String(63))
    decision: Mapped[str] = mapped_column(String(16))
    approver: Mapped[str] = mapped_column(String(100))
    approver_key: Mapped[str] = mapped_column(String(100))
    comment: Mapped[str] = mapped_column(Text)
    counted: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime | None] = mapped_column()


class BlockedVersionRow(Base):
    """A version of an app that was rolled back; refused until an operator clears it."""

    __tablename__ = "app_blocklist"

    app: Mapped[str] = mapped_column(String(253), primary_key=True)
    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    rollout_id: Mapped[str | None] = mapped_column(String(128))
    blocked_at: Mapped[datetime] = mapped_column()
    cleared_by: Mapped[str | None] = mapped_column(String(100))
    cleared_at: Mapped[datetime | None] = mapped_column()


class LastKnownGoodRow(Base):
    """The version of an app a cluster last ran successfully."""

    __tablename__ = "last_known_good"

    app: Mapped[str] = mapped_column(String(253), primary_key=True)
    cluster_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    version: Mapped[str] = mapped_column(String(128))
    rollout_id: Mapped[str | None] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column()
