"""The inventory store: cluster records in SQLite (a file, by default) or PostgreSQL.

Every write is one transaction of ``INSERT ... ON CONFLICT (id) DO UPDATE``, so a record is
written whole or not at all and two discovery runs writing at once cannot interleave inside a
record or lose the table:

- **SQLite**: WAL journal (readers never block the writer), ``busy_timeout`` (a second writer
  waits for the first instead of failing with "database is locked"), and write transactions begun
  with ``BEGIN IMMEDIATE`` so the lock is taken before anything is read. Within one process,
  write transactions also take a Python lock first: SQLite lets one writer in at a time and its
  busy handler waits for the others by sleeping in growing steps (up to 100 ms), which with
  fifty threads recording rollout steps made a write wait longer than the write; the lock hands
  the database over as soon as it is free. ``busy_timeout`` still covers other processes.
- **PostgreSQL**: the same statement from the postgresql dialect; rows are written in id order so
  two concurrent writers lock rows in the same order and cannot deadlock; migrations take an
  advisory lock.

An upsert changes a row only when a stored value differs (``ON CONFLICT ... DO UPDATE ... WHERE``),
so writing the same records twice leaves rows and ``updated_at`` exactly as they were. Rows of
retired clusters are never overwritten by an upsert (only :meth:`Inventory.retire` writes them),
which keeps a discovery run that read the inventory before an operator retired a cluster from
bringing it back. ``first_seen`` keeps its earliest value.

SQLAlchemy and alembic errors are reported as :class:`~fleetops.errors.InventoryError`.
"""

from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from pydantic import ValidationError
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    event,
    func,
    make_url,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from fleetops.domain.cluster import Cluster, ClusterState, ProbeResult
from fleetops.domain.inventory import InventoryRecord
from fleetops.domain.selectors import Selector
from fleetops.errors import ClusterNotFound, InventoryError
from fleetops.inventory.models import Base
from fleetops.redaction import redact

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
_PG_MIGRATION_LOCK = 0x466C_6565_746F_7073  # "Fleetops": the advisory lock key of migrate()
_WRITE = "fleetops_write"  # connection execution option: this transaction writes

_TABLE = Base.metadata.tables["clusters"]
# Columns an upsert writes from the record; id is the conflict key, the other two are special.
_DATA_COLUMNS = tuple(c.name for c in _TABLE.c if c.name not in ("id", "first_seen", "updated_at"))


