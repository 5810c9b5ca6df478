"""The sandbox's workload controllers against the real sandbox Store.

Most tests drive :class:`Controllers` synchronously with a fake clock (``step()``), so every
intermediate state of a rollout can be checked deterministically and the tests take
milliseconds. A few run the real asyncio task against the wall clock, and the kubectl tests
drive ``kubectl rollout status`` / ``rollout restart`` against one HTTPS sandbox cluster.
Assertions are on the objects the store ends up holding and on what kubectl printed.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.kube.cluster import ClusterSpec
from sandbox.kube.controllers import MANAGER, Controllers, template_hash
from sandbox.kube.errors import StatusError
from sandbox.kube.faults import Faults
from sandbox.kube.resources import (
    CONFIGMAPS,
    DAEMONSETS,
    DEPLOYMENTS,
    PODS,
    REPLICASETS,
    STATEFULSETS,
)
from sandbox.kube.store import Store

NS = "default"
SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
T0 = 1_750_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class World:
    """One cluster's store and controllers on a fake clock."""

    def __init__(self, *, rollout_seconds: float = 2.0, seed: int = 7) -> None:
        self.clock = FakeClock()
        self.store = Store(clock=self.clock, rng=random.Random(seed))
        self.faults = Faults(rng=random.Random(seed))
        self.spec = ClusterSpec(name="ctl-test", token="t", rollout_seconds=rollout_seconds)
        self.ctl = Controllers(
            self.store,
            spec=self.spec,
            faults=self.faults,
            clock=self.clock,
            rng=random.Random(seed),
        )
        self.ctl.attach()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of fake time pass, firing every timer at its due time."""
        end = self.clock.now + seconds
        while True:
            self.ctl.step()
            due = self.ctl.next_due()
            if due is None or due > end:
                break
            self.clock.now = max(self.clock.now, due)
        self.clock.now = end
        self.ctl.step()

    def ticks(self, seconds: float, tick: float = 0.1) -> Iterator[None]:
        """Advance in small ticks, yielding after each (to check invariants along the way)."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + tick)
            self.ctl.step()
            yield

    # objects

    def deploy(
        self, name: str = "web", *, replicas: int = 3, image: str = "nginx:1.25", **spec: Any
    ) -> dict:
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": image}]},
                },
                **spec,
            },
        }
        return self.store.create(DEPLOYMENTS, NS, body, manager="kubectl-client-side-apply")

    def edit(self, rt, name: str, change) -> dict:
        obj = self.store.get(rt, NS, name)
        change(obj)
        return self.store.update(rt, NS, name, obj, manager="kubectl-edit")

    def set_image(self, name: str, image: str) -> dict:
        def change(d: dict) -> None:
            d["spec"]["template"]["spec"]["containers"][0]["image"] = image

        return self.edit(DEPLOYMENTS, name, change)

    def get(self, rt, name: str) -> dict:
        return self.store.get(rt, NS, name)

    def replicasets(self, owner: str) -> list[dict]:
        items, _ = self.store.list(REPLICASETS, NS)
        return sorted(
            (rs for rs in items if rs["metadata"]["ownerReferences"][0]["name"] == owner),
            key=lambda rs: int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]),
        )

    def pods(self, prefix: str) -> list[dict]:
        items, _ = self.store.list(PODS, NS)
        return [p for p in items if p["metadata"]["name"].startswith(prefix + "-")]


def condition(obj: dict, ctype: str) -> dict:
    (cond,) = [c for c in obj["status"].get("conditions", []) if c["type"] == ctype]
    return cond


def ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


@pytest.fixture
def world() -> World:
    return World()


# ------------------------------------------------------------------------------------------------
# Deployments


