"""The ``fleetops`` command line.

The top layer of the package: it may start flows; nothing below it imports the CLI. Subcommands
are added by the flows that need them (discover, inventory, rollout, approve, ...).
"""

from __future__ import annotations

import json
import logging
from importlib.metadata import version as _dist_version
from typing import Annotated, Any

import typer
from pydantic import SecretStr, ValidationError

from fleetops.redaction import install_redaction
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


def main() -> None:
    """Entry point of the ``fleetops`` console script."""
    app()
