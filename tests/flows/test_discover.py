"""The discover-clusters flow, whole, against the sandbox: real SDKs, real servers, real Prefect.

Assertions are on what ends up in the inventory, in Slack (read back from the sandbox's Slack
server), in the management cluster (Argo CD Secrets) and in Prefect (run state, artifacts).
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import kubernetes
import pytest
import yaml

from fleetops.domain.cluster import ClusterState
from sandbox.clouds.common import CloudCluster
from tests.flows.conftest import Discovery

pytestmark = pytest.mark.timeout(240)


def _artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no artifact {key}"
    return str(found[0].data)


def test_all_four_sources_in_one_run(discovery: Discovery) -> None:
    state = discovery.run()
    assert state.is_completed(), state.message

    records = discovery.records()
    assert set(records) == discovery.expected_ids()
    providers = {record.provider.value for record in records.values()}
    assert providers == {"eks", "gke", "aks", "static"}
    for record in records.values():
        assert record.state is ClusterState.REGISTERED, (record.id, record.last_probe)
        assert record.last_probe is not None
        assert record.last_probe.ok
        assert record.last_probe.version == "v1.31.4"
        assert record.ca_data
        assert "BEGIN CERTIFICATE" in record.ca_data
        assert record.labels["fleetops.io/provider"] == record.provider.value
    eks = next(r for r in records.values() if r.provider.value == "eks")
    assert eks.labels["env"] in ("prod", "staging")
    assert eks.labels["fleetops.io/k8s-minor"]

    # Slack: one thread for the run, the summary with the flow run link, replies with details.
    messages = discovery.fleet.slack.messages("#fleetops")
    parents = [m for m in messages if not m.is_reply]
    assert len(parents) == 1
    assert "10 added" in parents[0].text
    assert "http://127.0.0.1:4200/runs/flow-run/" in parents[0].text
    thread = discovery.fleet.slack.thread("#fleetops", parents[0].ts)
    assert any("*Added* (10)" in m.text for m in thread[1:])

    # Artifacts: the inventory table and the diff.
    assert "Added (10)" in _artifact("discovery-diff")
    assert records[eks.id].id in _artifact("cluster-inventory")

    # A second run changes nothing and tells nobody.
    second = discovery.run()
    assert second.is_completed()
    assert second.result().diff.has_changes is False
    assert len(discovery.fleet.slack.messages("#fleetops")) == len(messages)


def test_pagination_and_throttling(discovery: Discovery, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = discovery.fleet
    eks_template = next(c for c in fleet.aws.clusters)
    aks_template = next(c for c in fleet.aks.clusters)
    extra_eks = [replace(eks_template, name=f"{eks_template.name}-x{i}") for i in range(3)]
    # Same cluster name in other resource groups: the AKS stand-in hands out that cluster's token.
    extra_aks = [
        replace(aks_template, resource_group=f"rg-extra-{i}", location=loc)
        for i, loc in enumerate(("westeurope", "southeastasia"))
    ]
    page_size = fleet.aks.page_size
    for cluster in extra_eks:
        fleet.aws.add_cluster(cluster)
    for cluster in extra_aks:
        fleet.aks.add_cluster(cluster)
    try:
        monkeypatch.setenv("FLEETOPS_EKS_PAGE_SIZE", "1")
        fleet.aks.page_size = 1
        fleet.set_service_faults("aws", error_rate=0.3)
        fleet.set_service_faults("gke", error_rate=0.5)
        fleet.set_service_faults("aks", error_rate=0.2, retry_after_seconds=1)
        state = discovery.run(sources=["eks", "aks", "gke"])
        assert state.is_completed(), state.message
    finally:
        fleet.reset_service_faults()
        fleet.aks.page_size = page_size
        for cluster in extra_eks:
            fleet.aws.remove_cluster(cluster.id)
        for cluster in extra_aks:
            fleet.aks.remove_cluster(cluster.id)

    records = discovery.records()
    expected = (
        discovery.expected_ids("eks")
        | discovery.expected_ids("gke")
        | discovery.expected_ids("aks")
        | {c.id for c in extra_eks + extra_aks}
    )
    assert set(records) == expected
    # The AKS copies answer with the original's token: registered like any other.
    for cluster in extra_aks:
        assert records[cluster.id].state is ClusterState.REGISTERED
    # The EKS copies are names the API server does not know: their IAM token is refused.
    for cluster in extra_eks:
        record = records[cluster.id]
        assert record.state is ClusterState.UNREACHABLE
        assert record.last_probe is not None
        assert "401" in (record.last_probe.error or "")


def test_source_down_others_registered_none_missing(discovery: Discovery) -> None:
    assert discovery.run().is_completed()
    gke_ids = discovery.expected_ids("gke")
    discovery.fleet.service_outage("gke", True)
    try:
        for _ in range(3):  # more runs than the missing threshold
            state = discovery.run()
            assert state.is_failed()
            assert "gke" in (state.message or "")
            assert "eks:" not in (state.message or "")
    finally:
        discovery.fleet.service_outage("gke", False)

    records = discovery.records()
    assert set(records) == discovery.expected_ids()
    for cluster_id in gke_ids:
        assert records[cluster_id].state is ClusterState.REGISTERED
        assert records[cluster_id].missed_count == 0
    # The failure reached Slack, naming the source, with no credential in it.
    texts = [m.text for m in discovery.fleet.slack.messages("#fleetops")]
    assert any("Failed sources: gke" in t for t in texts)
    assert not any(discovery.fleet.gke_access_token in t for t in texts)


def test_removed_cluster_missing_after_three_runs_and_back(discovery: Discovery) -> None:
    fleet = discovery.fleet
    assert discovery.run(sources=["aks"]).is_completed()
    gone: CloudCluster = fleet.aks.clusters[0]
    fleet.aks.remove_cluster(gone.id)
    try:
        states = []
        for _ in range(3):
            assert discovery.run(sources=["aks"]).is_completed()
            record = discovery.records()[gone.id]
            states.append((record.state, record.missed_count))
        assert states == [
            (ClusterState.REGISTERED, 1),
            (ClusterState.REGISTERED, 2),
            (ClusterState.MISSING, 3),
        ]
        assert f"`{gone.id}`" in _artifact("discovery-diff")
    finally:
        fleet.aks.add_cluster(gone)
    state = discovery.run(sources=["aks"])
    assert state.is_completed()
    assert state.result().diff.returned == (gone.id,)
    record = discovery.records()[gone.id]
    assert record.state is ClusterState.REGISTERED
    assert record.missed_count == 0


def test_unreachable_cluster_recorded_with_its_error(discovery: Discovery) -> None:
    fleet = discovery.fleet
    name = fleet.names_in("kubeconfig")[0]
    cluster_id = fleet.placement(name).id
    fleet.outage(name, True)
    try:
        state = discovery.run(sources=["static"])
        assert state.is_completed(), state.message  # an unreachable cluster is data, not failure
        record = discovery.records()[cluster_id]
        assert record.state is ClusterState.UNREACHABLE
        assert record.last_probe is not None
        assert not record.last_probe.ok
        assert "cannot connect" in (record.last_probe.error or "")
        assert state.result().diff.unreachable == (cluster_id,)
        replies = [m.text for m in fleet.slack.messages("#fleetops") if m.is_reply]
        assert any("*Unreachable* (1)" in t and cluster_id in t for t in replies)
    finally:
        fleet.outage(name, False)
    state = discovery.run(sources=["static"])
    assert state.result().diff.recovered == (cluster_id,)
    assert discovery.records()[cluster_id].state is ClusterState.REGISTERED


def test_label_overrides_from_the_fleet_file(
    discovery: Discovery, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = discovery.fleet
    document = yaml.safe_load(fleet.fleet_file_path.read_text())
    for entry in document["static"]:
        entry["kubeconfig"] = str(fleet.kubeconfig_path)
    eks_id = fleet.placement(fleet.names_in("eks")[0]).id
    document["overrides"] = [
        {"selector": "fleetops.io/provider=gke", "labels": {"tier": "gold", "wave": "2"}},
        {"id": eks_id, "labels": {"wave": "1", "env": "canary"}},
    ]
    path = discovery.directory / "clusters.yaml"
    path.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("FLEETOPS_STATIC_FLEET_FILE", str(path))

    assert discovery.run().is_completed()
    records = discovery.records()
    assert records[eks_id].labels["wave"] == "1"
    assert records[eks_id].labels["env"] == "canary"  # the override wins over the EKS tag
    for cluster_id in discovery.expected_ids("gke"):
        assert records[cluster_id].labels["tier"] == "gold"
    assert "tier" not in records[eks_id].labels

    # Overrides change; the next run applies them (and removes what was dropped).
    document["overrides"] = [{"selector": "fleetops.io/provider=gke", "labels": {"tier": "silver"}}]
    path.write_text(yaml.safe_dump(document))
    state = discovery.run()
    assert state.is_completed()
    records = discovery.records()
    assert "wave" not in records[eks_id].labels
    assert records[eks_id].labels["env"] == fleet.placement(fleet.names_in("eks")[0]).labels["env"]
    assert all(records[i].labels["tier"] == "silver" for i in discovery.expected_ids("gke"))


def test_broken_fleet_file_fails_before_writing(
    discovery: Discovery, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = discovery.directory / "clusters.yaml"
    path.write_text("version: 1\noverrides:\n  - selector: 'env in prod'\n    labels: {a: b}\n")
    monkeypatch.setenv("FLEETOPS_STATIC_FLEET_FILE", str(path))
    state = discovery.run()
    assert state.is_failed()
    assert f"{path}:3" in (state.message or "")
    assert discovery.records() == {}


def test_slack_down_or_rate_limited_never_fails_the_run(
    discovery: Discovery, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = discovery.fleet
    monkeypatch.setenv("FLEETOPS_DISCOVERY_PROBE_MAX_AGE_SECONDS", "0.001")  # probe every run
    fleet.service_outage("slack", True)
    try:
        state = discovery.run(sources=["static"])
    finally:
        fleet.service_outage("slack", False)
    assert state.is_completed(), state.message
    assert set(discovery.records()) == discovery.expected_ids(
        "kubeconfig"
    ) | discovery.expected_ids("fleet-file")
    assert fleet.slack.messages("#fleetops") == []

    # Rate limited once: slack_sdk waits Retry-After and the message arrives.
    fleet.set_service_faults("slack", rate_limited_calls=1, retry_after_seconds=1)
    name = fleet.names_in("kubeconfig")[0]
    fleet.outage(name, True)  # something to report
    try:
        assert discovery.run(sources=["static"]).is_completed()
    finally:
        fleet.outage(name, False)
    assert any("1 unreachable" in m.text for m in fleet.slack.messages("#fleetops"))

    # Slack refusing the token: still a completed run.
    fleet.set_service_faults("slack", error="invalid_auth", rate_limited_calls=0)
    fleet.outage(name, True)
    try:
        assert discovery.run(sources=["static"]).is_completed()
    finally:
        fleet.outage(name, False)


def test_dry_run_writes_nothing(discovery: Discovery) -> None:
    state = discovery.run(dry_run=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert report.dry_run
    assert len(report.diff.added) == len(discovery.fleet.names)
    assert discovery.records() == {}
    assert "dry run" in _artifact("discovery-diff")
    parents = [m for m in discovery.fleet.slack.messages("#fleetops") if not m.is_reply]
    assert len(parents) == 1
    assert "(dry run)" in parents[0].text


@pytest.mark.kubectl
def test_exported_kubeconfig_works_with_kubectl(discovery: Discovery) -> None:
    assert discovery.run().is_completed()
    env = discovery.cli_env()
    out = subprocess.run(
        ["fleetops", "kubeconfig", "--selector", "fleetops.io/provider"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "token:" not in out
    assert discovery.fleet.token(discovery.fleet.names[0]) not in out
    path = discovery.directory / "fleet.kubeconfig"
    path.write_text(out)
    config = yaml.safe_load(out)
    assert {c["name"] for c in config["contexts"]} == discovery.expected_ids()

    # One cluster per provider, each through its own kind of short-lived credential.
    for source in ("eks", "gke", "aks", "kubeconfig"):
        context = sorted(discovery.expected_ids(source))[0]
        result = subprocess.run(
            ["kubectl", "--kubeconfig", str(path), "--context", context, "get", "ns", "-o", "name"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (context, result.stderr)
        assert "namespace/default" in result.stdout

    token = subprocess.run(
        ["fleetops", "token", sorted(discovery.expected_ids("eks"))[0]],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    credential = json.loads(token)
    assert credential["kind"] == "ExecCredential"
    assert credential["status"]["token"].startswith("k8s-aws-v1.")
    assert credential["status"]["expirationTimestamp"]


def test_cli_discover_runs_the_flow(discovery: Discovery) -> None:
    env = discovery.cli_env()
    result = subprocess.run(
        ["fleetops", "discover", "--source", "static"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "4 added" in result.stdout
    assert set(discovery.records()) == discovery.expected_ids(
        "kubeconfig"
    ) | discovery.expected_ids("fleet-file")
    listed = subprocess.run(
        ["fleetops", "inventory", "list", "-l", "env=prod", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(listed)
    assert rows
    assert all(row["labels"]["env"] == "prod" for row in rows)
    retired = rows[0]["id"]
    subprocess.run(["fleetops", "inventory", "retire", retired], env=env, check=True)
    assert discovery.run(sources=["static"]).is_completed()
    assert discovery.records()[retired].state is ClusterState.RETIRED


def test_argocd_registration(discovery: Discovery, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = discovery.fleet
    management_name = fleet.names_in("kubeconfig")[0]
    management_id = fleet.placement(management_name).id
    monkeypatch.setenv("FLEETOPS_ARGOCD_ENABLED", "true")
    monkeypatch.setenv("FLEETOPS_ARGOCD_MANAGEMENT_CLUSTER", management_id)
    api = kubernetes.config.new_client_from_config(
        config_file=str(fleet.kubeconfig_path), context=management_name
    )
    core = kubernetes.client.CoreV1Api(api)
    try:
        namespaces = {n.metadata.name for n in core.list_namespace().items}
        if "argocd" not in namespaces:
            core.create_namespace({"metadata": {"name": "argocd"}})
        assert discovery.run().is_completed()
        secrets = core.list_namespaced_secret(
            "argocd", label_selector="argocd.argoproj.io/secret-type=cluster"
        ).items
        by_id = {s.metadata.annotations["fleetops.io/cluster-id"]: s for s in secrets}
        assert set(by_id) == discovery.expected_ids()
        for cluster_id, secret in by_id.items():
            config = json.loads(base64.b64decode(secret.data["config"]))
            assert base64.b64decode(secret.data["server"]).decode().startswith("https://127.0.0.1:")
            assert config["tlsClientConfig"]["insecure"] is False
            assert "bearerToken" not in config
            if cluster_id.startswith("eks/"):
                assert config["awsAuthConfig"]["roleARN"].startswith("arn:aws:iam::")
            else:
                assert config["execProviderConfig"]["args"] == ["token", cluster_id]
            assert secret.metadata.labels["fleetops.io/provider"] == cluster_id.split("/")[0]
        # Applying again changes nothing.
        versions = {s.metadata.name: s.metadata.resource_version for s in secrets}
        assert discovery.run().is_completed()
        again = core.list_namespaced_secret(
            "argocd", label_selector="argocd.argoproj.io/secret-type=cluster"
        ).items
        assert {s.metadata.name: s.metadata.resource_version for s in again} == versions
    finally:
        api.close()


def test_bad_source_kind_in_parameters_is_refused(discovery: Discovery) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        discovery.run(sources=["ecs"])
    assert not Path(discovery.inventory_url.removeprefix("sqlite:///")).exists()
