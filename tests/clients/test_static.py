"""Static clusters: kubeconfig contexts and the fleet file, against the sandbox fleet."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from fleetops.clients.kube import probe
from fleetops.clients.static import StaticClusters, load_fleet_file, read_kubeconfig
from fleetops.domain.cluster import AuthMethod, Provider
from fleetops.domain.sources import FleetFile
from fleetops.errors import AuthError, ConfigError
from fleetops.settings import KubeSettings, StaticSettings
from sandbox.fleet import Fleet


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_every_kubeconfig_context_is_a_cluster(fleet: Fleet, kubeconfig: Path) -> None:
    static = StaticClusters(kubeconfig=kubeconfig)
    result = static.discover()

    assert (result.name, result.provider, result.accounts) == (
        "static",
        Provider.STATIC,
        ("kubeconfig",),
    )
    assert [c.id for c in result.clusters] == [
        f"static/kubeconfig/static/{name}" for name in fleet.names
    ]
    first = result.clusters[0]
    assert first.endpoint == fleet.server(fleet.names[0])
    assert first.ca_data == fleet.ca_pem(fleet.names[0]).decode()
    assert first.auth is AuthMethod.STATIC_KUBECONFIG
    assert first.labels == {"fleetops.io/provider": "static", "fleetops.io/account": "kubeconfig"}
    for cluster in result.clusters:
        outcome = probe(cluster, static.token_for(cluster))
        assert outcome.ok, outcome.error
        assert outcome.version == fleet.cluster(cluster.name).spec.kubernetes_version


def test_fleet_file_static_clusters_and_overrides(
    fleet: Fleet, kubeconfig: Path, tmp_path: Path
) -> None:
    (tmp_path / "lab.kubeconfig").write_text(kubeconfig.read_text())
    path = _write(
        tmp_path / "clusters.yaml",
        f"""
        version: 1
        static:
          - name: lab-2
            source: on-prem
            kubeconfig: lab.kubeconfig      # relative to this file
            context: {fleet.names[1]}
            labels:
              env: lab
              topology.kubernetes.io/region: dc1
          - name: {fleet.names[2]}
            location: dc2
            kubeconfig: {kubeconfig}
        overrides:
          - id: static/on-prem/dc1/lab-2
            labels: {{wave: "1"}}
          - selector: fleetops.io/provider=static,env=lab
            labels: {{tier: gold}}
        """,
    )
    fleet_file = load_fleet_file(path)
    assert [o.describe() for o in fleet_file.overrides] == [
        "id=static/on-prem/dc1/lab-2",
        "selector=env=lab,fleetops.io/provider=static",
    ]
    static = StaticClusters.from_settings(
        KubeSettings(kubeconfig=kubeconfig), StaticSettings(fleet_file=path)
    )
    result = static.discover()

    assert result.accounts == ("fleet", "kubeconfig", "on-prem")
    by_id = {c.id: c for c in result.clusters}
    lab = by_id["static/on-prem/dc1/lab-2"]
    assert lab.endpoint == fleet.server(fleet.names[1])
    assert lab.labels == {
        "env": "lab",
        "topology.kubernetes.io/region": "dc1",
        "fleetops.io/provider": "static",
        "fleetops.io/account": "on-prem",
        "fleetops.io/region": "dc1",
    }
    assert f"static/fleet/dc2/{fleet.names[2]}" in by_id
    assert len(result.clusters) == len(fleet.names) + 2
    outcome = probe(lab, static.token_for(lab))
    assert outcome.ok, outcome.error


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("static:\n  - name: a\n   kubeconfig: x\n", 3, "not valid YAML"),
        (
            "overrides:\n  - id: eks/1/2/3\n    labels: {a: b}\n  - selector: 'env in prod'\n    labels: {a: b}\n",
            4,
            "overrides.1.selector: invalid label selector",
        ),
        (
            "static:\n  - name: a\n    kubeconfig: k\n    colour: red\n",
            4,
            "static.0.colour: Extra inputs are not permitted",
        ),
        (
            "overrides:\n  - id: x\n    labels: {a: b}\n    labels: {c: d}\n",
            4,
            "key 'labels' is repeated (first at line 3)",
        ),
        ("static:\n  - name: a/b\n    kubeconfig: k\n", 2, "static.0.name: cluster name 'a/b'"),
        (
            "overrides:\n  - id: x\n    selector: env=prod\n    labels: {a: b}\n",
            2,
            "give exactly one of 'id' and 'selector'",
        ),
        (
            "overrides:\n  - selector: env=prod\n    labels:\n      fleetops.io/region: x\n",
            2,
            "computed by fleetops",
        ),
        ("- just\n- a list\n", 1, "must be a mapping"),
    ],
)
def test_a_malformed_fleet_file_names_the_file_and_line(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    path = tmp_path / "clusters.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_fleet_file(path)
    message = str(caught.value)
    assert f"{path}:{line}:" in message
    assert expected in message


def test_several_problems_are_listed_together(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "clusters.yaml",
        """
        static:
          - name: ok
            kubeconfig: k
          - name: bad name
            kubeconfig: k
        overrides:
          - selector: "a b"
            labels: {x: y}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_fleet_file(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == "the fleet file is invalid:"
    assert lines[1].strip().startswith(f"{path}:4: static.1.name:")
    assert lines[2].strip().startswith(f"{path}:7: overrides.0.selector:")


def test_empty_fleet_file_and_missing_file(tmp_path: Path) -> None:
    assert load_fleet_file(_write(tmp_path / "empty.yaml", "# nothing yet\n")) == FleetFile()
    with pytest.raises(ConfigError, match="cannot read the fleet file"):
        load_fleet_file(tmp_path / "absent.yaml")
    # from_settings skips a fleet file that does not exist
    with pytest.raises(ConfigError, match="no static source is configured"):
        StaticClusters.from_settings(
            KubeSettings(kubeconfig=None), StaticSettings(fleet_file=tmp_path / "absent.yaml")
        ).discover()


def test_bad_context_reference_and_names(kubeconfig: Path, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "clusters.yaml",
        f"""
        static:
          - name: ghost
            kubeconfig: {kubeconfig}
            context: no-such-context
        """,
    )
    with pytest.raises(ConfigError, match="no context 'no-such-context' in"):
        StaticClusters(fleet=load_fleet_file(path), fleet_path=path).discover()

    config = yaml.safe_load(kubeconfig.read_text())
    config["contexts"][0]["name"] = "arn:aws:eks:us-east-1:111111111111:cluster/prod"
    odd = tmp_path / "odd.kubeconfig"
    odd.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        StaticClusters(kubeconfig=odd).discover()
    assert "cluster/prod" in str(caught.value)
    assert "fleet file" in str(caught.value)


def test_users_without_a_bearer_token(kubeconfig: Path, tmp_path: Path) -> None:
    config = yaml.safe_load(kubeconfig.read_text())
    first, second = config["users"][0], config["users"][1]
    (tmp_path / "token").write_text(second["user"]["token"] + "\n")
    second["user"] = {"tokenFile": "token"}
    first["user"] = {"client-certificate-data": "Zm9v", "client-key-data": "YmFy"}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))

    contexts = read_kubeconfig(path)
    assert "token" not in repr(contexts[config["contexts"][1]["name"]])
    static = StaticClusters(kubeconfig=path)
    clusters = static.discover().clusters
    with pytest.raises(AuthError, match=r"no bearer token \(it has client-certificate-data"):
        static.token_for(clusters[0])
    token = static.token_for(clusters[1])
    assert token.token.get_secret_value() == second_token(kubeconfig)
    assert probe(clusters[1], token).ok


