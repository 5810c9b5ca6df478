"""The ``discover-clusters`` flow: find every cluster at its provider and register it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from fleetops.discovery import (
    DiscoveryFailed,
    failed_source,
    load_overrides,
    load_settings,
    plan_sources,
    prepare_process,
    unreachable_probe,
)
from fleetops.domain.cluster import ClusterState, ProbeResult
from fleetops.domain.inventory import (
    SourceResult,
    apply_probes,
    probe_due,
    reconcile,
)
from fleetops.domain.report import (
    DiscoveryReport,
    SourceSummary,
    diff_markdown,
    inventory_rows,
)
from fleetops.domain.sources import SourceKind
from tasks.argocd import register_argocd_task
from tasks.discovery import (
    credentials_for,
    discover_source_task,
    probe_cluster_task,
    read_inventory_task,
    retry_options,
    write_inventory_task,
)
from tasks.notify import notify_discovery_task, run_url

#: bound of the flow's task runner (sources and probes); the CLI uses FLEETOPS_DISCOVERY_MAX_WORKERS
DEFAULT_MAX_WORKERS = 16

INVENTORY_ARTIFACT = "cluster-inventory"
_RETRY_STATES = (ClusterState.DISCOVERED, ClusterState.UNREACHABLE)
DIFF_ARTIFACT = "discovery-diff"


class DiscoverParameters(BaseModel):
    """What a discover-clusters run does. Everything else comes from FLEETOPS_* settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: tuple[SourceKind, ...] = Field(
        default=(),
        title="Sources",
        description="Sources to run (eks, gke, aks, static). Empty runs every source configured "
        "in the settings. Clusters of sources that do not run are left as they are.",
    )
    dry_run: bool = Field(
        default=False,
        title="Dry run",
        description="Report the diff (artifacts, Slack) without writing the inventory or "
        "registering anything in Argo CD.",
    )


@flow(
    name="discover-clusters",
    task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_MAX_WORKERS),
    validate_parameters=True,
)
def discover_clusters(
    parameters: DiscoverParameters = DiscoverParameters(),  # noqa: B008 - frozen, the UI form's defaults
) -> DiscoveryReport:
    """Discover Kubernetes clusters on EKS, GKE, AKS and static kubeconfigs, and register them.

    Every configured source is listed at once. The inventory then gets every cluster the healthy
    sources returned (new ones added, changed ones updated, returning ones back to registered);
    a cluster its source stopped listing becomes "missing" after 3 successful runs in a row. New,
    changed and stale clusters are probed (/version and /readyz with a short-lived credential)
    and become registered or unreachable. The run publishes the inventory table and a diff as
    artifacts, and posts to Slack when something changed.

    A source that fails (credentials, network, throttling past retries) does not stop the
    others and none of its clusters are counted as missing; the run still writes what the
    healthy sources found, then ends Failed naming the failed sources and why.
    """
    logger = get_run_logger()
    settings = load_settings()
    plans = plan_sources(settings, parameters.sources)
    overrides = load_overrides(settings)  # a broken fleet file fails here, before any write
    prepare_process(plans)
    options = settings.discovery
    logger.info(
        "discovering %s%s",
        ", ".join(p.name for p in plans),
        " (dry run)" if parameters.dry_run else "",
    )

    current = read_inventory_task()
    source_task = discover_source_task.with_options(
        **retry_options(retries=options.source_retries, base_delay=options.retry_delay_seconds)
    )
    source_futures = [(plan, source_task.submit(plan)) for plan in plans]
    results: list[SourceResult] = []
    for plan, future in source_futures:
        try:
            results.append(future.result())
        except Exception as exc:
            result = failed_source(plan, exc)
            logger.error("source %s failed: %s", plan.name, result.error)
            results.append(result)

    now = datetime.now(UTC)
    reconciliation = reconcile(
        records=current,
        sources=results,
        overrides=overrides,
        now=now,
        missing_after=options.missing_after,
    )
    max_age = timedelta(seconds=options.probe_max_age_seconds)
    due = set(probe_due(reconciliation, now=now, max_age=max_age))
    # Clusters not yet known to answer are tried again every run, so a recovery shows quickly.
    due |= {r.id for r in reconciliation.records if r.state in _RETRY_STATES}
    to_probe = [r for r in reconciliation.records if r.id in due]
    probes: dict[str, ProbeResult] = {}
    if to_probe:
        credentials = credentials_for(settings)
        probe_task = probe_cluster_task.with_options(
            **retry_options(retries=options.probe_retries, base_delay=options.retry_delay_seconds)
        )
        probe_futures: list[tuple[str, PrefectFuture[ProbeResult]]] = [
            (record.id, probe_task.submit(record, credentials, options.probe_timeout_seconds))
            for record in to_probe
        ]
        for cluster_id, probe_future in probe_futures:
            try:
                probes[cluster_id] = probe_future.result()
            except Exception as exc:
                probes[cluster_id] = unreachable_probe(exc, at=datetime.now(UTC))
    reconciliation = apply_probes(reconciliation, probes)

    if not parameters.dry_run and reconciliation.writes:
        write_inventory_task(reconciliation.writes)

    records = {record.id: record for record in reconciliation.records}
    report = DiscoveryReport(
        dry_run=parameters.dry_run,
        sources=tuple(SourceSummary.of(r) for r in results),
        diff=reconciliation.diff,
        probed=len(probes),
        total=len(records),
    )
    create_table_artifact(
        inventory_rows(records.values()),
        key=INVENTORY_ARTIFACT,
        description="Clusters in the inventory after this run"
        + (" (dry run: as it would be)" if parameters.dry_run else ""),
    )
    create_markdown_artifact(
        diff_markdown(report, records=records),
        key=DIFF_ARTIFACT,
        description="What this run changed: added, changed, missing, returned, unreachable",
    )
    if report.worth_telling:
        notify_discovery_task(report, records, run_url(flow_run.id, flow_run.ui_url))

    argocd_error: str | None = None
    if settings.argocd.enabled and not parameters.dry_run:
        healthy = [r for r in records.values() if r.state is ClusterState.REGISTERED]
        try:
            register_argocd_task(healthy, records.get(settings.argocd.management_cluster or ""))
        except Exception as exc:
            argocd_error = str(exc)
            logger.error("Argo CD registration failed: %s", argocd_error)

    problems = [f"{s.name}: {s.error}" for s in report.failed_sources]
    if argocd_error is not None:
        problems.append(f"argocd: {argocd_error}")
    if problems:
        raise DiscoveryFailed(
            "discovery registered what the healthy sources returned, but failed: "
            + "; ".join(problems)
        )
    logger.info(
        "discovery done: %d added, %d changed, %d missing, %d unreachable, %d probed",
        len(report.diff.added),
        len(report.diff.changed),
        len(report.diff.missing),
        len(report.diff.unreachable),
        report.probed,
    )
    return report
