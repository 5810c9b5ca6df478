"""Gates of a rollout: failure budgets, workload health from live state, and approvals.

- **Failure budget.** A wave tolerates :attr:`PlannedWave.max_failures` failed clusters (a
  percentage of the wave's planned size rounds down, so 10 % of 5 is 0). :func:`should_stop`
  says, while the wave runs, that no further cluster may start: failures already exceed the
  budget. :func:`evaluate_wave` judges the finished wave: it passes only when every cluster has
  an outcome and failures are within the budget. Skipped clusters (unreachable, with
  ``unreachable=skip``) are neither successes nor failures; they are reported.
- **Health** comes from live objects read back from the cluster, never from cached status.
  :func:`workload_ready` follows ``kubectl rollout status`` (kubectl's
  ``polymorphichelpers/rollout_status.go``) for Deployments, StatefulSets and DaemonSets, and
  adds a target generation: status observed for a generation older than the one fleetops
  applied is stale and never counts as ready.
- **Approvals.** :class:`ApprovalDecision` is what a person submits (the flow hands it to
  ``pause_flow_run(wait_for_input=...)``, which wraps a pydantic model as a Prefect RunInput);
  :func:`record_approval` counts distinct approvers and says when the wave may start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetops.domain.waves import PlannedWave

_FROZEN = ConfigDict(frozen=True, extra="forbid")


# --- failure budget -------------------------------------------------------------------------


class OutcomeStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class ClusterOutcome(BaseModel):
    """How one cluster of a wave ended."""

    model_config = _FROZEN

    cluster_id: str = Field(description="Cluster id.")
    status: OutcomeStatus = Field(description="succeeded, failed or skipped.")
    message: str = Field(default="", description="Why it failed or was skipped (redacted).")


class WaveVerdict(BaseModel):
    """The gate's judgement of a finished wave."""

    model_config = _FROZEN

    wave: str = Field(description="Wave name.")
    passed: bool = Field(description="Whether the rollout may go on to bake and the next wave.")
    size: int = Field(description="Clusters planned in the wave.")
    max_failures: int = Field(description="Failures the wave tolerates.")
    succeeded: tuple[str, ...] = Field(default=(), description="Cluster ids, plan order.")
    failed: tuple[str, ...] = Field(default=(), description="Cluster ids, plan order.")
    skipped: tuple[str, ...] = Field(default=(), description="Cluster ids, plan order.")
    not_run: tuple[str, ...] = Field(
        default=(), description="Planned clusters without an outcome (the wave was stopped)."
    )
    reason: str = Field(description="One sentence for Slack and the audit trail.")


def _outcomes(results: Iterable[ClusterOutcome], wave: PlannedWave) -> dict[str, ClusterOutcome]:
    members = set(wave.clusters)
    by_id: dict[str, ClusterOutcome] = {}
    for result in results:
        if result.cluster_id not in members:
            raise ValueError(f"cluster {result.cluster_id!r} is not in wave {wave.name!r}")
        if result.cluster_id in by_id:
            raise ValueError(f"cluster {result.cluster_id!r} has two outcomes in {wave.name!r}")
        by_id[result.cluster_id] = result
    return by_id


def failures(results: Iterable[ClusterOutcome]) -> int:
    return sum(1 for result in results if result.status is OutcomeStatus.FAILED)


def should_stop(results_so_far: Iterable[ClusterOutcome], wave: PlannedWave) -> bool:
    """Whether the wave must start no further cluster: failures exceed its budget.

    With the default budget 0 this is true from the first failure. Clusters already running
    finish (their outcome is needed for rollback); none is started after this says stop.
    """
    return failures(_outcomes(results_so_far, wave).values()) > wave.max_failures


