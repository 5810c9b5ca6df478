"""Start a sandbox fleet of N clusters and report the time to ready and the peak memory.

    .venv/bin/python bench/sandbox_startup.py --clusters 200

"Ready" means every cluster listens on its port with its own CA, the control endpoint answers
and kubeconfig/sandbox.env/fleet.json are written. The script then proves it: a child process
(so its TLS client state does not count against the fleet's memory) asks every cluster for
``/version`` over HTTPS, trusting only that cluster's CA and sending its token.

Figures: wall and CPU seconds to ready (CPU is the steadier one on a shared machine), the
check's wall time, stop time, and the fleet process's peak RSS (``ru_maxrss``: interpreter,
imports and the fleet, measured at ready and again at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.fleet import Fleet

CHECKER = r"""
import json, ssl, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor

def check(entry):
    name, server, ca, token = entry
    context = ssl.create_default_context(cadata=ca)
    request = urllib.request.Request(server + "/version",
                                     headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        if response.status != 200:
            raise SystemExit(f"{name}: /version answered {response.status}")

with ThreadPoolExecutor(max_workers=8) as pool:
    list(pool.map(check, json.load(sys.stdin)))
"""


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


async def _check_all(fleet: Fleet) -> float:
    """Every cluster answers /version to a client in another process; returns seconds."""
    entries = [
        [name, fleet.server(name), fleet.ca_pem(name).decode(), fleet.token(name)]
        for name in fleet.names
    ]
    started = time.perf_counter()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHECKER, stdin=asyncio.subprocess.PIPE
    )
    await child.communicate(json.dumps(entries).encode())
    if child.returncode != 0:
        raise RuntimeError(f"the check failed (exit code {child.returncode})")
    return time.perf_counter() - started


async def _bench(clusters: int, directory: Path) -> dict[str, float | int | str]:
    fleet = Fleet(clusters, directory=directory)
    started, cpu_started = time.perf_counter(), time.process_time()
    await fleet.start()
    ready, ready_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak_at_ready = _peak_rss_mib()
    try:
        check = await _check_all(fleet)
    finally:
        stop_started = time.perf_counter()
        await fleet.stop()
        stopped = time.perf_counter() - stop_started
    return {
        "clusters": clusters,
        "ready_seconds": round(ready, 3),
        "ready_cpu_seconds": round(ready_cpu, 3),
        "check_seconds": round(check, 3),
        "stop_seconds": round(stopped, 3),
        "peak_rss_at_ready_mib": peak_at_ready,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fleetops-bench-") as tmp:
        result = asyncio.run(_bench(args.clusters, Path(tmp)))
    result["peak_rss_mib"] = _peak_rss_mib()
    result["python"] = platform.python_version()
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['clusters']} clusters: ready in {result['ready_seconds']} s "
            f"({result['ready_cpu_seconds']} s CPU); /version from every cluster in "
            f"{result['check_seconds']} s; stopped in {result['stop_seconds']} s; "
            f"peak RSS {result['peak_rss_at_ready_mib']} MiB at ready, "
            f"{result['peak_rss_mib']} MiB overall"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
