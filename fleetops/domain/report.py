"""What a discovery run tells people: the inventory table, the markdown diff and the Slack lines.

Pure rendering of :class:`~fleetops.domain.inventory.InventoryDiff` and inventory records, so the
artifact, the Slack thread and the CLI say the same thing in the same words. Lists are capped
(``limit``) so a run that adds a thousand clusters still produces a readable page and a Slack
message under Slack's size limit; the cap is said out loud (``... and 940 more``).

Nothing here holds a secret: records carry no credentials, and source errors arrive redacted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fleetops.domain.cluster import Cluster, ClusterState
from fleetops.domain.inventory import InventoryDiff, InventoryRecord, SourceResult
from fleetops.domain.labels import FLEETOPS_PREFIX

DEFAULT_LIMIT = 50

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class SourceSummary(BaseModel):
    """One source's outcome in a run, without its clusters."""

    model_config = _FROZEN

    name: str = Field(description="Source name (eks, gke, aks, static).")
    ok: bool = Field(description="Whether the source listed every account it covers.")
    clusters: int = Field(ge=0, description="Clusters it reported.")
    error: str | None = Field(default=None, description="Why it failed (redacted).")

    @classmethod
    def of(cls, result: SourceResult) -> SourceSummary:
        return cls(
            name=result.name, ok=result.ok, clusters=len(result.clusters), error=result.error
        )


class DiscoveryReport(BaseModel):
    """What a discover-clusters run did: the flow's return value and the CLI's summary."""

    model_config = _FROZEN

    dry_run: bool = Field(description="Whether the run only reported (nothing written).")
    sources: tuple[SourceSummary, ...] = Field(description="Each source's outcome.")
    diff: InventoryDiff = Field(description="What changed in the inventory.")
    probed: int = Field(default=0, ge=0, description="Clusters probed this run.")
    total: int = Field(default=0, ge=0, description="Records in the inventory after the run.")

    @property
    def failed_sources(self) -> tuple[SourceSummary, ...]:
        return tuple(s for s in self.sources if not s.ok)

    @property
    def worth_telling(self) -> bool:
        """Whether to notify people: something changed, or a source failed."""
        return self.diff.has_changes or bool(self.failed_sources)


