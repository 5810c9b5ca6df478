"""The AKS (ARM) stand-in, driven by azure-mgmt-containerservice over HTTPS."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import yaml
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.core.rest import HttpRequest
from azure.mgmt.containerservice import ContainerServiceClient

from sandbox.clouds.aks import AksSandbox
from sandbox.fleet import Fleet
from tests.support.clouds import (
    CA_PEM,
    SUB_A,
    SUB_B,
    SUB_LOCKED,
    StaticCredential,
    aks_cluster,
    fail_then_pass_seed,
    fleet_member,
    fresh,
    started,
)
from tests.support.hosting import LoopHost

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.sandbox-arm-token"
#: per-cluster user tokens that override the made-up default (cluster id -> token)
USER_TOKENS: dict[str, str] = {}


CLUSTERS = [
    aks_cluster(
        SUB_A, "rg-prod", "eastus", "aks-prod-1", 8001, labels={"env": "prod", "team": "web"}
    ),
    aks_cluster(SUB_A, "rg-prod", "westeurope", "aks-prod-2", 8002, labels={"env": "prod"}),
    aks_cluster(SUB_A, "rg-dev", "eastus", "aks-dev-1", 8003, labels={"env": "dev"}),
    aks_cluster(SUB_A, "rg-dev", "eastus", "aks-dev-2", 8004, status="STOPPED"),
    aks_cluster(SUB_A, "rg-dev", "southeastasia", "aks-dev-3", 8005),
    aks_cluster(SUB_B, "rg-shared", "westeurope", "aks-shared", 8006, labels={"env": "staging"}),
    aks_cluster(SUB_LOCKED, "rg-x", "eastus", "aks-locked", 8007),
]


@pytest.fixture(scope="module")
def host() -> Iterator[LoopHost]:
    with LoopHost() as cloud_host:
        yield cloud_host


@pytest.fixture(scope="module")
def aks_module(host: LoopHost) -> Iterator[AksSandbox]:
    sandbox = AksSandbox(
        CLUSTERS,
        access_token=TOKEN,
        user_token=lambda cluster: USER_TOKENS.get(cluster.id, f"user-token-for-{cluster.name}"),
        subscriptions={SUB_LOCKED: False},
        page_size=2,
    )
    yield from started(sandbox, host)


@pytest.fixture
def aks(aks_module: AksSandbox, host: LoopHost) -> Iterator[AksSandbox]:
    yield from fresh(aks_module, host)


def _client(
    aks: AksSandbox, subscription: str = SUB_A, token: str = TOKEN, **kwargs: Any
) -> ContainerServiceClient:
    return ContainerServiceClient(
        StaticCredential(token),
        subscription,
        base_url=aks.url,
        connection_verify=aks.ca_file,
        **kwargs,
    )


def test_list_pages_through_next_link(aks: AksSandbox) -> None:
    clusters = list(_client(aks).managed_clusters.list())

    assert sorted(c.name for c in clusters) == [
        "aks-dev-1",
        "aks-dev-2",
        "aks-dev-3",
        "aks-prod-1",
        "aks-prod-2",
    ]
    pages = aks.requests.records()
    assert len(pages) == 3  # five clusters, two per page
    assert all(r.path.endswith("/managedClusters") and r.status == 200 for r in pages)
    prod = next(c for c in clusters if c.name == "aks-prod-1")
    assert prod.id == (
        f"/subscriptions/{SUB_A}/resourcegroups/rg-prod/providers/"
        "Microsoft.ContainerService/managedClusters/aks-prod-1"
    )
    assert prod.location == "eastus"
    assert prod.tags == {"env": "prod", "team": "web"}
    assert prod.properties.kubernetes_version == "1.29.7"
    assert prod.properties.current_kubernetes_version == "1.29.7"
    assert prod.properties.fqdn == "127.0.0.1:8001"
    assert prod.properties.provisioning_state == "Succeeded"
    assert prod.properties.power_state.code == "Running"
    stopped = next(c for c in clusters if c.name == "aks-dev-2")
    assert stopped.properties.power_state.code == "Stopped"


def test_second_subscription_and_resource_group_listing(aks: AksSandbox) -> None:
    assert [c.name for c in _client(aks, SUB_B).managed_clusters.list()] == ["aks-shared"]
    in_group = _client(aks).managed_clusters.list_by_resource_group("RG-DEV")  # case-insensitive
    assert sorted(c.name for c in in_group) == ["aks-dev-1", "aks-dev-2", "aks-dev-3"]
    with pytest.raises(ResourceNotFoundError) as caught:
        list(_client(aks).managed_clusters.list_by_resource_group("rg-nope"))
    assert caught.value.error.code == "ResourceGroupNotFound"


def test_get_and_missing_cluster(aks: AksSandbox) -> None:
    client = _client(aks)
    cluster = client.managed_clusters.get("rg-prod", "aks-prod-2")
    assert (cluster.name, cluster.location) == ("aks-prod-2", "westeurope")
    assert cluster.properties.fqdn == "127.0.0.1:8002"
    with pytest.raises(ResourceNotFoundError) as caught:
        client.managed_clusters.get("rg-prod", "nope")
    assert caught.value.error.code == "ResourceNotFound"


def test_user_credential_is_a_kubeconfig_for_the_cluster(aks: AksSandbox) -> None:
    result = _client(aks).managed_clusters.list_cluster_user_credentials("rg-dev", "aks-dev-1")

    assert [k.name for k in result.kubeconfigs] == ["clusterUser"]
    kubeconfig = yaml.safe_load(result.kubeconfigs[0].value)  # the SDK base64-decodes it
    [cluster] = kubeconfig["clusters"]
    assert cluster["cluster"]["server"] == "https://127.0.0.1:8003"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode() == CA_PEM
    [user] = kubeconfig["users"]
    assert user == {
        "name": "clusterUser_rg-dev_aks-dev-1",
        "user": {"token": "user-token-for-aks-dev-1"},
    }
    assert kubeconfig["current-context"] == "aks-dev-1"
    assert aks.requests.records()[-1].method == "POST"


def test_wrong_token_is_client_authentication_error(aks: AksSandbox) -> None:
    with pytest.raises(ClientAuthenticationError) as caught:
        _client(aks, token="not-the-token").managed_clusters.get("rg-prod", "aks-prod-1")
    assert caught.value.status_code == 401
    assert caught.value.error.code == "InvalidAuthenticationToken"


def test_subscription_access(aks: AksSandbox) -> None:
    with pytest.raises(HttpResponseError) as caught:
        list(_client(aks, SUB_LOCKED).managed_clusters.list())
    assert caught.value.status_code == 403
    assert caught.value.error.code == "AuthorizationFailed"
    with pytest.raises(ResourceNotFoundError) as missing:
        list(_client(aks, "00000000-0000-4000-8000-0000000000ff").managed_clusters.list())
    assert missing.value.error.code == "SubscriptionNotFound"


def test_api_version_is_required(aks: AksSandbox) -> None:
    path = f"/subscriptions/{SUB_A}/providers/Microsoft.ContainerService/managedClusters"
    response = _client(aks).send_request(HttpRequest("GET", f"{aks.url}{path}"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MissingApiVersionParameter"


def test_throttling_is_retried_after_retry_after(aks: AksSandbox, host: LoopHost) -> None:
    aks.faults.rng.seed(fail_then_pass_seed(0.5))
    host.call(aks.apply_faults(error_rate=0.5, retry_after_seconds=1))
    started = time.monotonic()
    cluster = _client(aks).managed_clusters.get("rg-prod", "aks-prod-1")
    elapsed = time.monotonic() - started

    assert cluster.name == "aks-prod-1"
    assert [(r.status, r.injected) for r in aks.requests.records()] == [(429, True), (200, False)]
    assert elapsed >= 1.0  # azure-core slept for Retry-After


def test_throttling_surfaces_when_retries_run_out(aks: AksSandbox, host: LoopHost) -> None:
    host.call(aks.apply_faults(error_rate=1.0, retry_after_seconds=0))
    with pytest.raises(HttpResponseError) as caught:
        _client(aks, retry_total=1, retry_backoff_factor=0.01).managed_clusters.get(
            "rg-prod", "aks-prod-1"
        )
    assert caught.value.status_code == 429
    assert caught.value.error.code == "SubscriptionRequestsThrottled"
    assert caught.value.response.headers["Retry-After"] == "0"
    assert aks.requests.injected() == 2


def test_latency(aks: AksSandbox, host: LoopHost) -> None:
    host.call(aks.apply_faults(latency_seconds=0.3))
    started = time.monotonic()
    _client(aks).managed_clusters.get("rg-prod", "aks-prod-1")
    assert time.monotonic() - started >= 0.3


def test_outage_refuses_connections(aks: AksSandbox, host: LoopHost) -> None:
    client = _client(aks, retry_total=0)
    assert client.managed_clusters.get("rg-prod", "aks-prod-1").name == "aks-prod-1"
    host.call(aks.apply_faults(outage=True))
    with pytest.raises(ServiceRequestError):
        client.managed_clusters.get("rg-prod", "aks-prod-1")
    host.call(aks.apply_faults(outage=False))
    assert client.managed_clusters.get("rg-prod", "aks-prod-1").name == "aks-prod-1"


def test_user_kubeconfig_reaches_the_sandbox_cluster(aks: AksSandbox, fleet: Fleet) -> None:
    name = fleet.names[1]
    published = fleet_member(fleet, name, "aks", SUB_B, "northeurope", resource_group="rg-fleet")
    USER_TOKENS[published.id] = fleet.token(name)
    aks.add_cluster(published)
    try:
        client = _client(aks, SUB_B)
        [found] = [c for c in client.managed_clusters.list() if c.name == name]
        group = found.id.split("/")[4]
        credentials = client.managed_clusters.list_cluster_user_credentials(group, name)
    finally:
        aks.remove_cluster(published.id)
        del USER_TOKENS[published.id]
    kubeconfig = yaml.safe_load(credentials.kubeconfigs[0].value)
    api = kubernetes.config.new_client_from_config_dict(kubeconfig)
    try:
        version = kubernetes.client.VersionApi(api).get_code()
    finally:
        api.close()
    assert version.git_version == published.kubernetes_version
