"""The whole sandbox, driven by the real SDKs from ``sandbox.env`` alone.

Every client here is built from the settings file the sandbox writes (sourced by ``sh``, as a
developer does), never from the fleet object: boto3 (EKS, Route 53, STS), google-cloud-container
(REST), azure-mgmt-containerservice, hvac, slack_sdk, the kubernetes client and kubectl. The
fleet object is only used to read what a server holds (Slack messages) and, in the fault tests,
nothing at all: switches are flipped through the control endpoint, and each fault is observed
through the client's own exception or retry behaviour. No SDK is monkeypatched.

The last test runs ``python -m sandbox up`` in a subprocess and checks that SIGINT stops
everything: exit code 0, bao's process gone, every port closed.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import hvac
import hvac.exceptions
import kubernetes
import pytest
import requests
import yaml
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.mgmt.containerservice import ContainerServiceClient
from botocore.config import Config
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import container_v1
from google.oauth2.credentials import Credentials
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from sandbox.control import ControlError, FleetControl
from sandbox.fleet import Fleet
from sandbox.vault import default_faults
from tests.support.clouds import StaticCredential
from tests.support.processes import read_line, refused, sandbox_up

Settings = dict[str, str]


def source_env(path: Path) -> Settings:
    """What ``set -a; . sandbox.env`` puts into a clean shell's environment."""
    shown = subprocess.run(
        ["sh", "-c", 'set -a; . "$1"; set +a; env -0', "sh", str(path)],
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout.decode()
    pairs = (item.split("=", 1) for item in shown.split("\0") if "=" in item)
    return {k: v for k, v in pairs if k.startswith(("FLEETOPS_", "AWS_"))}


@pytest.fixture(autouse=True, scope="module")
def _no_stray_env() -> Iterator[None]:
    """The tests build every client from sandbox.env; make sure the process env adds nothing."""
    stray = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(("AWS_", "VAULT_"))}
    yield
    os.environ.update(stray)


@pytest.fixture(scope="module")
def env(full_fleet: Fleet) -> Settings:
    return source_env(full_fleet.env_path)


@pytest.fixture
def control(env: Settings, full_fleet_faults: Fleet) -> FleetControl:
    """The control endpoint named in sandbox.env (every switch is reset after the test)."""
    return FleetControl.from_env(env)


# -- clients from settings ------------------------------------------------------------------


def aws_session(env: Settings) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def assumed(env: Settings, role_arn: str) -> boto3.Session:
    sts = aws_session(env).client("sts", endpoint_url=env["AWS_ENDPOINT_URL"])
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="sandbox-test")["Credentials"]
    return boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def eks_clusters(env: Settings) -> dict[str, tuple[boto3.Session, str, dict[str, Any]]]:
    """Every EKS cluster over the accounts and regions in the settings: name -> (session,
    region, describe_cluster answer)."""
    found = {}
    for role_arn in env["FLEETOPS_EKS_ACCOUNTS"].split(","):
        session = assumed(env, role_arn)
        for region in env["FLEETOPS_EKS_REGIONS"].split(","):
            eks = session.client("eks", region_name=region, endpoint_url=env["AWS_ENDPOINT_URL"])
            for page in eks.get_paginator("list_clusters").paginate():
                for name in page["clusters"]:
                    found[name] = (session, region, eks.describe_cluster(name=name)["cluster"])
    return found


def eks_token(session: boto3.Session, cluster: str, region: str) -> str:
    """``aws eks get-token``: a presigned STS GetCallerIdentity with x-k8s-aws-id signed in."""
    sts = session.client("sts", region_name=region)

    def add_cluster_id(request: Any, **kwargs: Any) -> None:
        request.headers["x-k8s-aws-id"] = cluster

    sts.meta.events.register("before-sign.sts.GetCallerIdentity", add_cluster_id)
    url = sts.generate_presigned_url(
        "get_caller_identity", Params={}, ExpiresIn=60, HttpMethod="GET"
    )
    return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def gke_client(env: Settings) -> container_v1.ClusterManagerClient:
    return container_v1.ClusterManagerClient(
        credentials=Credentials(token=env["FLEETOPS_GKE_ACCESS_TOKEN"]),
        transport="rest",
        client_options=ClientOptions(api_endpoint=env["FLEETOPS_GKE_ENDPOINT"]),
    )


