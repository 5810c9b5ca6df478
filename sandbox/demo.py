"""``make demo``: a Prefect server with its UI and a sandbox fleet, until Ctrl-C.

Starts, each in its own process group so that nothing outlives the demo:

1. ``prefect server start`` on 127.0.0.1:4200 (or the next free port) with its own PREFECT_HOME
   under ``.demo/prefect`` (SQLite) and ``PREFECT_UI_API_URL`` pointing the UI at that port;
2. ``python -m sandbox up`` with the requested number of clusters under ``.demo/sandbox``;
3. ``fleetops discover`` once, so the UI shows a filled inventory;
4. ``fleetops rollout hello`` in the background, which rolls apps/hello out to a one-cluster
   canary and then pauses for approval before the rest of the fleet.

It prints where the UI, the kubeconfig, the settings and the sandbox's services are and how to
approve the rollout, then waits. On Ctrl-C (or SIGTERM) it stops every process group, waits for
them, and checks that no process (bao included) and no port is left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

READY_PREFIX = "sandbox ready"
ROOT = Path(__file__).resolve().parents[1]
FLEETOPS = Path(sys.executable).with_name("fleetops")
DEMO_PLAN = ROOT / "deployments" / "rollout-demo.yaml"
DEMO_VERSION = "1.0.0"


def free_port(start: int, *, tries: int = 100) -> int:
    """The first port from ``start`` on which 127.0.0.1 can listen."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"demo: no free port in {start}..{start + tries - 1} on 127.0.0.1")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_http_ok(url: str, *, timeout: float, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: {process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"demo: {url} did not answer within {timeout:.0f} s")


