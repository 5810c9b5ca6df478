"""Wave planning: which registered clusters a rollout changes, in which wave and in which order.

Rules (issue 5):

- **Targets** are the inventory's clusters whose labels match the rollout's target selector.
  Only ``registered`` targets are planned; the others are reported in
  :attr:`WavePlan.excluded` with their state as the reason (``unreachable``, ``missing``,
  ``retired``, ``discovered``), never dropped silently. :func:`plan_rollout` applies the
  unreachable policy: with ``fail`` an unreachable target fails planning.
- **Rank.** Every target gets a rank from the SHA-256 of ``seed`` and its id (rendezvous
  hashing); ``seed`` is the app name unless the caller gives one (a rollout id gives every
  rollout its own canaries). Waves are cut from the ranked list in order, each taking the first
  clusters of its pool (see :mod:`fleetops.domain.rollout` for sizes); clusters keep rank order
  within a wave, which is the order the flow starts them in.
- **Stability.** A cluster's rank depends on its own id only, so the plan is a function of the
  set of targets, whatever order the inventory lists them in, and adding a cluster never changes
  the order of the others (within a wave, or in the ranked list). What adding one cluster can
  move: a wave's size grows by at most one when its pool grows by one, so in a plan without wave
  selectors (counts and percentages, like the default plan) at most one other cluster crosses
  each wave boundary, each by one wave; a 4-wave plan moves at most 3 others, whatever the fleet
  size. With wave selectors the pools overlap and a boundary may see a few more moves (the
  property test checks order and completeness there). Moving nobody but the new cluster is
  impossible for any rule with fixed sizes: with a one-cluster canary over {a, b}, say a, adding
  c must keep a as canary of {a, b, c}, so neither b nor c may be the canary of {b, c}.
- Targets left in no wave make planning fail with :class:`PlanningError` naming them, unless
  the last wave is a catch-all (no selector, count or percent), which takes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from fleetops.domain.cluster import Cluster, ClusterState
from fleetops.domain.rollout import (
    RolloutParameters,
    UnreachablePolicy,
    WaveSpec,
)
from fleetops.domain.selectors import Selector
from fleetops.errors import PlanningError

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_NAMED_AT_MOST = 50  # ids listed in one error message


class ExclusionReason(StrEnum):
    """Why a target cluster is not in the plan: its inventory state."""

    UNREACHABLE = "unreachable"
    MISSING = "missing"
    RETIRED = "retired"
    DISCOVERED = "discovered"


class ExcludedCluster(BaseModel):
    """A cluster the target selector matches but the plan leaves out, and why."""

    model_config = _FROZEN

    id: str = Field(description="Cluster id.")
    reason: ExclusionReason = Field(description="Its inventory state, which is not registered.")


class PlannedWave(BaseModel):
    """One wave of a plan: its spec and the clusters it changes, in start order."""

    model_config = _FROZEN

    index: int = Field(ge=1, description="1-based position in the plan.")
    spec: WaveSpec = Field(description="The wave as the parameters describe it.")
    clusters: tuple[str, ...] = Field(description="Cluster ids in the order they are started.")

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def size(self) -> int:
        return len(self.clusters)

    @property
    def max_failures(self) -> int:
        """Failures this wave tolerates, given its size (a percentage rounds down)."""
        return self.spec.failure_budget(self.size)


class WavePlan(BaseModel):
    """The outcome of planning: ordered waves, and the targets left out with reasons."""

    model_config = _FROZEN

    app: str = Field(description="Application rolled out.")
    target: str = Field(description="Canonical target selector.")
    seed: str = Field(description="What the ranks were hashed with (app name or rollout id).")
    waves: tuple[PlannedWave, ...] = Field(description="Waves in order.")
    excluded: tuple[ExcludedCluster, ...] = Field(
        default=(), description="Targets that are not registered, by id."
    )

    @property
    def cluster_ids(self) -> tuple[str, ...]:
        """Every planned cluster, wave by wave, in start order."""
        return tuple(cluster for wave in self.waves for cluster in wave.clusters)

    def wave(self, name: str) -> PlannedWave:
        for wave in self.waves:
            if wave.name == name:
                return wave
        raise KeyError(name)

    def wave_of(self, cluster_id: str) -> str | None:
        """Name of the wave that changes ``cluster_id``, or None if it is not planned."""
        for wave in self.waves:
            if cluster_id in wave.clusters:
                return wave.name
        return None

    def excluded_for(self, reason: ExclusionReason) -> tuple[str, ...]:
        return tuple(e.id for e in self.excluded if e.reason is reason)

    def rows(self) -> list[dict[str, str | int]]:
        """One row per wave, for the plan artifact (a Prefect table)."""
        return [
            {
                "wave": wave.name,
                "clusters": wave.size,
                "max_parallel": wave.spec.max_parallel,
                "max_failures": wave.max_failures,
                "approval": wave.spec.approval.approvers if wave.spec.approval.required else 0,
                "bake_seconds": int(wave.spec.bake_seconds),
                "first": ", ".join(wave.clusters[:3]) + (" ..." if wave.size > 3 else ""),
            }
            for wave in self.waves
        ]


def rank(seed: str, cluster_id: str) -> tuple[bytes, str]:
    """A cluster's place in the ranked list: SHA-256 of seed and id (the id breaks ties)."""
    digest = hashlib.sha256(f"{seed}\x00{cluster_id}".encode()).digest()
    return digest, cluster_id


