"""Tasks of the rollout flow: one cluster at a time, thin over :class:`ClusterSteps`.

Each task does one step of :class:`fleetops.cluster_rollout.ClusterSteps` for one cluster and
returns its frozen model; the flow builds one ``ClusterSteps`` per run (credentials, history,
options) and hands it to every task wrapped in :func:`prefect.utilities.annotations.quote`, as
it does the cluster's work: Prefect then neither walks the rendered objects looking for futures
nor copies them, which at fleet scale was a tenth of a cluster task's CPU.

Retries are for transient errors only (connection, timeout, 429, 5xx), with exponential backoff
and jitter; a 4xx or a workload that does not get ready fails the cluster with the message.

A cluster is changed only under its Prefect global concurrency limit ``cluster:<id>`` (one slot,
created on first use; :func:`ensure_cluster_limits`, :func:`cluster_locks`), so two rollouts
never touch it at once: the flow locks each wave's clusters while the wave runs, a restore
locks its cluster.

No result is persisted or cached: they describe "now", and tokens never leave a task.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.concurrency._sync import (
    acquire_concurrency_slots_with_lease,
    release_concurrency_slots_with_lease,
)
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL

from fleetops.clients.workloads import ApplyResult, RestoreResult, RollbackPoint
from fleetops.cluster_rollout import ClusterReport, ClusterSteps, ClusterWork
from fleetops.domain.gates import ClusterReadiness
from fleetops.domain.inventory import InventoryRecord
from fleetops.settings import RolloutSettings
from tasks.discovery import retry_transient

__all__ = [
    "check_health_task",
    "cluster_limit_name",
    "cluster_locks",
    "dry_run_cluster_task",
    "ensure_cluster_limits",
    "restore_cluster_task",
    "rollout_cluster_task",
]

#: page size when listing the existing global concurrency limits
_LIMIT_PAGE = 200


def cluster_limit_name(cluster_id: str) -> str:
    """The Prefect global concurrency limit of a cluster (``/`` is not allowed in its names)."""
    return "cluster:" + cluster_id.replace("/", "|")


_known_limits: set[tuple[str, str]] = set()
_known_lock = threading.Lock()


def _existing_limits(client: Any) -> set[str]:
    names: set[str] = set()
    offset = 0
    while True:
        page = client.read_global_concurrency_limits(limit=_LIMIT_PAGE, offset=offset)
        names.update(limit.name for limit in page)
        if len(page) < _LIMIT_PAGE:
            return names
        offset += _LIMIT_PAGE


def ensure_cluster_limits(cluster_ids: Sequence[str]) -> None:
    """Create the one-slot limits that do not exist yet (a missing limit limits nothing in
    Prefect, so it must exist before it is used). The existing ones are listed a page at a time
    (one call per 200 limits, not one per cluster); the missing ones are created by up to eight
    threads sharing one API client. Names seen once are remembered for the process. The flow
    calls this once for its whole plan, before the first wave."""
    names = [cluster_limit_name(c) for c in cluster_ids]
    api = str(PREFECT_API_URL.value())
    with _known_lock:
        unknown = [n for n in names if (api, n) not in _known_limits]
    if not unknown:
        return
    with get_client(sync_client=True) as client:
        existing = _existing_limits(client)
        missing = [n for n in unknown if n not in existing]

        def create(name: str) -> None:
            with suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )

        if missing:
            with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                list(pool.map(create, missing))
    with _known_lock:
        _known_limits.update((api, n) for n in unknown)


@contextmanager
def cluster_locks(cluster_ids: Sequence[str], *, options: RolloutSettings) -> Iterator[None]:
    """Hold one slot of each cluster's limit: no other rollout or rotation touches them meanwhile.

    All of them are taken in one request (atomically: a cluster held elsewhere makes this wait
    for it, up to ``lock_timeout_seconds``), under a lease renewed while the block runs, so the
    slots of a killed process come free when the lease ends. The flow locks a whole wave at once.

    This is :func:`prefect.concurrency.sync.concurrency` without its events: that emits one
    event per limit naming every other limit of the acquisition (and again on release), which
    for 50 clusters was 5,000 related resources built by the flow's thread and stored by the
    server, the largest cost of a rollout at fleet scale. Acquisition, lease renewal and
    release are Prefect's own functions.
    """
    if not cluster_ids:
        yield
        return
    ensure_cluster_limits(cluster_ids)
    lease = acquire_concurrency_slots_with_lease(
        [cluster_limit_name(c) for c in cluster_ids],
        1,
        timeout_seconds=options.lock_timeout_seconds,
        lease_duration=options.lock_lease_seconds,
        strict=True,
    )
    try:
        with maintain_concurrency_lease(
            lease.lease_id, options.lock_lease_seconds, raise_on_lease_renewal_failure=True
        ):
            yield
    finally:
        release_concurrency_slots_with_lease(lease.lease_id)


@task(
    name="rollout-cluster",
    task_run_name="rollout-{work.cluster.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_transient,
)
def rollout_cluster_task(work: ClusterWork, steps: ClusterSteps) -> ClusterReport:
    """Apply the app to one cluster and wait until it runs the target revision.

    The caller holds the cluster's lock (:func:`cluster_locks`) for the whole wave."""
    report = steps.rollout(work)
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
    cluster: InventoryRecord, objects: Sequence[dict[str, Any]], steps: ClusterSteps
) -> ApplyResult:
    """Server-side dry run (``dryRun=All``) of every object: what would change, nothing stored."""
    return steps.dry_run(cluster, objects)


@task(
    name="check-health",
    task_run_name="health-{cluster.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_transient,
)
def check_health_task(
    cluster: InventoryRecord, objects: Sequence[dict[str, Any]], steps: ClusterSteps
) -> ClusterReadiness:
    """Readiness of the app's workloads on one cluster, read live now."""
    return steps.health(cluster, objects)


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
    steps: ClusterSteps,
    deadline_seconds: float,
) -> RestoreResult:
    """Put one cluster back to its rollback point (deleting what the rollout created), verified,
    holding the cluster's lock."""
    point = RollbackPoint.model_validate(rollback_point)
    with cluster_locks([cluster.id], options=steps.options):
        return steps.restore(cluster, point, deadline_seconds)
