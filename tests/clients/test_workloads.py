"""Rollback points, server-side apply, readiness and restore against real sandbox clusters.

Every test drives the official kubernetes client over HTTPS against the session ``fleet`` and
asserts on what the cluster ended up holding, read back with a separate client.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes.watch
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


# --- wait_ready: one watch per pending workload, judged from the events it carries -----------


def _requests_sent(client: Workloads) -> int:
    """Requests the client's own connection pools have sent so far (urllib3 counts them)."""
    pools = client.kube.api_client.rest_client.pool_manager.pools
    # urllib3's RecentlyUsedContainer refuses iteration; keys() is its way
    return sum(pools[key].num_requests for key in pools.keys())  # noqa: SIM118


def _deployment_changes(core: Any, namespace: str, since: str) -> list[Any]:
    """The Deployment ``hello`` as each of its changes after resourceVersion ``since`` left it
    (replayed by a watch of a separate client)."""
    watch = kubernetes.watch.Watch()
    return [
        event["object"]
        for event in watch.stream(
            core.apps.list_namespaced_deployment,
            namespace,
            field_selector="metadata.name=hello",
            resource_version=since,
            timeout_seconds=1,
        )
        if event["type"] == "MODIFIED"
    ]


def test_wait_ready_follows_a_new_generation_on_one_watch(
    workloads: Callable[..., Workloads], core: Any, namespace: str, fleet_faults: Fleet
) -> None:
    client = workloads()
    v1 = _render("1.0.0", namespace=namespace)
    applied = client.apply(v1)
    first = client.wait_ready(v1, applied_generations=applied.generations(), deadline_seconds=20)
    assert first.status is ReadinessStatus.READY, first.message

    fleet_faults.set_faults(fleet_faults.names[0], ready_seconds=1.5)
    v2 = _render("2.0.0", namespace=namespace)
    applied = client.apply(v2)
    generation = applied.generations()[("apps/v1", "Deployment", namespace, "hello")]
    since = core.apps.read_namespaced_deployment("hello", namespace).metadata.resource_version
    sent, started = _requests_sent(client), time.monotonic()
    ready = client.wait_ready(v2, applied_generations=applied.generations(), deadline_seconds=20)
    elapsed, issued = time.monotonic() - started, _requests_sent(client) - sent

    assert ready.status is ReadinessStatus.READY, ready.message
    assert elapsed >= 1.0  # not on the old generation's status
    live = core.apps.read_namespaced_deployment("hello", namespace)
    assert live.metadata.generation == generation
    assert live.status.observed_generation == generation
    assert live.spec.template.spec.containers[0].image == "ghcr.io/fleetops/hello:2.0.0"
    replicas = live.spec.replicas
    assert live.status.updated_replicas == live.status.available_replicas == replicas
    assert live.status.replicas == replicas
    # a GET and one watch, not a watch and a GET per status change
    changes = _deployment_changes(core, namespace, since)
    assert len(changes) >= 3
    assert issued < len(changes), (issued, len(changes))


def test_wait_ready_moves_on_and_fails_with_the_controllers_message(
    workloads: Callable[..., Workloads], core: Any, namespace: str, fleet_faults: Fleet
) -> None:
    """Two Deployments: the first rolls out, the second's image never gets ready and its
    progress deadline passes; the wait fails with the controller's own condition message."""
    fleet_faults.set_faults(fleet_faults.names[0], broken_images=[":broken"])
    objects = _render("1.0.0", namespace=namespace)
    hello = next(o for o in objects if o["kind"] == "Deployment")
    broken = json.loads(json.dumps(hello))
    broken["metadata"]["name"] = "hello-broken"
    broken["spec"]["progressDeadlineSeconds"] = 1
    broken["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/fleetops/hello:broken"
    objects.append(broken)
    client = workloads()
    applied = client.apply(objects)

    started = time.monotonic()
    failed = client.wait_ready(
        objects, applied_generations=applied.generations(), deadline_seconds=30
    )
    assert failed.status is ReadinessStatus.FAILED
    assert time.monotonic() - started < 15  # the progress deadline, not our own 30 s
    verdicts = {r.name: r.status for r in failed.objects}
    assert verdicts == {"hello": ReadinessStatus.READY, "hello-broken": ReadinessStatus.FAILED}
    live = core.apps.read_namespaced_deployment("hello-broken", namespace)
    condition = next(c for c in live.status.conditions if c.type == "Progressing")
    assert condition.reason == "ProgressDeadlineExceeded"
    assert failed.message == (
        f"deployment 'hello-broken' exceeded its progress deadline: {condition.message}"
    )


def test_a_workload_deleted_while_waited_on_is_not_ready(
    workloads: Callable[..., Workloads], core: Any, namespace: str, fleet_faults: Fleet
) -> None:
    fleet_faults.set_faults(fleet_faults.names[0], broken_images=[":1.0.0"])  # never ready
    client = workloads()
    objects = _render("1.0.0", namespace=namespace)
    applied = client.apply(objects)
    outcome: list[Any] = []

    def wait() -> None:
        outcome.append(
            client.wait_ready(
                objects,
                applied_generations=applied.generations(),
                deadline_seconds=3,
                poll_seconds=0.2,
            )
        )

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)  # the wait is watching the Deployment by now
    core.apps.delete_namespaced_deployment("hello", namespace)
    waiter.join(timeout=15)
    assert not waiter.is_alive()
    (state,) = outcome
    assert state.status is ReadinessStatus.FAILED
    assert state.message == (
        f"not ready within 3s: Waiting for Deployment {namespace}/hello: it does not exist"
    )


