"""Shared fixtures: sandbox fleets started in-process on loopback.

``fleet`` is the cheap one, one per test session: three Kubernetes API servers and nothing
else. Its loop runs in a daemon thread; tests drive it with the real ``kubernetes`` client or
kubectl through ``kubeconfig`` and switch faults with ``fleet.set_faults(...)``. Tests that
switch faults take ``fleet_faults`` so every switch is off again afterwards.

``full_fleet`` is the whole sandbox: twelve clusters spread over EKS, GKE, AKS and the static
sources, with moto, the GKE and AKS APIs, OpenBao and Slack (about two seconds to start). It is
module-scoped, not session-scoped, because moto keeps its state in module globals: only one
``AwsSandbox`` may run per process at a time, and other test modules start their own.
``full_fleet_faults`` gives it back with every service switch off after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes
import pytest

from sandbox.fleet import SERVICES, Fleet

FLEET_CLUSTERS = 3
FLEET_ROLLOUT_SECONDS = 0.3
FULL_FLEET_CLUSTERS = 12


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three sandbox clusters (``sbx-01..sbx-03``), rollouts ready after 0.3 s."""
    directory = tmp_path_factory.mktemp("sandbox-fleet")
    with Fleet(
        FLEET_CLUSTERS, directory=directory, rollout_seconds=FLEET_ROLLOUT_SECONDS, seed=2
    ) as running:
        yield running


@pytest.fixture(scope="module")
def full_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Every service and twelve clusters (eks 3, gke 3, aks 2, static 4); see the docstring."""
    directory = tmp_path_factory.mktemp("sandbox-full")
    with Fleet(
        FULL_FLEET_CLUSTERS,
        directory=directory,
        rollout_seconds=FLEET_ROLLOUT_SECONDS,
        seed=3,
        services=SERVICES,
    ) as running:
        yield running


@pytest.fixture
def full_fleet_faults(full_fleet: Fleet) -> Iterator[Fleet]:
    """The full fleet, with every service and cluster switch off before and after the test."""
    full_fleet.reset_service_faults()
    full_fleet.reset_faults()
    yield full_fleet
    full_fleet.reset_service_faults()
    full_fleet.reset_faults()


@pytest.fixture(scope="session")
def kubeconfig(fleet: Fleet) -> Path:
    """The fleet's kubeconfig: one context per cluster, named after it."""
    return fleet.kubeconfig_path


@pytest.fixture
def fleet_faults(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet, with every fault switch of every cluster off before and after the test."""
    fleet.reset_faults()
    yield fleet
    fleet.reset_faults()


@pytest.fixture
def kube_client(kubeconfig: Path) -> Iterator[Callable[[str], kubernetes.client.ApiClient]]:
    """``kube_client("sbx-02")``: an official-client ApiClient for that context (closed after)."""
    clients: list[kubernetes.client.ApiClient] = []

    def make(context: str) -> kubernetes.client.ApiClient:
        client = kubernetes.config.new_client_from_config(
            config_file=str(kubeconfig), context=context
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
