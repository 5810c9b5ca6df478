"""The ``rollout`` flow: roll an application out to the fleet in staged waves.

Orchestration only: planning, wave gates, approvals and the failure policy are decided by
:mod:`fleetops.domain` (``plan_rollout``, ``evaluate_wave``, ``should_stop``, ``record_approval``);
each cluster is changed by a task of :mod:`tasks.rollout` running one step of
:mod:`fleetops.cluster_rollout`; what happened is kept in the inventory's rollout history
(:class:`~fleetops.inventory.rollouts.RolloutHistory`), which is also what a resumed run and a
rollback read. The history, not a Prefect transaction, holds the
rollback points: a rollback must still work after the process that applied was killed.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import math
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.futures import PrefectFuture
from prefect.results import ResultRecord
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict, Field

from fleetops.clients.credentials import ClusterCredentials
from fleetops.clients.slack import Notifier, SlackClient
from fleetops.clients.workloads import Action, ApplyResult
from fleetops.cluster_rollout import ClusterReport, ClusterSteps, ClusterWork
from fleetops.discovery import load_settings
from fleetops.domain.gates import (
    ApprovalDecision,
    ApprovalState,
    ClusterOutcome,
    OutcomeStatus,
    ReadinessStatus,
    WaveVerdict,
    evaluate_wave,
    record_approval,
    should_stop,
)
from fleetops.domain.inventory import InventoryRecord
from fleetops.domain.rollout import (
    BlockedVersion,
    FailurePolicy,
    RolloutParameters,
    UnreachablePolicy,
    check_version_allowed,
    clear_block_command,
)
from fleetops.domain.waves import PlannedWave, WavePlan, plan_rollout
from fleetops.errors import FleetopsError, PlanningError, Unreachable
from fleetops.inventory import Inventory
from fleetops.inventory.rollouts import ClusterOutcome as HistoryOutcome
from fleetops.inventory.rollouts import RolloutHistory, RolloutState, RolloutStatus
from fleetops.render import render_app
from fleetops.runtime import settle_heap
from fleetops.settings import RolloutSettings
from tasks.discovery import read_inventory_task, retry_options
from tasks.notify import run_url
from tasks.rollout import (
    ClusterLock,
    check_health_task,
    dry_run_cluster_task,
    restore_cluster_task,
    rollout_cluster_task,
)

R = TypeVar("R")

#: bound of the flow's task runner; the CLI uses FLEETOPS_ROLLOUT_MAX_WORKERS
DEFAULT_MAX_WORKERS = 64
#: the version a rollout back to last known good is recorded under (each cluster has its own)
LAST_KNOWN_GOOD = "last-known-good"

PLAN_ARTIFACT = "rollout-plan"
PROGRESS_ARTIFACT = "rollout-progress"
AUDIT_ARTIFACT = "rollout-audit"
DRY_RUN_ARTIFACT = "rollout-dry-run"
#: Least seconds between two updates of the progress artifact (sent by their own thread).
PROGRESS_INTERVAL = 1.0


class RolloutTaskRunner(ThreadPoolTaskRunner):
    """The flow's task runner: a bounded thread pool whose threads all start with the run.

    A ``ThreadPoolExecutor`` starts a thread only when a task finds none idle, that is in the
    middle of a wave, where each start waits for the interpreter lock behind every busy thread
    (seconds in all at fleet scale). Starting them when the runner opens, while nothing else
    runs, costs milliseconds. Nothing else differs from :class:`ThreadPoolTaskRunner`.
    """

    #: pools larger than this start their threads lazily, as usual
    WARM_LIMIT = 512

    def __enter__(self) -> RolloutTaskRunner:
        super().__enter__()
        executor, workers = self._executor, self._max_workers
        if executor is not None and workers <= self.WARM_LIMIT:
            # each job holds its thread until all have started, so every submit adds a thread
            started = threading.Barrier(workers + 1)
            jobs = [executor.submit(started.wait, 30) for _ in range(workers)]
            started.wait(30)
            concurrent.futures.wait(jobs, timeout=30)
        return self


class _ProgressReporter:
    """The progress artifact, sent by a thread of its own.

    The flow's thread only sets the number; the reporter sends the latest one at most once per
    :data:`PROGRESS_INTERVAL` (made by the flow's thread, each update held up starting and
    collecting clusters). :meth:`close` sends the last value before it returns. A failed
    update is logged and never fails the rollout.
    """

    def __init__(self, artifact_id: UUID, logger: Any) -> None:
        self._id = artifact_id
        self._logger = logger
        self._wanted = 0.0
        self._sent = 0.0
        self._closed = False
        self._changed = threading.Condition()
        # the thread needs the run's Prefect context (API URL, client) to send updates
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name="rollout-progress", daemon=True
        )
        self._thread.start()

    def set(self, percent: float) -> None:
        with self._changed:
            self._wanted = percent
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(30)

    def _loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or self._wanted != self._sent)
                wanted, closed = self._wanted, self._closed
            if wanted != self._sent:
                try:
                    update_progress_artifact(self._id, wanted)
                    self._sent = wanted
                except Exception as exc:  # progress is a courtesy
                    self._logger.warning("could not update the progress artifact: %s", exc)
                    self._sent = wanted
            if closed:
                return
            with self._changed:
                self._changed.wait_for(lambda: self._closed, timeout=PROGRESS_INTERVAL)


class RolloutFailed(FleetopsError):
    """The rollout stopped (a gate, a rejection, a timeout); the run ends Failed after the
    failure policy ran. The message says why and what was done about it."""


class _Stop(Exception):
    """Internal: a wave cannot go on; carries the reason."""


class RolloutReport(BaseModel):
    """What a rollout run did (the flow's result)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rollout_id: str = Field(description="Rollout id (give it again to resume).")
    app: str = Field(description="Application.")
    version: str = Field(description="Version, or last-known-good.")
    status: str = Field(description="succeeded, dry-run, rolled-back, halted or failed.")
    waves: tuple[WaveVerdict, ...] = Field(default=(), description="Verdict per wave run.")
    applied: tuple[str, ...] = Field(default=(), description="Clusters applied by this run.")
    verified: tuple[str, ...] = Field(
        default=(), description="Clusters found at the target (resume) and not applied again."
    )
    skipped: tuple[str, ...] = Field(default=(), description="Clusters left out, with reasons.")
    message: str = Field(default="", description="One sentence.")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _result(future: PrefectFuture[R]) -> R:
    """The return value of a task run of this flow, or its exception raised.

    ``PrefectFuture.result()`` takes a trip through Prefect's event-loop thread for every call
    (``State.result`` is a coroutine underneath), which at fleet scale made collecting the
    clusters the flow thread's largest cost. The tasks keep their results in memory
    (``persist_result=False``), so a finished run's state carries them as a ``ResultRecord``
    and they are read from it here; any other state goes through ``result()``.
    """
    state = future.wrapped_future.result()
    record = state.data
    if isinstance(record, ResultRecord) and state.is_final() and not state.is_paused():
        value = record.result
        if state.is_completed():
            return cast(R, value)
        if isinstance(value, Exception) and (state.is_failed() or state.is_crashed()):
            raise value
    return future.result()


def new_rollout_id(app: str, version: str, run_id: str | None = None) -> str:
    """``<app>-<version>-<8 hex>``, at most 63 characters (the history's key)."""
    suffix = (run_id or uuid.uuid4().hex).replace("-", "")[:8]
    return f"{app}-{version}"[:54].rstrip("-._") + f"-{suffix}"


def _run_name() -> str:
    parameters: Any = flow_run.parameters.get("parameters") or {}
    if isinstance(parameters, BaseModel):
        parameters = parameters.model_dump()
    app = parameters.get("app", "app")
    rollout_id = parameters.get("rollout_id")
    if rollout_id:
        return f"rollout-{rollout_id}"
    return f"rollout-{app}-{parameters.get('version') or LAST_KNOWN_GOOD}"


class _Run:
    """One rollout run: its plan, history, artifacts, audit trail and Slack thread."""

    def __init__(
        self,
        parameters: RolloutParameters,
        *,
        rollout_id: str,
        history: RolloutHistory,
        steps: ClusterSteps,
        notifier: Notifier,
        ui_url: str | None,
    ) -> None:
        self.p = parameters
        self.rollout_id = rollout_id
        self.history = history
        self.steps = steps
        self.options = options = steps.options
        self.notifier = notifier
        self.ui_url = ui_url
        self.logger = get_run_logger()
        self.version_label = parameters.version or LAST_KNOWN_GOOD
        self.audit: list[tuple[datetime, str]] = []
        self.records: dict[str, InventoryRecord] = {}
        self.objects: dict[str, tuple[dict[str, Any], ...]] = {}
        self.versions: dict[str, str] = {}
        self.plan: WavePlan | None = None
        self.prior: RolloutState | None = None
        self.verdicts: list[WaveVerdict] = []
        self.applied: list[str] = []
        self.verified: list[str] = []
        self.skipped: list[str] = []
        self.done = 0
        self.reporter: _ProgressReporter | None = None
        self.locks_ahead: dict[str, ClusterLock] = {}
        self.status = "running"
        self.slack_failed = 0
        self.slack_off = False
        self.cluster_task = rollout_cluster_task.with_options(
            **retry_options(retries=options.retries, base_delay=options.retry_delay_seconds)
        )

    # --- audit, Slack, artifacts -----------------------------------------------------------

    def slack(self, kind: str, text: str) -> None:
        """Post through the notifier (which never raises); after two failed calls in a row,
        stop trying for this run, so a Slack outage costs seconds, not one timeout per step."""
        if self.slack_off:
            return
        before = len(self.notifier.failures)
        {
            "start": self.notifier.start,
            "reply": self.notifier.reply,
            "update": self.notifier.update,
        }[kind](text)
        if len(self.notifier.failures) == before:
            self.slack_failed = 0
            return
        self.slack_failed += 1
        if self.slack_failed >= 2:
            self.slack_off = True
            self.logger.warning("Slack keeps failing; no more notifications in this run")

    def note(self, text: str, *, slack: bool = False) -> None:
        """One line of the audit timeline (and the log; and Slack when asked)."""
        self.audit.append((_utcnow(), text))
        self.logger.info("%s", text)
        if slack:
            self.slack("reply", text)

    def headline(self, state: str, detail: str = "") -> str:
        total = len(self.plan.cluster_ids) if self.plan else 0
        text = (
            f"*Rollout {self.p.app} {self.version_label}* `{self.rollout_id}`: {state}"
            f" ({self.done}/{total} clusters)"
        )
        return f"{text}\n{detail}" if detail else text

    def update_parent(self, state: str, detail: str = "") -> None:
        self.status = state
        self.slack("update", self.headline(state, detail))

    def progress(self) -> None:
        """Set the progress artifact to the share of clusters done (sent by its own thread)."""
        if self.reporter is not None and self.plan is not None:
            self.reporter.set(math.floor(100 * self.done / max(1, len(self.plan.cluster_ids))))

    def write_audit(self) -> None:
        lines = [
            f"# Rollout `{self.rollout_id}`: {self.p.app} {self.version_label}",
            "",
            f"Final state: **{self.status}**",
            "",
            "| time (UTC) | event |",
            "|---|---|",
        ]
        lines += [
            f"| {at.strftime('%H:%M:%S')} | {text.replace('|', '/')} |" for at, text in self.audit
        ]
        create_markdown_artifact(
            "\n".join(lines), key=AUDIT_ARTIFACT, description="Audit timeline of the rollout"
        )

    # --- planning ----------------------------------------------------------------------------

    def make_plan(self, inventory: Sequence[InventoryRecord]) -> WavePlan:
        """Plan, check the blocklist and render every target; nothing is touched yet."""
        p = self.p
        self.prior = self.history.rollout_state(self.rollout_id)
        targets = list(inventory)
        if p.rollback_to_last_known_good:
            good = self.history.last_known_good(p.app)
            missing = [r.id for r in targets if r.id not in good]
            targets = [r for r in targets if r.id in good]
            self.versions = {cid: entry.version for cid, entry in good.items()}
            for cid in missing:
                self.skipped.append(f"{cid}: no last known good version")
        else:
            assert p.version is not None  # the parameter model guarantees it
            blocked = [
                BlockedVersion(
                    app=b.app,
                    version=b.version,
                    reason=b.reason,
                    rollout_id=b.rollout_id,
                    blocked_at=b.blocked_at,
                )
                for b in self.history.blocked_versions(p.app)
            ]
            check_version_allowed(p.app, p.version, blocked)
        plan = plan_rollout(p, targets)
        if not plan.cluster_ids:
            raise PlanningError(f"no registered cluster matches target {p.target or '(all)'!r}")
        self.records = {r.id: r for r in inventory}
        app_dir = self.options.apps_dir / p.app
        for cid in plan.cluster_ids:
            version = self.versions.get(cid) or p.version or ""
            self.versions[cid] = version
            self.objects[cid] = tuple(
                render_app(app_dir, version=version, cluster_labels=self.records[cid].labels)
            )
        for excluded in plan.excluded:
            self.skipped.append(f"{excluded.id}: {excluded.reason.value}")
        self.plan = plan
        return plan

    def publish_plan(self, plan: WavePlan) -> None:
        rows: list[dict[str, Any]] = [dict(row) for row in plan.rows()]
        create_table_artifact(
            rows,
            key=PLAN_ARTIFACT,
            description=f"Wave plan of {self.p.app} {self.version_label} ({self.rollout_id})",
        )
        lines = [f"{w.index}. {w.spec.describe()} -> {w.size} cluster(s)" for w in plan.waves]
        if self.skipped:
            lines.append("Left out: " + "; ".join(self.skipped))
        state = "dry run" if self.p.dry_run else "planned"
        resumed = " (resumed)" if self.prior is not None else ""
        self.slack("start", self.headline(state + resumed, "\n".join(lines)))
        self.note(
            f"planned {len(plan.cluster_ids)} cluster(s) in {len(plan.waves)} wave(s){resumed}"
        )
        for skipped in self.skipped:
            self.note(f"left out {skipped}")

    # --- per cluster -------------------------------------------------------------------------

    def work(self, wave: PlannedWave, cid: str) -> ClusterWork:
        resume = self.prior is not None and cid in self.prior.clusters
        return ClusterWork(
            rollout_id=self.rollout_id,
            wave=wave.name,
            cluster=self.records[cid],
            version=self.versions[cid],
            objects=self.objects[cid],
            deadline_seconds=wave.spec.progress_deadline_seconds,
            resume=resume,
        )

    def outcome(
        self, wave: PlannedWave, cid: str, future: PrefectFuture[ClusterReport]
    ) -> ClusterOutcome:
        try:
            report = _result(future)
        except Exception as exc:
            message = str(exc)
            if isinstance(exc, Unreachable) and self.p.unreachable is UnreachablePolicy.SKIP:
                state = self.history.rollout_state(self.rollout_id)
                touched = state is not None and (
                    cid in state.clusters and state.clusters[cid].rollback_point is not None
                )
                if not touched:
                    self.history.record_cluster_result(
                        self.rollout_id,
                        cid,
                        wave=wave.name,
                        outcome=HistoryOutcome.SKIPPED,
                        error=message,
                    )
                    self.skipped.append(f"{cid}: unreachable")
                    self.note(f"{cid} skipped (unreachable, unreachable=skip): {message}")
                    return ClusterOutcome(
                        cluster_id=cid, status=OutcomeStatus.SKIPPED, message=message
                    )
            self.history.record_cluster_result(
                self.rollout_id, cid, wave=wave.name, outcome=HistoryOutcome.FAILED, error=message
            )
            self.note(f"{cid} failed: {message}")
            return ClusterOutcome(cluster_id=cid, status=OutcomeStatus.FAILED, message=message)
        (self.verified if report.action.value == "verified" else self.applied).append(cid)
        self.note(f"{cid} {report.action.value} ({report.summary})")
        return ClusterOutcome(
            cluster_id=cid, status=OutcomeStatus.SUCCEEDED, message=report.message
        )

    def run_wave(self, wave: PlannedWave) -> list[ClusterOutcome]:
        """Start clusters in plan order, at most max_parallel at once and pace_seconds apart,
        and start none after the failure budget is exceeded (running ones finish).

        The wave's clusters are locked together (:class:`~tasks.rollout.ClusterLock`, taken by
        :meth:`reserve`) and released when the last one has finished. A lock whose lease could
        not be renewed starts no more clusters and stops the rollout.
        """
        lock = self.locks_ahead.pop(wave.name, None) or ClusterLock(
            wave.clusters, options=self.options
        )
        queue = list(wave.clusters)
        running: dict[concurrent.futures.Future[Any], tuple[str, PrefectFuture[ClusterReport]]] = {}
        outcomes: list[ClusterOutcome] = []
        last_start: float | None = None
        try:
            try:
                lock.wait()
            except Exception as exc:  # held elsewhere for too long, or Prefect unreachable
                raise _Stop(f"wave {wave.name!r}: could not lock its clusters: {exc}") from exc
            while queue or running:
                while (
                    queue
                    and len(running) < wave.spec.max_parallel
                    and not should_stop(outcomes, wave)
                    and lock.lost is None
                ):
                    if wave.spec.pace_seconds and last_start is not None:
                        gap = wave.spec.pace_seconds - (time.monotonic() - last_start)
                        if gap > 0 and running:
                            break  # wait for the pace below, collecting what finishes
                        if gap > 0:
                            time.sleep(gap)
                    cid = queue.pop(0)
                    future = self.cluster_task.submit(
                        quote(self.work(wave, cid)), quote(self.steps)
                    )
                    running[future.wrapped_future] = (cid, future)
                    last_start = time.monotonic()
                if not running:
                    break
                timeout = None
                if wave.spec.pace_seconds and queue and last_start is not None:
                    timeout = max(0.0, wave.spec.pace_seconds - (time.monotonic() - last_start))
                done, _ = concurrent.futures.wait(
                    list(running), timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for wrapped in done:
                    cid, future = running.pop(wrapped)
                    outcomes.append(self.outcome(wave, cid, future))
                    self.done += 1
                    self.progress()
        finally:
            lock.release()
        if lock.lost is not None:
            raise _Stop(lock.lost)
        return outcomes

    def reserve(self, waves: Sequence[PlannedWave]) -> None:
        """Start taking the locks of ``waves`` (the wave about to run and those after it, up to
        the next one that needs an approval), one lock per wave, in wave order.

        A wave's clusters are thus reserved from the start of the stretch of waves it belongs
        to, not just from its own start: taking a lock is a write on the Prefect server, which
        answers slowly while a wave's task runs keep it busy (seconds per wave on the test
        server), and taken in advance it costs the run nothing. A lock is never held across an
        approval: people may take hours to decide, and meanwhile other rollouts and secret
        rotations may use those clusters. Each wave still releases its clusters when it ends.
        """
        previous: ClusterLock | None = None
        for index, wave in enumerate(waves):
            if index > 0 and wave.spec.approval.required:
                return
            if wave.name in self.locks_ahead:
                previous = self.locks_ahead[wave.name]
                continue
            previous = ClusterLock(wave.clusters, options=self.options, after=previous)
            self.locks_ahead[wave.name] = previous

    def bake_and_check(
        self, wave: PlannedWave, outcomes: list[ClusterOutcome]
    ) -> list[ClusterOutcome]:
        """Bake, then read the health of every succeeded cluster of the wave again, live."""
        self.note(f"wave {wave.name} baking for {wave.spec.bake_seconds:g}s")
        time.sleep(wave.spec.bake_seconds)
        checks = [
            (
                o,
                check_health_task.submit(
                    self.records[o.cluster_id], quote(self.objects[o.cluster_id]), quote(self.steps)
                ),
            )
            for o in outcomes
            if o.status is OutcomeStatus.SUCCEEDED
        ]
        regressed: dict[str, str] = {}
        for outcome, future in checks:
            try:
                readiness = _result(future)
                if readiness.status is not ReadinessStatus.READY:
                    regressed[outcome.cluster_id] = readiness.message
            except Exception as exc:
                regressed[outcome.cluster_id] = str(exc)
        result = []
        for outcome in outcomes:
            if outcome.cluster_id in regressed:
                message = f"regressed during bake: {regressed[outcome.cluster_id]}"
                self.history.record_cluster_result(
                    self.rollout_id,
                    outcome.cluster_id,
                    wave=wave.name,
                    outcome=HistoryOutcome.FAILED,
                    error=message,
                )
                self.note(f"{outcome.cluster_id} {message}")
                outcome = ClusterOutcome(
                    cluster_id=outcome.cluster_id, status=OutcomeStatus.FAILED, message=message
                )
            result.append(outcome)
        return result

    def publish_wave(self, wave: PlannedWave, outcomes: Sequence[ClusterOutcome]) -> None:
        by_id = {o.cluster_id: o for o in outcomes}
        rows = [
            {
                "cluster": cid,
                "result": by_id[cid].status.value if cid in by_id else "not run",
                "message": by_id[cid].message[:300] if cid in by_id else "",
            }
            for cid in wave.clusters
        ]
        create_table_artifact(
            rows, key=f"rollout-wave-{wave.name}", description=f"Results of wave {wave.name}"
        )

    # --- approvals ---------------------------------------------------------------------------

    def approve(self, wave: PlannedWave) -> None:
        """Pause until enough distinct people approved the wave; raise :class:`_Stop` on a
        rejection or a timeout. Decisions given in an earlier run of this rollout count."""
        spec = wave.spec.approval
        state = (self.prior.approvals.get(wave.name) if self.prior else None) or ApprovalState(
            wave=wave.name
        )
        if state.granted(spec.approvers):
            self.note(f"wave {wave.name} was approved earlier by {', '.join(state.approvers)}")
            return
        if state.rejection is not None:
            raise _Stop(f"wave {wave.name!r} was rejected by {state.rejection.approver}")
        self.history.set_rollout_state(self.rollout_id, RolloutStatus.WAITING_APPROVAL)
        needed = spec.approvers - len(state.approvers)
        link = f" <{self.ui_url}|Approve in the Prefect UI>" if self.ui_url else ""
        self.update_parent("waiting for approval", f"wave {wave.name} needs {needed} approval(s)")
        self.note(
            f"wave {wave.name} waits for {needed} approval(s) within "
            f"{spec.timeout_seconds:g}s:{link} or `fleetops approve {self.rollout_id} "
            "--approver NAME [--reject] [--comment ...]`",
            slack=True,
        )
        deadline = time.monotonic() + spec.timeout_seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Stop(
                    f"approval of wave {wave.name!r} timed out after {spec.timeout_seconds:g}s"
                )
            try:
                answer = pause_flow_run(
                    wait_for_input=ApprovalDecision,
                    timeout=max(1, math.ceil(remaining)),
                    poll_interval=self.options.approval_poll_seconds,  # type: ignore[arg-type]
                )
            except FlowPauseTimeout:
                raise _Stop(
                    f"approval of wave {wave.name!r} timed out after {spec.timeout_seconds:g}s"
                ) from None
            decision = ApprovalDecision.model_validate(answer.model_dump())
            result = record_approval(state, decision, spec.approvers, at=_utcnow())
            state = result.state
            self.history.record_approval(self.rollout_id, wave.name, state.decisions[-1])
            comment = f" ({decision.comment})" if decision.comment else ""
            self.note(
                f"{decision.decision.value} by {decision.approver}{comment}: {result.message}",
                slack=True,
            )
            if result.rejected:
                raise _Stop(result.message)
            if result.may_start:
                break
        self.history.set_rollout_state(self.rollout_id, RolloutStatus.RUNNING)

    # --- failure policy ----------------------------------------------------------------------

    def handle_failure(self, reason: str) -> str:
        """Apply on_failure; returns the rollout's end state."""
        if self.p.on_failure is FailurePolicy.HALT:
            self.note(f"halted: {reason}; every cluster is left as it is", slack=True)
            self.history.set_rollout_state(self.rollout_id, RolloutStatus.HALTED)
            return RolloutStatus.HALTED.value
        state = self.history.rollout_state(self.rollout_id)
        touched = state.touched if state else ()
        self.note(f"rolling back {len(touched)} cluster(s), newest first: {reason}", slack=True)
        self.update_parent("rolling back", reason)
        failed: list[str] = []
        for result in touched:
            record = self.records.get(result.cluster_id)
            if record is None or result.rollback_point is None:
                continue
            deadline = 600.0
            if self.plan is not None and self.plan.wave_of(result.cluster_id):
                deadline = self.plan.wave(result.wave).spec.progress_deadline_seconds
            try:
                restored = restore_cluster_task.with_options(
                    **retry_options(
                        retries=self.options.retries, base_delay=self.options.retry_delay_seconds
                    )
                )(record, quote(result.rollback_point), quote(self.steps), deadline)
                ok, message = restored.ok, restored.message
            except Exception as exc:
                ok, message = False, str(exc)
            self.history.record_cluster_result(
                self.rollout_id,
                result.cluster_id,
                wave=result.wave,
                outcome=HistoryOutcome.ROLLED_BACK if ok else HistoryOutcome.ROLLBACK_FAILED,
                error=result.error if ok else f"rollback failed: {message}; {result.error or ''}",
            )
            self.note(
                f"{result.cluster_id} {'rolled back' if ok else 'NOT rolled back'}: {message}"
            )
            if not ok:
                failed.append(result.cluster_id)
        if self.p.version is not None:
            self.history.block_version(
                self.p.app, self.p.version, reason=reason, rollout_id=self.rollout_id
            )
            self.note(
                f"version {self.p.version} of {self.p.app} is now blocked (to allow it again: "
                f"{clear_block_command(self.p.app, self.p.version)})",
                slack=True,
            )
        end = RolloutStatus.FAILED if failed else RolloutStatus.ROLLED_BACK
        if failed:
            self.note(f"rollback failed on {', '.join(failed)}: check them by hand", slack=True)
        else:
            self.note(f"rolled back {len(touched)} cluster(s) and verified them", slack=True)
        self.history.set_rollout_state(self.rollout_id, end)
        return end.value

    # --- the run -----------------------------------------------------------------------------

    def dry_run(self, plan: WavePlan) -> RolloutReport:
        futures = [
            (
                cid,
                dry_run_cluster_task.submit(
                    self.records[cid], quote(self.objects[cid]), quote(self.steps)
                ),
            )
            for cid in plan.cluster_ids
        ]
        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        for cid, future in futures:
            try:
                result: ApplyResult = _result(future)
            except Exception as exc:
                problems.append(f"{cid}: {exc}")
                rows.append({"cluster": cid, "wave": plan.wave_of(cid), "error": str(exc)[:300]})
                continue
            changed = [
                f"{o.ref} ({', '.join(o.changed_paths[:5])})"
                for o in result.objects
                if o.action is Action.CHANGED
            ]
            rows.append(
                {
                    "cluster": cid,
                    "wave": plan.wave_of(cid),
                    "created": result.count(Action.CREATED),
                    "changed": result.count(Action.CHANGED),
                    "unchanged": result.count(Action.UNCHANGED),
                    "changes": "; ".join(changed)[:500],
                }
            )
            self.done += 1
        create_table_artifact(
            rows, key=DRY_RUN_ARTIFACT, description="What the rollout would change, per cluster"
        )
        status = "dry-run failed" if problems else "dry-run"
        self.update_parent(status, "; ".join(problems[:5]))
        self.note(f"dry run over {len(rows)} cluster(s): {len(problems)} problem(s)")
        self.write_audit()
        if problems:
            raise RolloutFailed("dry run failed on " + "; ".join(problems))
        return RolloutReport(
            rollout_id=self.rollout_id,
            app=self.p.app,
            version=self.version_label,
            status="dry-run",
            message=f"dry run over {len(rows)} cluster(s): nothing changed",
        )

    def run(self, plan: WavePlan) -> RolloutReport:
        self.reporter = _ProgressReporter(
            create_progress_artifact(
                0.0, key=PROGRESS_ARTIFACT, description=f"Clusters done of {len(plan.cluster_ids)}"
            ),
            self.logger,
        )
        try:
            return self._run_waves(plan)
        finally:
            self.reporter.close()

    def _run_waves(self, plan: WavePlan) -> RolloutReport:
        passed = set(self.prior.waves_passed) if self.prior else set()
        total = len(plan.waves)
        try:
            try:
                for index, wave in enumerate(plan.waves):
                    if wave.name in passed:
                        self.done += wave.size
                        self.progress()
                        self.note(f"wave {wave.name} passed in an earlier run: not run again")
                        continue
                    if not wave.clusters:
                        self.note(f"wave {wave.name} has no cluster")
                        self.history.record_wave_passed(self.rollout_id, wave.name, summary="empty")
                        continue
                    if wave.spec.approval.required:
                        self.approve(wave)
                    self.reserve(
                        [w for w in plan.waves[index:] if w.name not in passed and w.clusters]
                    )
                    self.update_parent(f"wave {wave.index}/{total} {wave.name}")
                    self.note(
                        f"wave {wave.index}/{total} {wave.name} starts: {wave.size} cluster(s), "
                        f"{wave.spec.max_parallel} at a time, max failures {wave.max_failures}",
                        slack=True,
                    )
                    outcomes = self.run_wave(wave)
                    verdict = evaluate_wave(outcomes, wave)
                    if verdict.passed and wave.spec.bake_seconds > 0:
                        outcomes = self.bake_and_check(wave, outcomes)
                        verdict = evaluate_wave(outcomes, wave)
                    self.verdicts.append(verdict)
                    self.publish_wave(wave, outcomes)
                    self.note(verdict.reason, slack=True)
                    if not verdict.passed:
                        raise _Stop(verdict.reason)
                    self.history.record_wave_passed(
                        self.rollout_id, wave.name, summary=verdict.reason
                    )
            finally:
                for lock in self.locks_ahead.values():  # taken for a wave that will not run
                    lock.release()
                self.locks_ahead.clear()
        except _Stop as stop:
            return self.stopped(str(stop))
        except Exception as exc:
            # anything unexpected after clusters were touched still gets the failure policy
            self.stopped(f"{type(exc).__name__}: {exc}", raise_=False)
            raise
        return self.succeeded()

    def stopped(self, reason: str, *, raise_: bool = True) -> RolloutReport:
        end = self.handle_failure(reason)
        self.update_parent(end, reason)
        self.write_audit()
        if raise_:
            raise RolloutFailed(f"rollout {self.rollout_id} {end}: {reason}")
        return RolloutReport(
            rollout_id=self.rollout_id, app=self.p.app, version=self.version_label, status=end
        )

    def succeeded(self) -> RolloutReport:
        state = self.history.rollout_state(self.rollout_id)
        good = sorted(state.clusters_done) if state else []
        by_version: dict[str, list[str]] = {}
        for cid in good:
            by_version.setdefault(self.versions.get(cid, self.version_label), []).append(cid)
        for version, ids in by_version.items():
            self.history.set_last_known_good(
                self.p.app, ids, version=version, rollout_id=self.rollout_id
            )
        self.history.set_rollout_state(self.rollout_id, RolloutStatus.SUCCEEDED)
        message = (
            f"{len(self.applied)} applied, {len(self.verified)} verified, "
            f"{len(self.skipped)} left out"
        )
        self.update_parent("succeeded", message)
        self.note(f"rollout succeeded: {message}", slack=True)
        self.write_audit()
        return RolloutReport(
            rollout_id=self.rollout_id,
            app=self.p.app,
            version=self.version_label,
            status="succeeded",
            waves=tuple(self.verdicts),
            applied=tuple(self.applied),
            verified=tuple(self.verified),
            skipped=tuple(self.skipped),
            message=message,
        )


def _tag_run(rollout_id: str, app: str) -> None:
    """Name and tag the flow run after the rollout, so people find it in the UI."""
    run_id = flow_run.id
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(
            UUID(str(run_id)),
            name=f"rollout-{rollout_id}",
            tags=sorted({*flow_run.tags, "rollout", f"rollout:{rollout_id}", f"app:{app}"}),
        )


@flow(
    name="rollout",
    flow_run_name=_run_name,
    task_runner=RolloutTaskRunner(max_workers=DEFAULT_MAX_WORKERS),
    validate_parameters=True,
)
def rollout(parameters: RolloutParameters) -> RolloutReport:
    """Roll an application out to the fleet in staged waves, with health gates, approvals,
    Slack and automatic rollback.

    The plan comes from the inventory's registered clusters matching the target selector; it is
    shown as the "rollout-plan" artifact and the first Slack message. A target that is in no wave,
    an invalid manifest or a blocked version fails the run before any cluster is touched.

    Each wave changes its clusters (at most max_parallel at a time): the live state of every
    object is recorded first (the rollback point), then a server-side apply, then the run waits
    until every workload runs the new revision within the progress deadline. When the wave is
    done, failures must be within max_failures; after the bake time the health of the whole wave
    is read again from the clusters. A wave that needs approval pauses this run: approve it in
    the form shown here (decision, your name, a comment) or with
    `fleetops approve ROLLOUT_ID --approver NAME`.

    On a failure, a rejection or an approval timeout, on_failure=rollback restores every
    changed cluster, newest first, and blocks the version; on_failure=halt leaves everything as
    it is. Run again with the same rollout id to resume: clusters already at the target are
    verified, not applied again; passed waves and given approvals are not asked again.
    """
    logger = get_run_logger()
    settings = load_settings()
    options = RolloutSettings()
    run_id = str(flow_run.id) if flow_run.id else None
    rollout_id = parameters.rollout_id or new_rollout_id(
        parameters.app, parameters.version or LAST_KNOWN_GOOD, run_id
    )
    try:
        _tag_run(rollout_id, parameters.app)
    except Exception as exc:  # naming the run is a convenience
        logger.warning("could not tag the flow run: %s", exc)
    try:
        slack = SlackClient.from_settings(settings.slack)
    except Exception as exc:  # a broken Slack setting must not stop a rollout
        logger.warning("Slack is not usable (%s); no notifications", type(exc).__name__)
        slack = None
    ui_url = run_url(run_id, flow_run.ui_url)
    notifier = Notifier(slack, run_url=ui_url)
    inventory = Inventory(settings.inventory.url)
    try:
        inventory.migrate()
        history = RolloutHistory(inventory)
        run = _Run(
            parameters,
            rollout_id=rollout_id,
            history=history,
            steps=ClusterSteps(
                credentials=ClusterCredentials.from_settings(settings),
                history=history,
                options=options,
                timeout_seconds=settings.kube.request_timeout_seconds,
            ),
            notifier=notifier,
            ui_url=ui_url,
        )
        settle_heap()
        records = read_inventory_task()
        try:
            plan = run.make_plan(records)
        except FleetopsError as exc:
            notifier.start(run.headline("not started", f"planning failed: {exc}"))
            raise
        if not parameters.dry_run:
            history.record_rollout(
                rollout_id,
                app=parameters.app,
                version=run.version_label,
                parameters=parameters.model_dump(mode="json"),
                flow_run_id=run_id,
            )
        run.publish_plan(plan)
        if parameters.dry_run:
            return run.dry_run(plan)
        return run.run(plan)
    finally:
        inventory.close()
