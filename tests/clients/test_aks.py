"""AKS discovery and user credentials: azure-mgmt-containerservice against the sandbox ARM API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from fleetops.clients.aks import (
    RESOURCE_GROUP_LABEL,
    AksClients,
    AksDiscovery,
    AksTokens,
    StaticTokenCredential,
    api_server_url,
    parse_user_kubeconfig,
)
from fleetops.clients.kube import probe
from fleetops.domain.cluster import AuthMethod, Provider
from fleetops.domain.sources import AksSourceConfig
from fleetops.errors import AuthError, NotFound, RateLimited, Unreachable
from fleetops.settings import AksSettings
from sandbox.clouds.aks import AksSandbox
from sandbox.fleet import Fleet
from tests.support.clouds import (
    CA_PEM,
    SUB_A,
    SUB_B,
    SUB_LOCKED,
    aks_cluster,
    fail_then_pass_seed,
    fleet_member,
    fresh,
    started,
)
from tests.support.hosting import LoopHost

ARM_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJzdWIiOiJmbGVldG9wcyJ9.sandbox-arm"
#: user tokens by cluster id for clusters that lead to the fleet (others get a made-up one)
USER_TOKENS: dict[str, str] = {}


CLUSTERS = [
    aks_cluster(SUB_A, "rg-prod", "eastus", "aks-prod-1", 8001, labels={"env": "prod"}),
    aks_cluster(SUB_A, "rg-prod", "westeurope", "aks-prod-2", 8002, labels={"env": "prod"}),
    aks_cluster(SUB_A, "rg-dev", "eastus", "aks-dev-1", 8003, labels={"env": "dev"}),
    aks_cluster(SUB_A, "rg-dev", "eastus", "aks-dev-2", 8004, status="STOPPED"),
    aks_cluster(SUB_A, "Team (Dev)", "southeastasia", "aks-dev-3", 8005),
    aks_cluster(SUB_B, "rg-shared", "westeurope", "aks-shared", 8006, labels={"env": "staging"}),
    aks_cluster(SUB_LOCKED, "rg-x", "eastus", "aks-locked", 8007),
]


@pytest.fixture(scope="module")
def aks_module(loop: LoopHost) -> Iterator[AksSandbox]:
    sandbox = AksSandbox(
        CLUSTERS,
        access_token=ARM_TOKEN,
        user_token=lambda cluster: USER_TOKENS.get(cluster.id, f"user-token-{cluster.name}"),
        subscriptions={SUB_LOCKED: False},
        page_size=2,
    )
    yield from started(sandbox, loop)


@pytest.fixture
def aks(aks_module: AksSandbox, loop: LoopHost) -> Iterator[AksSandbox]:
    yield from fresh(aks_module, loop)


def _clients(aks: AksSandbox, *, token: str = ARM_TOKEN, retry_total: int = 3) -> AksClients:
    return AksClients(
        credential=StaticTokenCredential(SecretStr(token)),
        base_url=aks.url,
        connection_verify=aks.ca_file,
        retry_total=retry_total,
    )


def _discovery(aks: AksSandbox, *subs: str, **kw: Any) -> AksDiscovery:
    return AksDiscovery(
        AksSourceConfig(subscriptions=subs or (SUB_A, SUB_B)), clients=_clients(aks, **kw)
    )


def test_discovers_every_page_of_every_subscription(aks: AksSandbox) -> None:
    result = _discovery(aks).discover()

    assert (result.name, result.provider, result.accounts) == ("aks", Provider.AKS, (SUB_A, SUB_B))
    assert sorted(c.id for c in result.clusters) == sorted(
        [
            f"aks/{SUB_A}/eastus/aks-prod-1",
            f"aks/{SUB_A}/westeurope/aks-prod-2",
            f"aks/{SUB_A}/eastus/aks-dev-1",
            f"aks/{SUB_A}/eastus/aks-dev-2",
            f"aks/{SUB_A}/southeastasia/aks-dev-3",
            f"aks/{SUB_B}/westeurope/aks-shared",
        ]
    )
    records = aks.requests.records()
    pages = [r for r in records if r.method == "GET" and r.path.endswith("/managedClusters")]
    assert len(pages) == 3 + 1  # five clusters two per page, and one
    # no listClusterUserCredential: discovery hands out no credential (the CA comes with tokens)
    assert [r for r in records if r.method == "POST"] == []


def test_cluster_fields_and_labels(aks: AksSandbox) -> None:
    clusters = {c.name: c for c in _discovery(aks).discover().clusters}

    prod = clusters["aks-prod-1"]
    assert prod.endpoint == "https://127.0.0.1:8001"
    assert prod.ca_data is None  # not in a ManagedCluster: the probe records it from the token
    assert (prod.kubernetes_version, prod.provider_status) == ("1.29.7", "Succeeded")
    assert prod.auth is AuthMethod.AKS_USER_CREDENTIAL
    assert prod.labels == {
        "env": "prod",
        "fleetops.io/provider": "aks",
        "fleetops.io/account": SUB_A,
        "fleetops.io/region": "eastus",
        "fleetops.io/k8s-minor": "1.29",
        RESOURCE_GROUP_LABEL: "rg-prod",
    }
    assert clusters["aks-dev-2"].provider_status == "Succeeded/Stopped"
    assert clusters["aks-dev-3"].labels[RESOURCE_GROUP_LABEL] == "Team-Dev"  # not the real name


def test_user_credential_token_and_resource_group_lookup(aks: AksSandbox) -> None:
    clients = _clients(aks)
    clusters = {
        c.name: c
        for c in AksDiscovery(AksSourceConfig(subscriptions=(SUB_A,)), clients=clients)
        .discover()
        .clusters
    }
    tokens = AksTokens(clients)

    aks.requests.clear()
    token = tokens.token_for(clusters["aks-prod-1"])
    assert token.token.get_secret_value() == "user-token-aks-prod-1"
    assert token.expires_at is None
    assert token.ca_data == CA_PEM  # the CA the user kubeconfig names
    assert [r.method for r in aks.requests.records()] == ["POST"]  # group from the label

    aks.requests.clear()
    assert (
        tokens.token_for(clusters["aks-dev-3"]).token.get_secret_value() == "user-token-aks-dev-3"
    )
    # "Team (Dev)" did not survive as a label value: a 404, then a listing finds the group
    assert [(r.method, r.status) for r in aks.requests.records()] == [
        ("POST", 404),
        ("GET", 200),
        ("GET", 200),
        ("GET", 200),
        ("POST", 200),
    ]
    gone = clusters["aks-prod-1"].model_copy(update={"name": "aks-gone", "labels": {}})
    with pytest.raises(NotFound, match="aks-gone"):
        tokens.token_for(gone)


def test_forbidden_subscription_is_an_auth_error_naming_it(aks: AksSandbox) -> None:
    with pytest.raises(AuthError) as caught:
        _discovery(aks, SUB_A, SUB_LOCKED).discover()
    assert caught.value.status == 403
    assert f"subscription {SUB_LOCKED}" in str(caught.value)
    assert "AuthorizationFailed" in str(caught.value)


def test_wrong_arm_token_is_an_auth_error(aks: AksSandbox) -> None:
    with pytest.raises(AuthError) as caught:
        _discovery(aks, SUB_A, token="eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.wrong").discover()
    assert caught.value.status == 401
    assert "InvalidAuthenticationToken" in str(caught.value)
    assert "eyJ" not in str(caught.value)


def test_throttling_is_retried_after_retry_after(aks: AksSandbox, loop: LoopHost) -> None:
    aks.faults.rng.seed(fail_then_pass_seed(0.5))
    loop.call(aks.apply_faults(error_rate=0.5, retry_after_seconds=0))
    result = _discovery(aks, SUB_B).discover()
    assert [c.name for c in result.clusters] == ["aks-shared"]
    assert [(r.status, r.injected) for r in aks.requests.records()][:2] == [
        (429, True),
        (200, False),
    ]


def test_throttling_past_the_retries_is_rate_limited(aks: AksSandbox, loop: LoopHost) -> None:
    loop.call(aks.apply_faults(error_rate=1.0, retry_after_seconds=0))
    with pytest.raises(RateLimited) as caught:
        _discovery(aks, SUB_B, retry_total=1).discover()
    assert caught.value.retry_after == 0
    assert "SubscriptionRequestsThrottled" in str(caught.value)
    assert aks.requests.injected() == 2  # azure-core's one retry


def test_outage_is_unreachable(aks: AksSandbox, loop: LoopHost) -> None:
    discovery = _discovery(aks, SUB_B, retry_total=0)
    loop.call(aks.apply_faults(outage=True))
    with pytest.raises(Unreachable) as caught:
        discovery.discover()
    assert f"subscription {SUB_B}" in str(caught.value)


def test_from_settings(aks: AksSandbox) -> None:
    settings = AksSettings(
        subscriptions=SUB_B.upper(),  # type: ignore[arg-type]
        base_url=aks.url,
        ca_bundle=aks.ca_file,  # type: ignore[arg-type]
        access_token=SecretStr(ARM_TOKEN),
    )
    assert settings.subscriptions == (SUB_B,)
    assert [c.name for c in AksDiscovery.from_settings(settings).discover().clusters] == [
        "aks-shared"
    ]
    with pytest.raises(ValueError, match="'not-a-guid' is not a GUID"):
        AksSettings(subscriptions="not-a-guid")  # type: ignore[arg-type]


def test_entra_kubeconfig_means_an_entra_token(aks: AksSandbox) -> None:
    kubeconfig = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://c.hcp.eastus.azmk8s.io:443", certificate-authority-data: ""}}]
users:
- name: u
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: kubelogin
      args: [get-token, --server-id, 6dae42f8-4368-4678-94ff-3960e28e3630, --login, azurecli]
"""
    parsed = parse_user_kubeconfig(kubeconfig, context="test")
    assert parsed.token is None
    assert parsed.entra_server_id == "6dae42f8-4368-4678-94ff-3960e28e3630"
    with pytest.raises(AuthError, match="neither a token nor an Entra ID login"):
        parse_user_kubeconfig(kubeconfig.replace("exec:", "other:"), context="test")


