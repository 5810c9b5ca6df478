"""Tasks of the rollout flow: one cluster at a time, thin over :class:`ClusterSteps`.

Each task does one step of :class:`fleetops.cluster_rollout.ClusterSteps` for one cluster and
returns its frozen model; the flow builds one ``ClusterSteps`` per run (credentials, history,
options) and hands it to every task wrapped in :func:`prefect.utilities.annotations.quote`, as
it does the cluster's work: Prefect then neither walks the rendered objects looking for futures
nor copies them, which at fleet scale was a tenth of a cluster task's CPU.

Retries are for transient errors only (connection, timeout, 429, 5xx), with exponential backoff
and jitter; a 4xx or a workload that does not get ready fails the cluster with the message.

A cluster is changed only under its Prefect global concurrency limit ``cluster:<id>`` (one slot,
created on first use by :func:`ensure_cluster_limits`), so two rollouts never touch it at once:
the flow locks each wave's clusters while the wave runs (:class:`ClusterLock`), a restore locks
its cluster (:func:`cluster_locks`).

No result is persisted or cached: they describe "now", and tokens never leave a task.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
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
    "ClusterLock",
    "check_health_task",
    "cluster_limit_name",
    "cluster_locks",
    "dry_run_cluster_task",
    "ensure_cluster_limits",
    "restore_cluster_task",
    "rollout_cluster_task",
]

_log = logging.getLogger(__name__)

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
    threads sharing one API client. Names seen once are remembered for the process, so a
    cluster's limit costs a request once in the life of a process."""
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


class ClusterLock:
    """One slot of each cluster's limit, taken and kept by a thread of its own: while it is
    held, no other rollout or secret rotation touches these clusters.

    All the slots are taken in one request (atomically: a cluster held elsewhere makes it wait
    for that one, up to ``lock_timeout_seconds``), under a lease the thread renews every three
    quarters of ``lock_lease_seconds``, so the slots of a killed process come free when its
    lease ends. Creating the lock starts taking it (``after`` another lock: once that one is
    taken, so a chain of locks is taken in order and a holder never waits for an earlier lock
    while holding a later one); :meth:`wait` blocks until it is held (or raises why not);
    :meth:`release` gives it back (a lock released before it was taken does not ask for its
    slots if it has not asked yet, and gives them back at once if its request was granted). If the
    lease cannot be renewed before it ends, :attr:`lost` says so, and the flow starts no more
    cluster under it.

    This is :func:`prefect.concurrency.sync.concurrency` without its events, which name every
    other limit of the acquisition in each limit's event (and again on release): for 50
    clusters, 5,000 related resources built by the flow's thread and stored by the server, the
    largest cost of a rollout at fleet scale. Acquisition and release are Prefect's own
    functions; the renewal is the client's ``renew_concurrency_lease``.
    """

    def __init__(
        self,
        cluster_ids: Sequence[str],
        *,
        options: RolloutSettings,
        after: ClusterLock | None = None,
    ) -> None:
        self.cluster_ids = tuple(cluster_ids)
        self._after = after
        self.lost: str | None = None
        self._options = options
        self._taken = threading.Event()
        self._released = threading.Event()
        self._error: BaseException | None = None
        # the thread needs the caller's Prefect context (API URL, settings)
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._hold,), name="cluster-lock", daemon=True
        )
        self._thread.start()

    def wait(self) -> None:
        """Block until the lock is held; raise the error that kept it from being taken."""
        self._taken.wait()
        if self._error is not None:
            raise self._error

    def release(self) -> None:
        """Give the slots back (at once when held; as soon as they are taken otherwise)."""
        self._released.set()
        if self._taken.is_set():
            self._thread.join(30)

    def done(self) -> bool:
        """Whether the lock's thread has ended: released (slots given back), or not taken."""
        return not self._thread.is_alive()

    def _hold(self) -> None:
        if self._after is not None:  # locks of a chain are taken in order, one at a time
            self._after._taken.wait()
        if not self.cluster_ids or self._released.is_set():
            self._taken.set()
            return
        try:
            ensure_cluster_limits(self.cluster_ids)
            lease = acquire_concurrency_slots_with_lease(
                [cluster_limit_name(c) for c in self.cluster_ids],
                1,
                timeout_seconds=self._options.lock_timeout_seconds,
                lease_duration=self._options.lock_lease_seconds,
                strict=True,
            )
        except BaseException as exc:
            self._error = exc
            self._taken.set()
            return
        self._taken.set()
        try:
            self._renew(lease.lease_id)
        finally:
            try:
                release_concurrency_slots_with_lease(lease.lease_id)
            except Exception as exc:  # the lease ends by itself
                _log.warning("could not release the lock of %s cluster(s): %s", len(self), exc)

    def _renew(self, lease_id: UUID) -> None:
        duration = self._options.lock_lease_seconds
        renewed = time.monotonic()
        delay = duration * 0.75
        with get_client(sync_client=True) as client:
            while not self._released.wait(delay):
                try:
                    client.renew_concurrency_lease(lease_id, lease_duration=duration)
                except Exception as exc:
                    left = renewed + duration - time.monotonic()
                    if left <= 0:
                        self.lost = (
                            f"the lock of {len(self)} cluster(s) was lost: its lease could not "
                            f"be renewed ({exc})"
                        )
                        return
                    delay = min(5.0, max(0.5, left / 4))
                    continue
                renewed = time.monotonic()
                delay = duration * 0.75

    def __len__(self) -> int:
        return len(self.cluster_ids)


@contextmanager
def cluster_locks(cluster_ids: Sequence[str], *, options: RolloutSettings) -> Iterator[ClusterLock]:
    """Hold a :class:`ClusterLock` on ``cluster_ids`` for the block."""
    lock = ClusterLock(cluster_ids, options=options)
    try:
        lock.wait()
        yield lock
    finally:
        lock.release()


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