def custom_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels without the computed ``fleetops.io/`` ones (which the table shows as columns)."""
    return {k: v for k, v in sorted(labels.items()) if not k.startswith(FLEETOPS_PREFIX)}


def _labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in custom_labels(labels).items())


def _probe_text(cluster: Cluster) -> str:
    probe = cluster.last_probe
    if probe is None:
        return "never"
    if probe.ok:
        return f"ok {probe.version or ''} {probe.latency_ms or 0:.0f} ms".replace("  ", " ")
    return f"failed: {probe.error or 'unknown'}"


def inventory_rows(records: Iterable[Cluster]) -> list[dict[str, str]]:
    """One row per record, for a Prefect table artifact or ``fleetops inventory list``."""
    rows = []
    for record in records:
        rows.append(
            {
                "id": record.id,
                "state": record.state.value,
                "provider": record.provider.value,
                "location": record.location,
                "version": record.kubernetes_version or "",
                "status": record.provider_status or "",
                "labels": _labels_text(record.labels),
                "last_probe": _probe_text(record),
                "last_seen": record.last_seen.isoformat(timespec="seconds")
                if record.last_seen
                else "",
            }
        )
    return rows


def _bullets(items: Sequence[str], *, limit: int) -> list[str]:
    lines = [f"- `{item}`" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"- ... and {len(items) - limit} more")
    return lines


def counts_line(diff: InventoryDiff) -> str:
    """``2 added, 1 changed, 0 missing, 1 returned, 1 unreachable``."""
    return (
        f"{len(diff.added)} added, {len(diff.changed)} changed, {len(diff.missing)} missing, "
        f"{len(diff.returned)} returned, {len(diff.unreachable)} unreachable"
    )


def diff_markdown(
    report: DiscoveryReport,
    *,
    records: Mapping[str, InventoryRecord] | None = None,
    limit: int = DEFAULT_LIMIT,
) -> str:
    """The markdown diff artifact: sources, then added, changed, missing, returned, unreachable.

    ``records`` (by id, after the run) lets unreachable clusters show their probe error.
    """
    diff = report.diff
    records = records or {}
    title = "Discovery (dry run: nothing written)" if report.dry_run else "Discovery"
    lines = [
        f"# {title}",
        "",
        f"**{counts_line(diff)}**; {report.total} clusters in the inventory.",
    ]
    lines += ["", "## Sources", "", "| source | result | clusters |", "|---|---|---|"]
    for source in report.sources:
        result = "ok" if source.ok else f"FAILED: {_cell(source.error or '')}"
        lines.append(f"| {source.name} | {result} | {source.clusters} |")
    if report.failed_sources:
        lines += [
            "",
            "Clusters of failed sources were left as they were (not counted as missed).",
        ]
    sections: list[tuple[str, list[str]]] = [
        ("Added", _bullets(diff.added, limit=limit)),
        (
            "Changed",
            [f"- `{change.id}`: {', '.join(change.fields)}" for change in diff.changed[:limit]]
            + (
                [f"- ... and {len(diff.changed) - limit} more"] if len(diff.changed) > limit else []
            ),
        ),
        ("Missing", _bullets(diff.missing, limit=limit)),
        ("Returned", _bullets(diff.returned, limit=limit)),
        ("Unreachable", _unreachable(diff.unreachable, records, limit=limit)),
        ("Recovered", _bullets(diff.recovered, limit=limit)),
        ("Overrides that matched nothing", _bullets(diff.unmatched_overrides, limit=limit)),
    ]
    for heading, body in sections:
        if body:
            lines += ["", f"## {heading} ({_count(heading, diff)})", "", *body]
    if not diff.has_changes:
        lines += ["", "No change to the inventory."]
    return "\n".join(lines) + "\n"


def _count(heading: str, diff: InventoryDiff) -> int:
    return {
        "Added": len(diff.added),
        "Changed": len(diff.changed),
        "Missing": len(diff.missing),
        "Returned": len(diff.returned),
        "Unreachable": len(diff.unreachable),
        "Recovered": len(diff.recovered),
        "Overrides that matched nothing": len(diff.unmatched_overrides),
    }[heading]


def _unreachable(
    ids: Sequence[str], records: Mapping[str, InventoryRecord], *, limit: int
) -> list[str]:
    lines = []
    for cluster_id in ids[:limit]:
        record = records.get(cluster_id)
        error = record.last_probe.error if record and record.last_probe else None
        lines.append(f"- `{cluster_id}`" + (f": {error}" if error else ""))
    if len(ids) > limit:
        lines.append(f"- ... and {len(ids) - limit} more")
    return lines


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def slack_headline(report: DiscoveryReport, *, run_url: str | None) -> str:
    """The parent message of a run's Slack thread (mrkdwn)."""
    failed = report.failed_sources
    status = "failed" if failed else "completed"
    prefix = ":x:" if failed else ":white_check_mark:"
    dry = " (dry run)" if report.dry_run else ""
    text = f"{prefix} *discover-clusters {status}*{dry}: {counts_line(report.diff)}"
    if failed:
        text += "\nFailed sources: " + ", ".join(f"{s.name}" for s in failed)
    if run_url:
        text += f"\n<{run_url}|Open the flow run>"
    return text


def slack_details(
    report: DiscoveryReport,
    *,
    records: Mapping[str, InventoryRecord] | None = None,
    limit: int = 20,
) -> list[str]:
    """Thread replies: one per failed source, then one per non-empty diff section."""
    diff = report.diff
    records = records or {}
    replies = [f"Source *{s.name}* failed: {s.error}" for s in report.failed_sources]

    def section(title: str, ids: Sequence[str]) -> None:
        if ids:
            shown = ", ".join(f"`{i}`" for i in ids[:limit])
            more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
            replies.append(f"*{title}* ({len(ids)}): {shown}{more}")

    section("Added", diff.added)
    section("Changed", [f"{c.id}" for c in diff.changed])
    section("Missing", diff.missing)
    section("Returned", diff.returned)
    if diff.unreachable:
        parts = []
        for cluster_id in diff.unreachable[:limit]:
            record = records.get(cluster_id)
            error = record.last_probe.error if record and record.last_probe else None
            parts.append(f"`{cluster_id}`" + (f" ({error})" if error else ""))
        more = f" and {len(diff.unreachable) - limit} more" if len(diff.unreachable) > limit else ""
        replies.append(f"*Unreachable* ({len(diff.unreachable)}): {'; '.join(parts)}{more}")
    section("Recovered", diff.recovered)
    return replies


def state_counts(records: Iterable[Cluster]) -> dict[str, int]:
    """Records per state, every state listed (for summaries)."""
    counts = {state.value: 0 for state in ClusterState}
    for record in records:
        counts[record.state.value] += 1
    return counts
