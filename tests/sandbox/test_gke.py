"""The GKE stand-in, driven by google-cloud-container's REST transport."""

from __future__ import annotations

import base64
import datetime
import time
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.cloud import container_v1
from google.oauth2.credentials import Credentials

from sandbox.clouds.common import CloudCluster, ProviderFaults, ProviderFaultsError
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

TOKEN = "ya29.sandbox-gke-token"


CLUSTERS = [
    gke_cluster(
        "fleet-prod", "us-central1", "prod-us", 7001, labels={"env": "prod", "team": "web"}
    ),
    gke_cluster("fleet-prod", "europe-west1-b", "prod-eu", 7002, labels={"env": "prod"}),
    gke_cluster("fleet-dev", "asia-east1", "dev-asia", 7003, labels={"env": "dev"}),
    gke_cluster("fleet-dev", "us-central1", "dev-new", 7004, status="PROVISIONING"),
    gke_cluster("fleet-secret", "us-central1", "hidden", 7005),
]


@pytest.fixture(scope="module")
def host() -> Iterator[LoopHost]:
    with LoopHost() as cloud_host:
        yield cloud_host


@pytest.fixture(scope="module")
def gke_module(host: LoopHost) -> Iterator[GkeSandbox]:
    sandbox = GkeSandbox(CLUSTERS, access_token=TOKEN, projects={"fleet-secret": False})
    yield from started(sandbox, host)


@pytest.fixture
def gke(gke_module: GkeSandbox, host: LoopHost) -> Iterator[GkeSandbox]:
    yield from fresh(gke_module, host)


def _client(
    gke: GkeSandbox, credentials: object | None = None
) -> container_v1.ClusterManagerClient:
    return container_v1.ClusterManagerClient(
        credentials=credentials if credentials is not None else Credentials(token=TOKEN),
        transport="rest",
        client_options=ClientOptions(api_endpoint=gke.url),
    )


def test_list_across_locations_in_two_projects(gke: GkeSandbox) -> None:
    client = _client(gke)
    prod = client.list_clusters(parent="projects/fleet-prod/locations/-")
    dev = client.list_clusters(parent="projects/fleet-dev/locations/-")

    assert sorted(c.name for c in prod.clusters) == ["prod-eu", "prod-us"]
    assert sorted(c.name for c in dev.clusters) == ["dev-asia", "dev-new"]
    us = next(c for c in prod.clusters if c.name == "prod-us")
    assert us.location == "us-central1"
    assert us.endpoint == "127.0.0.1:7001"  # GKE's bare host, with the sandbox port carried along
    assert base64.b64decode(us.master_auth.cluster_ca_certificate).decode() == CA_PEM
    assert us.current_master_version == "1.30.5"
    assert dict(us.resource_labels) == {"env": "prod", "team": "web"}
    assert us.status == container_v1.Cluster.Status.RUNNING
    assert (
        us.self_link == f"{gke.url}/v1/projects/fleet-prod/locations/us-central1/clusters/prod-us"
    )
    new = next(c for c in dev.clusters if c.name == "dev-new")
    assert new.status == container_v1.Cluster.Status.PROVISIONING


def test_list_one_location_and_the_legacy_zones_path(gke: GkeSandbox) -> None:
    client = _client(gke)
    regional = client.list_clusters(parent="projects/fleet-prod/locations/us-central1")
    assert [c.name for c in regional.clusters] == ["prod-us"]
    legacy = client.list_clusters(project_id="fleet-dev", zone="-")
    assert sorted(c.name for c in legacy.clusters) == ["dev-asia", "dev-new"]
    empty = client.list_clusters(parent="projects/fleet-prod/locations/asia-east1")
    assert list(empty.clusters) == []
    assert [r.path for r in gke.requests.records()] == [
        "/v1/projects/fleet-prod/locations/us-central1/clusters",
        "/v1/projects/fleet-dev/zones/-/clusters",
        "/v1/projects/fleet-prod/locations/asia-east1/clusters",
    ]


def test_get_a_cluster_and_a_missing_one(gke: GkeSandbox) -> None:
    client = _client(gke)
    cluster = client.get_cluster(name="projects/fleet-dev/locations/asia-east1/clusters/dev-asia")
    assert (cluster.name, cluster.endpoint, cluster.location) == (
        "dev-asia",
        "127.0.0.1:7003",
        "asia-east1",
    )
    assert dict(cluster.resource_labels) == {"env": "dev"}
    with pytest.raises(gexc.NotFound, match="Not found: projects/fleet-dev"):
        client.get_cluster(name="projects/fleet-dev/locations/asia-east1/clusters/nope")


@pytest.mark.parametrize("project", ["fleet-secret", "no-such-project"])
def test_unreadable_project_is_permission_denied(gke: GkeSandbox, project: str) -> None:
    # The REST transport maps errors by HTTP status: 403 -> Forbidden (PermissionDenied's
    # parent); the body's status says PERMISSION_DENIED like Google's.
    with pytest.raises(gexc.Forbidden) as caught:
        _client(gke).list_clusters(parent=f"projects/{project}/locations/-")
    assert caught.value.code == 403
    assert f'Required "container.clusters.list" permission(s) for "projects/{project}"' in str(
        caught.value
    )
    assert caught.value.response.json()["error"]["status"] == "PERMISSION_DENIED"


