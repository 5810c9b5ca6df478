"""Tokens per auth method, and the ExecCredential kubectl takes from an exec plugin."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
import trustme
import yaml
from pydantic import SecretStr

from fleetops.clients.credentials import ClusterCredentials, ClusterToken, exec_credential
from fleetops.clients.kube import probe
from fleetops.clients.static import StaticClusters
from fleetops.domain.cluster import AuthMethod, Cluster, Provider
from fleetops.errors import ConfigError
from fleetops.settings import (
    AwsSettings,
    EksSettings,
    GkeSettings,
    KubeSettings,
    Settings,
    StaticSettings,
)
from sandbox.clouds.aws import AwsSandbox
from sandbox.clouds.common import CloudCluster
from sandbox.fleet import Fleet

KUBECTL = "/usr/bin/kubectl"
ACCOUNT = "111111111111"


def _gke_cluster() -> Cluster:
    return Cluster(
        provider=Provider.GKE,
        account="fleet-prod",
        location="us-central1",
        name="prod-us",
        endpoint="https://127.0.0.1:7001",
        auth=AuthMethod.GCP_ACCESS_TOKEN,
    )


def test_exec_credential_shape() -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=timezone(timedelta(hours=2)))
    token = ClusterToken(token=SecretStr("t0ken"), expires_at=expires)

    assert exec_credential(token) == {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "spec": {},
        "status": {"token": "t0ken", "expirationTimestamp": "2030-01-02T01:04:05Z"},
    }
    assert exec_credential(SecretStr("plain"))["status"] == {"token": "plain"}
    later = datetime(2031, 1, 1, tzinfo=UTC)
    assert exec_credential(token, later)["status"]["expirationTimestamp"] == "2031-01-01T00:00:00Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        exec_credential(SecretStr("x"), datetime(2030, 1, 1))


def test_dispatch_by_auth_method(fleet: Fleet, kubeconfig: Path) -> None:
    static = StaticClusters(kubeconfig=kubeconfig)
    credentials = ClusterCredentials(static=static)
    cluster = static.discover().clusters[0]

    assert credentials.token_for(cluster).token.get_secret_value() == fleet.token(cluster.name)
    with pytest.raises(ConfigError, match="no credential source for auth method gcp-access-token"):
        credentials.token_for(_gke_cluster())


def test_from_settings_builds_each_source_when_first_needed(fleet: Fleet, kubeconfig: Path) -> None:
    settings = Settings(
        kube=KubeSettings(kubeconfig=kubeconfig),
        static=StaticSettings(fleet_file=None),
        gke=GkeSettings(access_token=SecretStr("ya29.from-settings")),
        # EKS and AKS are not configured: never touched, since no cluster of theirs is asked for
    )
    credentials = ClusterCredentials.from_settings(settings)
    cluster = StaticClusters(kubeconfig=kubeconfig).discover().clusters[1]

    assert probe(cluster, credentials.token_for(cluster)).ok
    gke = credentials.token_for(_gke_cluster())
    assert gke.token.get_secret_value() == "ya29.from-settings"


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsSandbox]:
    published = CloudCluster(
        provider="eks",
        account=ACCOUNT,
        location="eu-west-1",
        name="payments",
        endpoint="https://127.0.0.1:9443",
        ca_pem=trustme.CA().cert_pem.bytes().decode(),
    )
    with AwsSandbox([published]) as sandbox:
        yield sandbox


def test_eks_token_from_settings(aws: AwsSandbox) -> None:
    settings = Settings(
        aws=AwsSettings(endpoint_url=aws.endpoint_url),
        eks=EksSettings(accounts=aws.role_arn(ACCOUNT), regions="eu-west-1"),  # type: ignore[arg-type]
    )
    credentials = ClusterCredentials.from_settings(
        settings, aws_session=boto3.Session(**aws.credentials.boto3_kwargs())
    )
    cluster = Cluster(
        provider=Provider.EKS,
        account=ACCOUNT,
        location="eu-west-1",
        name="payments",
        endpoint="https://127.0.0.1:9443",
        auth=AuthMethod.EKS_IAM,
    )
    token = credentials.token_for(cluster)
    check = aws.check_eks_token(token.token.get_secret_value(), cluster_name="payments")
    assert check.ok, check.reason
    assert token.expires_at is not None
    assert exec_credential(token)["status"]["expirationTimestamp"].endswith("Z")


_PLUGIN = """
import json, sys
from pathlib import Path
from fleetops.clients.credentials import ClusterCredentials, exec_credential
from fleetops.clients.static import StaticClusters

static = StaticClusters(kubeconfig=Path(sys.argv[1]))
[cluster] = [c for c in static.discover().clusters if c.id == sys.argv[2]]
print(json.dumps(exec_credential(ClusterCredentials(static=static).token_for(cluster))))
"""


@pytest.mark.kubectl
@pytest.mark.skipif(not Path(KUBECTL).exists(), reason="kubectl is not installed")
def test_kubectl_accepts_the_exec_credential(
    fleet: Fleet, kubeconfig: Path, tmp_path: Path
) -> None:
    """A kubeconfig holding no secret: kubectl runs an exec plugin that prints our ExecCredential."""
    cluster = StaticClusters(kubeconfig=kubeconfig).discover().clusters[2]
    plugin = tmp_path / "plugin.py"
    plugin.write_text(_PLUGIN)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster.name,
                "cluster": {
                    "server": cluster.endpoint,
                    "certificate-authority-data": _b64(cluster.ca_data or ""),
                },
            }
        ],
        "users": [
            {
                "name": "fleetops",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": sys.executable,
                        "args": [str(plugin), str(kubeconfig), cluster.id],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "c", "context": {"cluster": cluster.name, "user": "fleetops"}}],
        "current-context": "c",
    }
    path = tmp_path / "exported.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    assert fleet.token(cluster.name) not in path.read_text()

    out = subprocess.run(
        [KUBECTL, "--kubeconfig", str(path), "get", "namespaces", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    names = {item["metadata"]["name"] for item in json.loads(out.stdout)["items"]}
    assert "default" in names


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
