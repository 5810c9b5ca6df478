"""Source configuration: every identifier an operator types is checked, naming the bad value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetops.domain.sources import (
    AksSourceConfig,
    EksAccount,
    GkeSourceConfig,
    SourceKind,
    StaticCluster,
    parse_source_kinds,
)
from fleetops.errors import ConfigError

FLEETOPS = str(Path(sys.executable).with_name("fleetops"))


def test_source_kinds() -> None:
    assert parse_source_kinds(["eks", " GKE", "static", "eks"]) == (
        SourceKind.EKS,
        SourceKind.GKE,
        SourceKind.STATIC,
    )
    with pytest.raises(
        ConfigError, match="unknown source kind 'ecs'; known kinds: eks, gke, aks, static"
    ):
        parse_source_kinds(["eks", "ecs"])


@pytest.mark.parametrize("project", ["fleetops-prod", "abc123", "example.com:my-project", "a" * 30])
def test_valid_project_ids(project: str) -> None:
    assert GkeSourceConfig(projects=(project,)).projects == (project,)


@pytest.mark.parametrize(
    "project", ["short", "Fleet-Prod", "1project", "ends-with-", "a" * 31, "under_score"]
)
def test_invalid_project_ids_are_named(project: str) -> None:
    with pytest.raises(ValueError, match=f"Google Cloud project id '{project}'"):
        GkeSourceConfig(projects=(project,))


def test_subscriptions_and_accounts() -> None:
    sub = "00000000-0000-4000-8000-00000000000A"
    assert AksSourceConfig(subscriptions=(sub,)).subscriptions == (sub.lower(),)
    with pytest.raises(ValueError, match="listed twice"):
        AksSourceConfig(subscriptions=(sub, sub.lower()))
    with pytest.raises(ValueError, match="'arn:aws:iam::111111111111:user/bob'"):
        EksAccount.model_validate("arn:aws:iam::111111111111:user/bob")
    assert str(EksAccount.model_validate("111111111111")) == "111111111111"


def test_static_cluster_location_defaults() -> None:
    labelled = StaticCluster(
        name="lab", kubeconfig="k", labels={"topology.kubernetes.io/region": "dc1"}
    )
    assert labelled.id == "static/fleet/dc1/lab"
    assert StaticCluster(name="lab", kubeconfig="k").id == "static/fleet/static/lab"
    assert StaticCluster(name="lab", kubeconfig="k", location="dc9", labels=labelled.labels).id == (
        "static/fleet/dc9/lab"
    )


def _settings(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEETOPS_")}
    return subprocess.run(
        [FLEETOPS, "settings"], env={**clean, **env}, capture_output=True, text=True, check=False
    )


def test_source_settings_from_the_environment(tmp_path: Path) -> None:
    result = _settings(
        FLEETOPS_EKS_ACCOUNTS="111111111111, arn:aws:iam::222222222222:role/fleetops-discovery",
        FLEETOPS_EKS_REGIONS='["us-east-1", "eu-west-1"]',
        FLEETOPS_AWS_ENDPOINT_URL="http://127.0.0.1:5000",
        FLEETOPS_GKE_PROJECTS="fleet-prod fleet-dev",
        FLEETOPS_GKE_ACCESS_TOKEN="ya29.secret-value",
        FLEETOPS_AKS_SUBSCRIPTIONS="00000000-0000-4000-8000-00000000000B",
        FLEETOPS_STATIC_FLEET_FILE=str(tmp_path / "clusters.yaml"),
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["eks"]["accounts"] == [
        {"account_id": "111111111111", "role_arn": None},
        {
            "account_id": "222222222222",
            "role_arn": "arn:aws:iam::222222222222:role/fleetops-discovery",
        },
    ]
    assert shown["eks"]["regions"] == ["us-east-1", "eu-west-1"]
    assert shown["aws"]["endpoint_url"] == "http://127.0.0.1:5000"
    assert shown["gke"]["projects"] == ["fleet-prod", "fleet-dev"]
    assert shown["aks"]["subscriptions"] == ["00000000-0000-4000-8000-00000000000b"]
    assert "secret-value" not in result.stdout


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("FLEETOPS_EKS_REGIONS", "us-east-1,useast2", "'useast2'"),
        ("FLEETOPS_EKS_ACCOUNTS", "11111111111", "'11111111111' is not 12 digits"),
        ("FLEETOPS_GKE_PROJECTS", "Fleet", "'Fleet'"),
        ("FLEETOPS_AKS_SUBSCRIPTIONS", "sub-1", "'sub-1' is not a GUID"),
    ],
)
def test_malformed_source_settings_are_named(name: str, value: str, named: str) -> None:
    result = _settings(**{name: value})
    assert result.returncode == 2
    assert named in result.stderr