def test_new_deployment_gets_a_replicaset_and_pods_and_becomes_available(world: World) -> None:
    world.deploy(replicas=3)
    world.ctl.step()

    (rs,) = world.replicasets("web")
    pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert re.fullmatch(f"{SAFE}{{6,10}}", pod_hash)
    assert rs["metadata"]["name"] == f"web-{pod_hash}"
    d = world.get(DEPLOYMENTS, "web")
    assert rs["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "web",
            "uid": d["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert rs["metadata"]["annotations"] == {
        "deployment.kubernetes.io/revision": "1",
        "deployment.kubernetes.io/desired-replicas": "3",
        "deployment.kubernetes.io/max-replicas": "4",
    }
    assert rs["spec"]["replicas"] == 3
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": pod_hash}
    assert rs["spec"]["template"]["metadata"]["labels"] == {
        "app": "web",
        "pod-template-hash": pod_hash,
    }
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"

    pods = world.pods(rs["metadata"]["name"])
    assert len(pods) == 3
    for pod in pods:
        assert re.fullmatch(f"web-{pod_hash}-{SAFE}{{5}}", pod["metadata"]["name"])
        assert pod["metadata"]["generateName"] == f"web-{pod_hash}-"
        assert pod["metadata"]["labels"] == {"app": "web", "pod-template-hash": pod_hash}
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert pod["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
        assert pod["spec"]["nodeName"] in world.ctl.nodes
        assert pod["status"]["phase"] == "Pending"
        (cs,) = pod["status"]["containerStatuses"]
        assert cs["state"] == {"waiting": {"reason": "ContainerCreating"}}
        assert not ready(pod)

    # while pods start: observed, all updated, none available
    d = world.get(DEPLOYMENTS, "web")
    assert d["status"]["observedGeneration"] == d["metadata"]["generation"]
    assert d["status"]["replicas"] == 3
    assert d["status"]["updatedReplicas"] == 3
    assert d["status"]["unavailableReplicas"] == 3
    assert "availableReplicas" not in d["status"]  # omitempty, like the real JSON
    available = condition(d, "Available")
    assert (available["status"], available["reason"]) == ("False", "MinimumReplicasUnavailable")
    assert available["message"] == "Deployment does not have minimum availability."
    progressing = condition(d, "Progressing")
    assert progressing["status"] == "True"
    assert progressing["reason"] in ("NewReplicaSetCreated", "ReplicaSetUpdated")

    world.advance(1.0)  # half-way: still creating containers (no readiness probe)
    pod = world.pods(rs["metadata"]["name"])[0]
    assert pod["status"]["phase"] == "Pending"
    assert not ready(pod)

    world.advance(1.1)
    d = world.get(DEPLOYMENTS, "web")
    status = d["status"]
    assert status["observedGeneration"] == d["metadata"]["generation"]
    assert (status["replicas"], status["updatedReplicas"], status["readyReplicas"]) == (3, 3, 3)
    assert status["availableReplicas"] == 3
    assert "unavailableReplicas" not in status
    assert [c["type"] for c in status["conditions"]] == ["Available", "Progressing"]
    available = condition(d, "Available")
    assert (available["status"], available["reason"]) == ("True", "MinimumReplicasAvailable")
    assert available["message"] == "Deployment has minimum availability."
    progressing = condition(d, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "NewReplicaSetAvailable")
    assert (
        progressing["message"]
        == f'ReplicaSet "{rs["metadata"]["name"]}" has successfully progressed.'
    )
    for key in ("lastUpdateTime", "lastTransitionTime"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", progressing[key])
    rs = world.get(REPLICASETS, rs["metadata"]["name"])
    assert rs["status"] == {
        "replicas": 3,
        "fullyLabeledReplicas": 3,
        "readyReplicas": 3,
        "availableReplicas": 3,
        "observedGeneration": rs["metadata"]["generation"],
    }
    for pod in world.pods(rs["metadata"]["name"]):
        assert ready(pod)
        assert [c["type"] for c in pod["status"]["conditions"]] == [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ]
        assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    # the controller manager writes replica sets and creates pods; the kubelet writes pod status
    assert {e["manager"] for e in rs["metadata"]["managedFields"]} == {MANAGER}
    pod = world.pods(rs["metadata"]["name"])[0]
    writers = {(e["manager"], e.get("subresource")) for e in pod["metadata"]["managedFields"]}
    assert writers == {(MANAGER, None), ("kubelet", "status")}


def test_a_readiness_probe_keeps_a_running_pod_unready_for_a_while(world: World) -> None:
    world.deploy(replicas=1)
    probe = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}
    world.edit(
        DEPLOYMENTS,
        "web",
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessProbe=probe),
    )
    world.advance(1.2)  # the probe is not passing yet: running, not ready
    (rs,) = [r for r in world.replicasets("web") if r["spec"]["replicas"]]
    (pod,) = world.pods(rs["metadata"]["name"])
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"].startswith("10.244.")
    cs = pod["status"]["containerStatuses"][0]
    assert "running" in cs["state"]
    assert cs["image"] == "docker.io/library/nginx:1.25"
    assert (cs["ready"], cs["started"]) == (False, True)
    assert not ready(pod)
    world.advance(1.0)
    (pod,) = world.pods(rs["metadata"]["name"])
    assert ready(pod)
    assert pod["status"]["containerStatuses"][0]["ready"] is True


def test_template_change_rolls_out_a_second_replicaset_within_surge_and_unavailability(
    world: World,
) -> None:
    world.deploy(
        replicas=4,
        strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    )
    world.advance(3)
    (first,) = world.replicasets("web")

    world.set_image("web", "nginx:1.26")
    for _ in world.ticks(6, tick=0.05):
        rss = world.replicasets("web")
        assert sum(rs["spec"]["replicas"] for rs in rss) <= 5  # replicas + maxSurge
        assert sum(rs["status"].get("availableReplicas", 0) for rs in rss) >= 4  # maxUnavailable 0

    old, new = world.replicasets("web")
    assert old["metadata"]["name"] == first["metadata"]["name"]
    assert new["metadata"]["name"] != first["metadata"]["name"]
    assert new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert old["spec"]["replicas"] == 0
    assert old["status"]["replicas"] == 0
    assert new["spec"]["replicas"] == 4
    assert world.pods(old["metadata"]["name"]) == []
    assert len(world.pods(new["metadata"]["name"])) == 4
    d = world.get(DEPLOYMENTS, "web")
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert d["status"]["updatedReplicas"] == d["status"]["availableReplicas"] == 4
    assert condition(d, "Progressing")["reason"] == "NewReplicaSetAvailable"
    assert condition(d, "Progressing")["message"] == (
        f'ReplicaSet "{new["metadata"]["name"]}" has successfully progressed.'
    )


def test_rollout_restart_annotation_makes_a_new_replicaset(world: World) -> None:
    world.deploy(replicas=2)
    world.advance(3)

    def restart(d: dict) -> None:
        d["spec"]["template"]["metadata"]["annotations"] = {
            "kubectl.kubernetes.io/restartedAt": "2025-06-15T10:00:00Z"
        }

    world.edit(DEPLOYMENTS, "web", restart)
    world.advance(6)
    old, new = world.replicasets("web")
    assert new["spec"]["template"]["metadata"]["annotations"] == {
        "kubectl.kubernetes.io/restartedAt": "2025-06-15T10:00:00Z"
    }
    assert (old["spec"]["replicas"], new["spec"]["replicas"]) == (0, 2)
    for pod in world.pods(new["metadata"]["name"]):
        assert (
            pod["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            == "2025-06-15T10:00:00Z"
        )
        assert ready(pod)


def test_undo_to_an_old_template_reuses_its_replicaset_with_a_new_revision(world: World) -> None:
    world.deploy(replicas=2, image="nginx:1.25")
    world.advance(3)
    world.set_image("web", "nginx:1.26")
    world.advance(6)
    world.set_image("web", "nginx:1.25")  # what `kubectl rollout undo` does
    world.advance(6)
    rss = world.replicasets("web")
    assert len(rss) == 2
    assert [rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] for rs in rss] == [
        "2",
        "3",
    ]
    reused = rss[1]
    assert reused["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert reused["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
    assert reused["spec"]["replicas"] == 2
    assert (
        world.get(DEPLOYMENTS, "web")["metadata"]["annotations"][
            "deployment.kubernetes.io/revision"
        ]
        == "3"
    )


def test_scaling_resizes_the_replicaset_without_a_new_one(world: World) -> None:
    world.deploy(replicas=2)
    world.advance(3)
    (rs,) = world.replicasets("web")

    world.edit(DEPLOYMENTS, "web", lambda d: d["spec"].update(replicas=5))
    world.ctl.step()
    (scaled,) = world.replicasets("web")
    assert scaled["metadata"]["uid"] == rs["metadata"]["uid"]
    assert scaled["spec"]["replicas"] == 5
    assert scaled["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] == "5"
    assert scaled["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    world.advance(3)
    d = world.get(DEPLOYMENTS, "web")
    assert (d["status"]["replicas"], d["status"]["availableReplicas"]) == (5, 5)
    assert condition(d, "Progressing")["reason"] == "NewReplicaSetAvailable"

    world.edit(DEPLOYMENTS, "web", lambda d: d["spec"].update(replicas=1))
    world.advance(1)
    (scaled,) = world.replicasets("web")
    assert scaled["spec"]["replicas"] == 1
    assert len(world.pods(rs["metadata"]["name"])) == 1
    d = world.get(DEPLOYMENTS, "web")
    assert (d["status"]["replicas"], d["status"]["availableReplicas"]) == (1, 1)


def test_broken_image_never_gets_ready_and_exceeds_the_progress_deadline(world: World) -> None:
    world.faults.update(broken_images=[":broken"])
    world.deploy(replicas=3, progressDeadlineSeconds=30)
    world.advance(3)
    (good,) = world.replicasets("web")

    world.set_image("web", "nginx:broken")
    world.advance(5)
    good_now, bad = world.replicasets("web")
    (bad_pod,) = world.pods(bad["metadata"]["name"])  # maxSurge 25% of 3 -> 1 surge pod
    assert bad_pod["status"]["phase"] == "Pending"
    (cs,) = bad_pod["status"]["containerStatuses"]
    assert cs["state"]["waiting"]["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert cs["image"] == "nginx:broken"
    assert not ready(bad_pod)
    d = world.get(DEPLOYMENTS, "web")
    assert condition(d, "Progressing")["reason"] == "ReplicaSetUpdated"

    world.advance(40)
    (bad_pod,) = world.pods(bad["metadata"]["name"])
    assert bad_pod["status"]["containerStatuses"][0]["state"]["waiting"] == {
        "reason": "ImagePullBackOff",
        "message": 'Back-off pulling image "nginx:broken"',
    }
    d = world.get(DEPLOYMENTS, "web")
    progressing = condition(d, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert (
        progressing["message"]
        == f'ReplicaSet "{bad["metadata"]["name"]}" has timed out progressing.'
    )
    # the old replica set keeps serving
    good_now = world.get(REPLICASETS, good["metadata"]["name"])
    assert good_now["spec"]["replicas"] == 3
    assert good_now["status"]["availableReplicas"] == 3
    assert all(ready(p) for p in world.pods(good["metadata"]["name"]))
    assert condition(d, "Available")["status"] == "True"
    assert d["status"]["updatedReplicas"] == 1
    assert d["status"]["unavailableReplicas"] == 1
    assert d["status"]["observedGeneration"] == d["metadata"]["generation"]

    # fixing the image (a new template) resumes a normal rollout
    world.set_image("web", "nginx:1.27")
    world.advance(10)
    rss = world.replicasets("web")
    assert [rs["spec"]["replicas"] for rs in rss] == [0, 0, 3]
    assert world.pods(bad["metadata"]["name"]) == []
    d = world.get(DEPLOYMENTS, "web")
    progressing = condition(d, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "NewReplicaSetAvailable")
    assert d["status"]["availableReplicas"] == d["status"]["updatedReplicas"] == 3


def test_revision_annotation_goes_through_status_without_bumping_generation(world: World) -> None:
    world.deploy(replicas=1)
    world.advance(3)
    d = world.get(DEPLOYMENTS, "web")
    # as on a real cluster: the controller's writes never bump the deployment's generation
    assert d["metadata"]["generation"] == d["status"]["observedGeneration"] == 1
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    writers = {(e["manager"], e.get("subresource")) for e in d["metadata"]["managedFields"]}
    assert writers == {("kubectl-client-side-apply", None), (MANAGER, "status")}


def test_lifting_the_broken_image_fault_lets_waiting_pods_start(world: World) -> None:
    world.faults.update(broken_images=["nginx:1.25"])
    world.deploy(replicas=2)
    world.advance(30)
    assert condition(world.get(DEPLOYMENTS, "web"), "Available")["status"] == "False"
    world.faults.update(broken_images=[])
    world.advance(15)  # the kubelet retries the pull with a back-off of at most 10 s
    d = world.get(DEPLOYMENTS, "web")
    assert d["status"]["availableReplicas"] == 2
    assert condition(d, "Available")["status"] == "True"


def test_broken_first_rollout_is_unavailable(world: World) -> None:
    world.faults.update(broken_images=["registry.example/app:v2"])
    world.deploy(replicas=2, image="registry.example/app:v2", progressDeadlineSeconds=10)
    world.advance(15)
    d = world.get(DEPLOYMENTS, "web")
    assert condition(d, "Available")["reason"] == "MinimumReplicasUnavailable"
    assert condition(d, "Progressing")["reason"] == "ProgressDeadlineExceeded"
    assert "availableReplicas" not in d["status"]
    (rs,) = world.replicasets("web")
    for pod in world.pods(rs["metadata"]["name"]):
        waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
        assert waiting["reason"] == "ImagePullBackOff"


def test_ready_seconds_fault_slows_readiness(world: World) -> None:
    world.faults.update(ready_seconds=20)
    world.deploy(replicas=1)
    world.advance(10)
    assert condition(world.get(DEPLOYMENTS, "web"), "Available")["status"] == "False"
    world.advance(11)
    assert condition(world.get(DEPLOYMENTS, "web"), "Available")["status"] == "True"


def test_recreate_strategy_replaces_all_pods_at_once(world: World) -> None:
    world.deploy(replicas=2, strategy={"type": "Recreate"})
    world.advance(3)
    world.set_image("web", "nginx:1.26")
    world.ctl.step()
    old, new = world.replicasets("web")
    assert old["spec"]["replicas"] == 0
    world.advance(3)
    old, new = world.replicasets("web")
    assert (old["spec"]["replicas"], new["spec"]["replicas"]) == (0, 2)
    assert (
        condition(world.get(DEPLOYMENTS, "web"), "Progressing")["reason"]
        == "NewReplicaSetAvailable"
    )


def test_paused_deployment_holds_template_changes(world: World) -> None:
    world.deploy(replicas=1)
    world.advance(3)
    world.edit(DEPLOYMENTS, "web", lambda d: d["spec"].update(paused=True))
    world.set_image("web", "nginx:1.26")
    world.advance(3)
    assert len(world.replicasets("web")) == 1
    progressing = condition(world.get(DEPLOYMENTS, "web"), "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("Unknown", "DeploymentPaused")
    world.edit(DEPLOYMENTS, "web", lambda d: d["spec"].update(paused=False))
    world.advance(5)
    assert [rs["spec"]["replicas"] for rs in world.replicasets("web")] == [0, 1]


def test_revision_history_limit_deletes_oldest_replicasets(world: World) -> None:
    world.deploy(replicas=1, revisionHistoryLimit=1)
    for tag in ("1.26", "1.27", "1.28"):
        world.advance(3)
        world.set_image("web", f"nginx:{tag}")
    world.advance(5)
    rss = world.replicasets("web")
    assert [rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] for rs in rss] == [
        "3",
        "4",
    ]


def test_deleting_a_pod_gets_it_replaced(world: World) -> None:
    world.deploy(replicas=2)
    world.advance(3)
    (rs,) = world.replicasets("web")
    victim = world.pods(rs["metadata"]["name"])[0]
    world.store.delete(PODS, NS, victim["metadata"]["name"])
    world.advance(3)
    pods = world.pods(rs["metadata"]["name"])
    assert len(pods) == 2
    assert victim["metadata"]["name"] not in {p["metadata"]["name"] for p in pods}
    assert all(ready(p) for p in pods)


def test_a_bare_pod_is_scheduled_and_runs(world: World) -> None:
    world.store.create(
        PODS,
        NS,
        {"metadata": {"name": "solo"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        manager="kubectl-run",
    )
    world.advance(3)
    pod = world.get(PODS, "solo")
    assert pod["spec"]["nodeName"] in world.ctl.nodes
    assert pod["status"]["phase"] == "Running"
    assert ready(pod)
    assert pod["status"]["containerStatuses"][0]["image"] == "docker.io/library/busybox:latest"


# ------------------------------------------------------------------------------------------------
# StatefulSets and DaemonSets


def statefulset(name: str = "db", replicas: int = 3, image: str = "postgres:16") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "db", "image": image}]},
            },
        },
    }


def test_statefulset_creates_ordered_pods_and_reports_status(world: World) -> None:
    world.store.create(STATEFULSETS, NS, statefulset(), manager="kubectl")
    world.ctl.step()
    assert [p["metadata"]["name"] for p in world.pods("db")] == ["db-0"]  # OrderedReady
    world.advance(10)
    pods = world.pods("db")
    assert [p["metadata"]["name"] for p in pods] == ["db-0", "db-1", "db-2"]
    sts = world.get(STATEFULSETS, "db")
    revision = sts["status"]["updateRevision"]
    assert re.fullmatch(f"db-{SAFE}{{6,10}}", revision)
    for i, pod in enumerate(pods):
        assert ready(pod)
        assert pod["metadata"]["labels"] == {
            "app": "db",
            "controller-revision-hash": revision,
            "statefulset.kubernetes.io/pod-name": f"db-{i}",
            "apps.kubernetes.io/pod-index": str(i),
        }
        assert pod["spec"]["hostname"] == f"db-{i}"
        assert pod["spec"]["subdomain"] == "db"
    assert sts["status"] == {
        "observedGeneration": sts["metadata"]["generation"],
        "replicas": 3,
        "readyReplicas": 3,
        "currentReplicas": 3,
        "updatedReplicas": 3,
        "currentRevision": revision,
        "updateRevision": revision,
        "collisionCount": 0,
        "availableReplicas": 3,
    }

    # a rolling update goes from the highest ordinal down and ends with current == update
    world.edit(
        STATEFULSETS,
        "db",
        lambda s: s["spec"]["template"]["spec"]["containers"][0].update(image="postgres:17"),
    )
    world.ctl.step()
    sts = world.get(STATEFULSETS, "db")
    assert sts["status"]["updateRevision"] != revision
    assert sts["status"]["currentRevision"] == revision
    db2 = world.get(PODS, "db-2")  # replaced first, with the new revision
    assert db2["metadata"]["labels"]["controller-revision-hash"] == sts["status"]["updateRevision"]
    assert not ready(db2)
    assert ready(world.get(PODS, "db-1"))
    assert world.get(PODS, "db-1")["metadata"]["labels"]["controller-revision-hash"] == revision
    world.advance(10)
    sts = world.get(STATEFULSETS, "db")
    assert sts["status"]["currentRevision"] == sts["status"]["updateRevision"] != revision
    assert sts["status"]["updatedReplicas"] == sts["status"]["readyReplicas"] == 3
    assert {p["spec"]["containers"][0]["image"] for p in world.pods("db")} == {"postgres:17"}


def test_statefulset_with_a_broken_image_stalls_at_the_highest_ordinal(world: World) -> None:
    world.store.create(STATEFULSETS, NS, statefulset(), manager="kubectl")
    world.advance(10)
    world.faults.update(broken_images=["postgres:broken"])
    world.edit(
        STATEFULSETS,
        "db",
        lambda s: s["spec"]["template"]["spec"]["containers"][0].update(image="postgres:broken"),
    )
    world.advance(30)
    sts = world.get(STATEFULSETS, "db")
    assert sts["status"]["readyReplicas"] == 2
    assert sts["status"]["updatedReplicas"] == 1
    assert sts["status"]["currentRevision"] != sts["status"]["updateRevision"]
    assert not ready(world.get(PODS, "db-2"))
    assert ready(world.get(PODS, "db-0"))
    assert ready(world.get(PODS, "db-1"))


def daemonset(name: str = "agent", image: str = "fluent/fluent-bit:3.0") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "agent", "image": image}]},
            },
        },
    }


