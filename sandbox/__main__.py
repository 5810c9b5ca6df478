"""``python -m sandbox up --clusters N --dir DIR``: run a sandbox fleet until interrupted.

Brings up N Kubernetes API servers and, unless switched off, every service around them: AWS
(moto: EKS, Route 53), GKE, AKS, Vault (the real OpenBao server, a child process) and Slack,
with the clusters spread over EKS, GKE, AKS and the static sources (see
:mod:`sandbox.placement`). Prints ONE line when everything listens and the files are written,
serves until SIGINT or SIGTERM, then stops everything (bao included) and exits 0. Source
``DIR/sandbox.env`` (``set -a; . DIR/sandbox.env; set +a``) to point fleetops at the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import signal
import sys
from pathlib import Path

from sandbox.fleet import SERVICES, Fleet

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def _prefix(text: str) -> str:
    """A cluster name prefix: lower-case letters, digits and '-', starting with a letter."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,39}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use lower-case letters, digits and '-', starting with a letter "
            "(at most 40 characters)"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox", description="Local sandbox fleet of Kubernetes API servers."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="start a fleet and serve until interrupted")
    up.add_argument("--clusters", type=_positive_int, default=3, metavar="N", help="default 3")
    up.add_argument(
        "--dir", type=Path, required=True, metavar="DIR",
        help="where kubeconfig, sandbox.env and fleet.json are written (created if missing)",
    )  # fmt: skip
    up.add_argument(
        "--rollout-seconds", type=_seconds, default=2.0, metavar="S",
        help="how long a Deployment rollout takes to become ready (default 2)",
    )  # fmt: skip
    up.add_argument(
        "--control-port", type=_port, default=0, metavar="P",
        help="port of the control endpoint on 127.0.0.1 (default: a free one)",
    )  # fmt: skip
    up.add_argument("--seed", type=int, default=None, help="seed for the fault error rate")
    up.add_argument(
        "--prefix", type=_prefix, default=None, metavar="NAME",
        help="with --no-services: cluster names are NAME-01, NAME-02, ... (default sbx), so "
        "fleets started side by side have different clusters",
    )  # fmt: skip
    for service, what in (
        ("aws", "AWS (moto: EKS, Route 53)"),
        ("gke", "the GKE API"),
        ("aks", "the AKS (ARM) API"),
        ("vault", "Vault (OpenBao)"),
        ("slack", "the Slack Web API"),
    ):
        up.add_argument(
            f"--no-{service}", dest="without", action="append_const", const=service,
            help=f"do not start {what}",
        )  # fmt: skip
    up.add_argument(
        "--no-services", dest="without", action="append_const", const="all",
        help="clusters only (every cluster a context of the static kubeconfig)",
    )  # fmt: skip
    up.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    return parser


def _check_directory(directory: Path) -> str | None:
    """Why ``directory`` cannot hold the fleet's files, or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {directory}: {exc.strerror or exc}"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable"
    return None


async def _serve(fleet: Fleet) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def ready(fleet: Fleet) -> None:
        settle_heap()
        print(ready_line(fleet), flush=True)

    await fleet.run_forever(stop, on_ready=ready)


#: allocations of container objects between two young collections once the fleet is up
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Take the fleet's start-up objects out of the cyclic garbage collector's walks.

    A fleet's stores, certificates and servers are hundreds of thousands of objects that live as
    long as the process. Every full collection walked all of them with the event loop stopped:
    a quarter of the sandbox's CPU during a 200-cluster rollout. :func:`gc.freeze` leaves them
    to reference counting alone (a cycle among them is never collected: what the fleet built
    to start lives until the process ends), and young collections run every 10,000 allocations
    instead of 700. Only this
    process's entry point calls it: a fleet started inside another process (a test) leaves that
    process's collector alone.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def ready_line(fleet: Fleet) -> str:
    """``sandbox ready: 12 clusters (eks 3, gke 3, aks 2, static 4), services aws,..., ...``"""
    counts: dict[str, int] = {}
    for name in fleet.names:
        provider = fleet.placement(name).provider
        counts[provider] = counts.get(provider, 0) + 1
    spread = ", ".join(f"{p} {counts[p]}" for p in ("eks", "gke", "aks", "static") if p in counts)
    services = ",".join(fleet.services) or "none"
    return (
        f"sandbox ready: {len(fleet.names)} clusters ({spread}), services {services}, "
        f"kubeconfig {fleet.kubeconfig_path}, settings {fleet.env_path}, "
        f"control {fleet.control_url}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    without = set(args.without or ())
    if args.prefix is not None and "all" not in without:
        parser.error("--prefix: only with --no-services (cloud clusters are named by placement)")
    problem = _check_directory(args.dir)
    if problem is not None:
        parser.error(f"--dir: {problem}")
    services = () if "all" in without else tuple(s for s in SERVICES if s not in without)
    fleet = Fleet(
        args.clusters,
        directory=args.dir,
        rollout_seconds=args.rollout_seconds,
        control_port=args.control_port,
        seed=args.seed,
        prefix=args.prefix or "sbx",
        services=services,
    )
    from sandbox.vault import VaultServerError

    try:
        asyncio.run(_serve(fleet))
    except (OSError, VaultServerError) as exc:
        print(f"sandbox: cannot start: {exc}", file=sys.stderr)
        return 1
    print("sandbox stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