def test_discovered_cluster_accepts_its_user_credential(aks: AksSandbox, fleet: Fleet) -> None:
    name = fleet.names[2]
    published = fleet_member(fleet, name, "aks", SUB_B, "northeurope", resource_group="rg-fleet")
    USER_TOKENS[published.id] = fleet.token(name)
    aks.add_cluster(published)
    try:
        clients = _clients(aks)
        found = AksDiscovery(AksSourceConfig(subscriptions=(SUB_B,)), clients=clients).discover()
        [cluster] = [c for c in found.clusters if c.name == name]
        result = probe(cluster, AksTokens(clients).token_for(cluster))
    finally:
        aks.remove_cluster(published.id)
        del USER_TOKENS[published.id]
    assert cluster.endpoint == fleet.server(name)
    assert cluster.ca_data is None
    assert result.ok, result.error  # TLS verified with the CA that came with the token
    assert result.version == published.kubernetes_version
    assert result.ca_data == fleet.ca_pem(name).decode()


def test_api_server_url_is_the_fqdn_on_port_443() -> None:
    fqdn = "aks-prod-dns-1a2b3c4d.hcp.eastus.azmk8s.io"
    assert api_server_url(fqdn) == f"https://{fqdn}:443"  # as AKS's own kubeconfig writes it
    assert api_server_url("aks-1.privatelink.eastus.azmk8s.io").endswith(".azmk8s.io:443")
    assert api_server_url("127.0.0.1:8001") == "https://127.0.0.1:8001"  # the sandbox's