def test_daemonset_runs_one_pod_per_node_and_rolls_within_max_unavailable(world: World) -> None:
    world.store.create(DAEMONSETS, NS, daemonset(), manager="kubectl")
    world.ctl.step()
    pods = world.pods("agent")
    assert sorted(p["spec"]["nodeName"] for p in pods) == [
        "sandbox-node-1",
        "sandbox-node-2",
        "sandbox-node-3",
    ]
    for pod in pods:
        assert re.fullmatch(f"agent-{SAFE}{{5}}", pod["metadata"]["name"])
        assert pod["metadata"]["labels"]["pod-template-generation"] == "1"
        terms = pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [
            pod["spec"]["nodeName"]
        ]
    world.advance(3)
    ds = world.get(DAEMONSETS, "agent")
    assert ds["status"] == {
        "currentNumberScheduled": 3,
        "numberMisscheduled": 0,
        "desiredNumberScheduled": 3,
        "numberReady": 3,
        "observedGeneration": ds["metadata"]["generation"],
        "updatedNumberScheduled": 3,
        "numberAvailable": 3,
    }

    world.edit(
        DAEMONSETS,
        "agent",
        lambda s: s["spec"]["template"]["spec"]["containers"][0].update(
            image="fluent/fluent-bit:3.1"
        ),
    )
    for _ in world.ticks(5, tick=0.05):
        ds = world.get(DAEMONSETS, "agent")
        assert ds["status"].get("numberUnavailable", 0) <= 1  # maxUnavailable 1
    ds = world.get(DAEMONSETS, "agent")
    assert ds["status"]["updatedNumberScheduled"] == ds["status"]["numberAvailable"] == 3
    assert {p["spec"]["containers"][0]["image"] for p in world.pods("agent")} == {
        "fluent/fluent-bit:3.1"
    }
    assert {p["metadata"]["labels"]["pod-template-generation"] for p in world.pods("agent")} == {
        "2"
    }