def test_ready_means_every_workload_ready_at_the_end_not_at_some_point(
    workloads: Callable[..., Workloads], core: Any, namespace: str
) -> None:
    """``hello`` is ready at once, ``hello-slow`` (minReadySeconds 2) later; ``hello`` is
    deleted in between. The wait must read ``hello`` again before it says READY."""
    objects = _render("1.0.0", namespace=namespace)
    hello = next(o for o in objects if o["kind"] == "Deployment")
    slow = json.loads(json.dumps(hello))
    slow["metadata"]["name"] = "hello-slow"
    slow["spec"]["minReadySeconds"] = 2
    objects.append(slow)
    client = workloads()
    applied = client.apply(objects)
    outcome: list[Any] = []

    def wait() -> None:
        outcome.append(
            client.wait_ready(
                objects, applied_generations=applied.generations(), deadline_seconds=4
            )
        )

    waiter = threading.Thread(target=wait)
    waiter.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until hello is ready and hello-slow is not
        live = core.apps.read_namespaced_deployment("hello", namespace)
        if live.status.available_replicas == live.spec.replicas:
            break
        time.sleep(0.05)
    core.apps.delete_namespaced_deployment("hello", namespace)
    waiter.join(timeout=20)
    assert not waiter.is_alive()
    (state,) = outcome
    slow_live = core.apps.read_namespaced_deployment("hello-slow", namespace)
    assert slow_live.status.available_replicas == slow_live.spec.replicas  # it did get ready
    assert state.status is ReadinessStatus.FAILED
    assert state.message == (
        f"not ready within 4s: Waiting for Deployment {namespace}/hello: it does not exist"
    )


def test_wait_ready_reads_through_a_flaky_server_and_raises_when_it_stays_down(
    workloads: Callable[..., Workloads], namespace: str, fleet_faults: Fleet
) -> None:
    name = fleet_faults.names[2]
    client = workloads(name, timeout_seconds=1.0)
    objects = _render("1.0.0", namespace=namespace)
    fleet_faults.set_faults(name, ready_seconds=1.0)
    applied = client.apply(objects)

    # a third of the requests (reads and watches) fail: the wait goes on and ends ready
    fleet_faults.set_faults(name, error_rate=0.3, error_code=503)
    ready = client.wait_ready(
        objects, applied_generations=applied.generations(), deadline_seconds=20
    )
    assert ready.status is ReadinessStatus.READY, ready.message

    # nothing answers: the last read's error is raised at the deadline
    fleet_faults.set_faults(name, error_rate=1.0)
    with pytest.raises(TransientError) as caught:
        client.wait_ready(
            objects, applied_generations=applied.generations(), deadline_seconds=1, poll_seconds=0.2
        )
    assert caught.value.status == 503


def test_watch_events_are_split_on_newlines_whatever_the_chunks() -> None:
    from fleetops.clients.workloads import _watch_events

    chunks = [
        b'{"type":"ADDED","object":{"n":1}}\n{"type":"MOD',
        b'IFIED","object":{"n":2}}\n',
        b'\n{"type":"BOOKMARK","object":{"n":3}}\n{"type":"DELETED","obj',  # cut off
    ]
    assert list(_watch_events(chunks)) == [
        ("ADDED", {"n": 1}),
        ("MODIFIED", {"n": 2}),
        ("BOOKMARK", {"n": 3}),
    ]
    assert list(_watch_events([b'<html>\n{"type":"ADDED","object":{}}\n'])) == []


def test_a_watch_from_a_compacted_resource_version_ends_at_once(
    workloads: Callable[..., Workloads],
    kube_client: Callable[[str], kubernetes.client.ApiClient],
    fleet: Fleet,
    namespace: str,
) -> None:
    """The server answers a watch from a resourceVersion it no longer keeps with an ERROR event
    (410 Expired): the watch ends with "read it again" instead of waiting for its timeout."""
    name = fleet.names[1]
    client = workloads(name)
    objects = _render("1.0.0", namespace=namespace)
    client.apply(objects)
    target = next(t for t in client._targets(objects) if t.ref.kind == "Deployment")
    old = client._get(target)
    assert old is not None
    core = kubernetes.client.CoreV1Api(kube_client(name))
    for n in range(1001):  # more writes than the server's watch history holds
        core.patch_namespaced_config_map("hello-config", namespace, {"data": {"n": str(n)}})

    started = time.monotonic()
    assert client._follow(target, old, generation=None, seconds=5) is None
    assert time.monotonic() - started < 2
