"""The rollout flow, whole, under the Prefect test server, against a sandbox fleet.

Real clients all the way: the flow applies to sandbox API servers over HTTPS, records in a
SQLite inventory and posts to the Slack stand-in. Assertions read what the clusters, the
inventory and Slack ended up holding.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from fleetops.domain.cluster import ClusterState
from fleetops.domain.rollout import ApprovalSpec, WaveSpec
from fleetops.inventory.rollouts import ClusterOutcome, RolloutStatus
from tests.flows._rollout_support import (  # noqa: F401
    REPO,
    Rollouts,
    flow_run_of,
    in_thread,
    rollout_fleet_fixture,
    rollouts_fixture,
    wait_paused,
    write_app,
)


def _names(rollouts: Rollouts) -> list[str]:
    return sorted(rollouts.ids)


def test_three_waves_end_to_end(rollouts: Rollouts) -> None:
    state = rollouts.run(version="1.0", rollout_id="e2e-1")

    assert state.is_completed(), state.message
    report: Any = state.result()
    assert report.status == "succeeded"
    assert {rollouts.version(n) for n in _names(rollouts)} == {"1.0"}
    history = rollouts.state("e2e-1")
    assert history is not None
    assert history.rollout.state is RolloutStatus.SUCCEEDED
    assert history.waves_passed == ("canary", "second", "rest")
    assert {r.outcome for r in history.clusters.values()} == {ClusterOutcome.SUCCEEDED}
    assert len(rollouts.names_in("e2e-1", "canary")) == 1
    assert len(rollouts.names_in("e2e-1", "second")) == 3
    good = rollouts.read(lambda h: h.last_known_good("hello"))
    assert {g.version for g in good.values()} == {"1.0"}
    assert len(good) == 12

    thread = rollouts.slack_thread("e2e-1")
    parent, replies = thread[0], [m.text for m in thread[1:]]
    assert "succeeded" in parent.text
    assert "e2e-1" in parent.text
    assert parent.edited
    assert "http://127.0.0.1:4200/runs/flow-run/" in parent.text
    assert any("wave 1/3 canary starts" in r for r in replies)
    assert any("wave 3/3 rest starts" in r for r in replies)
    assert any("rollout succeeded" in r for r in replies)


# --- helpers ------------------------------------------------------------------------------


def _plan(rollouts: Rollouts, **values: Any) -> dict[str, list[str]]:
    """The plan the flow will make, as wave name -> cluster names (planning is deterministic)."""
    from fleetops.domain.waves import plan_rollout
    from fleetops.inventory import Inventory

    with Inventory(rollouts.inventory_url) as inventory:
        records = inventory.list()
    plan = plan_rollout(rollouts.parameters(**values), records)
    by_id = {v: k for k, v in rollouts.ids.items()}
    return {w.name: [by_id[c] for c in w.clusters] for w in plan.waves}


def _baseline(rollouts: Rollouts, version: str = "1.0", **values: Any) -> None:
    state = rollouts.run(
        version=version,
        rollout_id=f"base-{version}",
        waves=[WaveSpec(name="all", max_parallel=12, progress_deadline_seconds=20)],
        **values,
    )
    assert state.is_completed(), state.message


def _approve(rollouts: Rollouts, rollout_id: str, *decisions: tuple[str, str]) -> Any:
    """In another thread: wait for each pause of the rollout and send the next decision."""
    from fleetops.cli_rollout import approve_rollout
    from fleetops.domain.gates import ApprovalDecision

    def decide() -> None:
        flow_run_id = flow_run_of(rollouts, rollout_id)
        for decision, approver in decisions:
            wait_paused(flow_run_id)
            approve_rollout(
                rollout_id,
                ApprovalDecision(decision=decision, approver=approver, comment=f"by {approver}"),
            )
            time.sleep(0.3)

    return in_thread(decide)


API = "tier=api"  # 4 of the 12 clusters: ro-01, ro-04, ro-07, ro-10


# --- failure budgets and rollback ---------------------------------------------------------


def test_broken_cluster_in_wave_two_rolls_back_waves_one_and_two_and_blocks_until_cleared(
    rollouts: Rollouts,
) -> None:
    _baseline(rollouts)
    plan = _plan(rollouts, version="2.0")
    broken = plan["second"][-1]
    rollouts.fleet.set_faults(broken, broken_images=[":2.0"])
    waves = [
        WaveSpec(name="canary", count=1, max_parallel=1, progress_deadline_seconds=20),
        WaveSpec(name="second", count=3, max_parallel=3, progress_deadline_seconds=3),
        WaveSpec(name="rest", max_parallel=8, progress_deadline_seconds=20),
    ]

    state = rollouts.run(version="2.0", rollout_id="broken-2", waves=waves)

    assert state.is_failed()
    assert {rollouts.version(n) for n in _names(rollouts)} == {"1.0"}
    history = rollouts.state("broken-2")
    assert history is not None
    assert history.rollout.state is RolloutStatus.ROLLED_BACK
    touched = set(plan["canary"]) | set(plan["second"])
    by_name = {n: history.clusters.get(rollouts.ids[n]) for n in _names(rollouts)}
    assert {n for n, r in by_name.items() if r is not None} == touched  # wave 3 never touched
    assert {r.outcome for r in by_name.values() if r} == {ClusterOutcome.ROLLED_BACK}
    blocked = rollouts.read(lambda h: h.blocked_versions("hello"))
    assert [(b.version, b.rollout_id) for b in blocked] == [("2.0", "broken-2")]
    texts = [m.text for m in rollouts.slack_thread("broken-2")]
    assert any("rolling back 4 cluster(s)" in t for t in texts)
    assert any("version 2.0 of hello is now blocked" in t for t in texts)

    rollouts.fleet.reset_faults()
    again = rollouts.run(version="2.0", rollout_id="broken-2b", waves=waves)
    assert again.is_failed()
    assert "fleetops blocklist clear hello 2.0 --operator NAME" in (again.message or "")
    assert {rollouts.version(n) for n in _names(rollouts)} == {"1.0"}

    # an operator clears it (what `fleetops blocklist clear` does): the version may go out again
    rollouts.read(lambda h: h.clear_block("hello", "2.0", cleared_by="oncall"))
    fixed = rollouts.run(version="2.0", rollout_id="broken-2c", waves=waves)
    assert fixed.is_completed(), fixed.message
    assert {rollouts.version(n) for n in _names(rollouts)} == {"2.0"}


def test_max_failures_one_tolerates_one_failure(rollouts: Rollouts) -> None:
    waves = [
        WaveSpec(name="canary", count=1, max_parallel=1, progress_deadline_seconds=20),
        WaveSpec(name="rest", max_parallel=4, max_failures=1, progress_deadline_seconds=3),
    ]
    broken = _plan(rollouts, waves=waves, version="1.0", target=API)["rest"][0]
    rollouts.fleet.set_faults(broken, broken_images=[":1.0"])

    state = rollouts.run(version="1.0", rollout_id="tolerant", target=API, waves=waves)

    assert state.is_completed(), state.message
    history = rollouts.state("tolerant")
    assert history is not None
    assert history.clusters[rollouts.ids[broken]].outcome is ClusterOutcome.FAILED
    assert len(history.clusters_done) == 3
    good = rollouts.read(lambda h: h.last_known_good("hello"))
    assert rollouts.ids[broken] not in good
    assert len(good) == 3


# --- unreachable clusters -----------------------------------------------------------------


def test_unreachable_fail_stops_before_touching_anything(rollouts: Rollouts) -> None:
    rollouts.set_state("ro-04", ClusterState.UNREACHABLE)

    state = rollouts.run(version="1.0", rollout_id="unreach-fail", target=API)

    assert state.is_failed()
    assert "unreachable" in (state.message or "")
    assert not any(rollouts.namespace_exists(n) for n in ("ro-01", "ro-07", "ro-10"))


def test_unreachable_skip_leaves_them_out_and_reports_them(rollouts: Rollouts) -> None:
    rollouts.set_state("ro-04", ClusterState.UNREACHABLE)  # known unreachable: not planned
    rollouts.fleet.outage("ro-07", True)  # registered, but down when the rollout comes

    state = rollouts.run(version="1.0", rollout_id="unreach-skip", target=API, unreachable="skip")

    rollouts.fleet.outage("ro-07", False)
    assert state.is_completed(), state.message
    report: Any = state.result()
    assert sorted(report.skipped) == sorted(
        [f"{rollouts.ids['ro-04']}: unreachable", f"{rollouts.ids['ro-07']}: unreachable"]
    )
    assert rollouts.version("ro-01") == rollouts.version("ro-10") == "1.0"
    assert rollouts.deployment("ro-04") is None
    assert rollouts.deployment("ro-07") is None


# --- approvals ----------------------------------------------------------------------------


def _approval_waves(approvers: int = 1, timeout: float = 60) -> list[WaveSpec]:
    return [
        WaveSpec(name="canary", count=1, max_parallel=1, progress_deadline_seconds=20),
        WaveSpec(
            name="rest",
            max_parallel=4,
            progress_deadline_seconds=20,
            approval=ApprovalSpec(required=True, approvers=approvers, timeout_seconds=timeout),
        ),
    ]


def test_approval_given_from_another_thread(rollouts: Rollouts) -> None:
    thread, errors = _approve(rollouts, "approved", ("approve", "alice"))

    state = rollouts.run(version="1.0", rollout_id="approved", target=API, waves=_approval_waves())

    thread.join(10)
    assert not errors, errors
    assert state.is_completed(), state.message
    assert {rollouts.version(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10")} == {"1.0"}
    history = rollouts.state("approved")
    assert history is not None
    assert history.approvals["rest"].approvers == ("alice",)
    texts = [m.text for m in rollouts.slack_thread("approved")]
    assert any("waits for 1 approval" in t and "fleetops approve approved" in t for t in texts)
    assert any("approve by alice (by alice)" in t for t in texts)


def test_approval_rejected_rolls_back(rollouts: Rollouts) -> None:
    thread, errors = _approve(rollouts, "rejected", ("reject", "bob"))

    state = rollouts.run(version="1.0", rollout_id="rejected", target=API, waves=_approval_waves())

    thread.join(10)
    assert not errors, errors
    assert state.is_failed()
    assert "rejected by bob" in (state.message or "")
    assert not any(rollouts.namespace_exists(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10"))
    history = rollouts.state("rejected")
    assert history is not None
    assert history.rollout.state is RolloutStatus.ROLLED_BACK
    assert history.approvals["rest"].rejection is not None


def test_approval_timeout_rolls_back(rollouts: Rollouts) -> None:
    state = rollouts.run(
        version="1.0", rollout_id="timeout", target=API, waves=_approval_waves(timeout=2)
    )

    assert state.is_failed()
    assert not any(rollouts.namespace_exists(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10"))
    history = rollouts.state("timeout")
    assert history is not None
    assert history.rollout.state is RolloutStatus.ROLLED_BACK
    assert any("timed out" in t.text for t in rollouts.slack_thread("timeout"))


def test_two_approvers_must_be_different_people(rollouts: Rollouts) -> None:
    thread, errors = _approve(
        rollouts, "two", ("approve", "alice"), ("approve", " Alice "), ("approve", "carol")
    )

    state = rollouts.run(
        version="1.0", rollout_id="two", target=API, waves=_approval_waves(approvers=2)
    )

    thread.join(10)
    assert not errors, errors
    assert state.is_completed(), state.message
    history = rollouts.state("two")
    assert history is not None
    decisions = history.approvals["rest"].decisions
    # the repeat is refused and not stored: one decision per person and wave
    assert [(d.approver, d.counted) for d in decisions] == [("alice", True), ("carol", True)]
    assert any("has already approved" in m.text for m in rollouts.slack_thread("two"))


# --- retries ------------------------------------------------------------------------------


def _task_runs(rollouts: Rollouts, rollout_id: str, name: str) -> list[Any]:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    flow_run_id = flow_run_of(rollouts, rollout_id)
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])),
        )


def test_transient_errors_are_retried(rollouts: Rollouts) -> None:
    rollouts.fleet.set_faults("ro-01", error_rate=1.0, error_code=503)

    def heal_after_first_failure() -> None:
        # every request to ro-01 answers 503 until its task has failed once and awaits a retry
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                runs = _task_runs(rollouts, "flaky", "rollout-ro-01")
                if runs and runs[0].state and runs[0].state.name in ("AwaitingRetry", "Retrying"):
                    return
                time.sleep(0.05)
        finally:
            rollouts.fleet.set_faults("ro-01", error_rate=0.0)

    healer, errors = in_thread(heal_after_first_failure)
    waves = [WaveSpec(name="all", max_parallel=4, progress_deadline_seconds=20)]

    state = rollouts.run(version="1.0", rollout_id="flaky", target=API, waves=waves)

    healer.join(10)
    assert not errors, errors
    assert state.is_completed(), state.message
    assert rollouts.version("ro-01") == "1.0"
    [task_run] = _task_runs(rollouts, "flaky", "rollout-ro-01")
    assert task_run.run_count > 1


def test_a_422_is_not_retried_and_fails_the_cluster(rollouts: Rollouts) -> None:
    write_app(
        rollouts.apps_dir,
        rollouts.namespace,
        extra=(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
            f"  name: Not_A_Valid_Name\n  namespace: {rollouts.namespace}\n"
            "data:\n  VERSION: ${version}\n"
        ),
    )
    waves = [WaveSpec(name="all", max_parallel=4, progress_deadline_seconds=20)]

    state = rollouts.run(
        version="1.0", rollout_id="invalid", target="tier=api,env=prod", waves=waves
    )

    assert state.is_failed()
    history = rollouts.state("invalid")
    assert history is not None
    results = list(history.clusters.values())
    assert results
    assert all("RFC 1123" in (r.error or "") for r in results)
    [task_run] = _task_runs(rollouts, "invalid", "rollout-ro-04")
    assert task_run.run_count == 1
    assert not rollouts.namespace_exists("ro-04")  # rolled back: the namespace it created is gone


# --- dry run, planning errors -------------------------------------------------------------


def test_dry_run_changes_nothing(rollouts: Rollouts) -> None:
    from prefect.artifacts import Artifact

    _baseline(rollouts, target=API)
    before = {n: rollouts.deployment(n).metadata.resource_version for n in ("ro-01", "ro-04")}

    state = rollouts.run(version="2.0", rollout_id="dry", target=API, dry_run=True)

    assert state.is_completed(), state.message
    assert {n: rollouts.deployment(n).metadata.resource_version for n in before} == before
    assert {rollouts.version(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10")} == {"1.0"}
    assert rollouts.state("dry") is None  # a dry run records nothing
    artifact = Artifact.get("rollout-dry-run")
    assert artifact is not None
    rows = (
        artifact.data
        if isinstance(artifact.data, list)
        else __import__("json").loads(artifact.data)
    )
    assert len(rows) == 4
    assert all(r["changed"] == 2 and r["created"] == 0 for r in rows)


def test_targets_in_no_wave_fail_planning(rollouts: Rollouts) -> None:
    waves = [WaveSpec(name="only", count=1)]

    state = rollouts.run(version="1.0", rollout_id="unplanned", target=API, waves=waves)

    assert state.is_failed()
    assert "in no wave" in (state.message or "")
    assert not any(rollouts.namespace_exists(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10"))


def test_bad_manifest_fails_before_any_cluster_is_touched(rollouts: Rollouts) -> None:
    write_app(rollouts.apps_dir, rollouts.namespace, extra="apiVersion: v1\nkind: ConfigMap\n")

    state = rollouts.run(version="1.0", rollout_id="bad-yaml", target=API)

    assert state.is_failed()
    assert "metadata.name" in (state.message or "")
    assert not any(rollouts.namespace_exists(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10"))


# --- Slack, halt and last known good -------------------------------------------------------


def test_slack_down_does_not_fail_the_rollout(rollouts: Rollouts) -> None:
    rollouts.fleet.service_outage("slack", True)
    waves = [WaveSpec(name="all", max_parallel=4, progress_deadline_seconds=20)]

    state = rollouts.run(version="1.0", rollout_id="no-slack", target=API, waves=waves)

    rollouts.fleet.service_outage("slack", False)
    assert state.is_completed(), state.message
    assert {rollouts.version(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10")} == {"1.0"}
    assert rollouts.fleet.slack.messages("#fleetops") == []


def test_halt_then_roll_back_to_last_known_good(rollouts: Rollouts) -> None:
    _baseline(rollouts, target=API)
    waves = [
        WaveSpec(name="canary", count=1, max_parallel=1, progress_deadline_seconds=20),
        WaveSpec(name="rest", max_parallel=4, progress_deadline_seconds=3),
    ]
    broken = _plan(rollouts, version="2.0", target=API, waves=waves)["rest"][0]
    rollouts.fleet.set_faults(broken, broken_images=[":2.0"])

    state = rollouts.run(
        version="2.0", rollout_id="halted", target=API, waves=waves, on_failure="halt"
    )

    assert state.is_failed()
    history = rollouts.state("halted")
    assert history is not None
    assert history.rollout.state is RolloutStatus.HALTED
    assert {rollouts.version(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10")} == {"2.0"}
    assert rollouts.read(lambda h: h.blocked_versions("hello")) == []  # halt blocks nothing

    rollouts.fleet.reset_faults()
    back = rollouts.run(
        rollout_id="back", target=API, waves=waves, rollback_to_last_known_good=True
    )

    assert back.is_completed(), back.message
    assert {rollouts.version(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10")} == {"1.0"}


# --- one rollout at a time per cluster ----------------------------------------------------


def test_a_cluster_held_elsewhere_is_not_touched_until_it_is_released(
    rollouts: Rollouts,
) -> None:
    """Another holder of one cluster's lock (a rollout, a rotation) keeps the whole wave that
    contains it from starting; the wave starts once the lock is released."""
    import threading

    from fleetops.settings import RolloutSettings
    from tasks.rollout import cluster_locks

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with cluster_locks([rollouts.ids["ro-04"]], options=RolloutSettings()):
            held.set()
            release.wait(60)

    holder, holder_errors = in_thread(hold)
    assert held.wait(30), holder_errors
    waves = [WaveSpec(name="all", max_parallel=4, progress_deadline_seconds=20)]
    results: list[Any] = []
    runner, errors = in_thread(
        lambda: results.append(
            rollouts.run(version="1.0", rollout_id="held", target=API, waves=waves)
        )
    )
    time.sleep(3)  # the run plans, then waits for the lock
    assert runner.is_alive()
    state = rollouts.state("held")
    assert state is not None
    assert state.clusters == {}
    assert [rollouts.deployment(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10")] == [None] * 4

    release.set()
    holder.join(10)
    runner.join(60)
    assert not holder_errors, holder_errors
    assert not errors, errors
    assert results[0].is_completed(), results[0].message
    assert {rollouts.version(n) for n in ("ro-01", "ro-04", "ro-07", "ro-10")} == {"1.0"}


# --- resume after the flow process is killed ----------------------------------------------


def _fleetops_fields(rollouts: Rollouts, name: str) -> list[tuple[str, Any]]:
    deployment = rollouts.deployment(name)
    assert deployment is not None
    return [
        (m.operation, m.time)
        for m in deployment.metadata.managed_fields or []
        if m.manager == "fleetops"
    ] + [("generation", deployment.metadata.generation)]


def test_resume_after_the_flow_process_is_killed(rollouts: Rollouts) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.settings import PREFECT_API_URL

    from tasks.rollout import cluster_limit_name

    waves = [
        WaveSpec(name="canary", count=1, max_parallel=1, progress_deadline_seconds=20),
        WaveSpec(
            name="second",
            count=1,
            progress_deadline_seconds=20,
            approval=ApprovalSpec(required=True, timeout_seconds=20),
        ),
        WaveSpec(name="rest", max_parallel=1, progress_deadline_seconds=30),
    ]
    plan = _plan(rollouts, version="1.0", target=API, waves=waves)
    slow, last = plan["rest"]
    rollouts.fleet.set_faults(slow, ready_seconds=4)
    parameters = rollouts.parameters(version="1.0", rollout_id="killed", target=API, waves=waves)
    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    code = (
        "import sys\n"
        "from fleetops.domain.rollout import RolloutParameters\n"
        "from flows.rollout import rollout\n"
        "rollout(parameters=RolloutParameters.model_validate_json(sys.argv[1]))\n"
    )
    approver, errors = _approve(rollouts, "killed", ("approve", "alice"))
    process = subprocess.Popen(
        [sys.executable, "-c", code, parameters.model_dump_json()],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once the slow cluster is applied, not ready
            state = rollouts.state("killed")
            applying = state.clusters.get(rollouts.ids[slow]) if state else None
            if applying is not None and applying.applied_at is not None:
                break
            assert process.poll() is None, "the flow process ended by itself"
            time.sleep(0.05)
        else:
            raise AssertionError("the slow cluster was never applied")
    finally:
        process.kill()
        process.wait(10)
    approver.join(5)
    assert not errors, errors
    assert rollouts.deployment(last) is None  # the kill came before the last cluster
    before = {n: _fleetops_fields(rollouts, n) for n in (*plan["canary"], *plan["second"], slow)}
    # The killed process cannot release its slot; an operator frees it (or its lease expires).
    with get_client(sync_client=True) as client:
        for name in (*plan["canary"], *plan["second"], slow, last):
            client.update_global_concurrency_limit(
                cluster_limit_name(rollouts.ids[name]), GlobalConcurrencyLimitUpdate(active_slots=0)
            )

    state = rollouts.run(version="1.0", rollout_id="killed", target=API, waves=waves)

    assert state.is_completed(), state.message
    report: Any = state.result()
    assert report.verified == (rollouts.ids[slow],)  # found at the target: verified, not applied
    assert report.applied == (rollouts.ids[last],)
    assert {n: _fleetops_fields(rollouts, n) for n in before} == before
    assert rollouts.version(last) == "1.0"
    history = rollouts.state("killed")
    assert history is not None
    assert history.rollout.state is RolloutStatus.SUCCEEDED
    assert [d.approver for d in history.approvals["second"].decisions] == ["alice"]  # asked once
