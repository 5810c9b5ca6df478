"""The registration probe against real sandbox clusters: TLS verified, errors classified."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from fleetops.clients.credentials import ClusterToken
from fleetops.clients.kube import KubeClient, failed_probe, probe
from fleetops.domain.cluster import AuthMethod, Cluster, Provider
from fleetops.errors import AuthError, RateLimited, TransientError, Unreachable
from sandbox.fleet import Fleet

AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def _cluster(fleet: Fleet, name: str, *, ca: str | None = "own") -> Cluster:
    ca_data = fleet.ca_pem(name).decode() if ca == "own" else ca
    return Cluster(
        provider=Provider.STATIC,
        account="sandbox",
        location="local",
        name=name,
        endpoint=fleet.server(name),
        ca_data=ca_data,
        auth=AuthMethod.STATIC_KUBECONFIG,
    )


def _token(fleet: Fleet, name: str, *, ca_data: str | None = None) -> ClusterToken:
    return ClusterToken(token=SecretStr(fleet.token(name)), ca_data=ca_data)


def test_probe_reads_version_and_readyz(fleet: Fleet) -> None:
    name = fleet.names[0]
    result = probe(_cluster(fleet, name), _token(fleet, name), clock=lambda: AT)

    assert result.ok
    assert result.error is None
    assert result.at == AT
    assert result.version == fleet.cluster(name).spec.kubernetes_version
    assert result.latency_ms is not None
    assert result.latency_ms > 0


def test_outage_is_unreachable(fleet_faults: Fleet) -> None:
    name = fleet_faults.names[1]
    fleet_faults.outage(name, True)
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        probe(_cluster(fleet_faults, name), _token(fleet_faults, name))
    assert time.monotonic() - started < 2  # refused at once, not retried by the client
    assert caught.value.system == f"kube:static/sandbox/local/{name}"
    assert "cannot connect" in str(caught.value)


def test_wrong_token_is_an_auth_error_without_the_token(fleet: Fleet) -> None:
    name = fleet.names[0]
    wrong = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJub2JvZHkifQ.c2lnbmF0dXJl"
    with pytest.raises(AuthError) as caught:
        probe(_cluster(fleet, name), ClusterToken(token=SecretStr(wrong)))
    assert caught.value.status == 401
    assert wrong not in str(caught.value)


def test_tls_is_always_verified(fleet: Fleet) -> None:
    name = fleet.names[0]
    other_ca = fleet.ca_pem(fleet.names[1]).decode()
    with pytest.raises(Unreachable, match=r"TLS: .*CERTIFICATE_VERIFY_FAILED"):
        probe(_cluster(fleet, name, ca=other_ca), _token(fleet, name))
    # no CA on record: the system trust store, which does not know the sandbox CA
    with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
        probe(_cluster(fleet, name, ca=None), _token(fleet, name))
    # a credential that brings a CA (AKS) is verified against that CA, not the record's
    with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
        probe(_cluster(fleet, name), _token(fleet, name, ca_data=other_ca))


def test_the_ca_a_credential_brings_is_trusted_and_reported(fleet: Fleet) -> None:
    name = fleet.names[0]
    own = fleet.ca_pem(name).decode()
    for recorded in (None, fleet.ca_pem(fleet.names[1]).decode()):  # none yet, or rotated
        result = probe(_cluster(fleet, name, ca=recorded), _token(fleet, name, ca_data=own))
        assert result.ok, result.error
        assert result.ca_data == own
        assert "ca_data" not in result.model_dump()  # never kept with the probe result
    assert probe(_cluster(fleet, name), _token(fleet, name)).ca_data is None


def test_server_errors_are_transient_and_throttling_rate_limited(fleet_faults: Fleet) -> None:
    name = fleet_faults.names[2]
    cluster, token = _cluster(fleet_faults, name), _token(fleet_faults, name)

    fleet_faults.set_faults(name, error_rate=1.0, error_code=503)
    with pytest.raises(TransientError) as caught:
        probe(cluster, token)
    assert caught.value.status == 503
    assert not isinstance(caught.value, Unreachable)

    fleet_faults.set_faults(name, error_rate=1.0, error_code=429, retry_after_seconds=3)
    with pytest.raises(RateLimited) as limited:
        probe(cluster, token)
    assert limited.value.retry_after == 3


def test_timeout_is_unreachable(fleet_faults: Fleet) -> None:
    name = fleet_faults.names[2]
    fleet_faults.set_faults(name, latency_seconds=2.0)
    started = time.monotonic()
    with pytest.raises(Unreachable, match="timed out"):
        probe(_cluster(fleet_faults, name), _token(fleet_faults, name), timeout_seconds=0.3)
    assert time.monotonic() - started < 1.5


def test_client_serves_typed_apis_and_failed_probe_records_the_error(fleet: Fleet) -> None:
    from kubernetes.client import CoreV1Api

    name = fleet.names[0]
    with KubeClient.for_cluster(_cluster(fleet, name), _token(fleet, name)) as kube:
        namespaces = kube.call(lambda: CoreV1Api(kube.api_client).list_namespace())
    assert "default" in {ns.metadata.name for ns in namespaces.items}

    error = Unreachable("cannot connect", system="kube:x")
    result = failed_probe(error, at=AT)
    assert (result.ok, result.error, result.version) == (False, "kube:x: cannot connect", None)
