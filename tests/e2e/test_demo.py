"""`make demo`'s runner end to end: Prefect UI up, sandbox clusters usable by kubectl, clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sandbox.fleet import read_env_file

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.timeout(180)
def test_demo_serves_the_ui_and_the_fleet_then_stops_everything(tmp_path: Path) -> None:
    ui_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLEETOPS_"))}
    demo = subprocess.Popen(
        [sys.executable, "-m", "sandbox.demo", "--clusters", "3", "--dir", str(tmp_path),
         "--ui-port", str(ui_port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert demo.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 150
        for line in demo.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "Press Ctrl-C" in output, output
        assert f"Prefect UI        http://127.0.0.1:{ui_port}" in output
        children = _descendants(demo.pid)
        assert children, "the demo started no processes"

        # The UI is served and told to talk to this port's API.
        status, body = _get(f"http://127.0.0.1:{ui_port}/")
        assert status == 200
        assert b"<html" in body.lower()
        settings = json.loads(_get(f"http://127.0.0.1:{ui_port}/ui-settings")[1])
        assert settings["api_url"] == f"http://127.0.0.1:{ui_port}/api"
        assert _get(f"http://127.0.0.1:{ui_port}/api/health")[1] == b"true"

        # The sandbox clusters work with kubectl from the printed kubeconfig.
        kubeconfig = tmp_path / "sandbox" / "kubeconfig"
        contexts = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "config", "get-contexts", "-o", "name"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(contexts) == 3
        namespaces = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "--context", contexts[-1], "get", "ns",
             "-o", "name"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert "namespace/default" in namespaces
        demo_env = (tmp_path / "demo.env").read_text()
        assert f"PREFECT_API_URL=http://127.0.0.1:{ui_port}/api" in demo_env
        assert oct((tmp_path / "demo.env").stat().st_mode & 0o777) == "0o600"
        cluster_ports = [
            int(line.rsplit(":", 1)[1])
            for line in kubeconfig.read_text().splitlines()
            if line.strip().startswith("server: https://127.0.0.1:")
        ]
        assert len(cluster_ports) == 3
        fleet = json.loads((tmp_path / "sandbox" / "fleet.json").read_text())
        vault_pid = int(fleet["services"]["vault"]["pid"])
        assert _pid_alive(vault_pid)
        service_ports = [
            int(url.rsplit(":", 1)[1].split("/")[0])
            for service in fleet["services"].values()
            for url in service.values()
            if isinstance(url, str) and url.startswith(("http://127.0.0.1:", "https://127.0.0.1:"))
        ]
        assert len(service_ports) >= 5  # aws, gke, aks, vault, slack
        # discovery ran once at start, so the UI shows a filled inventory
        assert "discovery ran once" in output, output

        # The rollout of apps/hello waits for approval before its second wave; approve it as
        # the banner says, then every cluster runs hello at the demo version.
        match = re.search(r"fleetops approve (demo-hello-\S+) --approver", output)
        assert match, output
        rollout_id = match.group(1)
        cli_env = env | read_env_file(tmp_path / "demo.env")
        fleetops = str(Path(sys.executable).with_name("fleetops"))
        deadline = time.monotonic() + 90
        while True:  # the canary wave runs first; approving before the pause is refused
            approve = subprocess.run(
                [fleetops, "approve", rollout_id, "--approver", "e2e", "--comment", "demo test"],
                cwd=ROOT, env=cli_env, capture_output=True, text=True,
            )  # fmt: skip
            if approve.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert approve.returncode == 0, approve.stderr
        rollout_log = tmp_path / "rollout.log"
        deadline = time.monotonic() + 90
        while f"rollout {rollout_id} succeeded" not in rollout_log.read_text():
            assert time.monotonic() < deadline, rollout_log.read_text()
            time.sleep(1)
        for context in contexts:
            image = subprocess.run(
                ["kubectl", "--kubeconfig", str(kubeconfig), "--context", context, "-n", "hello",
                 "get", "deployment", "hello", "-o", "jsonpath={.spec.template.spec.containers[0].image}"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert image == "ghcr.io/fleetops/hello:1.0.0", context
    finally:
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, rest
    assert "no process left behind" in rest
    assert [pid for pid in children if _pid_alive(pid)] == []
    assert not _port_open(ui_port)
    assert [port for port in cluster_ports + service_ports if _port_open(port)] == []
    assert not _pid_alive(vault_pid)
