"""Discovery wall time at fleet scale: all sources at once vs. the slowest source alone.

Starts ``python -m sandbox up --clusters N --no-vault --no-slack`` in its own process (so the
servers do not share the benchmark's interpreter lock), adds ``--latency`` seconds to every
provider API answer (moto's EKS/STS, GKE, AKS) through the sandbox's control endpoint, then
times, with the same code the flow's tasks call (:func:`fleetops.discovery.discover_source`):

1. each source alone, ``--repeat`` times (best kept): its own chain of API calls, with its own
   bounded concurrency (EKS assume roles, then list pages and describe_cluster as each
   listing is in, AKS list pages (the CA comes with tokens, at probe time), one GKE list per
   project, static files);
2. every source at once, as the flow runs them (one worker per source, like its bounded
   ThreadPoolTaskRunner), ``--repeat`` times (best kept).

Before both, it settles the process's heap as the flow does before listing
(:func:`fleetops.discovery.prepare_process`; ``--no-settle`` leaves the garbage collector as it
is). The goal (issue 4) is that 2. takes at most 1.3x the slowest source of 1.: running the
sources concurrently costs (almost) nothing over the slowest one. ``--flow`` also times one whole
``discover-clusters`` run under a temporary Prefect server (probes of every new cluster included).

    .venv/bin/python bench/discovery.py --clusters 1000 --latency 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _sandbox import process_cpu, start_sandbox  # noqa: E402 (bench/ is the script's directory)


def _patch(url: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per API answer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flow", action="store_true", help="also time one whole flow run")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="leave the garbage collector as it is (the flow settles the heap before listing)",
    )
    parser.add_argument(
        "--sources", default="", help="comma-separated source kinds (default: every one)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fleetops-bench-") as tmp:
        directory = Path(tmp) / "sandbox"
        began = time.perf_counter()
        sandbox = start_sandbox(
            args.clusters, directory, "--no-vault", "--no-slack", "--rollout-seconds", "0"
        )
        print(f"sandbox: {args.clusters} clusters up in {time.perf_counter() - began:.1f} s")
        try:
            from sandbox.fleet import read_env_file

            env = read_env_file(directory / "sandbox.env")
            os.environ.update(env)
            os.environ["FLEETOPS_INVENTORY_URL"] = f"sqlite:///{tmp}/inventory.db"
            control = env["FLEETOPS_SANDBOX_CONTROL_URL"]
            for service in ("aws", "gke", "aks"):
                _patch(f"{control}/services/{service}/faults", {"latency_seconds": args.latency})

            from fleetops.discovery import (
                discover_source,
                load_settings,
                plan_sources,
                prepare_process,
            )

            settings = load_settings()
            from fleetops.domain.sources import parse_source_kinds

            plans = plan_sources(
                settings, parse_source_kinds(filter(None, args.sources.split(",")))
            )
            if not args.no_settle:
                prepare_process(plans)  # as the flow does before listing
            alone: dict[str, float] = {}
            counts: dict[str, int] = {}
            cpu_used: dict[str, tuple[float, float]] = {}  # (this process, the sandbox's)
            for plan in plans:
                best = float("inf")
                for _ in range(args.repeat):
                    started, cpu = time.perf_counter(), time.process_time()
                    served = process_cpu(sandbox.pid)
                    result = discover_source(plan, settings)
                    if time.perf_counter() - started < best:
                        best = time.perf_counter() - started
                        cpu_used[plan.name] = (
                            time.process_time() - cpu,
                            process_cpu(sandbox.pid) - served,
                        )
                alone[plan.name] = best
                counts[plan.name] = len(result.clusters)

            together = float("inf")
            together_cpu = (0.0, 0.0)
            for _ in range(args.repeat):
                started, cpu = time.perf_counter(), time.process_time()
                served = process_cpu(sandbox.pid)
                with ThreadPoolExecutor(max_workers=len(plans)) as pool:
                    results = list(pool.map(lambda p: discover_source(p, settings), plans))
                if time.perf_counter() - started < together:
                    together = time.perf_counter() - started
                    together_cpu = (
                        time.process_time() - cpu,
                        process_cpu(sandbox.pid) - served,
                    )
            assert sum(len(r.clusters) for r in results) == sum(counts.values())

            slowest = max(alone, key=lambda name: alone[name])
            print(f"latency per provider API answer: {args.latency * 1000:.0f} ms")
            for name, seconds in alone.items():
                client, server = cpu_used[name]
                print(
                    f"  {name:<7} alone: {seconds:6.2f} s  ({counts[name]} clusters, "
                    f"CPU: {client:.2f} s this process, {server:.2f} s the sandbox)"
                )
            ratio = together / alone[slowest]
            print(
                f"  all sources at once: {together:6.2f} s = {ratio:.2f}x the slowest "
                f"({slowest}, {alone[slowest]:.2f} s); goal <= 1.3x: "
                f"{'met' if ratio <= 1.3 else 'NOT met'}"
            )
            print(
                f"  (CPU at once: {together_cpu[0]:.2f} s this process, {together_cpu[1]:.2f} s "
                f"the sandbox; {os.cpu_count()} CPUs)"
            )
            if args.flow:
                _time_flow()
        finally:
            sandbox.terminate()
            sandbox.wait(60)
    return 0


def _time_flow() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["FLEETOPS_SLACK_TOKEN"] = ""
    from prefect.testing.utilities import prefect_test_harness

    from flows.discover import discover_clusters

    with prefect_test_harness(server_startup_timeout=60):
        started = time.perf_counter()
        state = discover_clusters(return_state=True)
        first = time.perf_counter() - started
        started = time.perf_counter()
        discover_clusters(return_state=True)
        second = time.perf_counter() - started
    print(
        f"  whole flow (Prefect, probes of every new cluster): first run {first:.1f} s "
        f"({state.name}), unchanged re-run {second:.1f} s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
