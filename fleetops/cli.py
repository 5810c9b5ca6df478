"""The ``fleetops`` command line.

The top layer of the package: it may start flows; nothing below it imports the CLI. Subcommands
are added by the flows that need them (discover, inventory, rollout, approve, ...).
"""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from importlib.metadata import version as _dist_version
from typing import Annotated, Any, NoReturn

import typer
import yaml
from pydantic import SecretStr, ValidationError

from fleetops.cli_rollout import blocklist_app, rollout_app
from fleetops.domain.cluster import ClusterState
from fleetops.domain.selectors import Selector
from fleetops.errors import ClusterNotFound, ConfigError, FleetopsError, InventoryError
from fleetops.redaction import install_redaction, redact
from fleetops.settings import Settings

app = typer.Typer(
    name="fleetops",
    help=(
        "Run a fleet of Kubernetes clusters on EKS, GKE, AKS and static kubeconfigs: discover, "
        "register, roll out, rotate secrets and fail over, as Prefect flows."
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO)
    install_redaction()


@app.command()
def version() -> None:
    """Print the fleetops version."""
    typer.echo(_dist_version("fleetops"))


def _masked(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    return value


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings as JSON, secrets masked.

    Useful to check what a sourced sandbox.env or a deployment's environment really sets.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        typer.echo(f"invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(_masked(settings.model_dump(mode="python")), indent=2, default=str))


# --- helpers --------------------------------------------------------------------------------


def _fail(message: str, *, code: int) -> NoReturn:
    """Print a one-line (redacted) error on stderr and exit with ``code`` (2: bad input)."""
    typer.echo(f"fleetops: {redact(message)}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    from fleetops.discovery import load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        _fail(str(exc), code=2)


def _selector(text: str | None) -> Selector | None:
    if text is None:
        return None
    try:
        return Selector.parse(text)
    except ConfigError as exc:
        _fail(str(exc), code=2)


# --- discover ---------------------------------------------------------------------------------


@app.command()
def discover(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report the diff without writing anything.")
    ] = False,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            "-s",
            help="Source to run (eks, gke, aks, static); repeat for several. Default: every "
            "configured source.",
        ),
    ] = None,
) -> None:
    """Run the discover-clusters flow once, with the settings in the environment.

    Bad input (an unknown source kind, a malformed account, region, project or subscription, a
    broken fleet file) is reported before anything runs, with exit code 2. A run whose sources
    failed exits 1 after registering what the healthy sources returned.
    """
    from fleetops.discovery import load_overrides, plan_sources
    from fleetops.domain.sources import parse_source_kinds

    try:
        kinds = parse_source_kinds(source or [])
    except ConfigError as exc:
        _fail(str(exc), code=2)
    settings = _settings()
    try:
        plan_sources(settings, kinds)
        load_overrides(settings)
    except ConfigError as exc:
        _fail(str(exc), code=2)

    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.discover import DiscoverParameters, discover_clusters

    runner: Any = ThreadPoolTaskRunner(max_workers=settings.discovery.max_workers)
    state = discover_clusters.with_options(task_runner=runner)(
        parameters=DiscoverParameters(sources=kinds, dry_run=dry_run), return_state=True
    )
    if state.is_failed() or state.is_crashed():
        _fail(f"discover-clusters ended {state.name}: {state.message or ''}", code=1)
    report = state.result()
    diff = report.diff
    typer.echo(
        f"discover-clusters {'(dry run) ' if dry_run else ''}completed: "
        f"{len(diff.added)} added, {len(diff.changed)} changed, {len(diff.missing)} missing, "
        f"{len(diff.returned)} returned, {len(diff.unreachable)} unreachable; "
        f"{report.total} clusters in the inventory"
    )


# --- inventory ----------------------------------------------------------------------------------

inventory_app = typer.Typer(help="Read the inventory, retire clusters.", no_args_is_help=True)
app.add_typer(inventory_app, name="inventory")


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


def _open_inventory(settings: Settings) -> Any:
    from fleetops.inventory import Inventory

    try:
        inventory = Inventory(settings.inventory.url)
        inventory.migrate()
    except InventoryError as exc:
        _fail(str(exc), code=1)
    return inventory


