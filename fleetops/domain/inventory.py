"""What a discovery run does to the inventory: pure state transitions and the diff it reports.

:func:`reconcile` takes the records the inventory holds, what each discovery source reported this
run, the operator's label overrides, the clock and the missing threshold, and returns every
record as it should now be plus the diff. :func:`apply_probes` then moves records by the result
of connecting to them. Nothing here does I/O; the store writes :attr:`Reconciliation.writes`.

Rules (issue 4):

- A source *covers* the accounts it lists (AWS account ids, GCP projects, Azure subscriptions,
  static source names) for its provider. A record is judged only by the sources covering it.
- A record covered by a **failed** source and not reported by a healthy one is left untouched:
  an outage, expired credentials or throttling never counts as the cluster having gone.
- A record covered only by healthy sources that did not report it gets ``missed_count + 1``;
  at ``missing_after`` consecutive misses (default 3) it becomes ``missing``. A record no source
  of this run covers (its source was not run, or the account was dropped from the settings) is
  untouched.
- A reported record takes the discovered fields, ``last_seen = now`` and ``missed_count = 0``; a
  ``missing`` one goes back to ``registered``. Other states are for probes to change
  (``discovered`` -> ``registered`` | ``unreachable``).
- ``retired`` records are ignored by discovery and probes alike and listed in the diff. Nothing
  is ever deleted.
- Labels of a reported cluster are rebuilt every run: the discovered labels (normalised provider
  labels plus the ``fleetops.io/`` ones), then every selector override whose selector matches
  those labels, in file order, then every id override, in file order; a later one wins a key.
  Removing an override from the file removes its labels on the next run. Records not reported
  this run keep their labels until they are.
- A cluster whose credential brings its CA (:attr:`AuthMethod.brings_ca`: AKS, where only the
  user kubeconfig holds it) is reported without one. Its record keeps the CA the last probe
  recorded as long as the endpoint stays the same; a new endpoint is a new API server, so the
  old CA is dropped and the probe of this run (the record changed) records the new one. A
  probe that brings a CA records it (:func:`apply_probe`), and a record of such a cluster
  without a CA is due for a probe (:func:`probe_due`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetops.domain.cluster import Cluster, ClusterState, ProbeResult, Provider
from fleetops.domain.labels import FLEETOPS_PREFIX, validate_labels
from fleetops.domain.selectors import Selector, SelectorText

DEFAULT_MISSING_AFTER = 3

# Fields a discovery run may change, in the order a diff lists them. The id fields never change.
DISCOVERED_FIELDS: tuple[str, ...] = (
    "endpoint",
    "ca_data",
    "kubernetes_version",
    "provider_status",
    "labels",
    "auth",
)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class InventoryRecord(Cluster):
    """A cluster as the inventory stores it: the :class:`Cluster` plus discovery bookkeeping."""

    model_config = _FROZEN

    missed_count: int = Field(
        default=0,
        ge=0,
        description="Consecutive successful discoveries of its source that did not report it.",
    )

    @classmethod
    def of(cls, cluster: Cluster, *, missed_count: int | None = None) -> Self:
        """``cluster`` as a record; a plain :class:`Cluster` starts with ``missed_count`` 0."""
        fields = {name: getattr(cluster, name) for name in Cluster.model_fields}
        if missed_count is None:
            missed_count = getattr(cluster, "missed_count", 0)
        return cls(**fields, missed_count=missed_count)

    def cluster(self) -> Cluster:
        """The plain :class:`Cluster`, without bookkeeping."""
        return Cluster(**{name: getattr(self, name) for name in Cluster.model_fields})


class LabelOverride(BaseModel):
    """One operator override from ``deployments/clusters.yaml``: labels for some clusters.

    Give exactly one of ``id`` and ``selector``. Keys under ``fleetops.io/`` are refused: those
    labels describe where a cluster runs and are computed, not set.
    """

    model_config = _FROZEN

    id: str | None = Field(
        default=None, description="Cluster id (provider/account/location/name) to label."
    )
    selector: SelectorText | None = Field(
        default=None,
        description="Label selector over the discovered labels; every match is labelled.",
    )
    labels: dict[str, str] = Field(
        min_length=1, description="Labels to set; they win over discovered labels."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.id is None) == (self.selector is None):
            raise ValueError("give exactly one of 'id' and 'selector'")
        validate_labels(self.labels)
        reserved = sorted(key for key in self.labels if key.startswith(FLEETOPS_PREFIX))
        if reserved:
            raise ValueError(
                f"labels under {FLEETOPS_PREFIX} are computed by fleetops and cannot be "
                f"overridden: {', '.join(reserved)}"
            )
        return self

    def describe(self) -> str:
        """``id=...`` or ``selector=...``, for reports."""
        return f"id={self.id}" if self.id is not None else f"selector={self.selector}"


class SourceResult(BaseModel):
    """What one discovery source reported in this run."""

    model_config = _FROZEN

    name: str = Field(description="Source name as reported (eks, gke, aks, kubeconfig, ...).")
    provider: Provider = Field(description="Provider of every cluster the source lists.")
    accounts: tuple[str, ...] = Field(
        min_length=1,
        description="Accounts (AWS account ids, projects, subscriptions, static source names) "
        "the source lists in full when it succeeds.",
    )
    clusters: tuple[Cluster, ...] = Field(default=(), description="Clusters it reported.")
    error: str | None = Field(
        default=None, description="Why it failed (redacted), or None when it succeeded."
    )

    @property
    def ok(self) -> bool:
        return self.error is None

    def covers(self, cluster: Cluster) -> bool:
        """Whether this source is responsible for listing ``cluster``."""
        return cluster.provider == self.provider and cluster.account in self.accounts

    @model_validator(mode="after")
    def _clusters_in_scope(self) -> Self:
        strays = sorted(c.id for c in self.clusters if not self.covers(c))
        if strays:
            raise ValueError(
                f"source {self.name!r} ({self.provider.value}, accounts "
                f"{', '.join(self.accounts)}) reported clusters outside them: {', '.join(strays)}"
            )
        return self


class ClusterChange(BaseModel):
    """A record whose stored fields changed this run, with which."""

    model_config = _FROZEN

    id: str = Field(description="Cluster id.")
    fields: tuple[str, ...] = Field(description="Changed fields (discovered fields, then state).")
    before: InventoryRecord = Field(description="The record before the run.")
    after: InventoryRecord = Field(description="The record after the run.")


class InventoryDiff(BaseModel):
    """What a run changed, for the artifact and Slack. Every list is sorted by id.

    ``added``, ``changed`` and ``unchanged`` split the clusters the healthy sources reported
    (retired ones aside); ``changed`` includes returned clusters (their ``state`` changed).
    ``unseen``, ``missing`` and ``untouched`` split the records that were not reported;
    ``retired`` holds every retired record.
    """

    model_config = _FROZEN

    added: tuple[str, ...] = Field(default=(), description="New clusters.")
    changed: tuple[ClusterChange, ...] = Field(default=(), description="Reported, fields changed.")
    unchanged: tuple[str, ...] = Field(default=(), description="Reported, nothing changed.")
    returned: tuple[str, ...] = Field(default=(), description="Missing clusters reported again.")
    missing: tuple[str, ...] = Field(default=(), description="Became missing this run.")
    unseen: tuple[str, ...] = Field(
        default=(), description="Not reported by healthy sources covering them, not newly missing."
    )
    untouched: tuple[str, ...] = Field(
        default=(), description="Covered by a failed source or by no source of this run."
    )
    retired: tuple[str, ...] = Field(default=(), description="Retired records (ignored).")
    unreachable: tuple[str, ...] = Field(default=(), description="Became unreachable (probes).")
    recovered: tuple[str, ...] = Field(
        default=(), description="Unreachable before, registered now (probes)."
    )
    failed_sources: tuple[str, ...] = Field(
        default=(), description="Sources that failed: 'name: error'."
    )
    unmatched_overrides: tuple[str, ...] = Field(
        default=(), description="Overrides that matched no reported cluster."
    )

    @property
    def has_changes(self) -> bool:
        """Whether the inventory changed in a way worth telling someone about."""
        return bool(
            self.added
            or self.changed
            or self.missing
            or self.returned
            or self.unreachable
            or self.recovered
        )


class Reconciliation(BaseModel):
    """The outcome of a discovery run, before anything is written."""

    model_config = _FROZEN

    records: tuple[InventoryRecord, ...] = Field(description="Every record after the run, by id.")
    writes: tuple[InventoryRecord, ...] = Field(
        description="The records that differ from before: what the store must upsert."
    )
    diff: InventoryDiff = Field(description="What changed.")

    def record(self, cluster_id: str) -> InventoryRecord | None:
        return next((r for r in self.records if r.id == cluster_id), None)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (UTC)")


def changed_fields(before: Cluster, after: Cluster) -> tuple[str, ...]:
    """The discovered fields (then ``state``) that differ between two versions of a record."""
    fields = [name for name in DISCOVERED_FIELDS if getattr(before, name) != getattr(after, name)]
    if before.state != after.state:
        fields.append("state")
    return tuple(fields)


@lru_cache(maxsize=1024)
def _selector(text: str) -> Selector:
    return Selector.parse(text)


def apply_overrides(
    cluster_id: str, labels: Mapping[str, str], overrides: Sequence[LabelOverride]
) -> tuple[dict[str, str], set[int]]:
    """``labels`` with the overrides applied, and the indexes of the overrides that applied."""
    result = dict(labels)
    used: set[int] = set()
    for index, override in enumerate(overrides):
        if override.selector is not None and _selector(override.selector).matches(labels):
            result.update(override.labels)
            used.add(index)
    for index, override in enumerate(overrides):
        if override.id == cluster_id:
            result.update(override.labels)
            used.add(index)
    return dict(sorted(result.items())), used


def reconcile(
    *,
    records: Iterable[InventoryRecord],
    sources: Sequence[SourceResult],
    overrides: Sequence[LabelOverride] = (),
    now: datetime,
    missing_after: int = DEFAULT_MISSING_AFTER,
) -> Reconciliation:
    """Apply one discovery run to the inventory's records. See the module docstring for rules.

    When two healthy sources report the same id, the one whose name sorts first is taken.
    """
    _require_aware(now)
    if missing_after < 1:
        raise ValueError("missing_after must be at least 1")
    current = {record.id: record for record in records}
    healthy = sorted((s for s in sources if s.ok), key=lambda s: s.name)
    failed = sorted((s for s in sources if not s.ok), key=lambda s: s.name)

    reported: dict[str, Cluster] = {}
    for source in healthy:
        for cluster in source.clusters:
            reported.setdefault(cluster.id, cluster)

    after: dict[str, InventoryRecord] = dict(current)
    used_overrides: set[int] = set()
    added: list[str] = []
    changes: list[ClusterChange] = []
    unchanged: list[str] = []
    returned: list[str] = []
    missing: list[str] = []
    unseen: list[str] = []
    untouched: list[str] = []
    retired: list[str] = []

    for cluster_id, cluster in reported.items():
        before = current.get(cluster_id)
        if before is not None and before.state is ClusterState.RETIRED:
            continue
        labels, used = apply_overrides(cluster_id, cluster.labels, overrides)
        used_overrides |= used
        discovered = {name: getattr(cluster, name) for name in DISCOVERED_FIELDS}
        discovered["labels"] = labels
        if cluster.auth.brings_ca and cluster.ca_data is None:
            kept = before is not None and before.endpoint == cluster.endpoint
            discovered["ca_data"] = before.ca_data if kept and before is not None else None
        if before is None:
            after[cluster_id] = InventoryRecord.of(cluster).model_copy(
                update={
                    **discovered,
                    "state": ClusterState.DISCOVERED,
                    "first_seen": now,
                    "last_seen": now,
                    "last_probe": None,
                    "missed_count": 0,
                }
            )
            added.append(cluster_id)
            continue
        state = ClusterState.REGISTERED if before.state is ClusterState.MISSING else before.state
        record = before.model_copy(
            update={**discovered, "state": state, "last_seen": now, "missed_count": 0}
        )
        after[cluster_id] = record
        fields = changed_fields(before, record)
        if fields:
            changes.append(ClusterChange(id=cluster_id, fields=fields, before=before, after=record))
        else:
            unchanged.append(cluster_id)
        if before.state is ClusterState.MISSING:
            returned.append(cluster_id)

    for cluster_id, record in current.items():
        if record.state is ClusterState.RETIRED:
            retired.append(cluster_id)
            continue
        if cluster_id in reported:
            continue
        if any(s.covers(record) for s in failed) or not any(s.covers(record) for s in healthy):
            untouched.append(cluster_id)
            continue
        missed = record.missed_count + 1
        update: dict[str, object] = {"missed_count": missed}
        if record.state is not ClusterState.MISSING and missed >= missing_after:
            update["state"] = ClusterState.MISSING
            missing.append(cluster_id)
        else:
            unseen.append(cluster_id)
        after[cluster_id] = record.model_copy(update=update)

    records_after = tuple(after[key] for key in sorted(after))
    writes = tuple(r for r in records_after if current.get(r.id) != r)
    diff = InventoryDiff(
        added=tuple(sorted(added)),
        changed=tuple(sorted(changes, key=lambda c: c.id)),
        unchanged=tuple(sorted(unchanged)),
        returned=tuple(sorted(returned)),
        missing=tuple(sorted(missing)),
        unseen=tuple(sorted(unseen)),
        untouched=tuple(sorted(untouched)),
        retired=tuple(sorted(retired)),
        failed_sources=tuple(f"{s.name}: {s.error}" for s in failed),
        unmatched_overrides=tuple(
            o.describe() for index, o in enumerate(overrides) if index not in used_overrides
        ),
    )
    return Reconciliation(records=records_after, writes=writes, diff=diff)


def apply_probe(record: InventoryRecord, probe: ProbeResult) -> InventoryRecord:
    """``record`` after a probe: ``registered`` if it answered, ``unreachable`` if not.

    The probe is recorded in any case, except on a retired record (left exactly as it is). A
    missing record stays missing: its provider no longer lists it, whatever it answers. A CA
    the probe's credential brought (AKS) becomes the record's CA.
    """
    if record.state is ClusterState.RETIRED:
        return record
    state = record.state
    if state is not ClusterState.MISSING:
        state = ClusterState.REGISTERED if probe.ok else ClusterState.UNREACHABLE
    update: dict[str, object] = {
        "state": state,
        "last_probe": probe.model_copy(update={"ca_data": None}),
    }
    if probe.ca_data is not None:
        update["ca_data"] = probe.ca_data
    return record.model_copy(update=update)


def apply_probes(
    reconciliation: Reconciliation, probes: Mapping[str, ProbeResult]
) -> Reconciliation:
    """The reconciliation with probe results applied, and ``unreachable``/``recovered`` filled.

    ``probes`` maps cluster ids to results; ids not in the inventory are ignored. A probe that
    brings a CA other than the one recorded (a rotated AKS CA) adds ``ca_data`` to the
    cluster's entry in ``changed``.
    """
    before = {record.id: record for record in reconciliation.records}
    original = {record.id: record for record in reconciliation.writes}
    after = dict(before)
    unreachable: list[str] = []
    recovered: list[str] = []
    changes = {change.id: change for change in reconciliation.diff.changed}
    for cluster_id, probe in probes.items():
        record = before.get(cluster_id)
        if record is None:
            continue
        probed = apply_probe(record, probe)
        after[cluster_id] = probed
        if record.ca_data is not None and probed.ca_data != record.ca_data:
            changes[cluster_id] = _with_ca_change(changes.get(cluster_id), record, probed)
        if probed.state is ClusterState.UNREACHABLE and record.state is not probed.state:
            unreachable.append(cluster_id)
        if probed.state is ClusterState.REGISTERED and record.state is ClusterState.UNREACHABLE:
            recovered.append(cluster_id)
    records = tuple(after[key] for key in sorted(after))
    writes = tuple(r for r in records if r.id in original or r != before[r.id])
    diff = reconciliation.diff.model_copy(
        update={
            "unreachable": tuple(sorted({*reconciliation.diff.unreachable, *unreachable})),
            "recovered": tuple(sorted({*reconciliation.diff.recovered, *recovered})),
            "changed": tuple(changes[key] for key in sorted(changes)),
        }
    )
    return Reconciliation(records=records, writes=writes, diff=diff)


def _with_ca_change(
    change: ClusterChange | None, record: InventoryRecord, probed: InventoryRecord
) -> ClusterChange:
    """The diff entry of a cluster whose CA a probe changed (merged with its discovery change)."""
    if change is None:
        return ClusterChange(id=record.id, fields=("ca_data",), before=record, after=probed)
    fields = {*change.fields, "ca_data"}
    ordered = [name for name in DISCOVERED_FIELDS if name in fields]
    if "state" in fields:
        ordered.append("state")
    return change.model_copy(update={"fields": tuple(ordered), "after": probed})


def probe_due(
    reconciliation: Reconciliation, *, now: datetime, max_age: timedelta
) -> tuple[str, ...]:
    """Ids to probe: added or changed this run, not probed within ``max_age``, or without the
    CA that only a probe records (:attr:`AuthMethod.brings_ca`).

    Missing and retired records are not probed: the provider no longer lists them, or an
    operator took them out of service.
    """
    _require_aware(now)
    fresh = {*reconciliation.diff.added, *(c.id for c in reconciliation.diff.changed)}
    due = []
    for record in reconciliation.records:
        if record.state in (ClusterState.MISSING, ClusterState.RETIRED):
            continue
        stale = record.last_probe is None or now - record.last_probe.at >= max_age
        no_ca = record.auth.brings_ca and record.ca_data is None
        if record.id in fresh or stale or no_ca:
            due.append(record.id)
    return tuple(due)
