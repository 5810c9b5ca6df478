"""GKE discovery and access tokens: google-cloud-container (REST) against the sandbox GKE API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.oauth2.credentials import Credentials
from pydantic import SecretStr

from fleetops.clients.gke import GkeDiscovery, GoogleTokens, gke_tokens, split_location
from fleetops.clients.kube import probe
from fleetops.domain.cluster import AuthMethod, Provider
from fleetops.domain.sources import GkeSourceConfig
from fleetops.errors import AuthError, ConfigError, RateLimited, Unreachable
from fleetops.settings import GkeSettings
from sandbox.clouds.gke import GkeSandbox
from sandbox.fleet import Fleet
from tests.support.clouds import (
    CA_PEM,
    fail_then_pass_seed,
    fleet_member,
    fresh,
    gke_cluster,
    started,
)
from tests.support.hosting import LoopHost

TOKEN = "ya29.sandbox-gke-access-token"


CLUSTERS = [
    gke_cluster(
        "fleet-prod", "us-central1", "prod-us", 7001, labels={"env": "prod", "Team": "Web"}
    ),
    gke_cluster("fleet-prod", "europe-west1-b", "prod-eu", 7002, labels={"env": "prod"}),
    gke_cluster("fleet-dev", "asia-east1", "dev-asia", 7003),
    gke_cluster("fleet-dev", "us-central1", "dev-new", 7004, status="PROVISIONING"),
    gke_cluster("fleet-secret", "us-central1", "hidden", 7005),
]


@pytest.fixture(scope="module")
def gke_module(loop: LoopHost) -> Iterator[GkeSandbox]:
    sandbox = GkeSandbox(CLUSTERS, access_token=TOKEN, projects={"fleet-secret": False})
    yield from started(sandbox, loop)


@pytest.fixture
def gke(gke_module: GkeSandbox, loop: LoopHost) -> Iterator[GkeSandbox]:
    yield from fresh(gke_module, loop)


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


def test_throttling_is_retried_by_google_api_core(gke: GkeSandbox, loop: LoopHost) -> None:
    gke.faults.rng.seed(fail_then_pass_seed(0.5))
    loop.call(gke.apply_faults(error_rate=0.5))

    result = _discovery(gke, "fleet-prod").discover()

    assert len(result.clusters) == 2
    assert [(r.status, r.injected) for r in gke.requests.records()] == [(429, True), (200, False)]


def test_throttling_past_the_deadline_is_rate_limited(gke: GkeSandbox, loop: LoopHost) -> None:
    loop.call(gke.apply_faults(error_rate=1.0))
    with pytest.raises(RateLimited) as caught:
        _discovery(gke, "fleet-prod", retry_deadline_seconds=1.0).discover()
    assert caught.value.status == 429
    assert "retries exhausted" in str(caught.value)
    assert gke.requests.injected() >= 2


def test_outage_is_unreachable(gke: GkeSandbox, loop: LoopHost) -> None:
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


def test_discovered_cluster_accepts_the_google_token(loop: LoopHost, fleet: Fleet) -> None:
    """In GKE the same Google access token reads the GKE API and logs into the cluster; the
    sandbox stand-in is given the fleet cluster's token as its access token to play that."""
    name = fleet.names[0]
    published = fleet_member(fleet, name, "gke", "fleet-live", "us-east4-a")
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
        result = probe(cluster, tokens.token_for(cluster))
    finally:
        loop.call(sandbox.stop())
    assert result.ok, result.error
    assert result.version == published.kubernetes_version