def test_daemonset_with_a_broken_image_stops_after_one_node_and_recovers(world: World) -> None:
    world.store.create(DAEMONSETS, NS, daemonset(), manager="kubectl")
    world.advance(3)
    world.faults.update(broken_images=[":broken"])
    world.edit(
        DAEMONSETS,
        "agent",
        lambda s: s["spec"]["template"]["spec"]["containers"][0].update(
            image="fluent/fluent-bit:broken"
        ),
    )
    world.advance(20)
    ds = world.get(DAEMONSETS, "agent")
    assert ds["status"]["updatedNumberScheduled"] == 1
    assert ds["status"]["numberAvailable"] == 2
    assert ds["status"]["numberUnavailable"] == 1
    world.edit(
        DAEMONSETS,
        "agent",
        lambda s: s["spec"]["template"]["spec"]["containers"][0].update(
            image="fluent/fluent-bit:3.2"
        ),
    )
    world.advance(10)
    ds = world.get(DAEMONSETS, "agent")
    assert ds["status"]["updatedNumberScheduled"] == ds["status"]["numberAvailable"] == 3


# ------------------------------------------------------------------------------------------------
# Garbage collection, determinism


def test_deleting_a_deployment_removes_its_replicasets_and_pods(world: World) -> None:
    world.deploy(replicas=2)
    world.deploy("other", replicas=1)
    world.advance(3)
    world.store.delete(DEPLOYMENTS, NS, "web")
    world.advance(1)
    assert world.replicasets("web") == []
    assert world.pods("web") == []
    assert len(world.pods("other")) == 1  # unrelated objects stay


