"""Tasks of the rollout flow: one cluster at a time, thin over :class:`Workloads` and the history.

Each task builds its Kubernetes client from the cluster's inventory record and a short-lived
token, does one step for one cluster and returns a frozen model:

- :func:`rollout_cluster_task`: record the rollback point, server-side apply (field manager
  ``fleetops``), wait until every workload reports the applied generation; on a resumed rollout,
  a cluster that already holds the target objects is verified instead of applied again;
- :func:`dry_run_cluster_task`: ``dryRun=All`` apply and the created/changed/unchanged summary;
- :func:`check_health_task`: one look at live readiness (the gate after the bake);
- :func:`restore_cluster_task`: put a cluster back to its rollback point and verify it.

Retries are for transient errors only (connection, timeout, 429, 5xx), with exponential backoff
and jitter; a 4xx or a workload that does not get ready fails the cluster with the message.
A cluster is changed only under its Prefect global concurrency limit ``cluster:<id>`` (one
slot, created on first use; :func:`cluster_locks`), so two rollouts never touch it at once: the
flow locks a wave's clusters chunk by chunk while they run, a restore locks its cluster.

No result is persisted or cached: they describe "now", and tokens never leave a task.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL
from pydantic import BaseModel, ConfigDict, Field

from fleetops.clients.credentials import ClusterCredentials
from fleetops.clients.kube import KubeClient
from fleetops.clients.workloads import Action, ApplyResult, RestoreResult, RollbackPoint, Workloads
from fleetops.discovery import load_settings
from fleetops.domain.gates import ClusterReadiness, ReadinessStatus
from fleetops.domain.inventory import InventoryRecord
from fleetops.errors import FleetopsError
from fleetops.inventory import Inventory
from fleetops.inventory.rollouts import ClusterOutcome, RolloutHistory
from fleetops.settings import RolloutSettings
from tasks.discovery import retry_options, retry_transient

__all__ = [
    "ClusterReport",
    "ClusterRolloutFailed",
    "ClusterWork",
    "RolloutSettings",
    "check_health_task",
    "cluster_limit_name",
    "cluster_locks",
    "dry_run_cluster_task",
    "restore_cluster_task",
    "retry_options",
    "rollout_cluster_task",
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


def cluster_limit_name(cluster_id: str) -> str:
    """The Prefect global concurrency limit of a cluster (``/`` is not allowed in its names)."""
    return "cluster:" + cluster_id.replace("/", "|")


_known_limits: set[tuple[str, str]] = set()
_known_lock = threading.Lock()


def _ensure_limits(names: Sequence[str]) -> None:
    """Create the one-slot limits this process has not seen yet (a missing limit limits
    nothing in Prefect, so it must exist before it is used): one API client for all of them,
    shared by up to eight threads (building a client per limit cost more than the request)."""
    api = str(PREFECT_API_URL.value())
    with _known_lock:
        missing = [n for n in names if (api, n) not in _known_limits]
    if not missing:
        return
    with get_client(sync_client=True) as client:

        def create(name: str) -> None:
            with suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
            with _known_lock:
                _known_limits.add((api, name))

        with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
            list(pool.map(create, missing))


@contextmanager
def cluster_locks(cluster_ids: Sequence[str], *, options: RolloutSettings) -> Iterator[None]:
    """Hold one slot of each cluster's limit: no other rollout or rotation touches them meanwhile.

    All of them are acquired in one request (atomically: a cluster held elsewhere makes this
    wait for it), and the lease is renewed while the block runs. The flow locks a wave's
    clusters a chunk at a time (``flows.rollout.LOCK_CHUNK``): one acquisition per chunk
    instead of one per cluster keeps the Prefect server off the critical path at fleet scale.
    """
    if not cluster_ids:
        yield
        return
    names = [cluster_limit_name(c) for c in cluster_ids]
    _ensure_limits(names)
    with concurrency(
        names,
        occupy=1,
        timeout_seconds=options.lock_timeout_seconds,
        lease_duration=options.lock_lease_seconds,
        strict=True,
    ):
        yield


@contextmanager
def _workloads(
    cluster: InventoryRecord, credentials: ClusterCredentials, timeout: float
) -> Iterator[Workloads]:
    token = credentials.token_for(cluster)
    with KubeClient.for_cluster(cluster, token.token, timeout_seconds=timeout) as kube:
        yield Workloads(kube)


def _history(url: str) -> tuple[Inventory, RolloutHistory]:
    inventory = Inventory(url)
    return inventory, RolloutHistory(inventory)


def _ready_or_fail(cluster_id: str, readiness: ClusterReadiness) -> None:
    if readiness.status is not ReadinessStatus.READY:
        raise ClusterRolloutFailed(f"{cluster_id}: {readiness.message}")


def _finish(
    work: ClusterWork,
    workloads: Workloads,
    history: RolloutHistory,
    options: RolloutSettings,
    result: ApplyResult,
    *,
    action: ClusterAction,
) -> ClusterReport:
    """Wait for the target revision from live state, record success, report (raises if not)."""
    readiness = workloads.wait_ready(
        list(work.objects),
        applied_generations=result.generations(),
        deadline_seconds=work.deadline_seconds,
        poll_seconds=options.readiness_poll_seconds,
    )
    _ready_or_fail(work.cluster.id, readiness)
    history.record_cluster_result(
        work.rollout_id, work.cluster.id, wave=work.wave, outcome=ClusterOutcome.SUCCEEDED
    )
    return ClusterReport(
        cluster_id=work.cluster.id,
        wave=work.wave,
        action=action,
        summary=result.summary,
        message=readiness.message,
    )


def rollout_cluster(
    work: ClusterWork,
    *,
    credentials: ClusterCredentials,
    history: RolloutHistory,
    options: RolloutSettings,
    timeout: float,
) -> ClusterReport:
    """Roll one cluster to ``work.version``; see the module docstring. Raises on failure."""
    cluster_id = work.cluster.id
    objects = list(work.objects)
    with _workloads(work.cluster, credentials, timeout) as workloads:
        if work.resume:
            # Resumed: a server-side dry run tells whether the cluster already holds the target.
            dry = workloads.apply(objects, dry_run=True)
            if dry.count(Action.CREATED) == 0 and dry.count(Action.CHANGED) == 0:
                return _finish(
                    work, workloads, history, options, dry, action=ClusterAction.VERIFIED
                )
        point = workloads.snapshot(objects)
        history.record_cluster_result(
            work.rollout_id,
            cluster_id,
            wave=work.wave,
            outcome=ClusterOutcome.APPLYING,
            rollback_point=point.model_dump(mode="json"),
        )
        result = workloads.apply(objects)
        history.record_cluster_result(
            work.rollout_id,
            cluster_id,
            wave=work.wave,
            outcome=ClusterOutcome.APPLYING,
            applied_at=_utcnow(),
        )
        return _finish(work, workloads, history, options, result, action=ClusterAction.APPLIED)


@task(
    name="rollout-cluster",
    task_run_name="rollout-{work.cluster.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_transient,
)
def rollout_cluster_task(work: ClusterWork, credentials: ClusterCredentials) -> ClusterReport:
    """Apply the app to one cluster and wait until it runs the target revision.

    The caller holds the cluster's lock (:func:`cluster_locks`) for the whole wave."""
    settings = load_settings()
    options = RolloutSettings()
    inventory, history = _history(settings.inventory.url)
    try:
        report = rollout_cluster(
            work,
            credentials=credentials,
            history=history,
            options=options,
            timeout=settings.kube.request_timeout_seconds,
        )
    finally:
        inventory.close()
    get_run_logger().info("%s: %s (%s)", work.cluster.id, report.action.value, report.summary)
    return report