def _names(ids: Iterable[str]) -> str:
    ordered = sorted(ids)
    shown = ", ".join(ordered[:_NAMED_AT_MOST])
    more = len(ordered) - _NAMED_AT_MOST
    return shown + (f" and {more} more" if more > 0 else "")


def plan_waves(
    clusters: Sequence[Cluster],
    waves: Sequence[WaveSpec],
    *,
    app: str,
    target: str = "",
    seed: str | None = None,
) -> WavePlan:
    """Plan a rollout of ``app`` over ``clusters`` (the inventory, any order) in ``waves``.

    ``clusters`` may be :class:`Cluster` or ``InventoryRecord`` objects. Raise
    :class:`PlanningError` when a cluster id is listed twice or targets are left in no wave.
    """
    if not waves:
        raise PlanningError("a rollout needs at least one wave")
    seed = app if seed is None else seed
    selector = Selector.parse(target)
    seen: set[str] = set()
    duplicated: set[str] = set()
    eligible: list[str] = []
    excluded: list[ExcludedCluster] = []
    labels: dict[str, dict[str, str]] = {}
    for cluster in clusters:
        if cluster.id in seen:
            duplicated.add(cluster.id)
            continue
        seen.add(cluster.id)
        if not selector.matches(cluster.labels):
            continue
        if cluster.state is ClusterState.REGISTERED:
            eligible.append(cluster.id)
            labels[cluster.id] = cluster.labels
        else:
            excluded.append(ExcludedCluster(id=cluster.id, reason=ExclusionReason(cluster.state)))
    if duplicated:
        raise PlanningError(f"cluster ids listed more than once: {_names(duplicated)}")

    remaining = sorted(eligible, key=lambda cluster_id: rank(seed, cluster_id))
    planned: list[PlannedWave] = []
    for index, spec in enumerate(waves, start=1):
        wave_selector = Selector.parse(spec.selector or "")
        pool = [c for c in remaining if wave_selector.matches(labels[c])]
        chosen = pool[: spec.size(len(pool))]
        taken = set(chosen)
        remaining = [c for c in remaining if c not in taken]
        planned.append(PlannedWave(index=index, spec=spec, clusters=tuple(chosen)))

    if remaining:
        raise PlanningError(
            f"{len(remaining)} target cluster(s) of app {app!r} are in no wave: "
            f"{_names(remaining)}; add a last wave without selector, count or percent to take "
            "the rest, or widen the waves"
        )
    return WavePlan(
        app=app,
        target=str(selector),
        seed=seed,
        waves=tuple(planned),
        excluded=tuple(sorted(excluded, key=lambda e: e.id)),
    )


def plan_rollout(
    parameters: RolloutParameters, clusters: Sequence[Cluster], *, seed: str | None = None
) -> WavePlan:
    """:func:`plan_waves` for a rollout's parameters, applying its unreachable policy.

    With ``unreachable=fail``, a target the inventory holds as unreachable fails planning, before
    any cluster is touched; with ``skip`` it stays in :attr:`WavePlan.excluded`, reported.
    """
    plan = plan_waves(
        clusters, parameters.waves, app=parameters.app, target=parameters.target, seed=seed
    )
    unreachable = plan.excluded_for(ExclusionReason.UNREACHABLE)
    if unreachable and parameters.unreachable is UnreachablePolicy.FAIL:
        raise PlanningError(
            f"{len(unreachable)} target cluster(s) are unreachable: {_names(unreachable)}; "
            "with unreachable=fail the rollout does not start (unreachable=skip leaves them out)"
        )
    return plan
