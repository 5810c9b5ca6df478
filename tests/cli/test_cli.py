"""The fleetops command line: bad input is a clear error with exit code 2, before any write.

These run the installed ``fleetops`` script in a subprocess with a clean ``FLEETOPS_*``
environment, as an operator's shell would. Whole discovery runs through the CLI are in
``tests/flows`` (they need the Prefect test server and the sandbox).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleetops.domain.cluster import AuthMethod, Cluster, ClusterState, Provider
from fleetops.inventory import Inventory

FLEETOPS = str(Path(sys.executable).with_name("fleetops"))


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETOPS_", "AWS_"))}
    clean.update(
        FLEETOPS_INVENTORY_URL=f"sqlite:///{tmp_path / 'inventory.db'}",
        FLEETOPS_STATIC_FLEET_FILE=str(tmp_path / "absent.yaml"),
        PREFECT_API_URL="http://127.0.0.1:9/api",  # nothing may reach Prefect on bad input
    )
    clean.update(env)
    return subprocess.run(
        [FLEETOPS, *args], env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--source", "ecs"], {}, "unknown source kind 'ecs'"),
        ([], {"FLEETOPS_EKS_ACCOUNTS": "12345", "FLEETOPS_EKS_REGIONS": "us-east-1"}, "'12345'"),
        (
            [],
            {"FLEETOPS_EKS_ACCOUNTS": "111111111111", "FLEETOPS_EKS_REGIONS": "useast1"},
            "AWS region 'useast1'",
        ),
        ([], {"FLEETOPS_GKE_PROJECTS": "Bad_Project"}, "project id 'Bad_Project'"),
        ([], {"FLEETOPS_AKS_SUBSCRIPTIONS": "not-a-guid"}, "subscription id 'not-a-guid'"),
        (["--source", "gke"], {}, "source gke is not configured"),
        ([], {}, "no discovery source is configured"),
    ],
)
def test_discover_bad_input_exits_2_before_writing(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = _run(tmp_path, "discover", *args, **env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "inventory.db").exists()


def test_discover_malformed_fleet_file_names_file_and_line(tmp_path: Path) -> None:
    fleet = tmp_path / "clusters.yaml"
    fleet.write_text(
        "version: 1\n"
        "overrides:\n"
        "  - id: eks/111111111111/us-east-1/prod\n"
        "    labels: {wave: '1'}\n"
        "  - selector: 'tier in (a'\n"
        "    labels: {x: y}\n"
    )
    result = _run(tmp_path, "discover", FLEETOPS_STATIC_FLEET_FILE=str(fleet))
    assert result.returncode == 2
    assert f"{fleet}:5" in result.stderr
    assert not (tmp_path / "inventory.db").exists()


@pytest.mark.parametrize("command", [["inventory", "list"], ["kubeconfig"]])
def test_bad_selector_exits_2(tmp_path: Path, command: list[str]) -> None:
    result = _run(tmp_path, *command, "--selector", "replicas>3")
    assert result.returncode == 2
    assert "invalid label selector" in result.stderr
    assert not (tmp_path / "inventory.db").exists()


def _seed(tmp_path: Path) -> list[str]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    clusters = [
        Cluster(
            provider=Provider.STATIC,
            account="lab",
            location="dc1",
            name=f"lab-{i}",
            endpoint=f"https://127.0.0.1:{20000 + i}",
            labels={"env": "prod" if i % 2 else "dev", "fleetops.io/provider": "static"},
            auth=AuthMethod.STATIC_KUBECONFIG,
            state=ClusterState.REGISTERED,
            first_seen=now,
            last_seen=now,
        )
        for i in range(3)
    ]
    with Inventory(f"sqlite:///{tmp_path / 'inventory.db'}") as inventory:
        inventory.migrate()
        inventory.upsert_many(clusters)
    return [c.id for c in clusters]


def test_inventory_list_retire_and_kubeconfig(tmp_path: Path) -> None:
    ids = _seed(tmp_path)
    table = _run(tmp_path, "inventory", "list")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["ID", "STATE", "VERSION"]
    assert all(cluster_id in table.stdout for cluster_id in ids)

    listed = json.loads(_run(tmp_path, "inventory", "list", "-l", "env=prod", "-o", "json").stdout)
    assert [row["id"] for row in listed] == [ids[1]]

    retired = _run(tmp_path, "inventory", "retire", ids[0])
    assert retired.returncode == 0
    assert "retired" in retired.stdout
    unknown = _run(tmp_path, "inventory", "retire", "static/lab/dc1/nope")
    assert unknown.returncode == 2
    assert "no cluster" in unknown.stderr

    # Retired clusters are not exported; the file holds exec plugins, no credential.
    import yaml

    config = yaml.safe_load(_run(tmp_path, "kubeconfig", "--command", "/opt/fleetops").stdout)
    assert [c["name"] for c in config["contexts"]] == ids[1:]
    user = config["users"][0]["user"]
    assert user["exec"]["command"] == "/opt/fleetops"
    assert user["exec"]["args"] == ["token", ids[1]]
    assert user["exec"]["apiVersion"] == "client.authentication.k8s.io/v1"
    assert "token" not in user

    missing = _run(tmp_path, "token", "static/lab/dc1/nope")
    assert missing.returncode == 2
    assert "no cluster" in missing.stderr


def test_blocklist_lists_and_an_operator_clears_a_blocked_version(tmp_path: Path) -> None:
    from fleetops.inventory.rollouts import RolloutHistory

    url = f"sqlite:///{tmp_path / 'inventory.db'}"
    with Inventory(url) as inventory:
        inventory.migrate()
        history = RolloutHistory(inventory)
        history.block_version("hello", "2.0", reason="wave two failed", rollout_id="r-2")
        history.block_version("hello", "2.1", reason="bake regressed", rollout_id="r-3")
        history.block_version("other", "9.9", reason="not this app", rollout_id="r-4")

    listed = _run(tmp_path, "blocklist", "list", "hello")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["2.0", "2.1"]
    assert "by rollout r-2: wave two failed" in lines[0]

    cleared = _run(tmp_path, "blocklist", "clear", "hello", "2.0", "--operator", "oncall")
    assert cleared.returncode == 0, cleared.stderr
    assert "hello 2.0 cleared: rollouts may use it again" in cleared.stdout
    with Inventory(url) as inventory:  # what the inventory holds now
        entries = RolloutHistory(inventory).blocked_versions("hello", include_cleared=True)
    by_version = {e.version: e for e in entries}
    assert by_version["2.0"].cleared_by == "oncall"
    assert by_version["2.0"].cleared_at is not None
    assert by_version["2.1"].active

    again = _run(tmp_path, "blocklist", "clear", "hello", "2.0", "--operator", "someone")
    assert again.returncode == 0, again.stderr
    assert "already cleared" in again.stdout
    assert "by oncall" in again.stdout  # the first clearing stands

    assert _run(tmp_path, "blocklist", "list", "hello").stdout.split()[0] == "2.1"
    everything = json.loads(
        _run(tmp_path, "blocklist", "list", "hello", "--all", "-o", "json").stdout
    )
    assert [(e["version"], e["cleared_by"]) for e in everything] == [
        ("2.0", "oncall"),
        ("2.1", None),
    ]
    assert (
        _run(tmp_path, "blocklist", "list", "none").stdout.strip()
        == "no version of none is blocked"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["clear", "hello", "3.0", "--operator", "oncall"],
            "hello 3.0 is not on the blocklist (blocked now: 2.0)",
        ),
        (["clear", "hello", "2.0", "--operator", " "], "--operator: give your name"),
        (["clear", "hello", "2.0"], "Missing option '--operator'"),
        (["list", "hello", "-o", "yaml"], "'yaml' is not one of"),
    ],
)
def test_blocklist_refuses_bad_input_and_changes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from fleetops.inventory.rollouts import RolloutHistory

    url = f"sqlite:///{tmp_path / 'inventory.db'}"
    with Inventory(url) as inventory:
        inventory.migrate()
        RolloutHistory(inventory).block_version("hello", "2.0", reason="failed", rollout_id="r")
    result = _run(tmp_path, "blocklist", *args)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    with Inventory(url) as inventory:
        (entry,) = RolloutHistory(inventory).blocked_versions("hello", include_cleared=True)
    assert entry.active