def test_dependents_of_an_owner_that_no_longer_exists_are_collected(world: World) -> None:
    world.deploy(replicas=1)
    world.advance(3)
    d = world.get(DEPLOYMENTS, "web")
    owner = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
        "uid": d["metadata"]["uid"],
    }
    world.store.create(
        CONFIGMAPS, NS, {"metadata": {"name": "owned", "ownerReferences": [owner]}}, manager="t"
    )
    ghost = {**owner, "uid": "00000000-0000-4000-8000-000000000000"}
    world.store.create(
        CONFIGMAPS, NS, {"metadata": {"name": "dangling", "ownerReferences": [ghost]}}, manager="t"
    )
    world.advance(1)
    assert world.get(CONFIGMAPS, "owned")["metadata"]["name"] == "owned"
    with pytest.raises(StatusError) as err:
        world.get(CONFIGMAPS, "dangling")
    assert err.value.code == 404


def test_same_seed_same_names() -> None:
    names = []
    for _ in range(2):
        w = World(seed=42)
        w.deploy(replicas=3)
        w.advance(3)
        names.append(sorted(p["metadata"]["name"] for p in w.pods("web")))
    assert names[0] == names[1]
    assert len(set(names[0])) == 3


def test_template_hash_is_stable_and_changes_with_the_template() -> None:
    template = {
        "metadata": {"labels": {"app": "x"}},
        "spec": {"containers": [{"name": "a", "image": "i:1"}]},
    }
    same = {
        "spec": {"containers": [{"image": "i:1", "name": "a"}]},
        "metadata": {"labels": {"app": "x"}},
    }
    assert template_hash(template) == template_hash(same)
    changed = {**template, "spec": {"containers": [{"name": "a", "image": "i:2"}]}}
    assert template_hash(changed) != template_hash(template)
    assert template_hash(template, 1) != template_hash(template)
    assert re.fullmatch(f"{SAFE}+", template_hash(template))


