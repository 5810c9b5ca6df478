"""Fixtures for whole-flow tests: one Prefect test server and one sandbox fleet per session.

The fleet runs every cloud stand-in and Slack (``Fleet(..., services=...)``): its clusters are
published by moto's EKS, the GKE and AKS endpoints, a static kubeconfig and the fleet file.
fleetops is pointed at it the way an operator would point it anywhere: ``FLEETOPS_*`` variables
(``fleet.environment()``, what ``sandbox.env`` holds). Each test gets its own inventory file, so
tests do not depend on each other's runs; faults switched by a test are reset after it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# moto imports requests lazily from the fleet's worker thread; importing both here first avoids
# a partially-initialised-module race with the main thread's imports at start-up.
import moto.server  # noqa: F401
import pytest
import requests  # noqa: F401

from fleetops.domain.inventory import InventoryRecord
from fleetops.inventory import Inventory
from sandbox.fleet import Fleet

#: 10 clusters: 2 EKS, 2 GKE, 2 AKS, 2 kubeconfig contexts, 2 fleet-file clusters
CLUSTERS = 10
SERVICES = ("aws", "gke", "aks", "slack")
VENV_BIN = str(Path(sys.executable).parent)

#: fast failure settings: the tests exercise retries, not their patience
FAST = {
    "FLEETOPS_DISCOVERY_RETRY_DELAY_SECONDS": "0",
    "FLEETOPS_DISCOVERY_SOURCE_RETRIES": "1",
    "FLEETOPS_DISCOVERY_PROBE_RETRIES": "0",
    "FLEETOPS_DISCOVERY_PROBE_TIMEOUT_SECONDS": "5",
    "FLEETOPS_AWS_MAX_ATTEMPTS": "6",
    "FLEETOPS_AWS_CONNECT_TIMEOUT_SECONDS": "2",
    "FLEETOPS_GKE_RETRY_DEADLINE_SECONDS": "15",
    "FLEETOPS_AKS_RETRY_TOTAL": "4",
    "FLEETOPS_SLACK_TIMEOUT_SECONDS": "3",
}


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for every flow test of the session."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


# Package scope: moto keeps global state, so this fleet's AWS must stop before other test
# packages (tests/clients) start their own.
@pytest.fixture(scope="package")
def cloud_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("cloud-fleet")
    with Fleet(
        CLUSTERS, directory=directory, rollout_seconds=0.2, seed=4, services=SERVICES
    ) as running:
        yield running


@dataclass
class Discovery:
    """A test's view of discovery: its fleet, its inventory and how to run the flow."""

    fleet: Fleet
    inventory_url: str
    directory: Path

    def run(self, **parameters: Any) -> Any:
        """Run discover-clusters once in-process; returns the final state."""
        from flows.discover import DiscoverParameters, discover_clusters

        return discover_clusters(parameters=DiscoverParameters(**parameters), return_state=True)

    def records(self) -> dict[str, InventoryRecord]:
        with Inventory(self.inventory_url) as inventory:
            inventory.migrate()
            return {record.id: record for record in inventory.list()}

    def expected_ids(self, source: str | None = None) -> set[str]:
        names = self.fleet.names if source is None else self.fleet.names_in(source)
        return {self.fleet.placement(name).id for name in names}

    def cli_env(self) -> dict[str, str]:
        """The environment for a ``fleetops`` subprocess: these settings and this Prefect API."""
        from prefect.settings import PREFECT_API_URL

        env = dict(os.environ)
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env


@pytest.fixture
def discovery(
    cloud_fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Discovery]:
    """Settings pointing at the sandbox (as sandbox.env does), a fresh inventory, clean faults."""
    for key in list(os.environ):
        if key.startswith("FLEETOPS_"):
            monkeypatch.delenv(key)
    for key, value in {**cloud_fleet.environment(), **FAST}.items():
        monkeypatch.setenv(key, value)
    url = f"sqlite:///{tmp_path / 'inventory.db'}"
    monkeypatch.setenv("FLEETOPS_INVENTORY_URL", url)
    monkeypatch.setenv("FLEETOPS_UI_URL", "http://127.0.0.1:4200")
    cloud_fleet.reset_faults()
    cloud_fleet.reset_service_faults()
    cloud_fleet.slack.clear()
    yield Discovery(fleet=cloud_fleet, inventory_url=url, directory=tmp_path)
    cloud_fleet.reset_faults()
    cloud_fleet.reset_service_faults()
