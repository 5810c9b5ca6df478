"""prefect.yaml stays true to the code: every entrypoint loads, and nothing secret is in it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[2]
PROJECT = yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_every_deployment_entrypoint_loads_the_flow_it_names() -> None:
    names = []
    for deployment in PROJECT["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        assert flow.name == deployment["name"]
        # one pydantic parameter model per flow: the UI renders it as the form
        assert list(flow.parameters.properties) == ["parameters"]
        names.append(deployment["name"])
    assert names == ["discover-clusters", "rollout"]


def test_schedules_match_the_flows_jobs() -> None:
    by_name = {d["name"]: d for d in PROJECT["deployments"]}
    assert by_name["discover-clusters"]["schedules"][0]["cron"] == "*/15 * * * *"
    assert "schedules" not in by_name["rollout"]  # people start rollouts


def test_no_secret_values_in_prefect_yaml() -> None:
    text = (ROOT / "prefect.yaml").read_text()
    assert not re.search(r"(?i)(token|secret|password)\s*:\s*\S", text)
    assert not re.search(r"xox[abp]-|hvs\.|k8s-aws-v1\.", text)
