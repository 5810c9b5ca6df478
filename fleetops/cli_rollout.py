"""``fleetops rollout``, ``fleetops approve``, ``fleetops rollback`` and ``fleetops blocklist``:
the rollout flow from a terminal, with the settings in the environment (``FLEETOPS_*``,
``PREFECT_API_URL``).

``rollout`` runs the flow in this process. It waits at approvals exactly like a run started from
the Prefect UI (the flow run is paused until someone decides) and prints how to approve first.
``approve`` finds the paused flow run of a rollout through the rollout history and resumes it
with the decision (``resume_flow_run`` with ``run_input``), which is what the form in the UI
does. ``rollback`` rolls an app back to each cluster's last known good version, in waves.
``blocklist list`` shows the versions a rollback blocked; ``blocklist clear`` is how an operator
allows one again (who and when are kept with the entry).

Registered in :mod:`fleetops.cli` with ``app.add_typer(rollout_app)`` (top-level commands:
``fleetops rollout ...``) and ``app.add_typer(blocklist_app, name="blocklist")``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from uuid import UUID

import typer
import yaml
from pydantic import ValidationError

from fleetops.domain.gates import ApprovalDecision, Decision
from fleetops.domain.rollout import RolloutParameters, RolloutPlan
from fleetops.errors import ConfigError, FleetopsError, InventoryError
from fleetops.redaction import redact
from fleetops.settings import RolloutSettings, Settings

if TYPE_CHECKING:
    from fleetops.inventory.rollouts import BlockedVersion, RolloutHistory

rollout_app = typer.Typer(help="Roll applications out to the fleet.", no_args_is_help=True)
blocklist_app = typer.Typer(
    help="Versions a rollback blocked: list them, clear one.", no_args_is_help=True
)

DEFAULT_PLAN = Path("deployments/rollout-default.yaml")


class ApprovalError(FleetopsError):
    """The rollout cannot take a decision now (unknown, not paused, finished)."""


def _fail(message: str, *, code: int) -> NoReturn:
    typer.echo(f"fleetops: {redact(message)}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        _fail(f"invalid settings: {exc.error_count()} error(s): {exc}", code=2)


def load_plan(path: Path) -> RolloutPlan:
    """A wave plan file, validated (:class:`ConfigError` naming the file)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the plan: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    try:
        return RolloutPlan.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'plan'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise ConfigError(f"{path}: {problems}") from exc


