"""Tasks of the discover-clusters flow: thin wrappers, one fleetops function each.

Each task builds what it needs from settings (``FLEETOPS_*`` in the worker's environment), calls
one function of :mod:`fleetops.discovery` or the inventory, and returns a frozen model. Retries
are for transient errors only (:func:`fleetops.errors.is_transient`), with exponential backoff
and jitter; a permanent error (bad credentials, 4xx) fails at once with its message.

No task result is persisted or cached: source listings and probes are about "now", and the
probe task holds a short-lived token for its duration (never a parameter, a result or a log).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from fleetops.clients.credentials import ClusterCredentials
from fleetops.discovery import SourcePlan, discover_source, load_settings, probe_cluster
from fleetops.domain.cluster import ProbeResult
from fleetops.domain.inventory import InventoryRecord, SourceResult
from fleetops.errors import is_transient
from fleetops.inventory import Inventory
from fleetops.settings import Settings

RETRY_JITTER = 0.5


def retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` of every task: retry only what :func:`is_transient` says."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


def retry_options(*, retries: int, base_delay: float) -> dict[str, Any]:
    """``with_options`` arguments for transient-only retries with exponential backoff."""
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=base_delay)
        if base_delay > 0
        else 0,
        "retry_jitter_factor": RETRY_JITTER if base_delay > 0 else None,
        "retry_condition_fn": retry_transient,
    }


def credentials_for(settings: Settings) -> ClusterCredentials:
    """One credential source for every probe of a run (assumed roles are reused across them).

    Built lazily per provider: a provider with no cluster to probe costs nothing.
    """
    return ClusterCredentials.from_settings(settings)


@task(
    name="discover-source",
    task_run_name="discover-{plan.kind.value}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_transient,
)
def discover_source_task(plan: SourcePlan) -> SourceResult:
    """List every cluster of one source (all its accounts, regions and pages)."""
    result = discover_source(plan, load_settings())
    get_run_logger().info(
        "source %s: %d clusters in %s", plan.name, len(result.clusters), ", ".join(plan.accounts)
    )
    return result


@task(name="read-inventory", cache_policy=NO_CACHE, persist_result=False)
def read_inventory_task() -> tuple[InventoryRecord, ...]:
    """Every record of the inventory (migrating its schema first)."""
    settings = load_settings()
    with Inventory(settings.inventory.url) as inventory:
        inventory.migrate()
        return tuple(inventory.list())


@task(name="write-inventory", cache_policy=NO_CACHE, persist_result=False)
def write_inventory_task(records: Sequence[InventoryRecord]) -> int:
    """Upsert the records a run changed, in one transaction; returns how many."""
    settings = load_settings()
    with Inventory(settings.inventory.url) as inventory:
        inventory.migrate()
        inventory.upsert_many(records)
    get_run_logger().info("wrote %d inventory records", len(records))
    return len(records)


@task(
    name="probe-cluster",
    task_run_name="probe-{cluster.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_transient,
)
def probe_cluster_task(
    cluster: InventoryRecord, credentials: ClusterCredentials, timeout_seconds: float
) -> ProbeResult:
    """Connect to one cluster with a short-lived token: /version and /readyz, TLS verified."""
    result = probe_cluster(cluster, credentials=credentials, timeout_seconds=timeout_seconds)
    if not result.ok:
        get_run_logger().warning("cluster %s: probe failed: %s", cluster.id, result.error)
    return result