def second_token(kubeconfig: Path) -> str:
    return str(yaml.safe_load(kubeconfig.read_text())["users"][1]["user"]["token"])


def test_malformed_kubeconfig_names_file_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "kubeconfig",
        """
        apiVersion: v1
        clusters:
          - name: a
            cluster: {server: "https://127.0.0.1:1"}
        contexts:
          - name: a
            context: {cluster: b, user: a}
        """,
    )
    with pytest.raises(ConfigError, match=rf"{path}:6: context 'a' names cluster 'b'"):
        read_kubeconfig(path)
    path.write_text("clusters: [\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: the kubeconfig is not valid YAML"):
        read_kubeconfig(path)


def test_a_self_referencing_anchor_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "kubeconfig",
        """
        apiVersion: v1
        clusters: &a
          - name: x
            cluster: *a
        """,
    )
    with pytest.raises(ConfigError, match=rf"{path}:3: clusters\[0\] needs 'name' and 'cluster'"):
        read_kubeconfig(path)


def test_tokens_follow_an_edited_kubeconfig(kubeconfig: Path, tmp_path: Path) -> None:
    """The parsed kubeconfig is reused across tokens, but an edit is seen at once."""
    config = yaml.safe_load(kubeconfig.read_text())
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    static = StaticClusters(kubeconfig=path)
    cluster = static.discover().clusters[0]
    original = config["users"][0]["user"]["token"]
    assert static.token_for(cluster).token.get_secret_value() == original

    config["users"][0]["user"]["token"] = "rotated-" + original
    path.write_text(yaml.safe_dump(config))
    assert static.token_for(cluster).token.get_secret_value() == "rotated-" + original

    path.unlink()
    with pytest.raises(ConfigError, match="kubeconfig"):
        static.token_for(cluster)