def evaluate_wave(results: Iterable[ClusterOutcome], wave: PlannedWave) -> WaveVerdict:
    """Judge a wave: every planned cluster has an outcome and failures are within budget."""
    by_id = _outcomes(results, wave)

    def having(status: OutcomeStatus) -> tuple[str, ...]:
        return tuple(c for c in wave.clusters if c in by_id and by_id[c].status is status)

    failed = having(OutcomeStatus.FAILED)
    not_run = tuple(c for c in wave.clusters if c not in by_id)
    budget = wave.max_failures
    if len(failed) > budget:
        reason = (
            f"wave {wave.name!r} failed: {len(failed)} of {wave.size} clusters failed, "
            f"{budget} tolerated"
        )
    elif not_run:
        reason = f"wave {wave.name!r} did not finish: {len(not_run)} cluster(s) have no outcome"
    else:
        reason = (
            f"wave {wave.name!r} passed: {len(failed)} of {wave.size} failed, {budget} tolerated"
        )
    return WaveVerdict(
        wave=wave.name,
        passed=len(failed) <= budget and not not_run,
        size=wave.size,
        max_failures=budget,
        succeeded=having(OutcomeStatus.SUCCEEDED),
        failed=failed,
        skipped=having(OutcomeStatus.SKIPPED),
        not_run=not_run,
        reason=reason,
    )


# --- workload readiness from live objects ---------------------------------------------------


class ReadinessStatus(StrEnum):
    READY = "ready"  # the target revision is rolled out and available
    PROGRESSING = "progressing"  # not yet: keep polling until the progress deadline
    FAILED = "failed"  # will not get ready by itself (progress deadline exceeded)
    UNTRACKED = "untracked"  # no rollout to wait for (not a workload, or OnDelete strategy)


class Readiness(BaseModel):
    """Where one object's rollout stands, from its live status."""

    model_config = _FROZEN

    kind: str = Field(description="Object kind.")
    namespace: str = Field(default="", description="Namespace, empty for cluster scope.")
    name: str = Field(description="Object name.")
    status: ReadinessStatus = Field(description="ready, progressing, failed or untracked.")
    message: str = Field(description="kubectl-style explanation.")

    @property
    def done(self) -> bool:
        """Nothing left to wait for: ready, or no rollout to track."""
        return self.status in (ReadinessStatus.READY, ReadinessStatus.UNTRACKED)


WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})


