"""Fixtures and helpers for the rollout flow tests.

One sandbox fleet of twelve plain kubeconfig clusters (``ro-01..ro-12``) plus the Slack stand-in
serves the module. Each test gets its own inventory file (the clusters registered, with ``env``
and ``tier`` labels), its own copy of ``apps/hello`` in a namespace of its own (so tests never
see each other's objects on the shared clusters) and fast retry settings. Everything is
configured the way an operator would: ``FLEETOPS_*`` variables.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from fleetops.clients.static import StaticClusters
from fleetops.domain.cluster import ClusterState
from fleetops.domain.rollout import RolloutParameters, WaveSpec
from fleetops.inventory import Inventory
from fleetops.inventory.rollouts import RolloutHistory, RolloutState
from sandbox.fleet import Fleet
from sandbox.slack import SlackMessage

CLUSTERS = 12
REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "apps" / "hello"

FAST = {
    "FLEETOPS_ROLLOUT_RETRIES": "3",
    "FLEETOPS_ROLLOUT_RETRY_DELAY_SECONDS": "0.3",
    "FLEETOPS_ROLLOUT_APPROVAL_POLL_SECONDS": "0.5",
    "FLEETOPS_ROLLOUT_READINESS_POLL_SECONDS": "0.2",
    "FLEETOPS_ROLLOUT_MAX_WORKERS": "16",
    "FLEETOPS_KUBE_REQUEST_TIMEOUT_SECONDS": "3",
    "FLEETOPS_SLACK_TIMEOUT_SECONDS": "2",
    "FLEETOPS_SLACK_RATE_LIMIT_RETRIES": "0",
}

_namespaces = itertools.count(1)


@pytest.fixture(scope="module", name="rollout_fleet")
def rollout_fleet_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("rollout-fleet")
    with Fleet(
        CLUSTERS, directory=directory, rollout_seconds=0.2, seed=5, prefix="ro", services=("slack",)
    ) as running:
        yield running


@dataclass
class Rollouts:
    """A test's view: the fleet, its inventory, its app namespace, and how to run the flow."""

    fleet: Fleet
    inventory_url: str
    apps_dir: Path
    namespace: str
    ids: dict[str, str] = field(default_factory=dict)  # cluster name -> inventory id
    _clients: dict[str, k8s.ApiClient] = field(default_factory=dict)

    # --- running the flow ----------------------------------------------------------------

    def parameters(self, **values: Any) -> RolloutParameters:
        values.setdefault("app", "hello")
        values.setdefault(
            "waves",
            [
                WaveSpec(name="canary", count=1, max_parallel=1, progress_deadline_seconds=20),
                WaveSpec(name="second", count=3, max_parallel=3, progress_deadline_seconds=20),
                WaveSpec(name="rest", max_parallel=8, progress_deadline_seconds=20),
            ],
        )
        return RolloutParameters(**values)

    def run(self, **values: Any) -> Any:
        """Run the rollout flow in this thread; returns its final state."""
        from flows.rollout import rollout

        return rollout(parameters=self.parameters(**values), return_state=True)

    # --- the inventory and the history ---------------------------------------------------

    def state(self, rollout_id: str) -> RolloutState | None:
        with Inventory(self.inventory_url) as inventory:
            inventory.migrate()
            return RolloutHistory(inventory).rollout_state(rollout_id)

    def read(self, function: Callable[[RolloutHistory], Any]) -> Any:
        with Inventory(self.inventory_url) as inventory:
            inventory.migrate()
            return function(RolloutHistory(inventory))

    def set_state(self, name: str, state: ClusterState) -> None:
        with Inventory(self.inventory_url) as inventory:
            record = inventory.get(self.ids[name])
            inventory.upsert_many([record.model_copy(update={"state": state})])

    # --- what the clusters hold ----------------------------------------------------------

    def api(self, name: str) -> k8s.ApiClient:
        if name not in self._clients:
            from kubernetes import config

            self._clients[name] = config.new_client_from_config(
                config_file=str(self.fleet.kubeconfig_path), context=name
            )
        return self._clients[name]

    def deployment(self, name: str) -> Any | None:
        try:
            return k8s.AppsV1Api(self.api(name)).read_namespaced_deployment("hello", self.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def image(self, name: str) -> str | None:
        deployment = self.deployment(name)
        return None if deployment is None else deployment.spec.template.spec.containers[0].image

    def version(self, name: str) -> str | None:
        image = self.image(name)
        return None if image is None else image.rpartition(":")[2]

    def namespace_exists(self, name: str) -> bool:
        try:
            namespace = k8s.CoreV1Api(self.api(name)).read_namespace(self.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return namespace.metadata.deletion_timestamp is None

    def close(self) -> None:
        for api in self._clients.values():
            api.close()

    # --- Slack ---------------------------------------------------------------------------

    def slack_thread(self, rollout_id: str) -> list[SlackMessage]:
        """The one thread of the rollout: parent first, then the replies."""
        parents = [
            m
            for m in self.fleet.slack.messages("#fleetops")
            if not m.is_reply and f"`{rollout_id}`" in m.text
        ]
        assert len(parents) == 1, [m.text for m in parents]
        return self.fleet.slack.thread("#fleetops", parents[0].ts)

    # --- helpers -------------------------------------------------------------------------

    def names_in(self, rollout_id: str, wave: str) -> list[str]:
        state = self.state(rollout_id)
        assert state is not None
        by_id = {v: k for k, v in self.ids.items()}
        return sorted(by_id[c] for c, r in state.clusters.items() if r.wave == wave)


def write_app(apps_dir: Path, namespace: str, *, app: str = "hello", extra: str = "") -> Path:
    """apps/hello, moved to ``namespace`` (and ``extra`` YAML appended as one more file)."""
    directory = apps_dir / app
    directory.mkdir(parents=True, exist_ok=True)
    for source in sorted(HELLO.glob("*.yaml")):
        text = source.read_text(encoding="utf-8")
        if source.name == "namespace.yaml":
            text = text.replace("name: hello", f"name: {namespace}")
        text = text.replace("namespace: hello", f"namespace: {namespace}")
        (directory / source.name).write_text(text, encoding="utf-8")
    if extra:
        (directory / "zz-extra.yaml").write_text(extra, encoding="utf-8")
    return directory


@pytest.fixture(name="rollouts")
def rollouts_fixture(
    rollout_fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rollouts]:
    for key in list(os.environ):
        if key.startswith("FLEETOPS_"):
            monkeypatch.delenv(key)
    for key, value in {**rollout_fleet.environment(), **FAST}.items():
        monkeypatch.setenv(key, value)
    url = f"sqlite:///{tmp_path / 'inventory.db'}"
    monkeypatch.setenv("FLEETOPS_INVENTORY_URL", url)
    monkeypatch.setenv("FLEETOPS_UI_URL", "http://127.0.0.1:4200")
    apps_dir = tmp_path / "apps"
    namespace = f"hello-{next(_namespaces)}"
    write_app(apps_dir, namespace)
    monkeypatch.setenv("FLEETOPS_ROLLOUT_APPS_DIR", str(apps_dir))

    static = StaticClusters(kubeconfig=rollout_fleet.static_kubeconfig_path)
    clusters = static.discover().clusters
    ids: dict[str, str] = {}
    records = []
    for index, cluster in enumerate(sorted(clusters, key=lambda c: c.name)):
        labels = {
            **cluster.labels,
            "env": "prod" if index % 2 else "staging",
            "tier": "web" if index % 3 else "api",
        }
        records.append(
            cluster.model_copy(update={"labels": labels, "state": ClusterState.REGISTERED})
        )
        ids[cluster.name] = cluster.id
    with Inventory(url) as inventory:
        inventory.migrate()
        inventory.upsert_many(records)

    rollout_fleet.reset_faults()
    rollout_fleet.reset_service_faults()
    rollout_fleet.slack.clear()
    view = Rollouts(
        fleet=rollout_fleet, inventory_url=url, apps_dir=apps_dir, namespace=namespace, ids=ids
    )
    yield view
    view.close()
    rollout_fleet.reset_faults()
    rollout_fleet.reset_service_faults()


def flow_run_of(rollouts: Rollouts, rollout_id: str, *, timeout: float = 30.0) -> str:
    """Wait until the rollout is recorded with its flow run; returns the flow run id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = rollouts.read(lambda h: h.get_rollout(rollout_id))
        except Exception:
            record = None
        if record is not None and record.flow_run_id:
            return str(record.flow_run_id)
        time.sleep(0.1)
    raise AssertionError(f"rollout {rollout_id} was never recorded")


def wait_paused(flow_run_id: str, *, timeout: float = 30.0) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(UUID(flow_run_id)).state
            if state is not None and state.is_paused():
                return
            time.sleep(0.1)
    raise AssertionError(f"flow run {flow_run_id} did not pause")


def in_thread(function: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``function`` in a daemon thread; errors are collected for the test to check."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            function()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors
