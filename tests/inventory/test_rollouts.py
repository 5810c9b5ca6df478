"""The rollout history on SQLite and PostgreSQL: idempotent writes, blocklist, last known good, resume."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, inspect, text

from fleetops.domain.gates import ApprovalDecision, ApprovalState, Decision, record_approval
from fleetops.errors import ConfigError, InventoryError
from fleetops.inventory import (
    ClusterOutcome,
    Inventory,
    RolloutHistory,
    RolloutStatus,
)

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
POINT = {
    "system": "kube:eks/1/eu/a",
    "objects": [{"ref": {"api_version": "v1", "kind": "ConfigMap", "namespace": "hello",
                         "name": "hello-config"}, "state": "absent", "manifest": None}],
}  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, minutes: int = 1) -> None:
        self.now += timedelta(minutes=minutes)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(url: str) -> str:
    """The database of the test (``url`` from conftest: SQLite, then PostgreSQL)."""
    return url


@pytest.fixture
def history(db: str, clock: Clock) -> Iterator[RolloutHistory]:
    inventory = Inventory(db)
    inventory.migrate()
    yield RolloutHistory(inventory, clock=clock)
    inventory.close()


def count(db: str, table: str) -> int:
    engine = create_engine(db)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def start(history: RolloutHistory, rollout_id: str = "r-1") -> None:
    history.record_rollout(
        rollout_id, app="hello", version="2.0.0", parameters={"app": "hello"}, flow_run_id="run-a"
    )


def test_migration_creates_the_history_tables(db: str, history: RolloutHistory) -> None:
    engine = create_engine(db)
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    finally:
        engine.dispose()
    assert [tuple(v) for v in versions] == [("0002",)]
    assert {
        "clusters", "rollouts", "rollout_clusters", "rollout_waves", "rollout_approvals",
        "app_blocklist", "last_known_good",
    } <= tables  # fmt: skip


def test_rollout_record_is_idempotent_and_keeps_its_start(
    history: RolloutHistory, db: str, clock: Clock
) -> None:
    start(history)
    clock.tick()
    again = history.record_rollout(
        "r-1", app="hello", version="2.0.0", parameters={"app": "hello", "x": 1}, flow_run_id=None
    )
    assert count(db, "rollouts") == 1
    assert again.started_at == T0
    assert again.flow_run_id == "run-a"  # not erased by a write without one
    assert again.parameters == {"app": "hello", "x": 1}
    assert again.finished_at is None

    with pytest.raises(ConfigError, match=r"rolls out hello 2\.0\.0"):
        history.record_rollout("r-1", app="hello", version="3.0.0", parameters={})

    clock.tick()
    history.set_rollout_state("r-1", RolloutStatus.ROLLED_BACK)
    finished = clock.now
    clock.tick()
    history.set_rollout_state("r-1", RolloutStatus.ROLLED_BACK)
    record = history.get_rollout("r-1")
    assert record is not None
    assert (record.state, record.finished_at) == (RolloutStatus.ROLLED_BACK, finished)
    with pytest.raises(InventoryError):
        history.set_rollout_state("nope", RolloutStatus.FAILED)


def test_the_first_rollback_point_wins(history: RolloutHistory, db: str, clock: Clock) -> None:
    start(history)
    first = history.record_cluster_result(
        "r-1", "eks/1/eu/a", wave="canary", outcome=ClusterOutcome.APPLYING, rollback_point=POINT
    )
    assert first.rollback_point == POINT
    # a retried task snapshots again after its own partial apply: that must not replace it
    later = {**POINT, "objects": []}
    clock.tick()
    history.record_cluster_result(
        "r-1", "eks/1/eu/a", wave="canary", outcome=ClusterOutcome.APPLYING, rollback_point=later
    )
    done = history.record_cluster_result(
        "r-1", "eks/1/eu/a", wave="canary", outcome=ClusterOutcome.SUCCEEDED, applied_at=clock.now
    )
    assert count(db, "rollout_clusters") == 1
    assert done.rollback_point == POINT
    assert (done.outcome, done.applied_at) == (ClusterOutcome.SUCCEEDED, clock.now)

    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJub2JvZHkifQ.c2lnbmF0dXJl"
    failed = history.record_cluster_result(
        "r-1", "eks/1/eu/b", wave="canary", outcome="failed", error=f"401 Bearer {token}"
    )
    assert failed.error is not None
    assert token not in failed.error


def test_rollout_state_is_what_a_resume_needs(history: RolloutHistory, clock: Clock) -> None:
    assert history.rollout_state("r-1") is None
    start(history)
    for cluster, outcome in (("a", "succeeded"), ("b", "succeeded"), ("c", "applying")):
        clock.tick()
        history.record_cluster_result(
            "r-1", cluster, wave="canary" if cluster == "a" else "rest", outcome=outcome,
            rollback_point=POINT, applied_at=clock.now if outcome == "succeeded" else None,
        )  # fmt: skip
    history.record_wave_passed("r-1", "canary", summary="1 of 1 succeeded")
    clock.tick()
    history.record_wave_passed("r-1", "canary", summary="again")

    approvals = ApprovalState(wave="rest")
    for name in ("Alice", "alice ", "Bob"):
        result = record_approval(
            approvals, ApprovalDecision(decision="approve", approver=name), 2, at=clock.now
        )
        approvals = result.state
        for decision in result.state.decisions[-1:]:
            history.record_approval("r-1", "rest", decision)
            history.record_approval("r-1", "rest", decision)  # a retried write

    state = history.rollout_state("r-1")
    assert state is not None
    assert state.rollout.state is RolloutStatus.RUNNING
    assert state.clusters_done == {"a", "b"}
    assert state.waves_passed == ("canary",)
    stored = state.approvals["rest"]
    assert stored.approvers == ("Alice", "Bob")
    assert [d.decision for d in stored.decisions] == [Decision.APPROVE, Decision.APPROVE]
    assert stored.granted(2)
    assert [r.cluster_id for r in state.touched] == ["b", "a", "c"]  # newest apply first


def test_blocklist(history: RolloutHistory, db: str, clock: Clock) -> None:
    start(history)
    blocked = history.block_version("hello", "2.0.0", reason="canary failed", rollout_id="r-1")
    assert blocked.active
    clock.tick()
    history.block_version("hello", "2.0.0", reason="retried", rollout_id="r-1")
    assert count(db, "app_blocklist") == 1
    assert [(b.version, b.reason, b.blocked_at) for b in history.blocked_versions("hello")] == [
        ("2.0.0", "canary failed", T0)
    ]
    assert history.blocked_versions("other") == []

    cleared = history.clear_block("hello", "2.0.0", cleared_by="oncall")
    assert (cleared.active, cleared.cleared_by, cleared.cleared_at) == (False, "oncall", clock.now)
    assert history.blocked_versions("hello") == []
    assert len(history.blocked_versions("hello", include_cleared=True)) == 1
    clock.tick()
    assert history.clear_block("hello", "2.0.0", cleared_by="someone").cleared_by == "oncall"

    again = history.block_version("hello", "2.0.0", reason="failed again", rollout_id="r-2")
    assert (again.active, again.reason, again.rollout_id) == (True, "failed again", "r-2")
    with pytest.raises(InventoryError, match="not on the blocklist"):
        history.clear_block("hello", "9.9.9", cleared_by="oncall")
    with pytest.raises(ConfigError):
        history.clear_block("hello", "2.0.0", cleared_by=" ")


def test_last_known_good(history: RolloutHistory, db: str, clock: Clock) -> None:
    history.set_last_known_good("hello", ["a", "b"], version="1.0.0", rollout_id="r-0")
    clock.tick()
    history.set_last_known_good("hello", ["b", "a", "a"], version="1.0.0", rollout_id="r-0")
    assert count(db, "last_known_good") == 2
    assert history.last_known_good("hello")["a"].at == T0  # an identical write changes nothing

    history.set_last_known_good("hello", ["b"], version="2.0.0", rollout_id="r-1")
    good = history.last_known_good("hello")
    assert {c: g.version for c, g in good.items()} == {"a": "1.0.0", "b": "2.0.0"}
    assert good["b"].at == clock.now
    assert history.last_known_good("other") == {}