def is_workload(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is a kind whose rollout is tracked (apps Deployment/StatefulSet/DaemonSet)."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    return obj.get("kind") in WORKLOAD_KINDS and group in ("apps", "extensions")


def _int(mapping: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = mapping.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _map(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = mapping.get(key)
    return value if isinstance(value, Mapping) else {}


def workload_ready(obj: Mapping[str, Any], *, target_generation: int | None = None) -> Readiness:
    """Readiness of a live object, as ``kubectl rollout status`` judges it.

    ``target_generation`` is ``metadata.generation`` of the object fleetops applied (from the
    apply response). A live object at an older generation is a stale read; status is trusted
    only once ``status.observedGeneration`` reaches both the live and the target generation.
    A newer live generation (someone scaled it since) is judged as it is, as kubectl does.
    Objects that are not workloads are ``untracked``.

    Per kind, in kubectl's order:

    - Deployment: generation observed; a ``Progressing`` condition with reason
      ``ProgressDeadlineExceeded`` fails (with the condition's message); then every replica
      updated (``updatedReplicas >= spec.replicas``), no old replica pending termination
      (``status.replicas <= updatedReplicas``), every updated replica available.
    - StatefulSet (RollingUpdate): generation observed (and not 0); ``readyReplicas >=
      spec.replicas``; with a ``rollingUpdate`` block, ``updatedReplicas >= replicas -
      partition``; without one, ``updateRevision == currentRevision``.
    - DaemonSet (RollingUpdate): generation observed; ``updatedNumberScheduled`` and
      ``numberAvailable`` both reach ``desiredNumberScheduled``.
    - ``OnDelete`` StatefulSets and DaemonSets have no rollout to wait for: ``untracked``
      (kubectl refuses them too).
    """
    metadata = _map(obj, "metadata")
    kind = str(obj.get("kind", ""))
    namespace = str(metadata.get("namespace") or "")
    name = str(metadata.get("name", ""))

    def readiness(state: ReadinessStatus, message: str) -> Readiness:
        return Readiness(kind=kind, namespace=namespace, name=name, status=state, message=message)

    if not is_workload(obj):
        return readiness(ReadinessStatus.UNTRACKED, f"{kind} {name!r} has no rollout to wait for")
    generation = _int(metadata, "generation")
    subject = f"{_LABELS[kind]} {name!r}"
    if target_generation is not None and generation < target_generation:
        return readiness(
            ReadinessStatus.PROGRESSING,
            f"Waiting for {subject}: read at generation {generation}, older than the applied "
            f"generation {target_generation} (stale read)",
        )
    wanted = max(generation, target_generation or 0)
    judge = {"Deployment": _deployment, "StatefulSet": _statefulset, "DaemonSet": _daemonset}
    state, message = judge[kind](obj, subject, wanted)
    return readiness(state, message)


_LABELS = {"Deployment": "deployment", "StatefulSet": "statefulset", "DaemonSet": "daemon set"}
_Judgement = tuple[ReadinessStatus, str]


def _not_observed(subject: str, wanted: int, observed: int) -> _Judgement:
    return (
        ReadinessStatus.PROGRESSING,
        f"Waiting for {subject} spec update to be observed (generation {wanted}, observed "
        f"{observed})",
    )


def _deployment(obj: Mapping[str, Any], subject: str, wanted: int) -> _Judgement:
    spec, status = _map(obj, "spec"), _map(obj, "status")
    observed = _int(status, "observedGeneration")
    if observed < wanted:
        return _not_observed(subject, wanted, observed)
    for condition in status.get("conditions") or ():
        if (
            isinstance(condition, Mapping)
            and condition.get("type") == "Progressing"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            detail = condition.get("message") or "no message"
            return ReadinessStatus.FAILED, f"{subject} exceeded its progress deadline: {detail}"
    replicas = _int(spec, "replicas", 1)
    updated = _int(status, "updatedReplicas")
    total = _int(status, "replicas")
    available = _int(status, "availableReplicas")
    if updated < replicas:
        waiting = f"{updated} out of {replicas} new replicas have been updated"
    elif total > updated:
        waiting = f"{total - updated} old replicas are pending termination"
    elif available < updated:
        waiting = f"{available} of {updated} updated replicas are available"
    else:
        return ReadinessStatus.READY, f"{subject} successfully rolled out"
    return ReadinessStatus.PROGRESSING, f"Waiting for {subject} rollout to finish: {waiting}"


def _strategy(spec: Mapping[str, Any], field: str) -> tuple[str, Mapping[str, Any] | None]:
    strategy = _map(spec, field)
    rolling = strategy.get("rollingUpdate")
    return str(strategy.get("type") or "RollingUpdate"), (
        rolling if isinstance(rolling, Mapping) else None
    )


def _statefulset(obj: Mapping[str, Any], subject: str, wanted: int) -> _Judgement:
    spec, status = _map(obj, "spec"), _map(obj, "status")
    strategy, rolling = _strategy(spec, "updateStrategy")
    if strategy != "RollingUpdate":
        return ReadinessStatus.UNTRACKED, f"{subject} uses the {strategy} strategy: no rollout"
    observed = _int(status, "observedGeneration")
    if observed == 0 or observed < wanted:
        return _not_observed(subject, wanted, observed)
    replicas = _int(spec, "replicas", 1)
    ready = _int(status, "readyReplicas")
    if ready < replicas:
        return (
            ReadinessStatus.PROGRESSING,
            f"Waiting for {subject}: {replicas - ready} pods to be ready",
        )
    updated = _int(status, "updatedReplicas")
    if rolling is not None:
        partition = rolling.get("partition")
        if isinstance(partition, int) and updated < replicas - partition:
            return (
                ReadinessStatus.PROGRESSING,
                f"Waiting for {subject} partitioned roll out to finish: {updated} out of "
                f"{replicas - partition} new pods have been updated",
            )
        return ReadinessStatus.READY, f"{subject} roll out complete: {updated} new pods updated"
    update_revision = status.get("updateRevision")
    if update_revision != status.get("currentRevision"):
        return (
            ReadinessStatus.PROGRESSING,
            f"Waiting for {subject} rolling update to complete: {updated} pods at revision "
            f"{update_revision}",
        )
    return ReadinessStatus.READY, f"{subject} rolling update complete at revision {update_revision}"


def _daemonset(obj: Mapping[str, Any], subject: str, wanted: int) -> _Judgement:
    spec, status = _map(obj, "spec"), _map(obj, "status")
    strategy, _ = _strategy(spec, "updateStrategy")
    if strategy != "RollingUpdate":
        return ReadinessStatus.UNTRACKED, f"{subject} uses the {strategy} strategy: no rollout"
    observed = _int(status, "observedGeneration")
    if observed < wanted:
        return _not_observed(subject, wanted, observed)
    desired = _int(status, "desiredNumberScheduled")
    updated = _int(status, "updatedNumberScheduled")
    available = _int(status, "numberAvailable")
    if updated < desired:
        waiting = f"{updated} out of {desired} new pods have been updated"
    elif available < desired:
        waiting = f"{available} of {desired} updated pods are available"
    else:
        return ReadinessStatus.READY, f"{subject} successfully rolled out"
    return ReadinessStatus.PROGRESSING, f"Waiting for {subject} rollout to finish: {waiting}"


class ClusterReadiness(BaseModel):
    """Readiness of every object of the app on one cluster, and the worst of them."""

    model_config = _FROZEN

    status: ReadinessStatus = Field(
        description="failed if any object failed, else progressing if any is, else ready."
    )
    objects: tuple[Readiness, ...] = Field(description="Per object, in the order given.")
    message: str = Field(description="What is not done yet, or that everything is.")

    @property
    def done(self) -> bool:
        return self.status is ReadinessStatus.READY


def cluster_readiness(objects: Iterable[Readiness]) -> ClusterReadiness:
    """Combine per-object readiness: one failure fails the cluster, one laggard keeps it waiting."""
    items = tuple(objects)
    failed = [r for r in items if r.status is ReadinessStatus.FAILED]
    waiting = [r for r in items if r.status is ReadinessStatus.PROGRESSING]
    if failed:
        status, pending = ReadinessStatus.FAILED, failed
    elif waiting:
        status, pending = ReadinessStatus.PROGRESSING, waiting
    else:
        tracked = sum(1 for r in items if r.status is ReadinessStatus.READY)
        return ClusterReadiness(
            status=ReadinessStatus.READY,
            objects=items,
            message=f"{tracked} workload(s) rolled out",
        )
    return ClusterReadiness(
        status=status, objects=items, message="; ".join(r.message for r in pending)
    )


# --- approvals ------------------------------------------------------------------------------


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class ApprovalDecision(BaseModel):
    """What one person decides about a wave waiting for approval (the Prefect UI form)."""

    model_config = ConfigDict(extra="forbid")

    decision: Decision = Field(
        title="Decision", description="approve lets the wave start; reject fails the rollout."
    )
    approver: str = Field(
        min_length=1,
        max_length=100,
        title="Approver",
        description="Your name; each approver counts once.",
    )
    comment: str = Field(
        default="", max_length=2000, title="Comment", description="Why, for the audit trail."
    )

    @field_validator("approver")
    @classmethod
    def _approver(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("approver must name a person")
        return value


class RecordedDecision(BaseModel):
    """A decision as the audit trail keeps it."""

    model_config = _FROZEN

    decision: Decision = Field(description="approve or reject.")
    approver: str = Field(description="Who decided.")
    comment: str = Field(default="", description="Their comment.")
    at: datetime | None = Field(default=None, description="When (UTC), as the flow saw it.")
    counted: bool = Field(description="False for a repeat approval by the same person.")


class ApprovalState(BaseModel):
    """Decisions given so far for one wave; stored with the rollout so a resume asks no again."""

    model_config = _FROZEN

    wave: str = Field(description="Wave name.")
    decisions: tuple[RecordedDecision, ...] = Field(default=(), description="In arrival order.")

    @property
    def approvers(self) -> tuple[str, ...]:
        """Distinct people who approved, in order."""
        return tuple(
            d.approver for d in self.decisions if d.decision is Decision.APPROVE and d.counted
        )

    @property
    def rejection(self) -> RecordedDecision | None:
        """The rejection that counted, if any."""
        return next(
            (d for d in self.decisions if d.decision is Decision.REJECT and d.counted), None
        )

    def granted(self, required: int) -> bool:
        return self.rejection is None and len(self.approvers) >= required


class ApprovalResult(BaseModel):
    """The state after a decision, and what it means for the wave."""

    model_config = _FROZEN

    state: ApprovalState = Field(description="The decisions, including this one.")
    may_start: bool = Field(description="Enough distinct approvals and no rejection.")
    rejected: bool = Field(description="Someone rejected: the wave fails (on_failure applies).")
    accepted: bool = Field(description="Whether this decision counted.")
    outstanding: int = Field(description="Approvals still needed from other people.")
    message: str = Field(description="One sentence for the approver, Slack and the audit trail.")


def _person(name: str) -> str:
    return " ".join(name.split()).casefold()


def record_approval(
    state: ApprovalState,
    decision: ApprovalDecision,
    required: int,
    *,
    at: datetime | None = None,
) -> ApprovalResult:
    """Apply one decision to a wave's approvals.

    ``required`` distinct people must approve; names compare without case and extra blanks, so
    ``Alice`` approving twice counts once. A rejection from anyone, at any point before the wave
    is granted, rejects it. Decisions after the wave was granted or rejected are recorded but
    change nothing.
    """
    if required < 1:
        raise ValueError(f"required approvals must be at least 1, not {required}")
    wave = state.wave
    already_decided = state.rejection is not None or state.granted(required)
    repeat = decision.decision is Decision.APPROVE and _person(decision.approver) in {
        _person(name) for name in state.approvers
    }
    counted = not already_decided and not repeat
    recorded = RecordedDecision(
        decision=decision.decision,
        approver=decision.approver,
        comment=decision.comment,
        at=at,
        counted=counted,
    )
    after = state.model_copy(update={"decisions": (*state.decisions, recorded)})
    rejected = after.rejection is not None
    may_start = after.granted(required)
    outstanding = 0 if rejected else max(0, required - len(after.approvers))
    if already_decided:
        verdict = "rejected" if state.rejection is not None else "approved"
        message = (
            f"wave {wave!r} was already {verdict}; {decision.approver}'s decision is recorded only"
        )
    elif repeat:
        message = (
            f"{decision.approver} has already approved wave {wave!r}; {outstanding} more approval(s) "
            "from someone else are needed"
        )
    elif rejected:
        comment = f": {decision.comment}" if decision.comment else ""
        message = f"wave {wave!r} rejected by {decision.approver}{comment}"
    elif may_start:
        message = f"wave {wave!r} approved by {', '.join(after.approvers)}"
    else:
        message = (
            f"wave {wave!r} approved by {decision.approver}; {outstanding} more approval(s) from "
            "someone else are needed"
        )
    return ApprovalResult(
        state=after,
        may_start=may_start,
        rejected=rejected,
        accepted=counted,
        outstanding=outstanding,
        message=message,
    )
