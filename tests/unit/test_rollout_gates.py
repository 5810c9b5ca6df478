"""Wave gates: failure budgets, kubectl-equivalent workload readiness, distinct approvals."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from fleetops.domain import (
    ApprovalDecision,
    ApprovalState,
    ClusterOutcome,
    Decision,
    OutcomeStatus,
    PlannedWave,
    ReadinessStatus,
    WaveSpec,
    cluster_readiness,
    evaluate_wave,
    is_workload,
    record_approval,
    should_stop,
    workload_ready,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def wave(size: int, max_failures: int | str = 0) -> PlannedWave:
    return PlannedWave(
        index=2,
        spec=WaveSpec(name="ten-percent", max_failures=max_failures),
        clusters=tuple(f"c{i}" for i in range(size)),
    )


def outcomes(failed: int = 0, succeeded: int = 0, skipped: int = 0) -> list[ClusterOutcome]:
    statuses = (
        [OutcomeStatus.FAILED] * failed
        + [OutcomeStatus.SUCCEEDED] * succeeded
        + [OutcomeStatus.SKIPPED] * skipped
    )
    return [
        ClusterOutcome(
            cluster_id=f"c{i}", status=status, message="boom" if status == "failed" else ""
        )
        for i, status in enumerate(statuses)
    ]


# --- failure budget -------------------------------------------------------------------------


def test_default_budget_stops_on_the_first_failure() -> None:
    w = wave(5)
    assert not should_stop(outcomes(succeeded=2), w)
    assert should_stop(outcomes(failed=1), w)
    verdict = evaluate_wave(outcomes(failed=1, succeeded=4), w)
    assert not verdict.passed
    assert verdict.failed == ("c0",)
    assert verdict.succeeded == ("c1", "c2", "c3", "c4")
    assert verdict.reason == "wave 'ten-percent' failed: 1 of 5 clusters failed, 0 tolerated"


def test_a_count_budget_tolerates_that_many() -> None:
    w = wave(5, max_failures=1)
    assert not should_stop(outcomes(failed=1, succeeded=1), w)
    assert should_stop(outcomes(failed=2), w)
    verdict = evaluate_wave(outcomes(failed=1, succeeded=4), w)
    assert verdict.passed
    assert verdict.max_failures == 1
    assert verdict.reason == "wave 'ten-percent' passed: 1 of 5 failed, 1 tolerated"


@pytest.mark.parametrize(
    ("size", "percent", "budget"),
    [(5, "10%", 0), (10, "10%", 1), (19, "10%", 1), (20, "10%", 2), (3, "50%", 1), (4, "100%", 4)],
)
def test_a_percent_budget_is_of_the_wave_size_rounded_down(
    size: int, percent: str, budget: int
) -> None:
    w = wave(size, max_failures=percent)
    assert w.max_failures == budget
    assert not should_stop(outcomes(failed=budget), w)
    if budget < size:
        assert should_stop(outcomes(failed=budget + 1), w)


def test_skipped_clusters_are_neither_successes_nor_failures() -> None:
    verdict = evaluate_wave(outcomes(succeeded=3, skipped=2), wave(5))
    assert verdict.passed
    assert verdict.skipped == ("c3", "c4")
    assert verdict.failed == ()


def test_a_wave_with_clusters_missing_an_outcome_does_not_pass() -> None:
    verdict = evaluate_wave(outcomes(succeeded=3), wave(5))
    assert not verdict.passed
    assert verdict.not_run == ("c3", "c4")
    assert verdict.reason == "wave 'ten-percent' did not finish: 2 cluster(s) have no outcome"
    stopped = evaluate_wave(outcomes(failed=1), wave(5))
    assert stopped.not_run == ("c1", "c2", "c3", "c4")
    assert "failed: 1 of 5 clusters failed" in stopped.reason


def test_outcomes_are_reported_in_plan_order() -> None:
    results = list(reversed(outcomes(failed=2, succeeded=3)))
    verdict = evaluate_wave(results, wave(5, max_failures=2))
    assert verdict.failed == ("c0", "c1")
    assert verdict.succeeded == ("c2", "c3", "c4")
    assert verdict.passed


def test_foreign_or_duplicate_outcomes_are_programming_errors() -> None:
    stranger = ClusterOutcome(cluster_id="elsewhere", status=OutcomeStatus.SUCCEEDED)
    with pytest.raises(ValueError, match="'elsewhere' is not in wave 'ten-percent'"):
        evaluate_wave([stranger], wave(2))
    twice = outcomes(succeeded=1) * 2
    with pytest.raises(ValueError, match="'c0' has two outcomes"):
        should_stop(twice, wave(2))


def test_empty_wave_passes() -> None:
    verdict = evaluate_wave([], wave(0))
    assert verdict.passed
    assert verdict.size == 0


# --- readiness: Deployment ------------------------------------------------------------------


def deployment(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "hello", "namespace": "hello", "generation": 3},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 3,
            "replicas": 2,
            "updatedReplicas": 2,
            "readyReplicas": 2,
            "availableReplicas": 2,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        },
    }
    base["status"].update(status)
    return base


def test_a_rolled_out_deployment_is_ready() -> None:
    readiness = workload_ready(deployment(), target_generation=3)
    assert readiness.status is ReadinessStatus.READY
    assert readiness.done
    assert readiness.message == "deployment 'hello' successfully rolled out"
    assert (readiness.kind, readiness.namespace, readiness.name) == ("Deployment", "hello", "hello")


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (
            {"observedGeneration": 2},
            "Waiting for deployment 'hello' spec update to be observed (generation 3, observed 2)",
        ),
        (
            {"updatedReplicas": 1},
            "Waiting for deployment 'hello' rollout to finish: 1 out of 2 new replicas have been updated",
        ),
        (
            {"replicas": 3},
            "Waiting for deployment 'hello' rollout to finish: 1 old replicas are pending termination",
        ),
        (
            {"availableReplicas": 1},
            "Waiting for deployment 'hello' rollout to finish: 1 of 2 updated replicas are available",
        ),
    ],
)
def test_a_deployment_on_its_way_is_progressing(status: dict[str, Any], message: str) -> None:
    readiness = workload_ready(deployment(**status))
    assert readiness.status is ReadinessStatus.PROGRESSING
    assert readiness.message == message
    assert not readiness.done


def test_progress_deadline_exceeded_fails_with_the_condition_message() -> None:
    obj = deployment(updatedReplicas=1, availableReplicas=1)
    obj["status"]["conditions"][1] = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "hello-5d4f" has timed out progressing.',
    }
    readiness = workload_ready(obj)
    assert readiness.status is ReadinessStatus.FAILED
    assert readiness.message == (
        "deployment 'hello' exceeded its progress deadline: "
        'ReplicaSet "hello-5d4f" has timed out progressing.'
    )


def test_a_deadline_condition_of_an_unobserved_generation_is_not_trusted() -> None:
    obj = deployment(observedGeneration=2)
    obj["status"]["conditions"][1]["reason"] = "ProgressDeadlineExceeded"
    assert workload_ready(obj).status is ReadinessStatus.PROGRESSING


def test_status_for_an_older_generation_than_applied_is_stale() -> None:
    obj = deployment()  # reports generation 3, all replicas fine
    readiness = workload_ready(obj, target_generation=4)
    assert readiness.status is ReadinessStatus.PROGRESSING
    assert readiness.message == (
        "Waiting for deployment 'hello': read at generation 3, older than the applied "
        "generation 4 (stale read)"
    )


def test_a_newer_live_generation_must_be_observed_too() -> None:
    obj = deployment(observedGeneration=3)
    obj["metadata"]["generation"] = 5  # scaled by someone since our apply at 3
    assert workload_ready(obj, target_generation=3).status is ReadinessStatus.PROGRESSING
    obj["status"]["observedGeneration"] = 5
    assert workload_ready(obj, target_generation=3).status is ReadinessStatus.READY


def test_a_fresh_deployment_without_status_is_progressing() -> None:
    obj = deployment()
    obj["metadata"]["generation"] = 1
    del obj["status"]
    readiness = workload_ready(obj, target_generation=1)
    assert readiness.status is ReadinessStatus.PROGRESSING
    assert "spec update to be observed (generation 1, observed 0)" in readiness.message


def test_replicas_default_to_one_and_zero_replicas_is_ready() -> None:
    obj = deployment(replicas=1, updatedReplicas=1, availableReplicas=1)
    del obj["spec"]["replicas"]
    assert workload_ready(obj).status is ReadinessStatus.READY
    scaled_down = deployment(replicas=0, updatedReplicas=0, availableReplicas=0)
    scaled_down["spec"]["replicas"] = 0
    assert workload_ready(scaled_down).status is ReadinessStatus.READY


# --- readiness: StatefulSet and DaemonSet ---------------------------------------------------


def statefulset(rolling: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    strategy: dict[str, Any] = {"type": "RollingUpdate"}
    if rolling is not None:
        strategy["rollingUpdate"] = rolling
    base: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "data", "generation": 2},
        "spec": {"replicas": 3, "updateStrategy": strategy},
        "status": {
            "observedGeneration": 2,
            "replicas": 3,
            "readyReplicas": 3,
            "updatedReplicas": 3,
            "currentReplicas": 3,
            "currentRevision": "db-7f",
            "updateRevision": "db-7f",
        },
    }
    base["status"].update(status)
    return base


@pytest.mark.parametrize(
    ("obj", "expected", "message"),
    [
        (
            statefulset({"partition": 0}),
            "ready",
            "statefulset 'db' roll out complete: 3 new pods updated",
        ),
        (statefulset(), "ready", "statefulset 'db' rolling update complete at revision db-7f"),
        (
            statefulset(observedGeneration=0),
            "progressing",
            "Waiting for statefulset 'db' spec update to be observed (generation 2, observed 0)",
        ),
        (
            statefulset(readyReplicas=1),
            "progressing",
            "Waiting for statefulset 'db': 2 pods to be ready",
        ),
        (
            statefulset({"partition": 0}, updatedReplicas=2),
            "progressing",
            "Waiting for statefulset 'db' partitioned roll out to finish: 2 out of 3 new pods have been updated",
        ),
        (
            statefulset({"partition": 2}, updatedReplicas=1),
            "ready",
            "statefulset 'db' roll out complete: 1 new pods updated",
        ),
        (
            statefulset(updateRevision="db-8a", updatedReplicas=1),
            "progressing",
            "Waiting for statefulset 'db' rolling update to complete: 1 pods at revision db-8a",
        ),
    ],
)
def test_statefulset_follows_kubectl(obj: dict[str, Any], expected: str, message: str) -> None:
    readiness = workload_ready(obj)
    assert readiness.status == expected
    assert readiness.message == message


def daemonset(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "ops", "generation": 4},
        "spec": {"updateStrategy": {"type": "RollingUpdate"}},
        "status": {
            "observedGeneration": 4,
            "desiredNumberScheduled": 5,
            "currentNumberScheduled": 5,
            "updatedNumberScheduled": 5,
            "numberAvailable": 5,
            "numberReady": 5,
        },
    }
    base["status"].update(status)
    return base


@pytest.mark.parametrize(
    ("obj", "expected", "message"),
    [
        (daemonset(), "ready", "daemon set 'agent' successfully rolled out"),
        (
            daemonset(updatedNumberScheduled=3),
            "progressing",
            "Waiting for daemon set 'agent' rollout to finish: 3 out of 5 new pods have been updated",
        ),
        (
            daemonset(numberAvailable=4),
            "progressing",
            "Waiting for daemon set 'agent' rollout to finish: 4 of 5 updated pods are available",
        ),
        (
            daemonset(observedGeneration=3),
            "progressing",
            "Waiting for daemon set 'agent' spec update to be observed (generation 4, observed 3)",
        ),
    ],
)
def test_daemonset_follows_kubectl(obj: dict[str, Any], expected: str, message: str) -> None:
    readiness = workload_ready(obj)
    assert readiness.status == expected
    assert readiness.message == message


def test_on_delete_strategies_have_no_rollout_to_track() -> None:
    for obj in (statefulset(), daemonset()):
        obj["spec"]["updateStrategy"] = {"type": "OnDelete"}
        readiness = workload_ready(obj)
        assert readiness.status is ReadinessStatus.UNTRACKED
        assert "uses the OnDelete strategy" in readiness.message
        assert readiness.done


def test_other_objects_are_untracked() -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}}
    assert not is_workload(config)
    assert workload_ready(config).status is ReadinessStatus.UNTRACKED
    foreign = {"apiVersion": "example.com/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    assert not is_workload(foreign)
    assert is_workload(deployment())


def test_cluster_readiness_is_the_worst_object() -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    ready = [workload_ready(deployment()), workload_ready(daemonset()), workload_ready(config)]
    combined = cluster_readiness(ready)
    assert combined.status is ReadinessStatus.READY
    assert combined.done
    assert combined.message == "2 workload(s) rolled out"

    waiting = cluster_readiness([*ready, workload_ready(statefulset(readyReplicas=2))])
    assert waiting.status is ReadinessStatus.PROGRESSING
    assert waiting.message == "Waiting for statefulset 'db': 1 pods to be ready"

    broken = copy.deepcopy(deployment())
    broken["status"]["conditions"][1]["reason"] = "ProgressDeadlineExceeded"
    broken["status"]["conditions"][1]["message"] = "timed out"
    failed = cluster_readiness(
        [workload_ready(statefulset(readyReplicas=2)), workload_ready(broken)]
    )
    assert failed.status is ReadinessStatus.FAILED
    assert failed.message == "deployment 'hello' exceeded its progress deadline: timed out"


def test_malformed_status_fields_are_treated_as_missing() -> None:
    obj = deployment(updatedReplicas="2", availableReplicas=None)
    readiness = workload_ready(obj)
    assert readiness.status is ReadinessStatus.PROGRESSING
    assert "0 out of 2 new replicas" in readiness.message


# --- approvals ------------------------------------------------------------------------------


def approve(name: str, comment: str = "") -> ApprovalDecision:
    return ApprovalDecision(decision=Decision.APPROVE, approver=name, comment=comment)


def reject(name: str, comment: str = "") -> ApprovalDecision:
    return ApprovalDecision(decision=Decision.REJECT, approver=name, comment=comment)


def test_one_approval_starts_the_wave() -> None:
    result = record_approval(ApprovalState(wave="half"), approve("alice", "lgtm"), 1, at=T0)
    assert result.may_start
    assert result.accepted
    assert not result.rejected
    assert result.outstanding == 0
    assert result.message == "wave 'half' approved by alice"
    (recorded,) = result.state.decisions
    assert (recorded.approver, recorded.comment, recorded.at, recorded.counted) == (
        "alice",
        "lgtm",
        T0,
        True,
    )


def test_two_approvers_must_be_different_people() -> None:
    first = record_approval(ApprovalState(wave="half"), approve("alice"), 2)
    assert not first.may_start
    assert first.outstanding == 1
    assert (
        first.message
        == "wave 'half' approved by alice; 1 more approval(s) from someone else are needed"
    )

    again = record_approval(first.state, approve("  Alice "), 2)
    assert not again.may_start
    assert not again.accepted
    assert again.outstanding == 1
    assert again.message == (
        "Alice has already approved wave 'half'; 1 more approval(s) from someone else are needed"
    )
    assert [d.counted for d in again.state.decisions] == [True, False]

    second = record_approval(again.state, approve("bob"), 2)
    assert second.may_start
    assert second.accepted
    assert second.state.approvers == ("alice", "bob")
    assert second.message == "wave 'half' approved by alice, bob"


def test_a_rejection_from_anyone_rejects_the_wave() -> None:
    first = record_approval(ApprovalState(wave="half"), approve("alice"), 2)
    result = record_approval(first.state, reject("alice", "error rate up in canary"), 2)
    assert result.rejected
    assert not result.may_start
    assert result.outstanding == 0
    assert result.message == "wave 'half' rejected by alice: error rate up in canary"
    late = record_approval(result.state, approve("bob"), 2)
    assert late.rejected
    assert not late.may_start
    assert not late.accepted
    assert late.message == "wave 'half' was already rejected; bob's decision is recorded only"


def test_decisions_after_the_grant_change_nothing() -> None:
    granted = record_approval(ApprovalState(wave="half"), approve("alice"), 1)
    late = record_approval(granted.state, reject("bob"), 1)
    assert late.may_start
    assert not late.rejected
    assert not late.accepted
    assert late.state.rejection is None
    assert late.message == "wave 'half' was already approved; bob's decision is recorded only"


def test_approval_state_round_trips_for_resume() -> None:
    result = record_approval(ApprovalState(wave="half"), approve("alice"), 2, at=T0)
    stored = result.state.model_dump(mode="json")
    restored = ApprovalState.model_validate(stored)
    assert restored == result.state
    assert record_approval(restored, approve("bob"), 2).may_start


def test_approval_decision_validation() -> None:
    with pytest.raises(ValidationError, match="approver must name a person"):
        ApprovalDecision(decision=Decision.APPROVE, approver="   ")
    with pytest.raises(ValidationError, match="decision"):
        ApprovalDecision.model_validate({"decision": "maybe", "approver": "alice"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ApprovalDecision.model_validate({"decision": "approve", "approver": "a", "when": "now"})
    assert (
        ApprovalDecision.model_validate({"decision": "reject", "approver": " bob "}).approver
        == "bob"
    )
    for name, field in ApprovalDecision.model_fields.items():
        assert field.title, name
        assert field.description, name
    with pytest.raises(ValueError, match="at least 1"):
        record_approval(ApprovalState(wave="w"), approve("a"), 0)
