"""The inventory's tables, as SQLAlchemy 2 typed declarative models.

One table, ``clusters``: a row per :class:`fleetops.domain.inventory.InventoryRecord`. Enums are
stored as their string values (no database enum types, so adding a state is no migration on
PostgreSQL), labels and the last probe as JSON (JSONB on PostgreSQL, text on SQLite). Times are
stored in UTC and read back timezone-aware on every backend. There is no column for a credential
and there must never be one: the record says how to obtain a short-lived credential (``auth``).

Schema changes go through a new migration in ``migrations/versions``; the migrations do not
import this module, so they keep describing the schema as it was when they were written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Integer, String, Text
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
