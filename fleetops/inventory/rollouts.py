"""The rollout history in the inventory: what a rollout did, so it can be resumed and undone.

:class:`RolloutHistory` shares the :class:`~fleetops.inventory.Inventory`'s database (same
engine, same transactions, same migrations). It records, per rollout: the rollout itself (app,
version, parameters, state, flow run), each cluster's wave, outcome, **rollback point** and
error, the waves that passed their gate, and the approval decisions; per app: the blocklist of
versions that were rolled back, and each cluster's last known good version.

Every write is idempotent, because the flow's tasks are retried and a killed flow is resumed:

- rows have natural keys and are written with ``INSERT ... ON CONFLICT``; writing the same
  thing twice leaves one row;
- the **rollback point of a cluster is written once**: the first one recorded for a
  ``(rollout, cluster)`` wins. A retried or resumed task snapshots the cluster again, possibly
  after its own partial apply; that later snapshot must never replace the state from before
  the rollout;
- an approval is stored once per ``(rollout, wave, person, decision)`` (person compared without
  case and extra blanks, as :func:`fleetops.domain.gates.record_approval` counts them), in
  arrival order;
- a passed wave keeps its first ``passed_at``; a cleared block is blocked again by a later
  rollback of the same version.

:meth:`RolloutHistory.rollout_state` is what a resume reads: clusters done, waves passed,
approvals given. Error texts are redacted before they are stored. The SQL is the same on SQLite
and PostgreSQL (each dialect's ``ON CONFLICT``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from fleetops.domain.gates import ApprovalState, Decision, RecordedDecision
from fleetops.errors import ConfigError, InventoryError
from fleetops.inventory.models import (
    BlockedVersionRow,
    LastKnownGoodRow,
    RolloutApprovalRow,
    RolloutClusterRow,
    RolloutRow,
    RolloutWaveRow,
)
from fleetops.inventory.store import Inventory
from fleetops.redaction import redact

_ROLLOUTS: Table = RolloutRow.__table__  # type: ignore[assignment]
_CLUSTERS: Table = RolloutClusterRow.__table__  # type: ignore[assignment]
_WAVES: Table = RolloutWaveRow.__table__  # type: ignore[assignment]
_APPROVALS: Table = RolloutApprovalRow.__table__  # type: ignore[assignment]
_BLOCKLIST: Table = BlockedVersionRow.__table__  # type: ignore[assignment]
_LKG: Table = LastKnownGoodRow.__table__  # type: ignore[assignment]

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_ERROR_LIMIT = 2000


class RolloutStatus(StrEnum):
    """Where a rollout stands."""

    RUNNING = "running"
    WAITING_APPROVAL = "waiting-approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    HALTED = "halted"

    @property
    def finished(self) -> bool:
        return self not in (RolloutStatus.RUNNING, RolloutStatus.WAITING_APPROVAL)


class ClusterOutcome(StrEnum):
    """Where one cluster of a rollout stands."""

    APPLYING = "applying"  # rollback point recorded, apply under way
    SUCCEEDED = "succeeded"  # at the target version and ready
    FAILED = "failed"
    SKIPPED = "skipped"  # unreachable, with unreachable=skip
    ROLLED_BACK = "rolled-back"  # restored to its rollback point and verified
    ROLLBACK_FAILED = "rollback-failed"


class RolloutRecord(BaseModel):
    """One rollout as the history holds it."""

    model_config = _FROZEN

    rollout_id: str = Field(description="Rollout id (given, or the first flow run's).")
    app: str = Field(description="Application name.")
    version: str = Field(description="Version rolled out.")
    parameters: dict[str, Any] = Field(description="The flow parameters, as JSON.")
    state: RolloutStatus = Field(description="Where it stands.")
    flow_run_id: str | None = Field(default=None, description="The latest flow run.")
    started_at: datetime = Field(description="First recorded (UTC).")
    finished_at: datetime | None = Field(default=None, description="When it reached an end state.")


class ClusterResult(BaseModel):
    """One cluster of a rollout."""

    model_config = _FROZEN

    cluster_id: str = Field(description="Cluster id.")
    wave: str = Field(description="Its wave.")
    outcome: ClusterOutcome = Field(description="Where it stands.")
    rollback_point: dict[str, Any] | None = Field(
        default=None, description="Live state before the rollout (the first one recorded)."
    )
    applied_at: datetime | None = Field(default=None, description="When the apply succeeded.")
    error: str | None = Field(default=None, description="Why it failed (redacted).")


class BlockedVersion(BaseModel):
    """A version of an app that may not be rolled out (it was rolled back)."""

    model_config = _FROZEN

    app: str = Field(description="Application name.")
    version: str = Field(description="The blocked version.")
    reason: str = Field(description="Why (the failure that caused the rollback).")
    rollout_id: str | None = Field(default=None, description="The rollout that was rolled back.")
    blocked_at: datetime = Field(description="When (UTC).")
    cleared_by: str | None = Field(default=None, description="Operator who cleared it.")
    cleared_at: datetime | None = Field(default=None, description="When it was cleared.")

    @property
    def active(self) -> bool:
        return self.cleared_at is None


class LastKnownGood(BaseModel):
    """The version a cluster last ran successfully."""

    model_config = _FROZEN

    app: str = Field(description="Application name.")
    cluster_id: str = Field(description="Cluster id.")
    version: str = Field(description="Version.")
    rollout_id: str | None = Field(default=None, description="The rollout that put it there.")
    at: datetime = Field(description="When (UTC).")


class RolloutState(BaseModel):
    """What a resumed rollout needs: clusters done, waves passed, approvals given."""

    model_config = _FROZEN

    rollout: RolloutRecord = Field(description="The rollout.")
    clusters: dict[str, ClusterResult] = Field(description="Per cluster id.")
    waves_passed: tuple[str, ...] = Field(description="Waves that passed their gate, in order.")
    approvals: dict[str, ApprovalState] = Field(description="Decisions per wave, arrival order.")

    @property
    def clusters_done(self) -> frozenset[str]:
        """Clusters that succeeded (verify, do not re-apply)."""
        return frozenset(
            c for c, r in self.clusters.items() if r.outcome is ClusterOutcome.SUCCEEDED
        )

    @property
    def touched(self) -> tuple[ClusterResult, ...]:
        """Clusters with a rollback point, newest apply first: the order of a rollback."""
        with_point = [r for r in self.clusters.values() if r.rollback_point is not None]
        epoch = datetime.min.replace(tzinfo=UTC)
        return tuple(sorted(with_point, key=lambda r: r.applied_at or epoch, reverse=True))


def _person(name: str) -> str:
    return " ".join(name.split()).casefold()


def _error(text: str | None) -> str | None:
    return None if text is None else redact(text)[:_ERROR_LIMIT]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RolloutHistory:
    """The rollout history, in the database of ``inventory`` (migrated by ``migrate()``)."""

    def __init__(self, inventory: Inventory, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._inventory = inventory
        self._clock = clock

    def _insert(self, table: Table) -> Any:
        insert = postgresql.insert if self._inventory._dialect == "postgresql" else sqlite.insert
        return insert(table)

    def _transaction(self, action: str, *, write: bool) -> Any:
        return self._inventory._transaction(action, write=write)

    # --- rollouts ----------------------------------------------------------------------------

    def record_rollout(
        self,
        rollout_id: str,
        *,
        app: str,
        version: str,
        parameters: Mapping[str, Any],
        state: RolloutStatus = RolloutStatus.RUNNING,
        flow_run_id: str | None = None,
    ) -> RolloutRecord:
        """Start or resume a rollout, or move it to ``state``; returns the stored record.

        A rollout id belongs to one app and version: resuming it with another raises
        :class:`ConfigError`. ``started_at`` keeps its first value; ``finished_at`` is set the
        first time an end state is recorded; the parameters are the latest given.
        """
        state = RolloutStatus(state)
        now = self._clock()
        statement = self._insert(_ROLLOUTS).values(
            rollout_id=rollout_id,
            app=app,
            version=version,
            parameters=dict(parameters),
            state=state.value,
            flow_run_id=flow_run_id,
            started_at=now,
            finished_at=now if state.finished else None,
            updated_at=now,
        )
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=[_ROLLOUTS.c.rollout_id],
            set_={
                "state": excluded.state,
                "parameters": excluded.parameters,
                "flow_run_id": func.coalesce(excluded.flow_run_id, _ROLLOUTS.c.flow_run_id),
                "finished_at": (
                    func.coalesce(_ROLLOUTS.c.finished_at, excluded.finished_at)
                    if state.finished
                    else None
                ),
                "updated_at": excluded.updated_at,
            },
            where=(_ROLLOUTS.c.app == excluded.app) & (_ROLLOUTS.c.version == excluded.version),
        )
        with self._transaction("record rollout", write=True) as connection:
            connection.execute(statement)
            row = connection.execute(
                select(_ROLLOUTS).where(_ROLLOUTS.c.rollout_id == rollout_id)
            ).one()
        record = _rollout(row._mapping)
        if (record.app, record.version) != (app, version):
            raise ConfigError(
                f"rollout {rollout_id!r} rolls out {record.app} {record.version}, not {app} "
                f"{version}: use another rollout id"
            )
        return record

    def set_rollout_state(self, rollout_id: str, state: RolloutStatus) -> None:
        """Move a recorded rollout to ``state`` (``finished_at`` set once, at the first end)."""
        state = RolloutStatus(state)
        now = self._clock()
        values: dict[str, Any] = {"state": state.value, "updated_at": now}
        values["finished_at"] = (
            func.coalesce(_ROLLOUTS.c.finished_at, now) if state.finished else None
        )
        with self._transaction("record rollout state", write=True) as connection:
            result = connection.execute(
                update(_ROLLOUTS).where(_ROLLOUTS.c.rollout_id == rollout_id).values(**values)
            )
        if result.rowcount == 0:
            raise InventoryError(f"no rollout {rollout_id!r} in the history")

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        with self._transaction("read rollout", write=False) as connection:
            row = connection.execute(
                select(_ROLLOUTS).where(_ROLLOUTS.c.rollout_id == rollout_id)
            ).first()
        return None if row is None else _rollout(row._mapping)

    # --- clusters ----------------------------------------------------------------------------

    def record_cluster_result(
        self,
        rollout_id: str,
        cluster_id: str,
        *,
        wave: str,
        outcome: ClusterOutcome,
        rollback_point: Mapping[str, Any] | None = None,
        applied_at: datetime | None = None,
        error: str | None = None,
    ) -> ClusterResult:
        """Record where a cluster stands; returns what is stored.

        The rollback point is kept from the first write that gave one (later ones are ignored);
        ``applied_at`` keeps its value once set; ``error`` is replaced (None clears it).
        """
        outcome = ClusterOutcome(outcome)
        row = {
            "rollout_id": rollout_id,
            "cluster_id": cluster_id,
            "wave": wave,
            "outcome": outcome.value,
            "rollback_point": dict(rollback_point) if rollback_point is not None else None,
            "applied_at": applied_at,
            "error": _error(error),
            "updated_at": self._clock(),
        }
        with self._transaction("record cluster result", write=True) as connection:
            stored = connection.execute(_cluster_upsert(self._inventory._dialect), row).one()
        return _cluster(stored._mapping)

    # --- waves and approvals -----------------------------------------------------------------

    def record_wave_passed(self, rollout_id: str, wave: str, *, summary: str = "") -> None:
        """Record that ``wave`` passed its gate (the first record is kept)."""
        statement = (
            self._insert(_WAVES)
            .values(rollout_id=rollout_id, wave=wave, passed_at=self._clock(), summary=summary)
            .on_conflict_do_nothing(index_elements=[_WAVES.c.rollout_id, _WAVES.c.wave])
        )
        with self._transaction("record wave", write=True) as connection:
            connection.execute(statement)

    def record_approval(self, rollout_id: str, wave: str, decision: RecordedDecision) -> None:
        """Store one decision (as :func:`fleetops.domain.gates.record_approval` recorded it).

        The same person's same decision on a wave is stored once, so a retried write or a
        repeated approval adds nothing.
        """
        statement = (
            self._insert(_APPROVALS)
            .values(
                rollout_id=rollout_id,
                wave=wave,
                decision=Decision(decision.decision).value,
                approver=decision.approver,
                approver_key=_person(decision.approver),
                comment=decision.comment,
                counted=decision.counted,
                at=decision.at,
            )
            .on_conflict_do_nothing(
                index_elements=[
                    _APPROVALS.c.rollout_id,
                    _APPROVALS.c.wave,
                    _APPROVALS.c.approver_key,
                    _APPROVALS.c.decision,
                ]
            )
        )
        with self._transaction("record approval", write=True) as connection:
            connection.execute(statement)

    # --- blocklist ---------------------------------------------------------------------------

    def block_version(
        self, app: str, version: str, *, reason: str, rollout_id: str | None = None
    ) -> BlockedVersion:
        """Put ``version`` of ``app`` on the blocklist (no change if it is already blocked).

        A version that was cleared is blocked again, with the new reason and rollout.
        """
        statement = self._insert(_BLOCKLIST).values(
            app=app,
            version=version,
            reason=_error(reason) or "",
            rollout_id=rollout_id,
            blocked_at=self._clock(),
            cleared_by=None,
            cleared_at=None,
        )
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=[_BLOCKLIST.c.app, _BLOCKLIST.c.version],
            set_={
                "reason": excluded.reason,
                "rollout_id": excluded.rollout_id,
                "blocked_at": excluded.blocked_at,
                "cleared_by": None,
                "cleared_at": None,
            },
            where=_BLOCKLIST.c.cleared_at.is_not(None),
        )
        key = (_BLOCKLIST.c.app == app) & (_BLOCKLIST.c.version == version)
        with self._transaction("block version", write=True) as connection:
            connection.execute(statement)
            row = connection.execute(select(_BLOCKLIST).where(key)).one()
        return BlockedVersion.model_validate(dict(row._mapping))

    def clear_block(self, app: str, version: str, *, cleared_by: str) -> BlockedVersion:
        """An operator allows ``version`` again. Clearing a cleared block changes nothing;
        :class:`InventoryError` when the version was never blocked."""
        if not cleared_by.strip():
            raise ConfigError("clearing a blocked version needs the operator's name")
        key = (_BLOCKLIST.c.app == app) & (_BLOCKLIST.c.version == version)
        with self._transaction("clear block", write=True) as connection:
            connection.execute(
                update(_BLOCKLIST)
                .where(key, _BLOCKLIST.c.cleared_at.is_(None))
                .values(cleared_by=cleared_by.strip(), cleared_at=self._clock())
            )
            row = connection.execute(select(_BLOCKLIST).where(key)).first()
        if row is None:
            raise InventoryError(f"{app} {version} is not on the blocklist")
        return BlockedVersion.model_validate(dict(row._mapping))

    def blocked_versions(self, app: str, *, include_cleared: bool = False) -> list[BlockedVersion]:
        """The blocklist of ``app`` (active entries unless ``include_cleared``), by version."""
        query = select(_BLOCKLIST).where(_BLOCKLIST.c.app == app).order_by(_BLOCKLIST.c.version)
        if not include_cleared:
            query = query.where(_BLOCKLIST.c.cleared_at.is_(None))
        with self._transaction("read blocklist", write=False) as connection:
            rows = connection.execute(query).all()
        return [BlockedVersion.model_validate(dict(row._mapping)) for row in rows]

    # --- last known good ---------------------------------------------------------------------

    def set_last_known_good(
        self,
        app: str,
        cluster_ids: Iterable[str],
        *,
        version: str,
        rollout_id: str | None = None,
    ) -> None:
        """Record ``version`` as the last known good of ``app`` on each of ``cluster_ids``."""
        now = self._clock()
        ids = sorted(set(cluster_ids))
        if not ids:
            return
        statement = self._insert(_LKG)
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=[_LKG.c.app, _LKG.c.cluster_id],
            set_={
                "version": excluded.version,
                "rollout_id": excluded.rollout_id,
                "at": excluded.at,
            },
            where=(_LKG.c.version != excluded.version)
            | (_LKG.c.rollout_id.is_distinct_from(excluded.rollout_id)),
        )
        rows = [
            {"app": app, "cluster_id": c, "version": version, "rollout_id": rollout_id, "at": now}
            for c in ids
        ]
        with self._transaction("record last known good", write=True) as connection:
            connection.execute(statement, rows)

    def last_known_good(self, app: str) -> dict[str, LastKnownGood]:
        """Per cluster id, the last known good version of ``app``."""
        query = select(_LKG).where(_LKG.c.app == app).order_by(_LKG.c.cluster_id)
        with self._transaction("read last known good", write=False) as connection:
            rows = connection.execute(query).all()
        return {row.cluster_id: LastKnownGood.model_validate(dict(row._mapping)) for row in rows}

    # --- resume ------------------------------------------------------------------------------

    def rollout_state(self, rollout_id: str) -> RolloutState | None:
        """Everything recorded about ``rollout_id``, or None for a rollout never recorded."""
        with self._transaction("read rollout state", write=False) as connection:
            row = connection.execute(
                select(_ROLLOUTS).where(_ROLLOUTS.c.rollout_id == rollout_id)
            ).first()
            if row is None:
                return None
            clusters = connection.execute(
                select(_CLUSTERS)
                .where(_CLUSTERS.c.rollout_id == rollout_id)
                .order_by(_CLUSTERS.c.cluster_id)
            ).all()
            waves = connection.execute(
                select(_WAVES.c.wave)
                .where(_WAVES.c.rollout_id == rollout_id)
                .order_by(_WAVES.c.passed_at, _WAVES.c.wave)
            ).all()
            approvals = connection.execute(
                select(_APPROVALS)
                .where(_APPROVALS.c.rollout_id == rollout_id)
                .order_by(_APPROVALS.c.id)
            ).all()
        by_wave: dict[str, list[RecordedDecision]] = {}
        for approval in approvals:
            by_wave.setdefault(approval.wave, []).append(
                RecordedDecision(
                    decision=Decision(approval.decision),
                    approver=approval.approver,
                    comment=approval.comment,
                    at=approval.at,
                    counted=approval.counted,
                )
            )
        return RolloutState(
            rollout=_rollout(row._mapping),
            clusters={c.cluster_id: _cluster(c._mapping) for c in clusters},
            waves_passed=tuple(w.wave for w in waves),
            approvals={
                wave: ApprovalState(wave=wave, decisions=tuple(decisions))
                for wave, decisions in by_wave.items()
            },
        )


@functools.cache
def _cluster_upsert(dialect: str) -> Any:
    """The statement of :meth:`RolloutHistory.record_cluster_result`, built once per dialect
    (building ``excluded`` walks every column: a tenth of a cluster step's CPU when it was built
    for each write), parameters bound at execution, the stored row returned."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(_CLUSTERS)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[_CLUSTERS.c.rollout_id, _CLUSTERS.c.cluster_id],
        set_={
            "wave": excluded.wave,
            "outcome": excluded.outcome,
            "rollback_point": func.coalesce(_CLUSTERS.c.rollback_point, excluded.rollback_point),
            "applied_at": func.coalesce(_CLUSTERS.c.applied_at, excluded.applied_at),
            "error": excluded.error,
            "updated_at": excluded.updated_at,
        },
    ).returning(*_CLUSTERS.c)


def _rollout(row: Mapping[str, Any]) -> RolloutRecord:
    return RolloutRecord.model_validate({k: row[k] for k in RolloutRecord.model_fields})


def _cluster(row: Mapping[str, Any]) -> ClusterResult:
    return ClusterResult.model_validate({k: row[k] for k in ClusterResult.model_fields})