# ------------------------------------------------------------------------------------------------
# The real asyncio task against the wall clock


def test_run_task_completes_a_rollout_on_the_wall_clock_and_then_sleeps() -> None:
    async def scenario() -> tuple[dict, float, int, float]:
        store = Store(rng=random.Random(3))
        ctl = Controllers(
            store,
            spec=ClusterSpec(name="wall", token="t", rollout_seconds=0.3),
            faults=Faults(),
            rng=random.Random(3),
        )
        task = asyncio.create_task(ctl.run())
        start = time.monotonic()
        store.create(
            DEPLOYMENTS,
            NS,
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "a", "image": "nginx"}]},
                    },
                },
            },
            manager="kubectl",
        )
        while True:
            d = store.get(DEPLOYMENTS, NS, "web")
            cond = [
                c for c in d.get("status", {}).get("conditions", []) if c["type"] == "Progressing"
            ]
            if cond and cond[0]["reason"] == "NewReplicaSetAvailable":
                break
            assert time.monotonic() - start < 5, d.get("status")
            await asyncio.sleep(0.02)
        took = time.monotonic() - start
        # idle: nothing changes and the task does not spin
        rv = store.resource_version
        cpu = time.process_time()
        await asyncio.sleep(0.5)
        idle_cpu = time.process_time() - cpu
        changed = int(store.resource_version) - int(rv)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return d, took, changed, idle_cpu

    d, took, changed, idle_cpu = asyncio.run(scenario())
    assert d["status"]["availableReplicas"] == 2
    assert 0.25 <= took < 2.0
    assert changed == 0
    assert idle_cpu < 0.1