class Demo:
    """The processes of one demo and how to stop them."""

    def __init__(self, *, workdir: Path, clusters: int, ui_port: int) -> None:
        self.workdir = workdir
        self.clusters = clusters
        self.ui_port = ui_port
        self.processes: list[subprocess.Popen[str]] = []
        self.services: list[subprocess.Popen[str]] = []  # must stay up while the demo runs
        self.fleet: dict[str, Any] = {}  # the sandbox's fleet.json, once it is ready
        self.rollout_id = ""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}/api"

    def prefect_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(self.workdir / "prefect"),
            PREFECT_API_URL=self.api_url,
            PREFECT_UI_API_URL=self.api_url,
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(self.ui_port),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
        )
        return env

    def _spawn(
        self,
        args: Sequence[str],
        *,
        log: Path | None,
        env: dict[str, str],
        service: bool = True,
    ) -> subprocess.Popen[str]:
        stdout = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            list(args),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        self.processes.append(process)
        if service:  # the demo stops when a service dies; a rollout may end on its own
            self.services.append(process)
        return process

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "prefect").mkdir(exist_ok=True)
        prefect = self._spawn(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ui_port),
                "--analytics-off",
            ],
            log=self.workdir / "prefect-server.log",
            env=self.prefect_env(),
        )
        sandbox_dir = self.workdir / "sandbox"
        sandbox = self._spawn(
            [
                sys.executable,
                "-m",
                "sandbox",
                "up",
                "--clusters",
                str(self.clusters),
                "--dir",
                str(sandbox_dir),
            ],
            log=None,
            env=dict(os.environ),
        )
        assert sandbox.stdout is not None
        ready = ""
        for line in sandbox.stdout:
            if line.startswith(READY_PREFIX):
                ready = line.strip()
                break
        if not ready:
            raise SystemExit(f"demo: the sandbox exited with {sandbox.wait()} before it was ready")
        # Keep draining the sandbox's output so it never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(sandbox,), daemon=True).start()
        wait_http_ok(f"{self.api_url}/health", timeout=90, process=prefect)
        self._write_env(sandbox_dir)
        print(ready, flush=True)
        self._discover_once()
        self._start_rollout()
        self.fleet = json.loads((sandbox_dir / "fleet.json").read_text())
        print(self._banner(sandbox_dir), flush=True)

    def _banner(self, sandbox_dir: Path) -> str:
        kubeconfig = sandbox_dir / "kubeconfig"
        services = self.fleet.get("services", {})
        providers = ", ".join(
            f"{k} {v}" for k, v in sorted(self.fleet.get("providers", {}).items())
        )
        rollout = [
            "",
            f"Rollout {self.rollout_id}: apps/hello {DEMO_VERSION} over the fleet, plan "
            f"{DEMO_PLAN.relative_to(ROOT)}: a one-cluster canary, then it pauses for approval "
            "before the wave 'fleet'. Approve it in the Prefect UI (the paused flow run "
            f"rollout-{self.rollout_id}, Resume) or with:",
            f"  set -a; . {self.workdir / 'demo.env'}; set +a; "
            f".venv/bin/fleetops approve {self.rollout_id} --approver YOUR-NAME",
            f"  progress: {self.workdir / 'rollout.log'}",
        ]
        lines = [
            "",
            f"fleetops demo is up ({self.clusters} sandbox clusters: {providers})",
            f"  Prefect UI        http://127.0.0.1:{self.ui_port}",
            f"  kubeconfig        {kubeconfig}",
            f"  sandbox settings  {sandbox_dir / 'sandbox.env'}",
            f"  all settings      {self.workdir / 'demo.env'}",
            f"  fault switches    {self.fleet['control_url']}",
        ]
        labels = {
            "aws": ("AWS (moto: EKS, Route 53)", "endpoint_url"),
            "gke": ("GKE API", "endpoint"),
            "aks": ("AKS API", "base_url"),
            "vault": ("Vault (OpenBao)", "addr"),
            "slack": ("Slack Web API", "base_url"),
        }
        for name, (label, key) in labels.items():
            if name in services:
                lines.append(f"  {label:<26}{services[name][key]}")
        lines += rollout if self.rollout_id else []
        context = self._first_context(sandbox_dir)
        lines += [
            "",
            "Try:",
            f"  kubectl --kubeconfig {kubeconfig} config get-contexts",
            f"  kubectl --kubeconfig {kubeconfig} --context {context} get namespaces",
            f"  set -a; . {self.workdir / 'demo.env'}; set +a; .venv/bin/fleetops inventory list",
            f"  curl -X PATCH {self.fleet['control_url']}/clusters/{context}/faults "
            """-d '{"latency_seconds": 0.5}'""",
            "",
            "Press Ctrl-C to stop everything.",
        ]
        return "\n".join(lines)

    def _sandbox_ports(self) -> list[int]:
        """Every port the sandbox listed in fleet.json (clusters, services, control)."""
        if not self.fleet:
            return []
        urls = [self.fleet.get("control_url", "")]
        urls += [c.get("server", "") for c in self.fleet.get("clusters", [])]
        for service in self.fleet.get("services", {}).values():
            urls += [v for k, v in service.items() if isinstance(v, str) and "://127.0.0.1:" in v]
        return [urlsplit(u).port or 0 for u in urls if "://127.0.0.1:" in u]

    @staticmethod
    def _drain(process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for _ in process.stdout:
            pass

    @staticmethod
    def _first_context(sandbox_dir: Path) -> str:
        for line in (sandbox_dir / "kubeconfig").read_text().splitlines():
            if line.strip().startswith("current-context:"):
                return line.split(":", 1)[1].strip()
        return "sbx-01"

    def _write_env(self, sandbox_dir: Path) -> None:
        lines = [
            f"PREFECT_API_URL={self.api_url}",
            f"PREFECT_UI_API_URL={self.api_url}",
            f"PREFECT_HOME={self.workdir / 'prefect'}",
            f"FLEETOPS_UI_URL=http://127.0.0.1:{self.ui_port}",
            f"FLEETOPS_INVENTORY_URL=sqlite:///{self.workdir / 'inventory.db'}",
        ]
        lines += (sandbox_dir / "sandbox.env").read_text().splitlines()
        path = self.workdir / "demo.env"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    # -- issue 4: discovery once at start, so the UI shows a filled inventory ------------------

    def _demo_env(self) -> dict[str, str]:
        from sandbox.fleet import read_env_file

        env = dict(os.environ)
        env.update(read_env_file(self.workdir / "demo.env"))
        return env

    def _discover_once(self) -> None:
        """Run ``fleetops discover`` once with demo.env's settings; a failure is only reported."""
        began = time.monotonic()
        result = subprocess.run(
            [str(FLEETOPS), "discover"],
            env=self._demo_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        summary = (result.stdout.strip().splitlines() or [""])[-1]
        if result.returncode == 0:
            print(
                f"discovery ran once ({time.monotonic() - began:.0f} s): {summary}; see the "
                f"discover-clusters run and its inventory artifact in the UI",
                flush=True,
            )
        else:
            error = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"demo: the first discovery run failed: {error}", file=sys.stderr, flush=True)

    # -- issue 5: one rollout of apps/hello that waits for approval before its second wave -------

    def _start_rollout(self) -> None:
        """Start ``fleetops rollout hello`` in the background; it pauses before the wave 'fleet'.

        It is a process of its own (``fleetops rollout`` waits at approvals exactly like a run
        started from the UI); its output goes to ``rollout.log``. A fresh rollout id each time,
        so a second demo in the same folder starts a new rollout (the clusters already at the
        version are verified, not re-applied).
        """
        self.rollout_id = f"demo-hello-{time.strftime('%Y%m%d-%H%M%S')}"
        self._spawn(
            [str(FLEETOPS), "rollout", "hello", DEMO_VERSION, "--plan", str(DEMO_PLAN),
             "--rollout-id", self.rollout_id],
            log=self.workdir / "rollout.log",
            env=self._demo_env(),
            service=False,
        )  # fmt: skip

    def stop(self, *, grace: float = 15.0) -> list[str]:
        """Stop every process group; return what was left behind (empty when clean)."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + grace
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        left = []
        for process in self.processes:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                continue
            # Children of the group still alive: stop them too, and report it.
            left.append(f"process group {process.pid} ({' '.join(map(str, process.args[1:3]))})")
            os.killpg(process.pid, signal.SIGKILL)
        vault_pid = self.fleet.get("services", {}).get("vault", {}).get("pid")
        if vault_pid and _alive(int(vault_pid)):
            # bao runs in a session of its own; the sandbox stops it, this only checks.
            left.append(f"vault (bao) pid {vault_pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(vault_pid), signal.SIGKILL)
        left += [
            f"port {p} still open" for p in [self.ui_port, *self._sandbox_ports()] if port_open(p)
        ]
        return left


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--clusters", type=int, default=12, help="sandbox clusters (default 12)")
    parser.add_argument(
        "--dir", type=Path, default=Path(".demo"), help="work folder (default .demo)"
    )
    parser.add_argument("--ui-port", type=int, default=4200, help="first port to try for the UI")
    args = parser.parse_args(argv)
    if args.clusters < 1:
        parser.error(f"--clusters must be at least 1, got {args.clusters}")

    demo = Demo(workdir=args.dir.resolve(), clusters=args.clusters, ui_port=free_port(args.ui_port))
    stopping = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        demo.start()
        while not stopping.is_set():
            if any(p.poll() is not None for p in demo.services):
                print("demo: a process exited unexpectedly; stopping", file=sys.stderr, flush=True)
                break
            stopping.wait(1.0)
    finally:
        print("stopping the demo ...", flush=True)
        left = demo.stop()
        if left:
            print("demo: had to kill: " + ", ".join(left), file=sys.stderr, flush=True)
        else:
            print("demo stopped; no process left behind", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
