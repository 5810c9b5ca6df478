"""GKE discovery and access tokens: google-cloud-container (REST) against the sandbox GKE API."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import trustme
from google.oauth2.credentials import Credentials
from pydantic import SecretStr

from fleetops.clients.gke import GkeDiscovery, GoogleTokens, gke_tokens, split_location
from fleetops.clients.kube import probe
from fleetops.domain.cluster import AuthMethod, Provider
from fleetops.domain.sources import GkeSourceConfig
from fleetops.errors import AuthError, ConfigError, RateLimited, Unreachable
from fleetops.settings import GkeSettings
from sandbox.clouds.common import CloudCluster
from sandbox.clouds.gke import GkeSandbox
from sandbox.fleet import Fleet
from tests.clients.conftest import LoopThread

TOKEN = "ya29.sandbox-gke-access-token"
CA_PEM = trustme.CA().cert_pem.bytes().decode()


def _cluster(project: str, location: str, name: str, port: int, **kw: object) -> CloudCluster:
    return CloudCluster(
        provider="gke",
        account=project,
        location=location,
        name=name,
        endpoint=f"https://127.0.0.1:{port}",
        ca_pem=CA_PEM,
        kubernetes_version="v1.30.5",
        **kw,  # type: ignore[arg-type]
    )


CLUSTERS = [
    _cluster("fleet-prod", "us-central1", "prod-us", 7001, labels={"env": "prod", "Team": "Web"}),
    _cluster("fleet-prod", "europe-west1-b", "prod-eu", 7002, labels={"env": "prod"}),
    _cluster("fleet-dev", "asia-east1", "dev-asia", 7003),
    _cluster("fleet-dev", "us-central1", "dev-new", 7004, status="PROVISIONING"),
    _cluster("fleet-secret", "us-central1", "hidden", 7005),
]


@pytest.fixture(scope="module")
def gke_module(loop: LoopThread) -> Iterator[GkeSandbox]:
    sandbox = GkeSandbox(CLUSTERS, access_token=TOKEN, projects={"fleet-secret": False})
    loop.call(sandbox.start())
    yield sandbox
    loop.call(sandbox.stop())


@pytest.fixture
def gke(gke_module: GkeSandbox, loop: LoopThread) -> Iterator[GkeSandbox]:
    gke_module.requests.clear()
    yield gke_module
    loop.call(gke_module.apply_faults(latency_seconds=0.0, error_rate=0.0, outage=False))


def _discovery(gke: GkeSandbox, *projects: str, **kw: float) -> GkeDiscovery:
    return GkeDiscovery(
        GkeSourceConfig(projects=projects or ("fleet-prod", "fleet-dev")),
        credentials=Credentials(token=TOKEN),  # type: ignore[no-untyped-call]
        api_endpoint=gke.url,
        **kw,
    )


def test_discovers_every_location_of_every_project(gke: GkeSandbox) -> None:
    result = _discovery(gke).discover()

    assert (result.name, result.provider, result.accounts) == (
        "gke",
        Provider.GKE,
        ("fleet-prod", "fleet-dev"),
    )
    assert sorted(c.id for c in result.clusters) == [
        "gke/fleet-dev/asia-east1/dev-asia",
        "gke/fleet-dev/us-central1/dev-new",
        "gke/fleet-prod/europe-west1-b/prod-eu",
        "gke/fleet-prod/us-central1/prod-us",
    ]
    # one call per project, for every location at once
    assert sorted(r.path for r in gke.requests.records()) == [
        "/v1/projects/fleet-dev/locations/-/clusters",
        "/v1/projects/fleet-prod/locations/-/clusters",
    ]


def test_cluster_fields_and_labels(gke: GkeSandbox) -> None:
    clusters = {c.name: c for c in _discovery(gke).discover().clusters}

    us = clusters["prod-us"]
    assert us.endpoint == "https://127.0.0.1:7001"
    assert us.ca_data == CA_PEM
    assert (us.kubernetes_version, us.provider_status) == ("1.30.5", "RUNNING")
    assert us.auth is AuthMethod.GCP_ACCESS_TOKEN
    assert us.labels == {
        "env": "prod",
        "team": "Web",
        "fleetops.io/provider": "gke",
        "fleetops.io/account": "fleet-prod",
        "fleetops.io/region": "us-central1",
        "fleetops.io/k8s-minor": "1.30",
    }
    eu = clusters["prod-eu"]  # a zonal cluster: region and zone
    assert eu.labels["fleetops.io/region"] == "europe-west1"
    assert eu.labels["fleetops.io/zone"] == "europe-west1-b"
    assert clusters["dev-new"].provider_status == "PROVISIONING"
    assert split_location("us-central1-a") == ("us-central1", "us-central1-a")


def test_forbidden_project_is_an_auth_error_naming_it(gke: GkeSandbox) -> None:
    with pytest.raises(AuthError) as caught:
        _discovery(gke, "fleet-prod", "fleet-secret").discover()
    assert caught.value.status == 403
    assert caught.value.system == "gke"
    assert "project fleet-secret" in str(caught.value)
    assert "container.clusters.list" in str(caught.value)


def test_wrong_token_is_an_auth_error(gke: GkeSandbox) -> None:
    discovery = GkeDiscovery(
        GkeSourceConfig(projects=("fleet-prod",)),
        credentials=Credentials(token="ya29.not-the-token"),  # type: ignore[no-untyped-call]
        api_endpoint=gke.url,
    )
    with pytest.raises(AuthError) as caught:
        discovery.discover()
    assert "not-the-token" not in str(caught.value)


def test_throttling_is_retried_by_google_api_core(gke: GkeSandbox, loop: LoopThread) -> None:
    gke.faults.rng.seed(_fail_then_pass_seed(0.5))
    loop.call(gke.apply_faults(error_rate=0.5))

    result = _discovery(gke, "fleet-prod").discover()

    assert len(result.clusters) == 2
    assert [(r.status, r.injected) for r in gke.requests.records()] == [(429, True), (200, False)]


def test_throttling_past_the_deadline_is_rate_limited(gke: GkeSandbox, loop: LoopThread) -> None:
    loop.call(gke.apply_faults(error_rate=1.0))
    with pytest.raises(RateLimited) as caught:
        _discovery(gke, "fleet-prod", retry_deadline_seconds=1.0).discover()
    assert caught.value.status == 429
    assert "retries exhausted" in str(caught.value)
    assert gke.requests.injected() >= 2


def test_outage_is_unreachable(gke: GkeSandbox, loop: LoopThread) -> None:
    discovery = _discovery(gke, "fleet-prod")
    loop.call(gke.apply_faults(outage=True))
    with pytest.raises(Unreachable) as caught:
        discovery.discover()
    assert "project fleet-prod" in str(caught.value)


def test_from_settings_and_bad_project_ids(gke: GkeSandbox) -> None:
    settings = GkeSettings(
        projects=("fleet-dev",),
        endpoint=gke.url,
        access_token=SecretStr(TOKEN),
    )
    assert len(GkeDiscovery.from_settings(settings).discover().clusters) == 2
    with pytest.raises(ValueError, match="'Fleet_Prod'"):
        GkeSettings(projects="Fleet_Prod")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 1"):
        GkeDiscovery.from_settings(GkeSettings(projects=(), access_token=SecretStr(TOKEN)))


def test_access_token_of_the_credentials(gke: GkeSandbox) -> None:
    token = gke_tokens(GkeSettings(access_token=SecretStr(TOKEN))).token()
    assert token.token.get_secret_value() == TOKEN
    assert token.expires_at is None


def test_discovered_cluster_accepts_the_google_token(loop: LoopThread, fleet: Fleet) -> None:
    """In GKE the same Google access token reads the GKE API and logs into the cluster; the
    sandbox stand-in is given the fleet cluster's token as its access token to play that."""
    name = fleet.names[0]
    published = CloudCluster(
        provider="gke",
        account="fleet-live",
        location="us-east4-a",
        name=name,
        endpoint=fleet.server(name),
        ca_pem=fleet.ca_pem(name).decode(),
        kubernetes_version=fleet.cluster(name).spec.kubernetes_version,
    )
    sandbox = GkeSandbox([published], access_token=fleet.token(name))
    loop.call(sandbox.start())
    try:
        tokens = GoogleTokens(Credentials(token=fleet.token(name)))  # type: ignore[no-untyped-call]
        discovery = GkeDiscovery(
            GkeSourceConfig(projects=("fleet-live",)),
            credentials=tokens.credentials,
            api_endpoint=sandbox.url,
        )
        [cluster] = discovery.discover().clusters
        result = probe(cluster, tokens.token_for(cluster).token)
    finally:
        loop.call(sandbox.stop())
    assert result.ok, result.error
    assert result.version == published.kubernetes_version


def _fail_then_pass_seed(rate: float) -> int:
    """A seed whose first draw injects an error and whose second does not."""
    for seed in range(1000):
        rng = random.Random(seed)
        if rng.random() < rate <= rng.random():
            return seed
    raise AssertionError("no seed found")