@inventory_app.command("list")
def inventory_list(
    selector: Annotated[
        str | None,
        typer.Option(
            "--selector", "-l", help="Label selector, kubectl syntax (env=prod,tier in (a,b))."
        ),
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = Output.TABLE,
) -> None:
    """List clusters of the inventory, optionally those matching a label selector."""
    from fleetops.domain.report import inventory_rows

    parsed = _selector(selector)
    settings = _settings()
    with _open_inventory(settings) as inventory:
        records = inventory.list(parsed)
    if output is Output.JSON:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    rows = inventory_rows(records)
    columns = ["id", "state", "version", "labels", "last_probe"]
    widths = {c: max([len(c), *(len(row[c]) for row in rows)]) for c in columns}
    typer.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        typer.echo("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())


@inventory_app.command("retire")
def inventory_retire(
    cluster_id: Annotated[str, typer.Argument(help="Cluster id provider/account/location/name.")],
) -> None:
    """Retire a cluster: it stays in the inventory, and discovery and flows ignore it."""
    settings = _settings()
    with _open_inventory(settings) as inventory:
        try:
            record = inventory.retire(cluster_id)
        except ClusterNotFound as exc:
            _fail(str(exc), code=2)
    typer.echo(f"{record.id} is {record.state.value}")


# --- kubeconfig and token -------------------------------------------------------------------------

#: states whose clusters a kubeconfig includes (missing and retired ones are left out)
KUBECONFIG_STATES = (ClusterState.DISCOVERED, ClusterState.REGISTERED, ClusterState.UNREACHABLE)


@app.command()
def kubeconfig(
    selector: Annotated[
        str | None,
        typer.Option("--selector", "-l", help="Label selector of the clusters to include."),
    ] = None,
    command: Annotated[
        str, typer.Option("--command", help="The fleetops executable kubectl should run.")
    ] = "fleetops",
) -> None:
    """Print a kubeconfig with one context per selected cluster (named by its id).

    Each user is an exec credential plugin running ``fleetops token CLUSTER_ID``, so the file
    holds no secret and works wherever fleetops is installed with the same settings.
    """
    import base64

    from fleetops.clients.credentials import EXEC_API_VERSION

    parsed = _selector(selector)
    settings = _settings()
    with _open_inventory(settings) as inventory:
        records = inventory.list(parsed, states=KUBECONFIG_STATES)
    clusters: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    contexts: list[dict[str, Any]] = []
    for record in records:
        cluster: dict[str, Any] = {"server": record.endpoint}
        if record.ca_data:
            cluster["certificate-authority-data"] = base64.b64encode(
                record.ca_data.encode("ascii")
            ).decode("ascii")
        clusters.append({"name": record.id, "cluster": cluster})
        users.append(
            {
                "name": record.id,
                "user": {
                    "exec": {
                        "apiVersion": EXEC_API_VERSION,
                        "command": command,
                        "args": ["token", record.id],
                        "interactiveMode": "Never",
                        "provideClusterInfo": False,
                        "installHint": "fleetops token needs fleetops installed with its "
                        "FLEETOPS_* settings",
                    }
                },
            }
        )
        contexts.append({"name": record.id, "context": {"cluster": record.id, "user": record.id}})
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "current-context": records[0].id if records else "",
        "clusters": clusters,
        "users": users,
        "contexts": contexts,
    }
    typer.echo(yaml.safe_dump(document, sort_keys=False), nl=False)
    if not records:
        typer.echo("fleetops: no cluster matches; the kubeconfig is empty", err=True)


@app.command()
def token(
    cluster_id: Annotated[str, typer.Argument(help="Cluster id provider/account/location/name.")],
) -> None:
    """Print a client.authentication.k8s.io/v1 ExecCredential with a short-lived token.

    This is the credential plugin ``fleetops kubeconfig`` writes into every user entry. The
    output holds the token: it goes to stdout only, never to a log.
    """
    from fleetops.clients.credentials import ClusterCredentials, exec_credential

    settings = _settings()
    with _open_inventory(settings) as inventory:
        try:
            record = inventory.get(cluster_id)
        except ClusterNotFound as exc:
            _fail(str(exc), code=2)
    try:
        minted = ClusterCredentials.from_settings(settings).token_for(record)
    except FleetopsError as exc:
        _fail(f"cannot get a token for {cluster_id}: {exc}", code=1)
    sys.stdout.write(json.dumps(exec_credential(minted)) + "\n")


# rollout, approve, rollback (issue 5) live in their own module; added as top-level commands.
app.add_typer(rollout_app)
app.add_typer(blocklist_app, name="blocklist")


def main() -> None:
    """Entry point of the ``fleetops`` console script."""
    app()