def aks_client(env: Settings, subscription: str, **kwargs: Any) -> ContainerServiceClient:
    return ContainerServiceClient(
        StaticCredential(env["FLEETOPS_AKS_ACCESS_TOKEN"]),
        subscription,
        base_url=env["FLEETOPS_AKS_BASE_URL"],
        connection_verify=env["FLEETOPS_AKS_CA_BUNDLE"],
        **kwargs,
    )


def vault_client(env: Settings) -> hvac.Client:
    session = requests.Session()
    session.trust_env = False
    client = hvac.Client(url=env["FLEETOPS_VAULT_ADDR"], session=session)
    client.token = None  # neither VAULT_TOKEN nor ~/.vault-token of whoever runs the tests
    return client


def approle_login(env: Settings) -> hvac.Client:
    client = vault_client(env)
    client.auth.approle.login(
        role_id=env["FLEETOPS_VAULT_ROLE_ID"], secret_id=env["FLEETOPS_VAULT_SECRET_ID"]
    )
    return client


def read_secret(client: hvac.Client, path: str) -> dict[str, str]:
    answer = client.secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True
    )
    return dict(answer["data"]["data"])


def slack_client(env: Settings, **kwargs: Any) -> WebClient:
    return WebClient(
        token=env["FLEETOPS_SLACK_TOKEN"], base_url=env["FLEETOPS_SLACK_BASE_URL"], **kwargs
    )


def kube_api(server: str, ca_pem: str, token: str) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration(
        host=server,
        api_key={"BearerToken": token},
        api_key_prefix={"BearerToken": "Bearer"},
    )
    configuration.ca_cert_data = ca_pem
    configuration.retries = False
    return kubernetes.client.ApiClient(configuration)


def whoami(server: str, ca_pem: str, token: str) -> tuple[int, str]:
    """(HTTP status, username) of a SelfSubjectReview, as ``kubectl auth whoami`` asks it."""
    api = kube_api(server, ca_pem, token)
    try:
        review = kubernetes.client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
        return 201, review.status.user_info.username
    except kubernetes.client.ApiException as exc:
        return exc.status, ""
    finally:
        api.close()


def list_namespaces(server: str, ca_pem: str, token: str) -> int:
    """HTTP status of listing namespaces with ``token``."""
    api = kube_api(server, ca_pem, token)
    try:
        kubernetes.client.CoreV1Api(api).list_namespace()
        return 200
    except kubernetes.client.ApiException as exc:
        return exc.status
    finally:
        api.close()


# -- the settings file ------------------------------------------------------------------------


