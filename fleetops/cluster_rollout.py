"""What a rollout does to one cluster, without Prefect: the body of the rollout flow's tasks.

:class:`ClusterSteps` binds one run's credentials, rollout history and options; each method is
one step on one cluster, builds its Kubernetes client from the cluster's inventory record and a
short-lived token (never kept beyond the step) and returns a frozen model:

- :meth:`ClusterSteps.rollout`: record the rollback point, server-side apply (field manager
  ``fleetops``), wait until every workload reports the applied generation; on a resumed rollout,
  a cluster that already holds the target objects is verified instead of applied again;
- :meth:`ClusterSteps.dry_run`: ``dryRun=All`` apply and the created/changed/unchanged summary;
- :meth:`ClusterSteps.health`: one look at live readiness (the gate after the bake);
- :meth:`ClusterSteps.restore`: put a cluster back to its rollback point and verify it.

Errors are :class:`~fleetops.errors.FleetopsError` subclasses: transient ones (connection,
timeout, 429, 5xx) are the caller's to retry; a 4xx or a workload that does not get ready
(:class:`ClusterRolloutFailed`) is final. The history is written before each step that a resumed
run or a rollback relies on: the rollback point before the apply, ``applied_at`` after it, the
outcome at the end.

One :class:`ClusterSteps` serves every cluster of a run, from many threads at once: it holds no
per-cluster state, the credential source is thread-safe and the history's engine pools its
connections.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleetops.clients.credentials import ClusterCredentials
from fleetops.clients.kube import KubeClient
from fleetops.clients.workloads import Action, ApplyResult, RestoreResult, RollbackPoint, Workloads
from fleetops.domain.gates import ClusterReadiness, ReadinessStatus
from fleetops.domain.inventory import InventoryRecord
from fleetops.errors import FleetopsError
from fleetops.inventory.rollouts import ClusterOutcome, RolloutHistory
from fleetops.settings import RolloutSettings

__all__ = [
    "ClusterAction",
    "ClusterReport",
    "ClusterRolloutFailed",
    "ClusterSteps",
    "ClusterWork",
]


class ClusterRolloutFailed(FleetopsError):
    """A cluster did not reach the target revision (not retried: the deadline already passed)."""


class ClusterAction(StrEnum):
    APPLIED = "applied"
    VERIFIED = "verified"  # a resumed rollout found it at the target: not applied again


class ClusterWork(BaseModel):
    """What one cluster of a wave gets: its record, the rendered objects, the deadline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rollout_id: str = Field(description="The rollout.")
    wave: str = Field(description="Wave name.")
    cluster: InventoryRecord = Field(description="The cluster's inventory record.")
    version: str = Field(description="Version rolled out to this cluster.")
    objects: tuple[dict[str, Any], ...] = Field(description="Rendered objects, file order.")
    deadline_seconds: float = Field(description="Progress deadline of the wave.")
    resume: bool = Field(
        default=False,
        description="The history already holds this cluster for this rollout: verify first.",
    )


class ClusterReport(BaseModel):
    """What happened to one cluster."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster_id: str = Field(description="Cluster id.")
    wave: str = Field(description="Wave name.")
    action: ClusterAction = Field(description="applied, or verified (resume).")
    summary: str = Field(description="created / changed / unchanged counts.")
    message: str = Field(description="Readiness message.")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ClusterSteps:
    """The steps of one rollout run on its clusters (see the module docstring)."""

    def __init__(
        self,
        *,
        credentials: ClusterCredentials,
        history: RolloutHistory,
        options: RolloutSettings,
        timeout_seconds: float,
    ) -> None:
        self.credentials = credentials
        self.history = history
        self.options = options
        self.timeout_seconds = timeout_seconds

    @contextmanager
    def workloads(self, cluster: InventoryRecord) -> Iterator[Workloads]:
        """A :class:`Workloads` on ``cluster`` with a fresh short-lived token, closed after."""
        token = self.credentials.token_for(cluster)
        with KubeClient.for_cluster(cluster, token, timeout_seconds=self.timeout_seconds) as kube:
            yield Workloads(kube)

    # --- roll out ------------------------------------------------------------------------------

    def rollout(self, work: ClusterWork) -> ClusterReport:
        """Roll one cluster to ``work.version``; see the module docstring. Raises on failure."""
        objects = list(work.objects)
        with self.workloads(work.cluster) as workloads:
            if work.resume:
                # Resumed: a server-side dry run tells whether the cluster already holds the target.
                dry = workloads.apply(objects, dry_run=True)
                if dry.count(Action.CREATED) == 0 and dry.count(Action.CHANGED) == 0:
                    return self._finish(work, workloads, dry, action=ClusterAction.VERIFIED)
            point = workloads.snapshot(objects)
            self._record(work, rollback_point=point.model_dump(mode="json"))
            result = workloads.apply(objects)
            self._record(work, applied_at=_utcnow())
            return self._finish(work, workloads, result, action=ClusterAction.APPLIED)

    def _record(self, work: ClusterWork, **fields: Any) -> None:
        self.history.record_cluster_result(
            work.rollout_id,
            work.cluster.id,
            wave=work.wave,
            outcome=ClusterOutcome.APPLYING,
            **fields,
        )

    def _finish(
        self,
        work: ClusterWork,
        workloads: Workloads,
        result: ApplyResult,
        *,
        action: ClusterAction,
    ) -> ClusterReport:
        """Wait for the target revision from live state, record success, report (raises if not)."""
        readiness = workloads.wait_ready(
            list(work.objects),
            applied_generations=result.generations(),
            deadline_seconds=work.deadline_seconds,
            poll_seconds=self.options.readiness_poll_seconds,
        )
        if readiness.status is not ReadinessStatus.READY:
            raise ClusterRolloutFailed(f"{work.cluster.id}: {readiness.message}")
        self.history.record_cluster_result(
            work.rollout_id, work.cluster.id, wave=work.wave, outcome=ClusterOutcome.SUCCEEDED
        )
        return ClusterReport(
            cluster_id=work.cluster.id,
            wave=work.wave,
            action=action,
            summary=result.summary,
            message=readiness.message,
        )

    # --- look, do not touch ----------------------------------------------------------------------

    def dry_run(self, cluster: InventoryRecord, objects: Sequence[dict[str, Any]]) -> ApplyResult:
        """Server-side dry run (``dryRun=All``) of every object: what would change, nothing stored."""
        with self.workloads(cluster) as workloads:
            return workloads.apply(list(objects), dry_run=True)

    def health(
        self, cluster: InventoryRecord, objects: Sequence[dict[str, Any]]
    ) -> ClusterReadiness:
        """Readiness of the app's workloads on one cluster, read live now."""
        with self.workloads(cluster) as workloads:
            return workloads.readiness(list(objects))

    # --- undo --------------------------------------------------------------------------------------

    def restore(
        self, cluster: InventoryRecord, rollback_point: RollbackPoint, deadline_seconds: float
    ) -> RestoreResult:
        """Put one cluster back to its rollback point (deleting what the rollout created), verified."""
        with self.workloads(cluster) as workloads:
            return workloads.restore(
                rollback_point,
                deadline_seconds=deadline_seconds,
                poll_seconds=self.options.readiness_poll_seconds,
            )