@task(
    name="dry-run-cluster",
    task_run_name="dry-run-{cluster.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_transient,
)
def dry_run_cluster_task(
    cluster: InventoryRecord, objects: Sequence[dict[str, Any]], credentials: ClusterCredentials
) -> ApplyResult:
    """Server-side dry run (``dryRun=All``) of every object: what would change, nothing stored."""
    timeout = load_settings().kube.request_timeout_seconds
    with _workloads(cluster, credentials, timeout) as workloads:
        return workloads.apply(list(objects), dry_run=True)


@task(
    name="check-health",
    task_run_name="health-{cluster.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_transient,
)
def check_health_task(
    cluster: InventoryRecord, objects: Sequence[dict[str, Any]], credentials: ClusterCredentials
) -> ClusterReadiness:
    """Readiness of the app's workloads on one cluster, read live now."""
    timeout = load_settings().kube.request_timeout_seconds
    with _workloads(cluster, credentials, timeout) as workloads:
        return workloads.readiness(list(objects))


@task(
    name="restore-cluster",
    task_run_name="restore-{cluster.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_transient,
)
def restore_cluster_task(
    cluster: InventoryRecord,
    rollback_point: dict[str, Any],
    credentials: ClusterCredentials,
    deadline_seconds: float,
) -> RestoreResult:
    """Put one cluster back to its rollback point (deleting what the rollout created), verified."""
    settings = load_settings()
    options = RolloutSettings()
    point = RollbackPoint.model_validate(rollback_point)
    with (
        cluster_locks([cluster.id], options=options),
        _workloads(cluster, credentials, settings.kube.request_timeout_seconds) as workloads,
    ):
        return workloads.restore(
            point,
            deadline_seconds=deadline_seconds,
            poll_seconds=options.readiness_poll_seconds,
        )