def build_parameters(
    app: str,
    version: str | None,
    *,
    plan_file: Path | None,
    dry_run: bool = False,
    rollout_id: str | None = None,
    rollback_to_last_known_good: bool = False,
) -> RolloutParameters:
    """The flow's parameters from the command line and a plan file (the default plan if none)."""
    values: dict[str, Any] = {
        "app": app,
        "version": version,
        "dry_run": dry_run,
        "rollout_id": rollout_id,
        "rollback_to_last_known_good": rollback_to_last_known_good,
    }
    path = plan_file if plan_file is not None else (DEFAULT_PLAN if DEFAULT_PLAN.exists() else None)
    try:
        if path is None:
            return RolloutParameters.model_validate(values)
        return RolloutParameters.with_plan(load_plan(path), **values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'parameters'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise ConfigError(problems) from exc


@contextmanager
def _history(settings: Settings) -> Iterator[RolloutHistory]:
    """The rollout history of the inventory in the settings (migrated first), for the block."""
    from fleetops.inventory import Inventory
    from fleetops.inventory.rollouts import RolloutHistory

    with Inventory(settings.inventory.url) as inventory:
        inventory.migrate()
        yield RolloutHistory(inventory)


def paused_flow_run(rollout_id: str, *, settings: Settings) -> UUID:
    """The flow run of ``rollout_id``, which must be paused waiting for a decision."""
    from prefect.client.orchestration import get_client

    with _history(settings) as history:
        record = history.get_rollout(rollout_id)
    if record is None:
        raise ApprovalError(f"no rollout {rollout_id!r} in the history")
    if record.flow_run_id is None:
        raise ApprovalError(f"rollout {rollout_id!r} has no flow run on record")
    flow_run_id = UUID(record.flow_run_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    if run.state is None or not run.state.is_paused():
        state = run.state.name if run.state else "unknown"
        raise ApprovalError(
            f"rollout {rollout_id!r} is not waiting for approval (its flow run is {state})"
        )
    return flow_run_id


def approve_rollout(
    rollout_id: str, decision: ApprovalDecision, *, settings: Settings | None = None
) -> UUID:
    """Hand ``decision`` to the paused flow run of ``rollout_id``; returns the flow run id.

    The flow records it (audit artifact, history, Slack) and decides: one more approval may
    still be needed, a repeat approval by the same person does not count.
    """
    from prefect.flow_runs import resume_flow_run

    flow_run_id = paused_flow_run(rollout_id, settings=settings or Settings())
    resume_flow_run(flow_run_id, run_input=decision.model_dump(mode="json"))
    return flow_run_id


def _run(parameters: RolloutParameters, settings: Settings) -> None:
    from flows.rollout import RolloutTaskRunner, new_rollout_id, rollout

    rollout_id = parameters.rollout_id or new_rollout_id(
        parameters.app, parameters.version or "last-known-good"
    )
    parameters = parameters.model_copy(update={"rollout_id": rollout_id})
    approvals = [w.name for w in parameters.waves if w.approval.required]
    typer.echo(f"rollout {rollout_id}: {parameters.app} {parameters.version or 'last known good'}")
    if approvals and not parameters.dry_run:
        typer.echo(
            f"waves {', '.join(approvals)} wait for approval; approve with:\n"
            f"  fleetops approve {rollout_id} --approver NAME [--comment TEXT]\n"
            f"  (or --reject), or in the Prefect UI"
        )
    runner: Any = RolloutTaskRunner(max_workers=RolloutSettings().max_workers)
    state = rollout.with_options(task_runner=runner)(parameters=parameters, return_state=True)
    if not state.is_completed():
        _fail(f"rollout {rollout_id} ended {state.name}: {state.message or ''}", code=1)
    report = state.result()
    typer.echo(f"rollout {rollout_id} {report.status}: {report.message}")


@rollout_app.command("rollout")
def rollout_command(
    app: Annotated[str, typer.Argument(help="Application (its manifests are apps/APP/).")],
    version: Annotated[str, typer.Argument(help="Version to roll out (the image tag).")],
    plan: Annotated[
        Path | None,
        typer.Option("--plan", help="Wave plan file; default deployments/rollout-default.yaml."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Server-side dry run and a diff; nothing changes.")
    ] = False,
    rollout_id: Annotated[
        str | None, typer.Option("--rollout-id", help="Resume the rollout with this id.")
    ] = None,
) -> None:
    """Roll APP out to the fleet at VERSION in staged waves (the rollout flow, in this process)."""
    settings = _settings()
    try:
        parameters = build_parameters(
            app, version, plan_file=plan, dry_run=dry_run, rollout_id=rollout_id
        )
    except ConfigError as exc:
        _fail(str(exc), code=2)
    _run(parameters, settings)


@rollout_app.command("rollback")
def rollback_command(
    app: Annotated[str, typer.Argument(help="Application to roll back.")],
    plan: Annotated[
        Path | None,
        typer.Option("--plan", help="Wave plan file; default deployments/rollout-default.yaml."),
    ] = None,
) -> None:
    """Put every cluster back on the version of APP it last ran successfully, in waves."""
    settings = _settings()
    try:
        parameters = build_parameters(app, None, plan_file=plan, rollback_to_last_known_good=True)
    except ConfigError as exc:
        _fail(str(exc), code=2)
    _run(parameters, settings)


@rollout_app.command("approve")
def approve_command(
    rollout_id: Annotated[str, typer.Argument(help="The rollout waiting for approval.")],
    approver: Annotated[str, typer.Option("--approver", help="Your name (counted once).")],
    reject: Annotated[
        bool, typer.Option("--reject", help="Reject: the rollout fails (on_failure applies).")
    ] = False,
    comment: Annotated[str, typer.Option("--comment", help="Why, for the audit trail.")] = "",
) -> None:
    """Approve (or reject) the wave a rollout is waiting for."""
    try:
        decision = ApprovalDecision(
            decision=Decision.REJECT if reject else Decision.APPROVE,
            approver=approver,
            comment=comment,
        )
    except ValidationError as exc:
        _fail(f"invalid decision: {exc.errors(include_url=False)[0]['msg']}", code=2)
    try:
        flow_run_id = approve_rollout(rollout_id, decision, settings=_settings())
    except (ApprovalError, InventoryError) as exc:
        _fail(str(exc), code=1)
    typer.echo(f"{decision.decision.value} sent to rollout {rollout_id} (flow run {flow_run_id})")


# --- blocklist ------------------------------------------------------------------------------------


class ListOutput(StrEnum):
    TEXT = "text"
    JSON = "json"


def _describe_block(entry: BlockedVersion) -> str:
    """``2.0  blocked 2026-11-25T16:00:00+00:00 by rollout R: reason`` (and who cleared it)."""
    text = f"{entry.version}  blocked {entry.blocked_at.isoformat(timespec='seconds')}"
    if entry.rollout_id:
        text += f" by rollout {entry.rollout_id}"
    if entry.reason:
        text += f": {entry.reason}"
    if entry.cleared_at is not None:
        text += (
            f"  [cleared {entry.cleared_at.isoformat(timespec='seconds')} by {entry.cleared_by}]"
        )
    return text


def _blocklist(app: str, *, include_cleared: bool) -> list[BlockedVersion]:
    try:
        with _history(_settings()) as history:
            return history.blocked_versions(app, include_cleared=include_cleared)
    except InventoryError as exc:
        _fail(str(exc), code=1)


@blocklist_app.command("list")
def blocklist_list(
    app: Annotated[str, typer.Argument(help="Application.")],
    include_cleared: Annotated[
        bool, typer.Option("--all", help="Also versions that were cleared, with who and when.")
    ] = False,
    output: Annotated[
        ListOutput, typer.Option("--output", "-o", help="text or json.")
    ] = ListOutput.TEXT,
) -> None:
    """List the versions of APP a rollback blocked (rollouts of them are refused at planning)."""
    entries = _blocklist(app, include_cleared=include_cleared)
    if output is ListOutput.JSON:
        typer.echo(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return
    if not entries:
        typer.echo(f"no version of {app} is blocked")
        return
    for entry in entries:
        typer.echo(redact(_describe_block(entry)))


@blocklist_app.command("clear")
def blocklist_clear(
    app: Annotated[str, typer.Argument(help="Application.")],
    version: Annotated[str, typer.Argument(help="The blocked version to allow again.")],
    operator: Annotated[
        str, typer.Option("--operator", help="Your name, kept with the entry for the audit trail.")
    ],
) -> None:
    """Allow a blocked VERSION of APP to be rolled out again."""
    if not operator.strip():
        _fail("--operator: give your name (it is kept with the entry)", code=2)
    settings = _settings()
    try:
        with _history(settings) as history:
            known = {e.version: e for e in history.blocked_versions(app, include_cleared=True)}
            if version not in known:
                blocked = sorted(v for v, e in known.items() if e.active)
                _fail(
                    f"{app} {version} is not on the blocklist (blocked now: "
                    f"{', '.join(blocked) or 'none'})",
                    code=2,
                )
            already = not known[version].active
            entry = (
                known[version]
                if already
                else history.clear_block(app, version, cleared_by=operator)
            )
    except InventoryError as exc:
        _fail(str(exc), code=1)
    if already:
        typer.echo(redact(f"{app} {version} was already cleared: {_describe_block(entry)}"))
        return
    typer.echo(
        redact(f"{app} {version} cleared: rollouts may use it again ({_describe_block(entry)})")
    )
