"""Rollback points, server-side apply, readiness and restore against real sandbox clusters.

Every test drives the official kubernetes client over HTTPS against the session ``fleet`` and
asserts on what the cluster ended up holding, read back with a separate client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from pydantic import SecretStr

from fleetops.clients.kube import KubeClient
from fleetops.clients.workloads import Action, RestoreAction, RollbackPoint, Workloads
from fleetops.domain.gates import ReadinessStatus
from fleetops.errors import ConfigError, RateLimited, Rejected, TransientError, Unreachable
from fleetops.render import render_app
from sandbox.fleet import Fleet

APP = Path(__file__).resolve().parents[2] / "apps" / "hello"
LABELS = {"env": "test"}


def _render(version: str, *, namespace: str, deadline: int | None = None) -> list[dict[str, Any]]:
    """apps/hello for one cluster, moved to ``namespace`` so tests do not meet each other."""
    objects = render_app(APP, version=version, cluster_labels=LABELS)
    for obj in objects:
        if obj["kind"] == "Namespace":
            obj["metadata"]["name"] = namespace
        else:
            obj["metadata"]["namespace"] = namespace
        if obj["kind"] == "Deployment" and deadline is not None:
            obj["spec"]["progressDeadlineSeconds"] = deadline
    return objects


@pytest.fixture
def workloads(fleet: Fleet) -> Iterator[Callable[..., Workloads]]:
    clients: list[KubeClient] = []

    def make(name: str | None = None, *, timeout_seconds: float = 5.0) -> Workloads:
        name = name or fleet.names[0]
        kube = KubeClient(
            system=f"kube:{name}",
            endpoint=fleet.server(name),
            ca_pem=fleet.ca_pem(name).decode(),
            token=SecretStr(fleet.token(name)),
            timeout_seconds=timeout_seconds,
        )
        clients.append(kube)
        return Workloads(kube)

    yield make
    for kube in clients:
        kube.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    return ("wl-" + request.node.name.removeprefix("test_").replace("_", "-")[:40]).rstrip("-")


@pytest.fixture
def core(kube_client: Callable[[str], kubernetes.client.ApiClient], fleet: Fleet) -> Any:
    """Typed APIs of the first cluster, a separate client to read back what the server holds."""
    api = kube_client(fleet.names[0])

    class Apis:
        v1 = kubernetes.client.CoreV1Api(api)
        apps = kubernetes.client.AppsV1Api(api)

    return Apis


def _exists(function: Callable[[], Any]) -> bool:
    try:
        function()
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_rollout_rollback_and_restore(
    workloads: Callable[..., Workloads], core: Any, namespace: str, fleet_faults: Fleet
) -> None:
    client = workloads()
    v1 = _render("1.0.0", namespace=namespace)

    point = client.snapshot(v1)
    assert [o.state for o in point.objects] == ["absent"] * 4
    assert [o.ref.kind for o in point.objects] == [
        "Namespace",
        "ConfigMap",
        "Service",
        "Deployment",
    ]

    applied = client.apply(v1)
    assert applied.summary == "4 created, 0 changed, 0 unchanged"
    ready = client.wait_ready(v1, applied_generations=applied.generations(), deadline_seconds=20)
    assert ready.status is ReadinessStatus.READY, ready.message
    live = core.apps.read_namespaced_deployment("hello", namespace)
    assert live.spec.template.spec.containers[0].image == "ghcr.io/fleetops/hello:1.0.0"
    assert any(
        m.manager == "fleetops" and m.operation == "Apply" for m in live.metadata.managed_fields
    )

    # v2 adds a ConfigMap of its own, and its image never gets ready
    v2 = _render("2.0.0", namespace=namespace, deadline=1)
    v2.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "hello-extra", "namespace": namespace},
            "data": {"added": "by v2"},
        }
    )
    before_v2 = client.snapshot(v2)
    assert RollbackPoint.model_validate_json(before_v2.model_dump_json()) == before_v2
    states = {o.ref.name: o.state for o in before_v2.objects if o.ref.kind == "ConfigMap"}
    assert states == {"hello-config": "present", "hello-extra": "absent"}
    deployment = next(o for o in before_v2.objects if o.ref.kind == "Deployment")
    assert deployment.manifest is not None
    for field in ("uid", "resourceVersion", "managedFields", "creationTimestamp", "generation"):
        assert field not in deployment.manifest["metadata"]
    assert "status" not in deployment.manifest

    fleet_faults.set_faults(fleet_faults.names[0], broken_images=[":2.0.0"])
    applied = client.apply(v2)
    assert applied.summary == "1 created, 2 changed, 2 unchanged"  # ConfigMap and Deployment
    started = time.monotonic()
    failed = client.wait_ready(v2, applied_generations=applied.generations(), deadline_seconds=30)
    assert failed.status is ReadinessStatus.FAILED
    assert "exceeded its progress deadline" in failed.message
    assert time.monotonic() - started < 15  # the deadline message, not our own 30 s
    assert _exists(lambda: core.v1.read_namespaced_config_map("hello-extra", namespace))

    restored = client.restore(before_v2, deadline_seconds=20, poll_seconds=0.1)
    assert restored.ok, restored.message
    actions = {(o.ref.kind, o.ref.name): o.action for o in restored.objects}
    assert actions[("ConfigMap", "hello-extra")] is RestoreAction.DELETED
    assert actions[("Deployment", "hello")] is RestoreAction.REAPPLIED
    assert not _exists(lambda: core.v1.read_namespaced_config_map("hello-extra", namespace))
    live = core.apps.read_namespaced_deployment("hello", namespace)
    assert live.spec.template.spec.containers[0].image == "ghcr.io/fleetops/hello:1.0.0"
    assert live.spec.progress_deadline_seconds == 120
    config = core.v1.read_namespaced_config_map("hello-config", namespace)
    assert config.data["VERSION"] == "1.0.0"

    # restoring the very first point removes everything the rollouts created
    gone = client.restore(point, deadline_seconds=10, poll_seconds=0.1)
    assert gone.ok, gone.message
    assert not _exists(lambda: core.v1.read_namespace(namespace))


def test_dry_run_changes_nothing_and_reports_the_diff(
    workloads: Callable[..., Workloads], core: Any, namespace: str
) -> None:
    client = workloads()
    v1 = _render("1.0.0", namespace=namespace)

    fresh = client.apply(v1, dry_run=True)
    assert fresh.dry_run
    assert fresh.summary == "4 created, 0 changed, 0 unchanged"
    assert not _exists(lambda: core.v1.read_namespace(namespace))

    client.apply(v1)
    versions = {
        "deployment": core.apps.read_namespaced_deployment(
            "hello", namespace
        ).metadata.resource_version,
        "config": core.v1.read_namespaced_config_map(
            "hello-config", namespace
        ).metadata.resource_version,
    }
    same = client.apply(v1, dry_run=True)
    assert same.summary == "0 created, 0 changed, 4 unchanged"

    v2 = _render("2.0.0", namespace=namespace)
    diff = client.apply(v2, dry_run=True)
    changed = {o.ref.kind: o.changed_paths for o in diff.objects if o.action is Action.CHANGED}
    assert "spec.template.spec.containers[0].image" in changed["Deployment"]
    assert "data.VERSION" in changed["ConfigMap"]
    assert {
        "deployment": core.apps.read_namespaced_deployment(
            "hello", namespace
        ).metadata.resource_version,
        "config": core.v1.read_namespaced_config_map(
            "hello-config", namespace
        ).metadata.resource_version,
    } == versions
    assert core.v1.read_namespaced_config_map("hello-config", namespace).data["VERSION"] == "1.0.0"


def test_is_at_for_resume(workloads: Callable[..., Workloads], namespace: str) -> None:
    client = workloads()
    v1 = _render("1.0.0", namespace=namespace)
    assert not client.is_at(v1, "1.0.0").at

    applied = client.apply(v1)
    client.wait_ready(v1, applied_generations=applied.generations(), deadline_seconds=20)
    check = client.is_at(v1, "1.0.0")
    assert check.at, check.reason
    assert check.generations == {
        f"Deployment/{namespace}/hello": applied.generations()[
            ("apps/v1", "Deployment", namespace, "hello")
        ]
    }

    other = client.is_at(_render("2.0.0", namespace=namespace), "2.0.0")
    assert not other.at
    assert "spec.template.spec.containers[0].image" in other.reason


def test_invalid_object_is_rejected_with_the_server_message(
    workloads: Callable[..., Workloads], namespace: str
) -> None:
    client = workloads()
    objects = _render("1.0.0", namespace=namespace)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    deployment["spec"]["replicas"] = -1
    with pytest.raises(Rejected) as caught:
        client.apply(objects)
    assert caught.value.status == 422
    assert "replicas" in str(caught.value)
    assert not isinstance(caught.value, TransientError)


def test_secrets_are_refused(workloads: Callable[..., Workloads], namespace: str) -> None:
    client = workloads()
    objects = _render("1.0.0", namespace=namespace)
    objects.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": namespace}}
    )
    with pytest.raises(ConfigError, match="may not contain Secrets"):
        client.snapshot(objects)
    with pytest.raises(ConfigError, match="rotation flow"):
        client.apply(objects, dry_run=True)


def test_server_errors_are_transient_and_outage_unreachable(
    workloads: Callable[..., Workloads], fleet_faults: Fleet, namespace: str
) -> None:
    name = fleet_faults.names[1]
    client = workloads(name, timeout_seconds=1.0)
    objects = _render("1.0.0", namespace=namespace)

    fleet_faults.set_faults(name, error_rate=1.0, error_code=503)
    with pytest.raises(TransientError) as caught:
        client.apply(objects)
    assert caught.value.status == 503

    fleet_faults.set_faults(name, error_rate=1.0, error_code=429, retry_after_seconds=2)
    with pytest.raises(RateLimited) as limited:
        client.snapshot(objects)
    assert limited.value.retry_after == 2

    fleet_faults.set_faults(name, error_rate=0.0)
    fleet_faults.outage(name, True)
    with pytest.raises(Unreachable):
        client.snapshot(objects)


def test_built_in_kinds_are_where_the_cluster_serves_them(
    kube_client: Callable[[str], kubernetes.client.ApiClient], fleet: Fleet
) -> None:
    """The kinds located without discovery (BUILT_IN) have the plural and scope the cluster's
    own discovery documents give them."""
    from fleetops.clients.workloads import BUILT_IN

    api = kube_client(fleet.names[0])
    served: dict[tuple[str, str], tuple[str, bool]] = {}
    for api_version in sorted({v for v, _ in BUILT_IN}):
        path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        response = api.call_api(
            *api.param_serialize(method="GET", resource_path=path, auth_settings=["BearerToken"])
        )
        response.read()
        assert response.status == 200, path
        for resource in json.loads(response.data)["resources"]:
            if "/" not in resource["name"]:
                served[(api_version, resource["kind"])] = (
                    resource["name"],
                    resource["namespaced"],
                )
    assert {key: served.get(key) for key in BUILT_IN} == BUILT_IN
