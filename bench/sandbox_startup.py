"""Start a sandbox of N clusters and report the time to ready and the peak memory.

    .venv/bin/python bench/sandbox_startup.py --clusters 200            # everything on
    .venv/bin/python bench/sandbox_startup.py --clusters 1000 --no-services

"Ready" means what ``python -m sandbox up`` waits for: every cluster listens on its port with
its own CA, every service runs (moto with the EKS clusters and Route 53, the GKE and AKS APIs,
OpenBao started and seeded, Slack), the control endpoint answers and kubeconfig, sandbox.env,
fleet.json and the fleet file are written. The script then proves it: a child process (so its
TLS client state does not count against the fleet's memory) asks every cluster for
``/version`` over HTTPS, trusting only that cluster's CA and sending its token.

Figures: wall and CPU seconds to ready (CPU is the steadier one on a shared machine) and each
start-up phase, the check's wall time, stop time, the fleet process's peak RSS (``ru_maxrss``:
interpreter, imports, moto and the fleet, measured at ready and again at the end) and the peak
RSS of the bao process (Vault runs as a child process; ``VmHWM``).
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

from sandbox.fleet import SERVICES, Fleet

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


def _child_peak_rss_mib(pid: int | None) -> float | None:
    """Peak RSS (VmHWM) of a child process such as bao, while it runs."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def _bench(clusters: int, directory: Path, services: tuple[str, ...]) -> dict[str, object]:
    fleet = Fleet(clusters, directory=directory, services=services)
    started, cpu_started = time.perf_counter(), time.process_time()
    await fleet.start()
    ready, ready_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak_at_ready = _peak_rss_mib()
    bao_peak = _child_peak_rss_mib(fleet.vault.pid) if "vault" in services else None
    try:
        check = await _check_all(fleet)
    finally:
        stop_started = time.perf_counter()
        await fleet.stop()
        stopped = time.perf_counter() - stop_started
    providers: dict[str, int] = {}
    for name in fleet.names:
        provider = fleet.placement(name).provider
        providers[provider] = providers.get(provider, 0) + 1
    return {
        "clusters": clusters,
        "providers": providers,
        "services": ",".join(services) or "none",
        "ready_seconds": round(ready, 3),
        "ready_cpu_seconds": round(ready_cpu, 3),
        "phases": {k: round(v, 3) for k, v in fleet.timings.items()},
        "check_seconds": round(check, 3),
        "stop_seconds": round(stopped, 3),
        "peak_rss_at_ready_mib": peak_at_ready,
        "bao_peak_rss_mib": bao_peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument(
        "--no-services", action="store_true", help="clusters only (default: every service on)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    services = () if args.no_services else SERVICES
    with tempfile.TemporaryDirectory(prefix="fleetops-bench-") as tmp:
        result = asyncio.run(_bench(args.clusters, Path(tmp), services))
    result["peak_rss_mib"] = _peak_rss_mib()
    result["python"] = platform.python_version()
    if args.json:
        print(json.dumps(result))
    else:
        phases = ", ".join(f"{k} {v}" for k, v in result["phases"].items())  # type: ignore[attr-defined]
        bao = result["bao_peak_rss_mib"]
        print(
            f"{result['clusters']} clusters {result['providers']}, services {result['services']}: "
            f"ready in {result['ready_seconds']} s ({result['ready_cpu_seconds']} s CPU; "
            f"{phases}); /version from every cluster in {result['check_seconds']} s; "
            f"stopped in {result['stop_seconds']} s; peak RSS "
            f"{result['peak_rss_at_ready_mib']} MiB at ready, {result['peak_rss_mib']} MiB overall"
            + (f"; bao {bao} MiB" if bao is not None else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