def test_wrong_token_is_unauthenticated(gke: GkeSandbox) -> None:
    # A static token cannot be refreshed: google-auth raises when the server says 401.
    with pytest.raises(auth_exceptions.RefreshError):
        _client(gke, Credentials(token="not-the-token")).list_clusters(
            parent="projects/fleet-prod/locations/-"
        )
    # A refreshable credential that keeps getting a bad token ends in Unauthorized after the
    # session's two refresh attempts: three requests reached the server.
    gke.requests.clear()
    refreshing = Credentials(
        token=None,
        refresh_handler=lambda request, scopes: (
            "still-wrong",
            datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(hours=1),
        ),
    )
    with pytest.raises(gexc.Unauthorized) as caught:
        _client(gke, refreshing).list_clusters(parent="projects/fleet-prod/locations/-")
    assert caught.value.response.json()["error"]["status"] == "UNAUTHENTICATED"
    assert [r.status for r in gke.requests.records()] == [401, 401, 401]


def test_throttling_is_resource_exhausted(gke: GkeSandbox, host: LoopHost) -> None:
    host.call(gke.apply_faults(error_rate=1.0))
    with pytest.raises(gexc.TooManyRequests) as caught:
        _client(gke).list_clusters(parent="projects/fleet-prod/locations/-")
    assert caught.value.code == 429
    assert caught.value.reason == "RATE_LIMIT_EXCEEDED"
    assert caught.value.response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert gke.requests.injected() == 1  # the default retry does not cover 429


def test_throttling_is_retried_by_a_retry_that_covers_it(gke: GkeSandbox, host: LoopHost) -> None:
    gke.faults.rng.seed(fail_then_pass_seed(0.5))
    host.call(gke.apply_faults(error_rate=0.5))
    retry = gretry.Retry(
        predicate=gretry.if_exception_type(gexc.TooManyRequests),
        initial=0.01,
        maximum=0.05,
        timeout=10.0,
    )
    response = _client(gke).list_clusters(parent="projects/fleet-prod/locations/-", retry=retry)
    assert len(response.clusters) == 2
    assert [(r.status, r.injected) for r in gke.requests.records()] == [(429, True), (200, False)]


def test_latency(gke: GkeSandbox, host: LoopHost) -> None:
    host.call(gke.apply_faults(latency_seconds=0.3))
    started = time.monotonic()
    _client(gke).list_clusters(parent="projects/fleet-prod/locations/-")
    assert time.monotonic() - started >= 0.3


def test_outage_refuses_connections_until_it_ends(gke: GkeSandbox, host: LoopHost) -> None:
    client = _client(gke)
    url = gke.url
    assert len(client.list_clusters(parent="projects/fleet-prod/locations/-").clusters) == 2
    host.call(gke.apply_faults(outage=True))
    with pytest.raises(requests.exceptions.ConnectionError):
        client.list_clusters(parent="projects/fleet-prod/locations/-")
    host.call(gke.apply_faults(outage=False))
    assert gke.url == url
    assert len(client.list_clusters(parent="projects/fleet-prod/locations/-").clusters) == 2


def test_clusters_can_come_and_go(gke: GkeSandbox) -> None:
    extra = gke_cluster("fleet-dev", "us-east1", "dev-extra", 7010)
    gke.add_cluster(extra)
    try:
        names = {
            c.name
            for c in _client(gke).list_clusters(parent="projects/fleet-dev/locations/-").clusters
        }
        assert "dev-extra" in names
    finally:
        gke.remove_cluster(extra.id)
    names = {
        c.name for c in _client(gke).list_clusters(parent="projects/fleet-dev/locations/-").clusters
    }
    assert "dev-extra" not in names


def test_discovery_leads_to_a_sandbox_cluster(
    gke: GkeSandbox, fleet: Fleet, tmp_path: Path
) -> None:
    name = fleet.names[0]
    published = fleet_member(fleet, name, "gke", "fleet-prod", "us-east1")
    gke.add_cluster(published)
    try:
        found = _client(gke).get_cluster(
            name=f"projects/fleet-prod/locations/us-east1/clusters/{name}"
        )
    finally:
        gke.remove_cluster(published.id)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(base64.b64decode(found.master_auth.cluster_ca_certificate))
    config = kubernetes.client.Configuration()
    config.host = f"https://{found.endpoint}"
    config.ssl_ca_cert = str(ca_file)
    # GKE clusters accept the Google access token; until the fleet wires that, use its own.
    config.api_key = {"BearerToken": fleet.token(name)}
    config.api_key_prefix = {"BearerToken": "Bearer"}
    with kubernetes.client.ApiClient(config) as api:
        version = kubernetes.client.VersionApi(api).get_code()
    assert version.git_version == published.kubernetes_version


def test_fault_switches_are_validated_before_any_is_applied() -> None:
    faults = ProviderFaults()
    with pytest.raises(ProviderFaultsError) as caught:
        faults.update(latency_seconds=1.0, error_rate=1.5)
    assert caught.value.field == "error_rate"
    assert faults.to_dict() == {
        "latency_seconds": 0.0,
        "error_rate": 0.0,
        "outage": False,
        "retry_after_seconds": 1,
    }
    with pytest.raises(ProviderFaultsError):
        faults.update(outage="yes")
    with pytest.raises(ValueError, match="endpoint must be an https URL"):
        CloudCluster(
            provider="gke", account="p", location="l", name="n", endpoint="http://x", ca_pem=CA_PEM
        )