def test_two_hundred_clusters_share_one_loop_and_idle_for_free() -> None:
    clusters = 200

    async def scenario() -> tuple[float, float, int]:
        worlds = []
        for i in range(clusters):
            store = Store(rng=random.Random(i))
            ctl = Controllers(
                store,
                spec=ClusterSpec(name=f"c{i}", token="t", rollout_seconds=0.3),
                faults=Faults(),
                rng=random.Random(i),
            )
            worlds.append((store, asyncio.create_task(ctl.run())))
        await asyncio.sleep(0)
        start = time.monotonic()
        for store, _ in worlds:
            store.create(
                DEPLOYMENTS,
                NS,
                {
                    "metadata": {"name": "app"},
                    "spec": {
                        "replicas": 2,
                        "selector": {"matchLabels": {"app": "app"}},
                        "template": {
                            "metadata": {"labels": {"app": "app"}},
                            "spec": {"containers": [{"name": "x", "image": "nginx"}]},
                        },
                    },
                },
                manager="kubectl",
            )
        pending = set(range(clusters))
        while pending:
            for i in list(pending):
                d = worlds[i][0].get(DEPLOYMENTS, NS, "app")
                if d.get("status", {}).get("availableReplicas") == 2:
                    pending.discard(i)
            assert time.monotonic() - start < 60, len(pending)
            await asyncio.sleep(0.05)
        took = time.monotonic() - start
        # all 200 controller tasks are now waiting: no timers firing, no polling
        rvs = [store.resource_version for store, _ in worlds]
        cpu = time.process_time()
        await asyncio.sleep(0.5)
        idle_cpu = time.process_time() - cpu
        changed = sum(
            store.resource_version != rv for (store, _), rv in zip(worlds, rvs, strict=True)
        )
        for _, task in worlds:
            task.cancel()
        await asyncio.gather(*(t for _, t in worlds), return_exceptions=True)
        return took, idle_cpu, changed

    took, idle_cpu, changed = asyncio.run(scenario())
    assert took < 30
    assert idle_cpu < 0.1
    assert changed == 0


# ------------------------------------------------------------------------------------------------
# kubectl and the official client against one HTTPS sandbox cluster (rollouts take 0.5 s)


def deployment_yaml(name: str, image: str, *, replicas: int = 2, deadline: int = 600) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: {replicas}
  progressDeadlineSeconds: {deadline}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: app
        image: {image}
