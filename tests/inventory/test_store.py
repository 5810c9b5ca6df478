"""The inventory store: migrations, idempotent upserts, selectors, retirement, two writers at once.

Every store test runs on a real SQLite file and on PostgreSQL (a throwaway server, or the one
``FLEETOPS_TEST_POSTGRES_URL`` names), each PostgreSQL test in a schema of its own
(``tests/inventory/conftest.py``).
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from fleetops.domain import (
    ClusterState,
    InventoryRecord,
    ProbeResult,
    SourceResult,
    reconcile,
)
from fleetops.errors import ClusterNotFound, InventoryError, SelectorError
from fleetops.inventory import Inventory

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def record(name: str, *, provider: str = "eks", **fields: object) -> InventoryRecord:
    values: dict[str, object] = {
        "provider": provider,
        "account": "111111111111",
        "location": "eu-west-1",
        "name": name,
        "endpoint": f"https://{name}.example:443",
        "ca_data": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "kubernetes_version": "1.30.4",
        "provider_status": "ACTIVE",
        "labels": {"env": "prod", "fleetops.io/provider": provider},
        "auth": "static-kubeconfig" if provider == "static" else "eks-iam",
        "state": "registered",
        "first_seen": T0,
        "last_seen": T0,
    }
    values.update(fields)
    return InventoryRecord.model_validate(values)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inventory(url: str, clock: Clock) -> Iterator[Inventory]:
    store = Inventory(url, clock=clock)
    store.migrate()
    yield store
    store.close()


def raw_rows(url: str) -> list[tuple[object, ...]]:
    """Every stored row as the database returns it, bypassing the store."""
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = [
            tuple(row) for row in connection.execute(text("SELECT * FROM clusters ORDER BY id"))
        ]
    engine.dispose()
    return rows


def test_migrate_creates_the_file_and_schema_and_is_repeatable(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "inventory.db"
    store = Inventory(f"sqlite:///{path}")
    store.migrate()
    store.migrate()
    store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("0002",)
        ]
        columns = [row[1] for row in connection.execute("PRAGMA table_info(clusters)")]
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert columns == [
        "id", "provider", "account", "location", "name", "endpoint", "ca_data",
        "kubernetes_version", "provider_status", "labels", "auth", "state", "first_seen",
        "last_seen", "missed_count", "last_probe", "updated_at",
    ]  # fmt: skip
    assert not any(word in column for column in columns for word in ("token", "secret", "password"))


def test_records_round_trip(inventory: Inventory) -> None:
    probe = ProbeResult(ok=False, at=T0, error="connection refused", latency_ms=3.5)
    original = record("a", last_probe=probe, missed_count=2, state="unreachable")
    inventory.upsert_many([original])
    stored = inventory.get(original.id)
    assert stored == original
    assert stored.first_seen is not None
    assert stored.first_seen.tzinfo is not None
    assert stored.last_probe == probe


def test_same_input_twice_leaves_rows_and_updated_at_unchanged(
    inventory: Inventory, clock: Clock, url: str
) -> None:
    batch = [record("a"), record("b"), record("c", last_probe=ProbeResult(ok=True, at=T0))]
    inventory.upsert_many(batch)
    rows = raw_rows(url)
    clock.now = T0 + timedelta(hours=1)
    inventory.upsert_many(list(reversed(batch)))
    assert raw_rows(url) == rows
    assert inventory.updated_at(batch[0].id) == T0

    changed = batch[1].model_copy(update={"labels": {**batch[1].labels, "wave": "2"}})
    inventory.upsert_many([batch[0], changed])
    assert inventory.updated_at(batch[0].id) == T0
    assert inventory.updated_at(changed.id) == clock.now
    assert inventory.get(changed.id).labels["wave"] == "2"


def test_first_seen_keeps_its_earliest_value(inventory: Inventory) -> None:
    inventory.upsert_many([record("a")])
    later = record("a", first_seen=T0 + timedelta(days=1), last_seen=T0 + timedelta(days=1))
    inventory.upsert_many([later])
    stored = inventory.get(later.id)
    assert stored.first_seen == T0
    assert stored.last_seen == T0 + timedelta(days=1)


def test_list_by_selector_and_state(inventory: Inventory) -> None:
    inventory.upsert_many(
        [
            record("a", labels={"env": "prod", "tier": "web"}),
            record("b", labels={"env": "dev", "tier": "web"}),
            record("c", labels={"env": "prod"}, state="missing"),
            record("d", provider="static", labels={"env": "prod", "tier": "batch"}),
        ]
    )

    def names(records: list[InventoryRecord]) -> list[str]:
        return [r.name for r in records]

    assert names(inventory.list()) == ["a", "b", "c", "d"]
    assert names(inventory.list("env=prod")) == ["a", "c", "d"]
    assert names(inventory.list("env=prod,tier in (web,batch)")) == ["a", "d"]
    assert names(inventory.list("!tier")) == ["c"]
    assert names(inventory.list(states=[ClusterState.MISSING])) == ["c"]
    assert names(inventory.list("env=prod", states=[ClusterState.REGISTERED])) == ["a", "d"]
    with pytest.raises(SelectorError, match="position"):
        inventory.list("env prod")


def test_retire_and_unknown_ids(inventory: Inventory, clock: Clock) -> None:
    inventory.upsert_many([record("a")])
    cluster_id = record("a").id
    clock.now = T0 + timedelta(minutes=5)
    retired = inventory.retire(cluster_id)
    assert retired.state is ClusterState.RETIRED
    assert inventory.get(cluster_id).state is ClusterState.RETIRED
    assert inventory.updated_at(cluster_id) == clock.now

    clock.now = T0 + timedelta(minutes=10)
    assert inventory.retire(cluster_id).state is ClusterState.RETIRED  # again: no change
    assert inventory.updated_at(cluster_id) == T0 + timedelta(minutes=5)

    # A discovery run that read the inventory before the retirement cannot bring it back.
    inventory.upsert_many([record("a", kubernetes_version="1.31.0")])
    assert inventory.get(cluster_id) == retired

    with pytest.raises(ClusterNotFound, match="no cluster 'eks/1/x/nope'"):
        inventory.retire("eks/1/x/nope")
    with pytest.raises(ClusterNotFound):
        inventory.get("eks/1/x/nope")
    assert isinstance(ClusterNotFound("x"), InventoryError)


def test_reconciliation_writes_through_the_store(inventory: Inventory) -> None:
    source = SourceResult(
        name="eks",
        provider="eks",
        accounts=("111111111111",),
        clusters=(record("a").cluster(), record("b").cluster()),
    )
    first = reconcile(records=inventory.list(), sources=[source], now=T0)
    inventory.upsert_many(first.writes)
    assert inventory.list() == list(first.records)
    shrunk = source.model_copy(update={"clusters": source.clusters[:1]})
    for n in range(1, 4):
        result = reconcile(
            records=inventory.list(), sources=[shrunk], now=T0 + timedelta(minutes=15 * n)
        )
        inventory.upsert_many(result.writes)
    assert result.diff.missing == (record("b").id,)
    assert inventory.get(record("b").id).state is ClusterState.MISSING
    assert inventory.get(record("b").id).missed_count == 3


def test_database_errors_become_inventory_errors(tmp_path: Path) -> None:
    unmigrated = Inventory(f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(InventoryError, match=r"no such table: clusters .*not migrated") as caught:
        unmigrated.list()
    assert caught.value.__cause__ is not None
    with pytest.raises(InventoryError, match="unsupported database 'mysql'"):
        Inventory("mysql://root:hunter2@db/inventory")
    with pytest.raises(InventoryError, match="invalid inventory URL"):
        Inventory("not a url")
    (tmp_path / "file").write_text("")
    with pytest.raises(InventoryError, match="cannot open"):
        Inventory(f"sqlite:///{tmp_path}/file/inventory.db")


def test_passwords_in_urls_are_not_shown() -> None:
    # Without the driver this fails opening; with it, connecting to port 1. Either way: no password.
    with pytest.raises(InventoryError) as caught:
        Inventory("postgresql+psycopg://fleetops:hunter2@127.0.0.1:1/inventory").list()
    assert "hunter2" not in str(caught.value)
    assert "fleetops:***@127.0.0.1:1" in str(caught.value)


# --- two writers at once ------------------------------------------------------------------------


def _writer(
    url: str,
    writer: int,
    rounds: int,
    start: threading.Barrier,
    errors: multiprocessing.Queue[str],
) -> None:
    try:
        store = Inventory(url)
        start.wait(timeout=60)  # imports done in both: from here on they really overlap
        store.migrate()  # both migrate the fresh file at once, then write at once
        for n in range(rounds):
            # Overlapping ids: both writers write clusters 0..199, each its own version.
            batch = [
                record(
                    f"c{index:03d}",
                    kubernetes_version=f"1.{30 + writer}.{n}",
                    labels={"writer": str(writer), "round": str(n)},
                    last_seen=T0 + timedelta(seconds=n),
                )
                for index in range(200)
            ] + [record(f"w{writer}-{n}-{index}") for index in range(20)]
            store.upsert_many(batch)
        store.close()
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(f"writer {writer}: {exc!r}")


def test_two_processes_upserting_at_once_end_consistent(url: str) -> None:
    context = multiprocessing.get_context("spawn")
    errors: multiprocessing.Queue[str] = context.Queue()
    rounds = 40
    start = context.Barrier(2)
    writers = [
        context.Process(target=_writer, args=(url, w, rounds, start, errors)) for w in (1, 2)
    ]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert errors.empty(), errors.get()

    store = Inventory(url)
    records = store.list()
    store.close()
    shared = [r for r in records if r.name.startswith("c")]
    assert len(shared) == 200
    assert len(records) == 200 + 2 * rounds * 20
    # Every shared row is one writer's whole record, never a mix of two.
    for r in shared:
        writer = r.labels["writer"]
        assert r.kubernetes_version == f"1.{30 + int(writer)}.{r.labels['round']}"
        assert r.last_seen == T0 + timedelta(seconds=int(r.labels["round"]))
    # Whoever wrote last wrote its whole batch last: the shared rows all come from one writer.
    assert len({(r.labels["writer"], r.labels["round"]) for r in shared}) == 1
    if url.startswith("sqlite"):
        with sqlite3.connect(make_url(url).database or "") as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