def _json(value: Any) -> str:
    # Sorted and compact: equal documents are equal text, which the SQLite upsert compares.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL (a no-op once it is), waiting while another connection holds a lock.

    SQLite answers "database is locked" at once, without calling the busy handler, when the journal
    mode cannot change because another connection is writing, which is what two processes opening
    a fresh file at the same time run into. So this one statement waits by itself.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _describe(exc: BaseException) -> str:
    """A short, redacted message: the driver's first line, not SQLAlchemy's SQL and parameters."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    text = lines[0] if lines else type(cause).__name__
    return redact(text)[:500]


class Inventory:
    """Cluster records in a SQL database.

    ``url`` is a SQLAlchemy URL: ``sqlite:///path/inventory.db`` (the parent directory is
    created), or ``postgresql+psycopg://user@host/db`` (the driver must be installed). Call
    :meth:`migrate` once before use; it is safe to call on every start and from several
    processes at once. ``clock`` gives ``updated_at`` (tests pass a fixed one).
    """

    def __init__(self, url: str, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._clock = clock
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise InventoryError(f"invalid inventory URL: {_describe(exc)}") from exc
        self.url = parsed.render_as_string(hide_password=True)
        self._dialect = parsed.get_backend_name()
        # one writer at a time in this process (see the module docstring); PostgreSQL needs none
        self._write_lock: AbstractContextManager[Any] = (
            threading.RLock() if self._dialect == "sqlite" else nullcontext()
        )
        if self._dialect not in ("sqlite", "postgresql"):
            raise InventoryError(
                f"inventory {self.url}: unsupported database {self._dialect!r}; "
                "use sqlite:///PATH or postgresql+psycopg://..."
            )
        try:
            if self._dialect == "sqlite":
                self._engine = self._sqlite_engine(url, parsed.database)
            else:
                self._engine = create_engine(url, json_serializer=_json, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError, OSError) as exc:
            raise InventoryError(f"inventory {self.url}: cannot open: {_describe(exc)}") from exc

    @staticmethod
    def _sqlite_engine(url: str, database: str | None) -> Engine:
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            json_serializer=_json,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            # Let SQLAlchemy's "begin" event emit BEGIN (pysqlite's own would be deferred and late).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            write = connection.get_execution_options().get(_WRITE, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Inventory:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, action: str, *, write: bool) -> Iterator[Connection]:
        try:
            with self._write_lock if write else nullcontext(), self._engine.connect() as connection:
                if write:
                    connection = connection.execution_options(**{_WRITE: True})
                with connection.begin():
                    yield connection
        except (SQLAlchemyError, CommandError) as exc:
            message = _describe(exc)
            if "clusters" in message and (
                "no such table" in message or "does not exist" in message
            ):
                message += " (the inventory is not migrated yet: run Inventory.migrate())"
            raise InventoryError(f"inventory {self.url}: {action}: {message}") from exc

    # --- schema ------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the latest migration (a no-op when it is already there)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._transaction("migrate", write=True) as connection:
            if self._dialect == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    # --- writes ------------------------------------------------------------------------------

    def upsert_many(self, clusters: Iterable[Cluster]) -> None:
        """Insert or update records by id, in one transaction.

        A plain :class:`Cluster` is stored with ``missed_count`` 0; pass
        :class:`InventoryRecord` objects to keep the bookkeeping. Idempotent. When the same id
        comes twice, the last one is written.
        """
        now = self._clock()
        rows = {cluster.id: _to_row(cluster, updated_at=now) for cluster in clusters}
        if not rows:
            return
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = insert(_TABLE)
        excluded = statement.excluded
        first_seen = func.coalesce(_TABLE.c.first_seen, excluded.first_seen)
        statement = statement.on_conflict_do_update(
            index_elements=[_TABLE.c.id],
            set_={
                **{name: excluded[name] for name in _DATA_COLUMNS},
                "first_seen": first_seen,
                "updated_at": excluded.updated_at,
            },
            where=and_(
                _TABLE.c.state != ClusterState.RETIRED.value,
                or_(
                    first_seen.is_distinct_from(_TABLE.c.first_seen),
                    *(_TABLE.c[name].is_distinct_from(excluded[name]) for name in _DATA_COLUMNS),
                ),
            ),
        )
        with self._transaction("upsert", write=True) as connection:
            connection.execute(statement, [rows[key] for key in sorted(rows)])
        log.debug("upserted %d cluster records into %s", len(rows), self.url)

    def retire(self, cluster_id: str) -> InventoryRecord:
        """Mark a cluster retired (by an operator); it stays in the inventory, ignored by discovery.

        Retiring a retired cluster changes nothing. :class:`ClusterNotFound` for unknown ids.
        """
        with self._transaction("retire", write=True) as connection:
            connection.execute(
                update(_TABLE)
                .where(_TABLE.c.id == cluster_id, _TABLE.c.state != ClusterState.RETIRED.value)
                .values(state=ClusterState.RETIRED.value, updated_at=self._clock())
            )
            row = connection.execute(select(_TABLE).where(_TABLE.c.id == cluster_id)).first()
        if row is None:
            raise ClusterNotFound(f"no cluster {cluster_id!r} in the inventory")
        return _from_mapping(row._mapping)

    # --- reads -------------------------------------------------------------------------------

    def get(self, cluster_id: str) -> InventoryRecord:
        """The record of ``cluster_id``; :class:`ClusterNotFound` if there is none."""
        with self._transaction("get", write=False) as connection:
            row = connection.execute(select(_TABLE).where(_TABLE.c.id == cluster_id)).first()
        if row is None:
            raise ClusterNotFound(f"no cluster {cluster_id!r} in the inventory")
        return _from_mapping(row._mapping)

    def list(
        self,
        selector: Selector | str | None = None,
        states: Iterable[ClusterState] | None = None,
    ) -> builtins.list[InventoryRecord]:
        """Records sorted by id, optionally only those matching ``selector`` and in ``states``.

        A selector given as text is parsed first (:class:`~fleetops.errors.SelectorError`).
        """
        if isinstance(selector, str):
            selector = Selector.parse(selector)
        query = select(_TABLE).order_by(_TABLE.c.id)
        if states is not None:
            query = query.where(_TABLE.c.state.in_([ClusterState(s).value for s in states]))
        with self._transaction("list", write=False) as connection:
            rows = connection.execute(query).all()
        records = [_from_mapping(row._mapping) for row in rows]
        if selector is None:
            return records
        return [record for record in records if selector.matches(record.labels)]

    def updated_at(self, cluster_id: str) -> datetime:
        """When the row of ``cluster_id`` last changed (for reports and tests)."""
        with self._transaction("get", write=False) as connection:
            value: datetime | None = connection.execute(
                select(_TABLE.c.updated_at).where(_TABLE.c.id == cluster_id)
            ).scalar()
        if value is None:
            raise ClusterNotFound(f"no cluster {cluster_id!r} in the inventory")
        return value


def _to_row(cluster: Cluster, *, updated_at: datetime) -> dict[str, Any]:
    """The column values of a record. The model has no credential field, so neither has this."""
    return {
        "id": cluster.id,
        "provider": cluster.provider.value,
        "account": cluster.account,
        "location": cluster.location,
        "name": cluster.name,
        "endpoint": cluster.endpoint,
        "ca_data": cluster.ca_data,
        "kubernetes_version": cluster.kubernetes_version,
        "provider_status": cluster.provider_status,
        "labels": dict(cluster.labels),
        "auth": cluster.auth.value,
        "state": cluster.state.value,
        "first_seen": cluster.first_seen,
        "last_seen": cluster.last_seen,
        "missed_count": getattr(cluster, "missed_count", 0),
        "last_probe": cluster.last_probe.model_dump(mode="json") if cluster.last_probe else None,
        "updated_at": updated_at,
    }


def _from_mapping(row: Any) -> InventoryRecord:
    try:
        return InventoryRecord(
            provider=row["provider"],
            account=row["account"],
            location=row["location"],
            name=row["name"],
            endpoint=row["endpoint"],
            ca_data=row["ca_data"],
            kubernetes_version=row["kubernetes_version"],
            provider_status=row["provider_status"],
            labels=row["labels"],
            auth=row["auth"],
            state=row["state"],
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            last_probe=(
                ProbeResult.model_validate(row["last_probe"]) if row["last_probe"] else None
            ),
            missed_count=row["missed_count"],
        )
    except ValidationError as exc:
        raise InventoryError(
            f"inventory row {row['id']!r} is not a valid cluster record: {exc}"
        ) from exc