def test_sandbox_env_is_private_and_names_every_service(full_fleet: Fleet, env: Settings) -> None:
    assert stat.S_IMODE(full_fleet.env_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((full_fleet.directory / "vault").stat().st_mode) == 0o700
    expected = {
        "FLEETOPS_SANDBOX_DIR", "FLEETOPS_SANDBOX_CONTROL_URL", "FLEETOPS_KUBECONFIG",
        "FLEETOPS_STATIC_FLEET_FILE",
        "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
        "FLEETOPS_AWS_ENDPOINT_URL", "FLEETOPS_EKS_ACCOUNTS", "FLEETOPS_EKS_REGIONS",
        "FLEETOPS_SANDBOX_ROUTE53_ZONE_ID", "FLEETOPS_SANDBOX_ROUTE53_RECORD",
        "FLEETOPS_GKE_PROJECTS", "FLEETOPS_GKE_ENDPOINT", "FLEETOPS_GKE_ACCESS_TOKEN",
        "FLEETOPS_SANDBOX_GKE_FORBIDDEN_PROJECT",
        "FLEETOPS_AKS_SUBSCRIPTIONS", "FLEETOPS_AKS_BASE_URL", "FLEETOPS_AKS_CA_BUNDLE",
        "FLEETOPS_AKS_ACCESS_TOKEN", "FLEETOPS_SANDBOX_AKS_FORBIDDEN_SUBSCRIPTION",
        "FLEETOPS_VAULT_ADDR", "FLEETOPS_VAULT_ROLE_ID", "FLEETOPS_VAULT_SECRET_ID",
        "FLEETOPS_SANDBOX_VAULT_ROOT_TOKEN",
        "FLEETOPS_SLACK_TOKEN", "FLEETOPS_SLACK_BASE_URL", "FLEETOPS_SLACK_CHANNEL",
    }  # fmt: skip
    assert set(env) == expected
    assert "FLEETOPS_VAULT_TOKEN" not in env  # the product logs in with AppRole, not as root
    for key, value in env.items():
        if key.endswith(("_URL", "_ADDR", "_ENDPOINT")):
            assert value.startswith(("http://127.0.0.1:", "https://127.0.0.1:")), key
    assert FleetControl.from_env(env).url == full_fleet.control_url
    # the public description carries no secret
    public = full_fleet.json_path.read_text() + full_fleet.fleet_file_path.read_text()
    for key in ("AWS_SECRET_ACCESS_KEY", "FLEETOPS_GKE_ACCESS_TOKEN", "FLEETOPS_SLACK_TOKEN",
                "FLEETOPS_AKS_ACCESS_TOKEN", "FLEETOPS_VAULT_SECRET_ID",
                "FLEETOPS_SANDBOX_VAULT_ROOT_TOKEN"):  # fmt: skip
        assert env[key] not in public, key
    assert stat.S_IMODE(full_fleet.static_kubeconfig_path.stat().st_mode) == 0o600


def test_fleetops_settings_read_the_sandbox_env(
    env: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fleetops.settings import Settings as FleetopsSettings

    monkeypatch.chdir(tmp_path)  # no stray .env file
    for key in [k for k in os.environ if k.startswith(("FLEETOPS_", "AWS_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = FleetopsSettings()
    assert [a.account_id for a in settings.eks.accounts] == ["111111111111", "222222222222"]
    assert all(a.role_arn for a in settings.eks.accounts)
    assert settings.eks.regions == ("us-east-1", "us-west-2", "eu-west-1")
    assert settings.aws.endpoint_url == env["AWS_ENDPOINT_URL"]
    assert settings.gke.projects == ("fleetops-prod", "fleetops-staging")
    assert settings.gke.access_token is not None
    assert len(settings.aks.subscriptions) == 2
    assert str(settings.aks.ca_bundle) == env["FLEETOPS_AKS_CA_BUNDLE"]
    assert str(settings.vault.addr).rstrip("/") == env["FLEETOPS_VAULT_ADDR"]
    assert settings.vault.token is None
    assert str(settings.slack.base_url) == env["FLEETOPS_SLACK_BASE_URL"]
    assert settings.slack.channel == "#fleetops"
    assert str(settings.kube.kubeconfig) == env["FLEETOPS_KUBECONFIG"]
    assert str(settings.static.fleet_file) == env["FLEETOPS_STATIC_FLEET_FILE"]


# -- placement: every cluster in exactly one source ------------------------------------------------


def test_every_cluster_is_found_in_exactly_one_source(full_fleet: Fleet, env: Settings) -> None:
    from fleetops.clients.static import load_fleet_file, read_kubeconfig

    found: dict[str, list[str]] = {}

    def saw(source: str, name: str) -> None:
        found.setdefault(name, []).append(source)

    for name in eks_clusters(env):
        saw("eks", name)
    gke = gke_client(env)
    for project in env["FLEETOPS_GKE_PROJECTS"].split(","):
        for cluster in gke.list_clusters(parent=f"projects/{project}/locations/-").clusters:
            saw("gke", cluster.name)
    for subscription in env["FLEETOPS_AKS_SUBSCRIPTIONS"].split(","):
        for cluster in aks_client(env, subscription).managed_clusters.list():
            saw("aks", cluster.name)
    for name in read_kubeconfig(Path(env["FLEETOPS_KUBECONFIG"])):
        saw("kubeconfig", name)
    fleet_file = load_fleet_file(Path(env["FLEETOPS_STATIC_FLEET_FILE"]))
    for entry in fleet_file.static:
        saw("fleet-file", entry.name)

    assert sorted(found) == sorted(full_fleet.names)
    assert {name: sources for name, sources in found.items() if len(sources) != 1} == {}
    by_source: dict[str, int] = {}
    for name, (source,) in found.items():
        assert full_fleet.placement(name).source == source
        assert name.startswith(source if source in ("eks", "gke", "aks") else "static-")
        by_source[source] = by_source.get(source, 0) + 1
    assert by_source == {"eks": 3, "gke": 3, "aks": 2, "kubeconfig": 2, "fleet-file": 2}

    described = {c["name"]: c for c in json.loads(full_fleet.json_path.read_text())["clusters"]}
    assert described["eks-prod-use1-01"]["id"] == "eks/111111111111/us-east-1/eks-prod-use1-01"
    assert {described[n]["provider"] for n in found} == {"eks", "gke", "aks", "static"}


# -- AWS ----------------------------------------------------------------------------------------


def test_eks_discovery_across_accounts_and_regions_leads_to_clusters_that_take_eks_tokens(
    full_fleet: Fleet, env: Settings
) -> None:
    clusters = eks_clusters(env)
    assert len(clusters) == 3
    accounts = {arn.split(":")[4] for arn in env["FLEETOPS_EKS_ACCOUNTS"].split(",")}
    assert {d["arn"].split(":")[4] for _, _, d in clusters.values()} == accounts
    assert {region for _, region, _ in clusters.values()} == {"us-east-1", "us-west-2", "eu-west-1"}
    names = sorted(clusters)
    for name in names:
        session, region, described = clusters[name]
        assert set(described["tags"]) == {"env", "team"}
        assert described["status"] == "ACTIVE"
        ca_pem = base64.b64decode(described["certificateAuthority"]["data"]).decode()
        token = eks_token(session, name, region)
        api = kube_api(described["endpoint"], ca_pem, token)
        try:
            version = kubernetes.client.VersionApi(api).get_code()
        finally:
            api.close()
        assert version.git_version.startswith("v1.")
        code, user = whoami(described["endpoint"], ca_pem, token)
        assert code == 201
        assert user.startswith("arn:aws:sts::")
        assert ":assumed-role/fleetops-discovery/" in user

    # a token for one cluster does not open another; the admin token still does
    session, region, _ = clusters[names[0]]
    _, _, second = clusters[names[1]]
    second_ca = base64.b64decode(second["certificateAuthority"]["data"]).decode()
    foreign = eks_token(session, names[0], region)
    assert list_namespaces(second["endpoint"], second_ca, foreign) == 401
    admin = full_fleet.token(names[1])
    assert whoami(second["endpoint"], second_ca, admin) == (201, f"{names[1]}-admin")


def test_route53_holds_weighted_records_for_the_demo_app(env: Settings) -> None:
    route53 = aws_session(env).client("route53", endpoint_url=env["AWS_ENDPOINT_URL"])
    records = route53.list_resource_record_sets(
        HostedZoneId=env["FLEETOPS_SANDBOX_ROUTE53_ZONE_ID"]
    )["ResourceRecordSets"]
    weighted = [r for r in records if r["Name"] == env["FLEETOPS_SANDBOX_ROUTE53_RECORD"]]
    assert sorted(r["SetIdentifier"] for r in weighted) == ["eu-west-1", "us-east-1", "us-west-2"]
    assert {r["Weight"] for r in weighted} == {100}


# -- GKE ----------------------------------------------------------------------------------------


def test_gke_lists_clusters_in_two_projects_and_the_google_token_reaches_them(
    full_fleet: Fleet, env: Settings
) -> None:
    client = gke_client(env)
    seen = []
    for project in env["FLEETOPS_GKE_PROJECTS"].split(","):
        for cluster in client.list_clusters(parent=f"projects/{project}/locations/-").clusters:
            assert cluster.status == container_v1.Cluster.Status.RUNNING
            assert set(cluster.resource_labels) == {"env", "team"}
            ca_pem = base64.b64decode(cluster.master_auth.cluster_ca_certificate).decode()
            server = f"https://{cluster.endpoint}"
            code, user = whoami(server, ca_pem, env["FLEETOPS_GKE_ACCESS_TOKEN"])
            assert (code, user) == (201, "fleetops-discovery@fleetops-prod.iam.gserviceaccount.com")
            seen.append((project, cluster.name))
    assert {p for p, _ in seen} == {"fleetops-prod", "fleetops-staging"}
    assert len(seen) == 3
    # the Google token is no key to a cluster of another provider
    eks = full_fleet.names_in("eks")[0]
    ca = full_fleet.ca_pem(eks).decode()
    assert list_namespaces(full_fleet.server(eks), ca, env["FLEETOPS_GKE_ACCESS_TOKEN"]) == 401

    forbidden = env["FLEETOPS_SANDBOX_GKE_FORBIDDEN_PROJECT"]
    with pytest.raises(gexc.Forbidden, match=r"container\.clusters\.list"):
        client.list_clusters(parent=f"projects/{forbidden}/locations/-")


# -- AKS ----------------------------------------------------------------------------------------


def test_aks_lists_two_subscriptions_and_the_user_kubeconfig_works_with_kubectl(
    full_fleet: Fleet, env: Settings, tmp_path: Path
) -> None:
    seen = []
    for subscription in env["FLEETOPS_AKS_SUBSCRIPTIONS"].split(","):
        client = aks_client(env, subscription)
        for cluster in client.managed_clusters.list():
            group = cluster.id.split("/")[4]
            credentials = client.managed_clusters.list_cluster_user_credentials(group, cluster.name)
            path = tmp_path / f"{cluster.name}.kubeconfig"
            path.write_bytes(credentials.kubeconfigs[0].value)
            result = subprocess.run(
                ["kubectl", "--kubeconfig", str(path), "auth", "whoami", "-o", "json"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            user = json.loads(result.stdout)["status"]["userInfo"]["username"]
            assert user == f"clusterUser_{group}_{cluster.name}"
            assert cluster.tags is not None
            assert set(cluster.tags) == {"env", "team"}
            seen.append((subscription, cluster.name, path))
    assert len({s for s, _, _ in seen}) == 2
    # one AKS cluster's user token is forbidden on another AKS cluster
    (_, _, first_path), (_, second, _) = seen[0], seen[1]
    token = yaml.safe_load(first_path.read_text())["users"][0]["user"]["token"]
    ca = full_fleet.ca_pem(second).decode()
    assert list_namespaces(full_fleet.server(second), ca, token) == 403

    forbidden = env["FLEETOPS_SANDBOX_AKS_FORBIDDEN_SUBSCRIPTION"]
    with pytest.raises(HttpResponseError) as caught:
        list(aks_client(env, forbidden).managed_clusters.list())
    assert caught.value.status_code == 403
    assert caught.value.error is not None
    assert caught.value.error.code == "AuthorizationFailed"


# -- static -------------------------------------------------------------------------------------


@pytest.mark.kubectl
def test_static_clusters_are_reached_through_their_kubeconfig_contexts(
    full_fleet: Fleet, env: Settings
) -> None:
    fleet_file = yaml.safe_load(Path(env["FLEETOPS_STATIC_FLEET_FILE"]).read_text())
    entry = fleet_file["static"][0]
    kubeconfig = Path(env["FLEETOPS_STATIC_FLEET_FILE"]).parent / entry["kubeconfig"]
    static_context = full_fleet.names_in("kubeconfig")[0]
    for config, context in ((kubeconfig, entry["context"]),
                            (Path(env["FLEETOPS_KUBECONFIG"]), static_context)):  # fmt: skip
        result = subprocess.run(
            ["kubectl", "--kubeconfig", str(config), "--context", context, "get", "ns", "-o",
             "name"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "namespace/default" in result.stdout.split()


# -- Vault --------------------------------------------------------------------------------------


def test_vault_approle_login_reads_the_seeded_secret(full_fleet: Fleet, env: Settings) -> None:
    client = approle_login(env)
    assert set(read_secret(client, "fleetops/hello")) == {"username", "password", "api-key"}
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(
            path="other/thing", mount_point="secret", raise_on_deleted_version=True
        )
    # Kubernetes auth: a service-account token of the configured cluster, checked by bao
    # through that cluster's TokenReview
    vault = json.loads(full_fleet.json_path.read_text())["services"]["vault"]["kubernetes"]
    token = FleetControl.from_env(env).service_account_token(
        vault["cluster"], vault["namespace"], vault["service_account"]
    )
    k8s = vault_client(env)
    login = k8s.auth.kubernetes.login(role=vault["role"], jwt=token)
    assert login["auth"]["metadata"]["service_account_name"] == "fleetops"
    assert read_secret(k8s, "fleetops/hello-db")["username"] == "hello"
    other = full_fleet.names[1]
    with pytest.raises(hvac.exceptions.Forbidden):
        vault_client(env).auth.kubernetes.login(
            role="fleetops", jwt=full_fleet.service_account_token(other)
        )


# -- Slack --------------------------------------------------------------------------------------


def test_slack_posts_a_thread_the_server_holds(full_fleet: Fleet, env: Settings) -> None:
    client = slack_client(env)
    assert client.auth_test()["ok"] is True
    channel = env["FLEETOPS_SLACK_CHANNEL"]
    parent = client.chat_postMessage(channel=channel, text="rollout hello: wave 1")
    client.chat_postMessage(channel=channel, text="wave 1 healthy", thread_ts=parent["ts"])
    client.chat_update(channel=parent["channel"], ts=parent["ts"], text="rollout hello: done")
    thread = full_fleet.slack.thread(channel, parent["ts"])
    assert [m.text for m in thread] == ["rollout hello: done", "wave 1 healthy"]
    assert thread[1].thread_ts == parent["ts"]
    held = FleetControl.from_env(env).slack_messages()
    assert {m["text"] for m in held} >= {"rollout hello: done", "wave 1 healthy"}


# -- fault switches, through the control endpoint, seen by the clients ----------------------------


def test_aws_throttling_is_retried_by_botocore_then_raised(
    control: FleetControl, env: Settings
) -> None:
    eks = aws_session(env).client(
        "eks",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        config=Config(retries={"mode": "standard", "max_attempts": 2}),
    )
    control.set_service_faults("aws", error_rate=1.0)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        eks.list_clusters()
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["ResponseMetadata"]["RetryAttempts"] >= 1  # botocore retried
    control.reset_service_faults("aws")
    assert "clusters" in eks.list_clusters()


def test_aws_outage_refuses_connections(control: FleetControl, env: Settings) -> None:
    eks = aws_session(env).client(
        "eks",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2),
    )
    assert control.service_outage("aws", True)["outage"] is True
    assert control.service("aws")["listening"] is False
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        eks.list_clusters()
    control.service_outage("aws", False)
    assert "clusters" in eks.list_clusters()


def test_gke_quota_error_and_outage(control: FleetControl, env: Settings) -> None:
    client = gke_client(env)
    parent = "projects/fleetops-prod/locations/-"
    control.set_service_faults("gke", error_rate=1.0)
    with pytest.raises(gexc.TooManyRequests, match="Quota exceeded"):
        client.list_clusters(parent=parent)
    control.set_service_faults("gke", error_rate=0.0, outage=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.list_clusters(parent=parent)
    control.reset_service_faults("gke")
    assert client.list_clusters(parent=parent).clusters


def test_aks_throttling_honours_retry_after_then_raises_and_outage(
    control: FleetControl, env: Settings
) -> None:
    subscription = env["FLEETOPS_AKS_SUBSCRIPTIONS"].split(",")[0]
    control.set_service_faults("aks", error_rate=1.0, retry_after_seconds=1)
    client = aks_client(env, subscription, retry_total=1)
    began = time.monotonic()
    with pytest.raises(HttpResponseError) as caught:
        list(client.managed_clusters.list())
    assert time.monotonic() - began >= 1.0  # azure-core slept Retry-After once
    assert caught.value.status_code == 429
    assert caught.value.response is not None
    assert caught.value.response.headers["Retry-After"] == "1"
    control.set_service_faults("aks", error_rate=0.0, outage=True)
    with pytest.raises(ServiceRequestError):
        list(aks_client(env, subscription, retry_total=0).managed_clusters.list())
    control.reset_service_faults("aks")
    assert list(client.managed_clusters.list())


def test_vault_sealed_then_stopped_then_back_with_its_data(
    control: FleetControl, env: Settings
) -> None:
    client = approle_login(env)
    before = read_secret(client, "fleetops/hello")
    assert control.set_service_faults("vault", sealed=True) == default_faults() | {"sealed": True}
    with pytest.raises(hvac.exceptions.VaultDown):
        read_secret(client, "fleetops/hello")
    control.set_service_faults("vault", sealed=False)
    assert read_secret(client, "fleetops/hello") == before  # the same token works again
    control.service_outage("vault", True)
    with pytest.raises(requests.exceptions.ConnectionError):
        read_secret(client, "fleetops/hello")
    control.reset_service_faults("vault")
    assert read_secret(client, "fleetops/hello") == before


def test_vault_latency_and_error_rate_through_the_control_endpoint(
    control: FleetControl, env: Settings
) -> None:
    client = approle_login(env)
    before = read_secret(client, "fleetops/hello")
    try:
        switches = control.set_service_faults("vault", latency_seconds=0.3)
        assert switches == default_faults() | {"latency_seconds": 0.3}
        began = time.monotonic()
        assert read_secret(client, "fleetops/hello") == before
        assert time.monotonic() - began >= 0.3
        control.set_service_faults("vault", latency_seconds=0, error_rate=1.0, error_code=503)
        with pytest.raises(hvac.exceptions.VaultDown):
            read_secret(client, "fleetops/hello")
        control.set_service_faults("vault", error_code=429, retry_after_seconds=3)
        with pytest.raises(hvac.exceptions.RateLimitExceeded, match="rate limit quota exceeded"):
            read_secret(client, "fleetops/hello")
        assert control.service_faults("vault")["error_rate"] == 1.0
    finally:
        assert control.reset_service_faults("vault") == default_faults()
    assert read_secret(client, "fleetops/hello") == before


def test_slack_rate_limit_error_and_outage(control: FleetControl, env: Settings) -> None:
    channel = env["FLEETOPS_SLACK_CHANNEL"]
    control.set_service_faults("slack", rate_limited_calls=1, retry_after_seconds=1)
    with pytest.raises(SlackApiError) as caught:
        slack_client(env).chat_postMessage(channel=channel, text="too fast")
    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "1"
    control.set_service_faults("slack", rate_limited_calls=1, retry_after_seconds=0)
    patient = slack_client(env, retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    assert patient.chat_postMessage(channel=channel, text="after a retry")["ok"] is True
    control.set_service_faults("slack", error="channel_not_found")
    with pytest.raises(SlackApiError) as caught:
        slack_client(env).chat_postMessage(channel=channel, text="nowhere")
    assert caught.value.response["error"] == "channel_not_found"
    control.set_service_faults("slack", error=None, outage=True)
    with pytest.raises(urllib.error.URLError):
        slack_client(env).chat_postMessage(channel=channel, text="lost")
    control.reset_service_faults("slack")
    assert slack_client(env).chat_postMessage(channel=channel, text="back")["ok"] is True


@pytest.mark.parametrize("service", ["aws", "gke", "aks", "slack"])
def test_latency_delays_every_answer(control: FleetControl, env: Settings, service: str) -> None:
    calls = {
        "aws": lambda: (
            aws_session(env).client("eks", endpoint_url=env["AWS_ENDPOINT_URL"]).list_clusters()
        ),
        "gke": lambda: gke_client(env).list_clusters(parent="projects/fleetops-prod/locations/-"),
        "aks": lambda: list(
            aks_client(env, env["FLEETOPS_AKS_SUBSCRIPTIONS"].split(",")[0]).managed_clusters.list()
        ),
        "slack": lambda: slack_client(env).auth_test(),
    }
    control.set_service_faults(service, latency_seconds=0.3)
    began = time.monotonic()
    calls[service]()
    assert time.monotonic() - began >= 0.3


def test_control_endpoint_lists_services_and_refuses_bad_switches(
    control: FleetControl, full_fleet: Fleet
) -> None:
    listed = {s["name"]: s for s in control.services()}
    assert sorted(listed) == ["aks", "aws", "gke", "slack", "vault"]
    assert all(s["listening"] for s in listed.values())
    assert listed["vault"]["pid"] == full_fleet.vault.pid
    assert listed["slack"]["url"] == full_fleet.slack_url
    for service, changes, field in [
        ("aws", {"error_rate": 2}, "error_rate"),
        ("gke", {"latency": 1}, "latency"),
        ("slack", {"error": "Not A Code"}, "error"),
        ("vault", {"sealed": "yes"}, "sealed"),
        ("vault", {"latency_seconds": -1}, "latency_seconds"),
        ("vault", {"error_code": 418}, "error_code"),
        ("vault", {"delay": 1}, "delay"),
    ]:
        with pytest.raises(ControlError) as caught:
            control.set_service_faults(service, **changes)
        assert caught.value.status == 400
        assert caught.value.field == field
    with pytest.raises(ControlError) as caught:
        control.service_faults("route53")
    assert caught.value.status == 404
    assert control.service_faults("aws")["error_rate"] == 0.0


# -- python -m sandbox up -------------------------------------------------------------------------


def _port(url: str) -> int:
    return int(url.rstrip("/").split(":")[-1].split("/")[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_sandbox_up_brings_everything_up_and_sigint_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "sandbox"
    process = sandbox_up("--clusters", "12", "--dir", str(directory), "--rollout-seconds", "0.2")
    try:
        line = read_line(process, timeout=60)
        assert line.startswith(
            "sandbox ready: 12 clusters (eks 3, gke 3, aks 2, static 4), "
            "services aws,gke,aks,vault,slack, kubeconfig "
        ), line
        for name in ("kubeconfig", "static-kubeconfig", "clusters.yaml", "sandbox.env",
                     "fleet.json", "aks-ca.pem"):  # fmt: skip
            assert (directory / name).is_file(), name
        env = source_env(directory / "sandbox.env")
        described = json.loads((directory / "fleet.json").read_text())
        vault = described["services"]["vault"]
        assert _alive(vault["pid"])
        # a taste of each service, from the settings alone
        assert read_secret(approle_login(env), "fleetops/hello")["username"] == "hello-app"
        assert slack_client(env).auth_test()["ok"] is True
        assert len(eks_clusters(env)) == 3
        FleetControl.from_env(env).set_service_faults("gke", latency_seconds=0.01)

        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert out.strip() == "sandbox stopped"  # one ready line was read above, nothing else
    assert not _alive(vault["pid"]), "bao outlived the sandbox"
    ports = [c["port"] for c in described["clusters"]]
    ports += [_port(described["control_url"]), _port(vault["addr"])]
    backend = _port(vault["backend_addr"])
    ports += [backend, backend + 1]  # bao's API and cluster ports
    services = described["services"]
    ports += [_port(services["aws"]["endpoint_url"]), _port(services["gke"]["endpoint"])]
    ports += [_port(services["aks"]["base_url"]), _port(services["slack"]["base_url"])]
    assert len(ports) == 12 + 8
    still_open = [port for port in ports if not refused(port)]
    assert still_open == []


def test_sandbox_up_prefix_names_the_clusters(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    process = sandbox_up(
        "--clusters", "2", "--dir", str(directory), "--no-services", "--prefix", "east"
    )
    try:
        line = read_line(process, timeout=60)
        assert line.startswith("sandbox ready: 2 clusters (static 2)"), line
        kubeconfig = yaml.safe_load((directory / "kubeconfig").read_text())
        assert [c["name"] for c in kubeconfig["contexts"]] == ["east-01", "east-02"]
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