"""


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.sandbox._single import SingleCluster

    with SingleCluster(tmp_path_factory.mktemp("controllers")) as cluster:
        yield cluster


def owned_replicasets(single: Any, deployment: str) -> list[dict]:
    def read() -> list[dict]:
        items, _ = single.cluster.store.list(REPLICASETS, NS)
        return [rs for rs in items if rs["metadata"]["ownerReferences"][0]["name"] == deployment]

    return sorted(
        single.run(read),
        key=lambda rs: int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]),
    )


@pytest.mark.kubectl
def test_kubectl_rollout_status_waits_for_a_good_rollout(single: Any) -> None:
    single.kubectl("apply", "-f", "-", stdin=deployment_yaml("good", "nginx:1.25", replicas=3))
    started = time.monotonic()
    proc = single.kubectl("rollout", "status", "deployment/good", "--timeout=30s")
    assert time.monotonic() - started >= 0.3  # it really waited for readiness
    assert proc.stdout.splitlines()[-1] == 'deployment "good" successfully rolled out'
    assert 'Waiting for deployment "good" rollout to finish' in proc.stdout

    d = single.get("deployments", NS, "good", group="apps")
    assert d["status"]["availableReplicas"] == 3
    assert d["status"]["observedGeneration"] == d["metadata"]["generation"]

    table = single.kubectl("get", "deploy,rs,pods", "-l", "app=good").stdout
    (rs,) = owned_replicasets(single, "good")
    assert re.search(r"deployment\.apps/good\s+3/3\s+3\s+3\s", table), table
    assert re.search(rf"replicaset\.apps/{rs['metadata']['name']}\s+3\s+3\s+3\s", table), table
    pod_lines = [line for line in table.splitlines() if line.startswith("pod/")]
    assert len(pod_lines) == 3
    for line in pod_lines:
        assert re.match(rf"pod/{rs['metadata']['name']}-{SAFE}{{5}}\s+1/1\s+Running\s+0\s", line), (
            line
        )


@pytest.mark.kubectl
def test_kubectl_rollout_status_fails_when_the_progress_deadline_passes(single: Any) -> None:
    single.kubectl("apply", "-f", "-", stdin=deployment_yaml("stuck", "nginx:1.25", deadline=2))
    single.kubectl("rollout", "status", "deployment/stuck", "--timeout=30s")
    single.run(lambda: single.cluster.faults.update(broken_images=["nginx:broken"]))
    try:
        single.kubectl("set", "image", "deployment/stuck", "app=nginx:broken")
        proc = single.kubectl("rollout", "status", "deployment/stuck", "--timeout=30s", check=False)
        assert proc.returncode != 0
        assert 'error: deployment "stuck" exceeded its progress deadline' in proc.stderr

        table = single.kubectl("get", "pods", "-l", "app=stuck").stdout
        assert re.search(r"0/1\s+(ImagePullBackOff|ErrImagePull)\s", table), table
        assert len(re.findall(r"1/1\s+Running\s", table)) == 2  # the old replica set keeps serving
        d = single.get("deployments", NS, "stuck", group="apps")
        progressing = condition(d, "Progressing")
        assert (progressing["status"], progressing["reason"]) == (
            "False",
            "ProgressDeadlineExceeded",
        )

        # fixing the image rolls out normally again
        single.kubectl("set", "image", "deployment/stuck", "app=nginx:1.26")
        proc = single.kubectl("rollout", "status", "deployment/stuck", "--timeout=30s")
        assert 'deployment "stuck" successfully rolled out' in proc.stdout
        assert [rs["spec"]["replicas"] for rs in owned_replicasets(single, "stuck")] == [0, 0, 2]
    finally:
        single.run(lambda: single.cluster.faults.update(broken_images=[]))


@pytest.mark.kubectl
def test_kubectl_rollout_restart_makes_a_new_replicaset_that_completes(single: Any) -> None:
    single.kubectl("apply", "-f", "-", stdin=deployment_yaml("restarted", "nginx:1.25"))
    single.kubectl("rollout", "status", "deployment/restarted", "--timeout=30s")
    (before,) = owned_replicasets(single, "restarted")

    proc = single.kubectl("rollout", "restart", "deployment/restarted")
    assert proc.stdout.strip() == "deployment.apps/restarted restarted"
    proc = single.kubectl("rollout", "status", "deployment/restarted", "--timeout=30s")
    assert 'deployment "restarted" successfully rolled out' in proc.stdout

    old, new = owned_replicasets(single, "restarted")
    assert old["metadata"]["uid"] == before["metadata"]["uid"]
    assert "kubectl.kubernetes.io/restartedAt" in new["spec"]["template"]["metadata"]["annotations"]
    assert (old["spec"]["replicas"], new["spec"]["replicas"]) == (0, 2)
    assert new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    history = single.kubectl("rollout", "history", "deployment/restarted").stdout
    assert re.search(r"^1\s", history, re.M)
    assert re.search(r"^2\s", history, re.M)


@pytest.mark.kubectl
def test_kubectl_rollout_status_for_statefulsets_and_daemonsets(single: Any) -> None:
    import yaml

    single.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([statefulset(), daemonset()]))
    proc = single.kubectl("rollout", "status", "statefulset/db", "--timeout=30s")
    assert (
        proc.stdout.splitlines()[-1]
        == "partitioned roll out complete: 3 new pods have been updated..."
    )
    proc = single.kubectl("rollout", "status", "daemonset/agent", "--timeout=30s")
    assert proc.stdout.splitlines()[-1] == 'daemon set "agent" successfully rolled out'
    table = single.kubectl("get", "sts,ds").stdout
    assert re.search(r"statefulset\.apps/db\s+3/3\s", table), table
    assert re.search(r"daemonset\.apps/agent\s+3\s+3\s+3\s+3\s+3\s", table), table

    single.kubectl("rollout", "restart", "daemonset/agent")
    proc = single.kubectl("rollout", "status", "daemonset/agent", "--timeout=30s")
    assert 'daemon set "agent" successfully rolled out' in proc.stdout
    ds = single.get("daemonsets", NS, "agent", group="apps")
    assert ds["status"]["updatedNumberScheduled"] == ds["status"]["numberAvailable"] == 3


def test_official_client_reads_the_controller_written_status(single: Any) -> None:
    from kubernetes import client

    single.kubectl("apply", "-f", "-", stdin=deployment_yaml("typed", "nginx:1.25"))
    single.kubectl("rollout", "status", "deployment/typed", "--timeout=30s")
    with single.api_client() as api:
        d = client.AppsV1Api(api).read_namespaced_deployment_status("typed", NS)
        assert (d.status.replicas, d.status.ready_replicas, d.status.available_replicas) == (
            2,
            2,
            2,
        )
        assert d.status.observed_generation == d.metadata.generation
        progressing = next(c for c in d.status.conditions if c.type == "Progressing")
        assert progressing.reason == "NewReplicaSetAvailable"
        assert progressing.last_update_time is not None
        pods = client.CoreV1Api(api).list_namespaced_pod(NS, label_selector="app=typed").items
        assert len(pods) == 2
        for pod in pods:
            assert pod.status.phase == "Running"
            assert pod.status.container_statuses[0].ready is True
            assert pod.status.container_statuses[0].state.running.started_at is not None
            assert pod.metadata.owner_references[0].kind == "ReplicaSet"
