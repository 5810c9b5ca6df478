"""The controllers of one sandbox cluster: what kube-controller-manager, the scheduler and the
kubelets of a real cluster do to workloads, closely enough that ``kubectl rollout status``,
``kubectl rollout restart``, ``kubectl get deploy,rs,pods`` and the official client see what they
would see on a real cluster.

* **Deployments** follow the real controller's algorithm (pkg/controller/deployment): one
  ReplicaSet per pod template named ``<deployment>-<pod-template-hash>`` (FNV-32a of the template,
  encoded with the apiserver's safe alphabet, so it looks like ``7c5ddbdf54``), revision
  annotations, rolling updates bounded by maxSurge/maxUnavailable, proportional scaling,
  Recreate, pause/resume, the revision history limit, and the status fields and ``Progressing`` /
  ``Available`` conditions (with their real reasons and messages) that ``kubectl rollout status``
  reads, including ``ProgressDeadlineExceeded``.
* **ReplicaSets** create and delete Pods named ``<replicaset>-<5 random characters>``.
* **StatefulSets** (pods ``<name>-<ordinal>``, OrderedReady or Parallel, rolling updates from the
  highest ordinal down, partitions) and **DaemonSets** (one pod per pretend node
  ``sandbox-node-1..3``, rolling updates bounded by maxUnavailable).
* **The kubelet's part**: pods are scheduled at once, go Pending (ContainerCreating) -> Running ->
  Ready over the cluster's readiness time (``faults.ready_seconds`` if set, else
  ``ClusterSpec.rollout_seconds``, spread over the steps of a rollout so a whole rollout takes about
  that long). A container whose image ``faults.is_broken`` never starts: it waits with
  ``ErrImagePull`` then ``ImagePullBackOff``, so the rollout stalls the way a real one does.
* **Garbage collection** of objects whose owners are all gone. The store already deletes
  dependents when an owner is deleted; this catches dependents whose owner vanished before they
  were created (dangling ``ownerReferences``), as the real collector does.

Everything runs in one asyncio task per cluster (:meth:`Controllers.run`): it consumes the store's
change events into a de-duplicated work queue (like informers feeding work queues) and keeps one
time-ordered heap of due work (pod readiness, progress deadlines, minReadySeconds), sleeping until
the next event or the earliest due time -- nothing polls. Objects are cached from the events
(write-through for the controllers' own writes), so a sync reads no copies from the store.

The clock and the random source (pod name suffixes, container ids) are injected; with a fake clock
:meth:`Controllers.step` drives everything synchronously for deterministic tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sandbox.kube.errors import StatusError

if TYPE_CHECKING:
    from sandbox.kube.cluster import ClusterSpec
    from sandbox.kube.faults import Faults
    from sandbox.kube.resources import ResourceType
    from sandbox.kube.store import Store, WatchEvent

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Key = tuple[str, str, str]  # (kind, namespace, name)

MANAGER = "kube-controller-manager"
KUBELET = "kubelet"  # pod status is the kubelet's on a real cluster
SCHEDULER = "kube-scheduler"
NODE_NAMES = ("sandbox-node-1", "sandbox-node-2", "sandbox-node-3")

# label and annotation keys the real controllers use
POD_TEMPLATE_HASH = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
ROLLBACK_TO = "deprecated.deployment.rollback.to"
CONTROLLER_REVISION_HASH = "controller-revision-hash"
STS_POD_NAME = "statefulset.kubernetes.io/pod-name"
POD_INDEX = "apps.kubernetes.io/pod-index"
POD_TEMPLATE_GENERATION = "pod-template-generation"
_NOT_COPIED_TO_RS = {
    LAST_APPLIED,
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    ROLLBACK_TO,
}
_MAX_REVISION_HISTORY_CHARS = 2000

# Deployment condition reasons (pkg/controller/deployment/util)
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"
MIN_AVAILABLE = "MinimumReplicasAvailable"
MIN_UNAVAILABLE = "MinimumReplicasUnavailable"

_MAX_INT32 = 2**31 - 1
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_IMAGE_PULL_BACKOFF_CAP = 10.0
_RETRY_SECONDS = 1.0
_BATCH = 256  # syncs per turn before yielding to the event loop

_KINDS = {
    ("apps", "Deployment"): "Deployment",
    ("apps", "ReplicaSet"): "ReplicaSet",
    ("apps", "StatefulSet"): "StatefulSet",
    ("apps", "DaemonSet"): "DaemonSet",
    ("", "Pod"): "Pod",
}
_API_VERSIONS = {
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Pod": "v1",
    "ControllerRevision": "apps/v1",
}


# ------------------------------------------------------------------------------------------------
# Small pure helpers


def timestamp(t: float) -> str:
    """metav1.Time as the apiserver writes it: RFC 3339, whole seconds, UTC."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def safe_encode(s: str) -> str:
    """rand.SafeEncodeString: map every character onto the apiserver's vowel-free alphabet."""
    return "".join(_SAFE_ALPHABET[ord(c) % len(_SAFE_ALPHABET)] for c in s)


def random_suffix(rng: random.Random, n: int = 5) -> str:
    """rand.String(n): what generateName appends."""
    return "".join(rng.choice(_SAFE_ALPHABET) for _ in range(n))


@lru_cache(maxsize=4096)
def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def prune_empty(value: Any) -> Any:
    """Drop null, empty maps and empty lists: apimachinery's semantic equality treats nil and
    empty alike, and defaulting may add either."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = prune_empty(v)
            if v is None or v == {} or v == []:
                continue
            out[k] = v
        return out
    if isinstance(value, list):
        return [prune_empty(v) for v in value]
    return value


def template_hash(template: JSON, collision_count: int | None = None) -> str:
    """controller.ComputeHash: FNV-32a over the template (+ collision count), safe-encoded decimal.

    The real one hashes Go's printed struct, so the value differs from a real cluster's for the
    same template, but it has the same shape (usually 10 characters from the same alphabet) and
    the same properties: stable per template, different when the template changes.
    """
    data = json.dumps(prune_empty(template), sort_keys=True, separators=(",", ":")).encode()
    if collision_count is not None:
        data += (collision_count & 0xFFFFFFFF).to_bytes(4, "little") + b"\0\0\0\0"
    return safe_encode(str(_fnv32a(data)))


def templates_equal_ignoring_hash(a: JSON, b: JSON) -> bool:
    """EqualIgnoreHash: pod templates equal apart from the pod-template-hash label."""

    def strip(t: JSON) -> Any:
        t = _copy(t or {})
        labels = (t.get("metadata") or {}).get("labels")
        if isinstance(labels, dict):
            labels.pop(POD_TEMPLATE_HASH, None)
        return prune_empty(t)

    return strip(a) == strip(b)


def int_or_percent(value: Any, total: int, *, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("%"):
        pct = int(text[:-1])
        scaled = pct * total
        return -(-scaled // 100) if round_up else scaled // 100
    return int(text)


def meta(obj: JSON) -> JSON:
    return obj.setdefault("metadata", {})


def spec_of(obj: JSON) -> JSON:
    s = obj.get("spec")
    return s if isinstance(s, dict) else {}


def status_of(obj: JSON) -> JSON:
    s = obj.get("status")
    return s if isinstance(s, dict) else {}


def replicas_of(obj: JSON) -> int:
    value = spec_of(obj).get("replicas")
    return 1 if value is None else int(value)


def controller_ref(obj: JSON) -> JSON | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def new_controller_ref(owner: JSON, kind: str) -> JSON:
    """metav1.NewControllerRef."""
    m = owner["metadata"]
    return {
        "apiVersion": _API_VERSIONS[kind],
        "kind": kind,
        "name": m["name"],
        "uid": m["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_deleting(obj: JSON) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def pod_ready(pod: JSON) -> bool:
    for c in status_of(pod).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def pod_active(pod: JSON) -> bool:
    """controller.IsPodActive: not terminating and not finished."""
    return not is_deleting(pod) and status_of(pod).get("phase") not in ("Succeeded", "Failed")


def omit_zero(status: JSON, keys: Iterable[str]) -> JSON:
    """Go's ``omitempty``: zero counters are left out of the JSON."""
    for k in keys:
        if not status.get(k):
            status.pop(k, None)
    return status


def normalize_image(image: str) -> str:
    """How the container runtime reports an image: registry and tag made explicit."""
    name = image
    digest = ""
    if "@" in name:
        name, digest = name.split("@", 1)
        digest = "@" + digest
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if rest else f"docker.io/library/{name}"
    if not digest and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name + digest


# -- deployment condition helpers (deploymentutil) ----------------------------------------------


def get_condition(status: JSON, ctype: str) -> JSON | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def new_condition(ctype: str, status: str, reason: str, message: str, now: str) -> JSON:
    return {
        "type": ctype,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def set_condition(status: JSON, cond: JSON) -> None:
    """SetDeploymentCondition: no-op for the same status and reason; keeps lastTransitionTime
    when only the reason changes; the condition moves to the end."""
    current = get_condition(status, cond["type"])
    if current is not None and current["status"] == cond["status"]:
        if current.get("reason") == cond["reason"]:
            return
        cond = {**cond, "lastTransitionTime": current.get("lastTransitionTime")}
    remove_condition(status, cond["type"])
    status.setdefault("conditions", []).append(cond)


def remove_condition(status: JSON, ctype: str) -> None:
    kept = [c for c in status.get("conditions") or [] if c.get("type") != ctype]
    if kept:
        status["conditions"] = kept
    else:
        status.pop("conditions", None)


# -- deployment arithmetic ----------------------------------------------------------------------


def is_rolling(d: JSON) -> bool:
    return (spec_of(d).get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"


def fenceposts(d: JSON) -> tuple[int, int]:
    """ResolveFenceposts: (maxSurge, maxUnavailable) as counts; never both zero."""
    ru = (spec_of(d).get("strategy") or {}).get("rollingUpdate") or {}
    desired = replicas_of(d)
    surge = int_or_percent(ru.get("maxSurge", "25%"), desired, round_up=True)
    unavailable = int_or_percent(ru.get("maxUnavailable", "25%"), desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_surge(d: JSON) -> int:
    return fenceposts(d)[0] if is_rolling(d) else 0


def max_unavailable(d: JSON) -> int:
    desired = replicas_of(d)
    if not is_rolling(d) or desired == 0:
        return 0
    return min(fenceposts(d)[1], desired)


def progress_deadline(d: JSON) -> int | None:
    value = spec_of(d).get("progressDeadlineSeconds", 600)
    if value is None or value == _MAX_INT32:
        return None
    return int(value)


def revision_of(obj: JSON) -> int:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def rs_replicas(rs: JSON | None) -> int:
    return 0 if rs is None else replicas_of(rs)


def rs_status(rs: JSON | None, key: str) -> int:
    return 0 if rs is None else int(status_of(rs).get(key) or 0)


def deployment_complete(d: JSON, status: JSON) -> bool:
    want = replicas_of(d)
    return (
        int(status.get("updatedReplicas") or 0) == want
        and int(status.get("replicas") or 0) == want
        and int(status.get("availableReplicas") or 0) == want
        and int(status.get("observedGeneration") or 0) >= int(meta(d).get("generation") or 0)
    )


def deployment_progressing(d: JSON, new: JSON) -> bool:
    old = status_of(d)

    def n(s: JSON, k: str) -> int:
        return int(s.get(k) or 0)

    old_old = n(old, "replicas") - n(old, "updatedReplicas")
    new_old = n(new, "replicas") - n(new, "updatedReplicas")
    return (
        n(new, "updatedReplicas") > n(old, "updatedReplicas")
        or new_old < old_old
        or n(new, "readyReplicas") > n(old, "readyReplicas")
        or n(new, "availableReplicas") > n(old, "availableReplicas")
    )


def deployment_timed_out(d: JSON, new: JSON, now: float) -> bool:
    deadline = progress_deadline(d)
    if deadline is None:
        return False
    cond = get_condition(new, "Progressing")
    if cond is None or cond.get("reason") == NEW_RS_AVAILABLE:
        return False
    if cond.get("reason") == TIMED_OUT:
        return True
    since = parse_timestamp(cond.get("lastUpdateTime"))
    return since is not None and since + deadline < now


# ------------------------------------------------------------------------------------------------
# The kubelet's memory of one pod


@dataclass
class _PodPlan:
    """When a pod (as the kubelet sees it) starts running and becomes ready."""

    node: str
    delay: float
    created: float
    running_at: float
    ready_at: float
    start_ts: str
    running_ts: str | None = None
    ready_ts: str | None = None
    ready_since: float | None = None
    pod_ip: str | None = None
    pull_failures: int = 0
    next_pull: float = 0.0
    container_ids: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------


class Controllers:
    """All workload controllers of one cluster, driven by one asyncio task."""

    def __init__(
        self,
        store: Store,
        *,
        spec: ClusterSpec,
        faults: Faults,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        nodes: Iterable[str] = NODE_NAMES,
    ) -> None:
        self.store = store
        self.spec = spec
        self.faults = faults
        self._clock = clock
        self._rng = rng if rng is not None else random.Random(f"sandbox-controllers/{spec.name}")
        self.nodes: tuple[str, ...] = tuple(nodes)
        self._queue: asyncio.Queue[WatchEvent] | None = None
        # informer-style cache of the kinds the controllers own
        self._objs: dict[Key, JSON] = {}
        self._controlled: dict[str, set[Key]] = defaultdict(set)  # controller uid -> keys
        self._controller_of: dict[Key, str] = {}
        self._seq: dict[str, int] = {}  # uid -> order first seen (tie-break for creation time)
        self._seq_counter = itertools.count()
        # work: de-duplicated dirty keys and a heap of due times
        self._dirty: dict[Key, None] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._pending_due: dict[Key, float] = {}
        self._heap_seq = itertools.count()
        # kubelet / scheduler state
        self._plans: dict[str, _PodPlan] = {}
        self._rs_steps: dict[str, int] = {}  # replica set uid -> rollout steps (readiness split)
        self._node_cursor = 0
        self._ip_counters = [1] * len(self.nodes)
        # statefulset / daemonset revision bookkeeping (no ControllerRevision type in the sandbox)
        self._revision_templates: dict[str, dict[str, JSON]] = {}  # sts uid -> revision -> template
        self._template_generations: dict[str, dict[str, int]] = {}
        self._types: dict[str, ResourceType | None] = {}

    # --- driving -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled: consume store events and due timers, one task per cluster."""
        queue = self.attach()
        try:
            while True:
                budget = _BATCH
                while budget > 0 and self._work_available():
                    budget -= self._pump(budget)
                if self._work_available():
                    await asyncio.sleep(0)  # let the API server answer between batches
                    continue
                delay = self._next_delay()
                try:
                    if delay is None:
                        event = await queue.get()
                    else:
                        async with asyncio.timeout(delay):
                            event = await queue.get()
                except TimeoutError:
                    continue
                self._on_event(event)
        finally:
            self.detach()

    def attach(self) -> asyncio.Queue[WatchEvent]:
        """Subscribe to the store and load what it already holds (idempotent)."""
        if self._queue is None:
            self._queue = self.store.subscribe()
            self._initial_list()
        return self._queue

    def detach(self) -> None:
        if self._queue is not None:
            self.store.unsubscribe(self._queue)
            self._queue = None

    def step(self, *, max_syncs: int = 100_000) -> int:
        """Synchronously process queued events, due timers and dirty work until quiet.

        For deterministic tests with a fake clock: advance the clock, then ``step()``.
        Returns the number of syncs done.
        """
        self.attach()
        done = 0
        while self._work_available() and done < max_syncs:
            done += self._pump(max_syncs - done)
        return done

    def next_due(self) -> float | None:
        """The clock value at which the earliest timer fires (None when nothing is scheduled)."""
        return self._heap[0][0] if self._heap else None

    def _work_available(self) -> bool:
        assert self._queue is not None
        if self._dirty or not self._queue.empty():
            return True
        return bool(self._heap) and self._heap[0][0] <= self._clock()

    def _next_delay(self) -> float | None:
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - self._clock())

    def _pump(self, budget: int) -> int:
        """Drain events, fire due timers, then sync up to ``budget`` dirty keys."""
        assert self._queue is not None
        while not self._queue.empty():
            self._on_event(self._queue.get_nowait())
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._pending_due.get(key) == due:
                del self._pending_due[key]
            self._dirty[key] = None
        done = 0
        while self._dirty and done < max(budget, 1):
            key = next(iter(self._dirty))
            del self._dirty[key]
            self._sync(key)
            done += 1
        return max(done, 1)

    def _enqueue(self, key: Key) -> None:
        self._dirty[key] = None

    def _enqueue_at(self, due: float, key: Key) -> None:
        pending = self._pending_due.get(key)
        if pending is not None and pending <= due:
            return
        self._pending_due[key] = due
        heapq.heappush(self._heap, (due, next(self._heap_seq), key))

    def _sync(self, key: Key) -> None:
        kind, ns, name = key
        try:
            if kind == "Deployment":
                self._sync_deployment(ns, name)
            elif kind == "ReplicaSet":
                self._sync_replicaset(ns, name)
            elif kind == "StatefulSet":
                self._sync_statefulset(ns, name)
            elif kind == "DaemonSet":
                self._sync_daemonset(ns, name)
            elif kind == "Pod":
                self._sync_pod(ns, name)
        except StatusError as e:
            if e.code == 404:
                return
            if e.code == 409:
                self._enqueue_at(self._clock() + 0.05, key)
                return
            log.warning("sync of %s %s/%s failed: %s", kind, ns, name, e.message)
            self._enqueue_at(self._clock() + _RETRY_SECONDS, key)
        except Exception:
            log.exception("sync of %s %s/%s failed", kind, ns, name)
            self._enqueue_at(self._clock() + 5 * _RETRY_SECONDS, key)

    # --- cache --------------------------------------------------------------------------------

    def _rt(self, kind: str) -> ResourceType | None:
        if kind not in self._types:
            self._types[kind] = self.store.registry.by_kind(_API_VERSIONS[kind], kind)
        return self._types[kind]

    def _initial_list(self) -> None:
        for kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Pod"):
            rt = self._rt(kind)
            if rt is None:
                continue
            items, _ = self.store.list(rt)
            for obj in items:
                self._observe(kind, obj)
                self._enqueue_for(kind, obj)

    def _observe(self, kind: str, obj: JSON) -> None:
        m = obj["metadata"]
        key = (kind, m.get("namespace") or "", m["name"])
        cached = self._objs.get(key)
        same = cached is not None and cached["metadata"].get("uid") == m.get("uid")
        if same and _rv(cached) > _rv(obj):
            return  # an older event than what a write already told us
        uid = m.get("uid", "")
        if uid not in self._seq:
            self._seq[uid] = next(self._seq_counter)
        self._objs[key] = obj
        ref = controller_ref(obj)
        old_owner = self._controller_of.pop(key, None)
        if old_owner is not None:
            self._controlled[old_owner].discard(key)
            if not self._controlled[old_owner]:
                del self._controlled[old_owner]
        if ref is not None and ref.get("uid"):
            self._controller_of[key] = ref["uid"]
            self._controlled[ref["uid"]].add(key)

    def _forget(self, kind: str, ns: str, name: str, uid: str | None) -> None:
        key = (kind, ns, name)
        cached = self._objs.get(key)
        if cached is None or (uid and cached["metadata"].get("uid") != uid):
            return
        del self._objs[key]
        owner = self._controller_of.pop(key, None)
        if owner is not None:
            self._controlled[owner].discard(key)
            if not self._controlled[owner]:
                del self._controlled[owner]
        if uid:
            self._seq.pop(uid, None)
            self._plans.pop(uid, None)
            self._rs_steps.pop(uid, None)
            self._template_generations.pop(uid, None)
            self._revision_templates.pop(uid, None)

    def _get(self, kind: str, ns: str, name: str) -> JSON | None:
        return self._objs.get((kind, ns, name))

    def _owned(self, owner_uid: str, kind: str) -> list[JSON]:
        out = []
        for key in self._controlled.get(owner_uid, ()):
            if key[0] == kind:
                obj = self._objs.get(key)
                if obj is not None:
                    out.append(obj)
        return out

    def _creation_key(self, obj: JSON) -> tuple[str, int, str]:
        m = obj["metadata"]
        return (m.get("creationTimestamp") or "", self._seq.get(m.get("uid", ""), 0), m["name"])

    # --- events -------------------------------------------------------------------------------

    def _on_event(self, event: WatchEvent) -> None:
        rt = event.rt
        obj = event.object
        m = obj.get("metadata") or {}
        kind = _KINDS.get((rt.group, rt.kind))
        if event.type == "DELETED":
            if kind is not None:
                self._forget(kind, m.get("namespace") or "", m.get("name", ""), m.get("uid"))
        else:
            if kind is not None:
                self._observe(kind, obj)
            if event.type == "ADDED" and m.get("ownerReferences"):
                self._collect_if_orphaned(rt, obj)
        if kind is not None:
            self._enqueue_for(kind, obj)

    def _enqueue_for(self, kind: str, obj: JSON) -> None:
        m = obj["metadata"]
        ns = m.get("namespace") or ""
        if kind == "Pod":
            self._enqueue(("Pod", ns, m["name"]))
        else:
            self._enqueue((kind, ns, m["name"]))
        ref = controller_ref(obj)
        if ref is not None and ref.get("kind") in (
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
        ):
            self._enqueue((ref["kind"], ns, ref.get("name", "")))

    def _collect_if_orphaned(self, rt: ResourceType, obj: JSON) -> None:
        """The garbage collector's dangling-owner rule: every owner is gone -> delete."""
        m = obj["metadata"]
        ns = m.get("namespace")
        for ref in m.get("ownerReferences") or []:
            owner_rt = self.store.registry.by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
            if owner_rt is None:
                return  # unknown owner kind: the real collector leaves it alone too
            kind = _KINDS.get((owner_rt.group, owner_rt.kind))
            if kind is not None:
                cached = self._objs.get((kind, ns or "", ref.get("name", "")))
                if cached is not None and cached["metadata"].get("uid") == ref.get("uid"):
                    return
            try:
                owner = self.store.get(
                    owner_rt, ns if owner_rt.namespaced else None, ref.get("name", "")
                )
            except StatusError:
                continue
            if owner["metadata"].get("uid") == ref.get("uid"):
                return
        with contextlib.suppress(StatusError):
            self.store.delete(
                rt, ns if rt.namespaced else None, m["name"], propagation="Background"
            )

    # --- writes -------------------------------------------------------------------------------

    def _create(self, kind: str, ns: str, obj: JSON) -> JSON:
        rt = self._rt(kind)
        assert rt is not None
        out = self.store.create(rt, ns, obj, manager=MANAGER)
        self._observe(kind, out)
        return out

    def _update(
        self, kind: str, obj: JSON, *, status: bool = False, manager: str = MANAGER
    ) -> JSON:
        rt = self._rt(kind)
        assert rt is not None
        m = obj["metadata"]
        out = self.store.update(
            rt,
            m.get("namespace"),
            m["name"],
            obj,
            manager=manager,
            subresource="status" if status else None,
        )
        self._observe(kind, out)
        return out

    def _delete(self, kind: str, obj: JSON) -> None:
        rt = self._rt(kind)
        assert rt is not None
        m = obj["metadata"]
        try:
            self.store.delete(rt, m.get("namespace"), m["name"], propagation="Background")
        except StatusError as e:
            if e.code != 404:
                raise
        self._forget(kind, m.get("namespace") or "", m["name"], m.get("uid"))

    def _readiness_seconds(self) -> float:
        ready = self.faults.ready_seconds
        return float(ready if ready is not None else self.spec.rollout_seconds)

    # ============================================================================================
    # Deployments (pkg/controller/deployment)

    def _sync_deployment(self, ns: str, name: str) -> None:
        live = self._get("Deployment", ns, name)
        if live is None or is_deleting(live):
            return
        d = {
            **live,
            "metadata": {
                **live["metadata"],
                "annotations": dict(live["metadata"].get("annotations") or {}),
            },
            "status": _copy(status_of(live)),
        }
        now = self._clock()
        rs_list = [
            rs for rs in self._owned(d["metadata"]["uid"], "ReplicaSet") if not is_deleting(rs)
        ]
        self._check_paused_conditions(d, now)
        if spec_of(d).get("paused") or self._is_scaling_event(d, rs_list):
            self._deployment_scale_sync(d, rs_list, now)
        elif is_rolling(d):
            self._rollout_rolling(d, rs_list, now)
        else:
            self._rollout_recreate(d, rs_list, now)

    def _check_paused_conditions(self, d: JSON, now: float) -> None:
        if progress_deadline(d) is None:
            return
        cond = get_condition(d["status"], "Progressing")
        if cond is not None and cond.get("reason") == TIMED_OUT:
            return
        paused_cond = cond is not None and cond.get("reason") == PAUSED
        ts = timestamp(now)
        if spec_of(d).get("paused") and not paused_cond:
            set_condition(
                d["status"],
                new_condition("Progressing", "Unknown", PAUSED, "Deployment is paused", ts),
            )
        elif not spec_of(d).get("paused") and paused_cond:
            set_condition(
                d["status"],
                new_condition("Progressing", "Unknown", RESUMED, "Deployment is resumed", ts),
            )

    def _find_new_rs(self, d: JSON, rs_list: list[JSON]) -> JSON | None:
        template = spec_of(d).get("template") or {}
        for rs in sorted(rs_list, key=self._creation_key):
            if templates_equal_ignoring_hash(spec_of(rs).get("template") or {}, template):
                return rs
        return None

    def _split_replicasets(self, d: JSON, rs_list: list[JSON]) -> tuple[JSON | None, list[JSON]]:
        new_rs = self._find_new_rs(d, rs_list)
        old = [
            rs
            for rs in rs_list
            if new_rs is None or rs["metadata"]["uid"] != new_rs["metadata"]["uid"]
        ]
        return new_rs, old

    def _is_scaling_event(self, d: JSON, rs_list: list[JSON]) -> bool:
        new_rs, old = self._split_replicasets(d, rs_list)
        for rs in [*old, *([new_rs] if new_rs else [])]:
            if rs_replicas(rs) == 0:
                continue
            desired = (rs["metadata"].get("annotations") or {}).get(DESIRED_REPLICAS)
            if desired is None:
                continue
            with contextlib.suppress(ValueError):
                if int(desired) != replicas_of(d):
                    return True
        return False

    def _get_all_replicasets(
        self, d: JSON, rs_list: list[JSON], now: float, *, create: bool
    ) -> tuple[JSON | None, list[JSON]]:
        """getAllReplicaSetsAndSyncRevision: the new replica set (created when asked) and all old."""
        new_rs, old = self._split_replicasets(d, rs_list)
        new_rs = self._get_new_rs(d, new_rs, old, now, create=create)
        return new_rs, old

    def _get_new_rs(
        self, d: JSON, existing: JSON | None, old: list[JSON], now: float, *, create: bool
    ) -> JSON | None:
        max_old = max((revision_of(rs) for rs in old), default=0)
        new_revision = str(max_old + 1)
        ts = timestamp(now)
        deadline = progress_deadline(d)
        if existing is not None:
            rs = _shallow_rs(existing)
            changed = self._set_new_rs_annotations(d, rs, new_revision, exists=True)
            min_ready = int(spec_of(d).get("minReadySeconds") or 0)
            if changed or int(spec_of(rs).get("minReadySeconds") or 0) != min_ready:
                _set_or_drop(rs["spec"], "minReadySeconds", min_ready)
                return self._update("ReplicaSet", rs)
            annotations = meta(d).setdefault("annotations", {})
            annotations[REVISION] = (rs["metadata"].get("annotations") or {}).get(
                REVISION, new_revision
            )
            if deadline is not None and get_condition(d["status"], "Progressing") is None:
                set_condition(
                    d["status"],
                    new_condition(
                        "Progressing",
                        "True",
                        FOUND_NEW_RS,
                        f'Found new replica set "{rs["metadata"]["name"]}"',
                        ts,
                    ),
                )
            return existing
        if not create:
            return None

        dspec = spec_of(d)
        template = _copy(dspec.get("template") or {})
        collision = status_of(d).get("collisionCount")
        pod_hash = template_hash(template, collision)
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), POD_TEMPLATE_HASH: pod_hash}
        selector = _copy(dspec.get("selector") or {})
        selector["matchLabels"] = {
            **(selector.get("matchLabels") or {}),
            POD_TEMPLATE_HASH: pod_hash,
        }
        rs: JSON = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{d['metadata']['name']}-{pod_hash}",
                "namespace": d["metadata"]["namespace"],
                "labels": dict(tmeta["labels"]),
                "ownerReferences": [new_controller_ref(d, "Deployment")],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        }
        _set_or_drop(rs["spec"], "minReadySeconds", int(dspec.get("minReadySeconds") or 0))
        rs["spec"]["replicas"] = self._new_rs_new_replicas(d, [*old, rs], rs)
        self._set_new_rs_annotations(d, rs, new_revision, exists=False)
        already_exists = False
        try:
            created = self._create("ReplicaSet", d["metadata"]["namespace"], rs)
        except StatusError as e:
            if e.reason != "AlreadyExists":
                if deadline is not None:
                    set_condition(
                        d["status"],
                        new_condition(
                            "Progressing",
                            "False",
                            "ReplicaSetCreateError",
                            f'Failed to create new replica set "{rs["metadata"]["name"]}": {e.message}',
                            ts,
                        ),
                    )
                    self._commit_deployment(d, d["status"])
                raise
            rt = self._rt("ReplicaSet")
            assert rt is not None
            clash = self.store.get(rt, d["metadata"]["namespace"], rs["metadata"]["name"])
            ref = controller_ref(clash)
            if (
                ref is not None
                and ref.get("uid") == d["metadata"]["uid"]
                and templates_equal_ignoring_hash(
                    spec_of(clash).get("template") or {}, dspec.get("template") or {}
                )
            ):
                self._observe("ReplicaSet", clash)
                created = clash
                already_exists = True
            else:
                # a hash collision: bump collisionCount and try again with a different name
                d["status"]["collisionCount"] = int(collision or 0) + 1
                self._commit_deployment(d, d["status"])
                self._enqueue(("Deployment", d["metadata"]["namespace"], d["metadata"]["name"]))
                return None
        if not already_exists:
            self._rs_steps[created["metadata"]["uid"]] = self._rollout_steps(d, old)
        meta(d).setdefault("annotations", {})[REVISION] = new_revision
        if not already_exists and deadline is not None:
            set_condition(
                d["status"],
                new_condition(
                    "Progressing",
                    "True",
                    NEW_RS_CREATED,
                    f'Created new replica set "{created["metadata"]["name"]}"',
                    ts,
                ),
            )
        return created

    def _rollout_steps(self, d: JSON, old: list[JSON]) -> int:
        """How many waves of pods a rollout takes (readiness time is split over them)."""
        if not any(rs_replicas(rs) > 0 for rs in old):
            return 1
        if not is_rolling(d):
            return 1
        surge, unavailable = fenceposts(d)
        return max(1, math.ceil(replicas_of(d) / max(1, surge + unavailable)))

    def _set_new_rs_annotations(
        self, d: JSON, rs: JSON, new_revision: str, *, exists: bool
    ) -> bool:
        """SetNewReplicaSetAnnotations: copy the deployment's annotations, move the revision."""
        changed = False
        annotations = meta(rs).setdefault("annotations", {})
        for k, v in (d["metadata"].get("annotations") or {}).items():
            if k in _NOT_COPIED_TO_RS or annotations.get(k) == v:
                continue
            annotations[k] = v
            changed = True
        old_value = annotations.get(REVISION)
        try:
            old_revision = int(old_value) if old_value else 0
        except ValueError:
            return changed
        if old_revision < int(new_revision):
            annotations[REVISION] = new_revision
            changed = True
            if old_value:
                history = annotations.get(REVISION_HISTORY, "")
                entries = [e for e in history.split(",") if e]
                entries.append(old_value)
                while len(",".join(entries)) > _MAX_REVISION_HISTORY_CHARS and len(entries) > 1:
                    entries.pop(0)
                annotations[REVISION_HISTORY] = ",".join(entries)
        if not exists:
            want = replicas_of(d)
            changed = self._set_replicas_annotations(rs, want, want + max_surge(d)) or changed
        return changed

    @staticmethod
    def _set_replicas_annotations(rs: JSON, desired: int, maximum: int) -> bool:
        annotations = meta(rs).setdefault("annotations", {})
        changed = False
        if annotations.get(DESIRED_REPLICAS) != str(desired):
            annotations[DESIRED_REPLICAS] = str(desired)
            changed = True
        if annotations.get(MAX_REPLICAS) != str(maximum):
            annotations[MAX_REPLICAS] = str(maximum)
            changed = True
        return changed

    def _new_rs_new_replicas(self, d: JSON, all_rs: list[JSON], new_rs: JSON) -> int:
        """NewRSNewReplicas."""
        want = replicas_of(d)
        if not is_rolling(d):
            return want
        surge = int_or_percent(
            ((spec_of(d).get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", "25%"),
            want,
            round_up=True,
        )
        current = sum(rs_replicas(rs) for rs in all_rs)
        max_total = want + surge
        if current >= max_total:
            return rs_replicas(new_rs)
        scale_up = min(max_total - current, want - rs_replicas(new_rs))
        return rs_replicas(new_rs) + scale_up

    def _scale_rs(self, rs: JSON, new_scale: int, d: JSON) -> tuple[bool, JSON]:
        """scaleReplicaSet: set the size and the desired/max replicas annotations."""
        copy = _shallow_rs(rs)
        size_changed = rs_replicas(copy) != new_scale
        want = replicas_of(d)
        annotations_changed = self._set_replicas_annotations(copy, want, want + max_surge(d))
        if not (size_changed or annotations_changed):
            return False, rs
        copy["spec"]["replicas"] = new_scale
        out = self._update("ReplicaSet", copy)
        return size_changed, out

    def _refresh(self, rs: JSON | None) -> JSON | None:
        if rs is None:
            return None
        m = rs["metadata"]
        return self._get("ReplicaSet", m.get("namespace") or "", m["name"]) or rs

    def _rollout_rolling(self, d: JSON, rs_list: list[JSON], now: float) -> None:
        new_rs, old = self._get_all_replicasets(d, rs_list, now, create=True)
        if new_rs is None:
            return
        all_rs = [*old, new_rs]
        # scale up the new replica set, if we can
        want = replicas_of(d)
        if rs_replicas(new_rs) != want:
            target = (
                want if rs_replicas(new_rs) > want else self._new_rs_new_replicas(d, all_rs, new_rs)
            )
            scaled, new_rs = self._scale_rs(new_rs, target, d)
            if scaled:
                self._sync_rollout_status(d, [*old, new_rs], new_rs, now)
                return
        # scale down old replica sets, if we can
        if self._reconcile_old_replicasets(d, [*old, new_rs], old, new_rs):
            old = [self._refresh(rs) or rs for rs in old]
            self._sync_rollout_status(d, [*old, new_rs], new_rs, now)
            return
        if deployment_complete(d, d["status"]):
            self._cleanup_deployment(d, old)
        self._sync_rollout_status(d, [*old, new_rs], new_rs, now)

    def _reconcile_old_replicasets(
        self, d: JSON, all_rs: list[JSON], old: list[JSON], new_rs: JSON
    ) -> bool:
        active_old = [rs for rs in old if rs_replicas(rs) > 0]
        if not active_old:
            return False
        all_pods = sum(rs_replicas(rs) for rs in all_rs)
        min_available = replicas_of(d) - max_unavailable(d)
        new_unavailable = rs_replicas(new_rs) - rs_status(new_rs, "availableReplicas")
        max_scaled_down = all_pods - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False
        # clean up unhealthy replicas of old replica sets first
        active_old.sort(key=self._creation_key)
        total = 0
        for i, rs in enumerate(active_old):
            if total >= max_scaled_down:
                break
            unhealthy = rs_replicas(rs) - rs_status(rs, "availableReplicas")
            if rs_replicas(rs) == 0 or unhealthy <= 0:
                continue
            count = min(max_scaled_down - total, unhealthy)
            _, active_old[i] = self._scale_rs(rs, rs_replicas(rs) - count, d)
            total += count
        # then scale down as far as availability allows
        available = sum(rs_status(rs, "availableReplicas") for rs in [*active_old, new_rs])
        if available > min_available:
            to_remove = available - min_available
            removed = 0
            for rs in active_old:
                if removed >= to_remove:
                    break
                if rs_replicas(rs) == 0:
                    continue
                count = min(rs_replicas(rs), to_remove - removed)
                self._scale_rs(rs, rs_replicas(rs) - count, d)
                removed += count
            total += removed
        return total > 0

    def _rollout_recreate(self, d: JSON, rs_list: list[JSON], now: float) -> None:
        new_rs, old = self._get_all_replicasets(d, rs_list, now, create=False)
        scaled_down = False
        for rs in old:
            if rs_replicas(rs) > 0:
                scaled, _ = self._scale_rs(rs, 0, d)
                scaled_down = scaled_down or scaled
        old = [self._refresh(rs) or rs for rs in old]
        if scaled_down:
            self._sync_rollout_status(d, [*old, *([new_rs] if new_rs else [])], new_rs, now)
            return
        if any(self._owned(rs["metadata"]["uid"], "Pod") for rs in old):
            self._sync_rollout_status(d, [*old, *([new_rs] if new_rs else [])], new_rs, now)
            return
        if new_rs is None:
            new_rs, old = self._get_all_replicasets(d, rs_list, now, create=True)
            if new_rs is None:
                return
        if rs_replicas(new_rs) != replicas_of(d):
            _, new_rs = self._scale_rs(new_rs, replicas_of(d), d)
        if deployment_complete(d, d["status"]):
            self._cleanup_deployment(d, old)
        self._sync_rollout_status(d, [*old, new_rs], new_rs, now)

    def _deployment_scale_sync(self, d: JSON, rs_list: list[JSON], now: float) -> None:
        """sync(): scaling events and paused deployments -- no new replica set, no progress."""
        new_rs, old = self._get_all_replicasets(d, rs_list, now, create=False)
        self._proportional_scale(d, new_rs, old)
        old = [self._refresh(rs) or rs for rs in old]
        new_rs = self._refresh(new_rs)
        if spec_of(d).get("paused"):
            self._cleanup_deployment(d, old)
        all_rs = [*old, *([new_rs] if new_rs else [])]
        status = self._calculate_status(d, all_rs, new_rs)
        self._commit_deployment(d, status)

    def _proportional_scale(self, d: JSON, new_rs: JSON | None, old: list[JSON]) -> None:
        """scale(): spread a replica count change over the active replica sets."""
        want = replicas_of(d)
        candidates = [*old, *([new_rs] if new_rs else [])]
        active = [rs for rs in candidates if rs_replicas(rs) > 0]
        if len(active) <= 1:
            target = (
                active[0]
                if active
                else (new_rs or (max(old, key=self._creation_key) if old else None))
            )
            if target is not None and rs_replicas(target) != want:
                self._scale_rs(target, want, d)
            return
        if new_rs is not None and self._is_saturated(d, new_rs):
            for rs in old:
                if rs_replicas(rs) > 0:
                    self._scale_rs(rs, 0, d)
            return
        if not is_rolling(d):
            return
        total = sum(rs_replicas(rs) for rs in active)
        allowed = want + max_surge(d) if want > 0 else 0
        to_add = allowed - total
        if to_add != 0:
            # larger first; among equals newer first when scaling up, older first when down
            active.sort(key=self._creation_key, reverse=to_add > 0)
            active.sort(key=lambda rs: -rs_replicas(rs))
        sizes: dict[str, int] = {}
        added = 0
        for rs in active:
            name = rs["metadata"]["name"]
            if to_add != 0:
                proportion = self._proportion(rs, d, to_add, added)
                sizes[name] = rs_replicas(rs) + proportion
                added += proportion
            else:
                sizes[name] = rs_replicas(rs)
        for i, rs in enumerate(active):
            name = rs["metadata"]["name"]
            if i == 0 and to_add != 0:
                sizes[name] = max(0, sizes[name] + to_add - added)
            self._scale_rs(rs, sizes[name], d)

    def _proportion(self, rs: JSON, d: JSON, to_add: int, added: int) -> int:
        if rs_replicas(rs) == 0 or to_add == 0 or to_add == added:
            return 0
        want = replicas_of(d)
        if want == 0:
            fraction = -rs_replicas(rs)
        else:
            deployment_replicas = want + max_surge(d)
            annotated = (rs["metadata"].get("annotations") or {}).get(MAX_REPLICAS)
            try:
                annotated_replicas = int(annotated) if annotated is not None else 0
            except ValueError:
                annotated_replicas = 0
            if not annotated_replicas:
                annotated_replicas = int(status_of(d).get("replicas") or 0) or 1
            fraction = round(
                rs_replicas(rs) * deployment_replicas / annotated_replicas
            ) - rs_replicas(rs)
        allowed = to_add - added
        return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)

    @staticmethod
    def _is_saturated(d: JSON, rs: JSON) -> bool:
        desired = (rs["metadata"].get("annotations") or {}).get(DESIRED_REPLICAS)
        try:
            desired_n = int(desired) if desired is not None else -1
        except ValueError:
            return False
        want = replicas_of(d)
        return (
            rs_replicas(rs) == want
            and desired_n == want
            and rs_status(rs, "availableReplicas") == want
        )

    def _cleanup_deployment(self, d: JSON, old: list[JSON]) -> None:
        """Keep at most revisionHistoryLimit old, scaled-down replica sets."""
        limit = spec_of(d).get("revisionHistoryLimit", 10)
        if limit is None or limit == _MAX_INT32:
            return
        candidates = sorted((rs for rs in old if not is_deleting(rs)), key=self._creation_key)
        diff = len(candidates) - int(limit)
        for rs in candidates:
            if diff <= 0:
                break
            if (
                rs_status(rs, "replicas") != 0
                or rs_replicas(rs) != 0
                or int(meta(rs).get("generation") or 0) > rs_status(rs, "observedGeneration")
            ):
                continue
            self._delete("ReplicaSet", rs)
            diff -= 1

    def _calculate_status(self, d: JSON, all_rs: list[JSON], new_rs: JSON | None) -> JSON:
        available = sum(rs_status(rs, "availableReplicas") for rs in all_rs)
        total = sum(rs_replicas(rs) for rs in all_rs)
        status: JSON = {
            "observedGeneration": int(meta(d).get("generation") or 0),
            "replicas": sum(rs_status(rs, "replicas") for rs in all_rs),
            "updatedReplicas": rs_status(new_rs, "replicas"),
            "readyReplicas": sum(rs_status(rs, "readyReplicas") for rs in all_rs),
            "availableReplicas": available,
            "unavailableReplicas": max(0, total - available),
        }
        omit_zero(status, list(status))  # every DeploymentStatus counter is omitempty
        conditions = [dict(c) for c in d["status"].get("conditions") or []]
        if conditions:
            status["conditions"] = conditions
        if d["status"].get("collisionCount") is not None:
            status["collisionCount"] = d["status"]["collisionCount"]
        ts = timestamp(self._clock())
        if available >= replicas_of(d) - max_unavailable(d):
            cond = new_condition(
                "Available", "True", MIN_AVAILABLE, "Deployment has minimum availability.", ts
            )
        else:
            cond = new_condition(
                "Available",
                "False",
                MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.",
                ts,
            )
        set_condition(status, cond)
        return status

    def _sync_rollout_status(
        self, d: JSON, all_rs: list[JSON], new_rs: JSON | None, now: float
    ) -> None:
        all_rs = [self._refresh(rs) or rs for rs in all_rs]
        new_rs = self._refresh(new_rs)
        status = self._calculate_status(d, all_rs, new_rs)
        deadline = progress_deadline(d)
        if deadline is None:
            remove_condition(status, "Progressing")
        current = get_condition(d["status"], "Progressing")
        complete_before = (
            status.get("replicas", 0) == status.get("updatedReplicas", 0)
            and current is not None
            and current.get("reason") == NEW_RS_AVAILABLE
        )
        ts = timestamp(now)
        rs_name = new_rs["metadata"]["name"] if new_rs is not None else None
        subject = f'ReplicaSet "{rs_name}"' if rs_name else f'Deployment "{d["metadata"]["name"]}"'
        if deadline is not None and not complete_before:
            if deployment_complete(d, status):
                set_condition(
                    status,
                    new_condition(
                        "Progressing",
                        "True",
                        NEW_RS_AVAILABLE,
                        f"{subject} has successfully progressed.",
                        ts,
                    ),
                )
                if new_rs is not None:
                    self._rs_steps.pop(new_rs["metadata"]["uid"], None)
            elif deployment_progressing(d, status):
                cond = new_condition(
                    "Progressing", "True", RS_UPDATED, f"{subject} is progressing.", ts
                )
                if current is not None:
                    if current.get("status") == "True":
                        cond["lastTransitionTime"] = current.get("lastTransitionTime")
                    remove_condition(status, "Progressing")
                set_condition(status, cond)
            elif deployment_timed_out(d, status, now):
                set_condition(
                    status,
                    new_condition(
                        "Progressing",
                        "False",
                        TIMED_OUT,
                        f"{subject} has timed out progressing.",
                        ts,
                    ),
                )
        self._commit_deployment(d, status)
        # requeueStuckDeployment: come back when the progress deadline passes
        cond = get_condition(status, "Progressing")
        if (
            deadline is not None
            and cond is not None
            and cond.get("reason") not in (TIMED_OUT, NEW_RS_AVAILABLE)
            and not deployment_complete(d, status)
        ):
            since = parse_timestamp(cond.get("lastUpdateTime"))
            if since is not None:
                self._enqueue_at(
                    max(since + deadline, now) + 0.001,
                    ("Deployment", d["metadata"]["namespace"], d["metadata"]["name"]),
                )

    def _commit_deployment(self, d: JSON, status: JSON) -> None:
        """Write the deployment's status and its revision annotation.

        The real controller writes both through the status subresource (the apiserver's status
        strategy for deployments keeps metadata.annotations), which does not bump
        metadata.generation. A store that drops metadata on status writes gets a main-resource
        write for the annotation instead.
        """
        key = ("Deployment", d["metadata"]["namespace"], d["metadata"]["name"])
        live = self._objs.get(key)
        if live is None:
            return
        want_annotations = d["metadata"].get("annotations") or {}
        annotations_changed = want_annotations != (live["metadata"].get("annotations") or {})
        if status == status_of(live) and not annotations_changed:
            return
        out = {**live, "status": status}
        if annotations_changed:
            out["metadata"] = {**live["metadata"], "annotations": dict(want_annotations)}
        written = self._update("Deployment", out, status=True)
        if (
            annotations_changed
            and (written["metadata"].get("annotations") or {}) != want_annotations
        ):
            fallback = {
                **written,
                "metadata": {**written["metadata"], "annotations": dict(want_annotations)},
            }
            self._update("Deployment", fallback)

    # ============================================================================================
    # ReplicaSets (pkg/controller/replicaset)

    def _sync_replicaset(self, ns: str, name: str) -> None:
        rs = self._get("ReplicaSet", ns, name)
        if rs is None or is_deleting(rs):
            return
        uid = rs["metadata"]["uid"]
        pods = [p for p in self._owned(uid, "Pod") if pod_active(p)]
        diff = len(pods) - replicas_of(rs)
        if diff < 0:
            for _ in range(-diff):
                pods.append(self._create_pod_for_replicaset(rs))
        elif diff > 0:
            for pod in sorted(pods, key=self._deletion_rank)[:diff]:
                self._delete("Pod", pod)
                pods.remove(pod)
        self._write_replicaset_status(rs, pods)

    def _deletion_rank(self, pod: JSON) -> tuple[int, int, int, float]:
        """getPodsToDelete order: unscheduled, pending, not ready, then newest first."""
        st = status_of(pod)
        plan = self._plans.get(pod["metadata"].get("uid", ""))
        created = plan.created if plan else 0.0
        return (
            1 if spec_of(pod).get("nodeName") else 0,
            {"Pending": 0, "Unknown": 1, "Running": 2}.get(st.get("phase", ""), 0),
            1 if pod_ready(pod) else 0,
            -created,
        )

    def _write_replicaset_status(self, rs: JSON, pods: list[JSON]) -> None:
        now = self._clock()
        min_ready = int(spec_of(rs).get("minReadySeconds") or 0)
        template_labels = ((spec_of(rs).get("template") or {}).get("metadata") or {}).get(
            "labels"
        ) or {}
        ready = available = labelled = 0
        next_available: float | None = None
        for pod in pods:
            labels = pod["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in template_labels.items()):
                labelled += 1
            if pod_ready(pod):
                ready += 1
                since = self._ready_since(pod)
                if min_ready == 0 or (since is not None and since + min_ready <= now):
                    available += 1
                elif since is not None:
                    at = since + min_ready
                    next_available = at if next_available is None else min(next_available, at)
        status = dict(status_of(rs))
        status.update(
            replicas=len(pods),
            fullyLabeledReplicas=labelled,
            readyReplicas=ready,
            availableReplicas=available,
            observedGeneration=int(meta(rs).get("generation") or 0),
        )
        omit_zero(
            status,
            ("fullyLabeledReplicas", "readyReplicas", "availableReplicas", "observedGeneration"),
        )
        if status != status_of(rs):
            out = {**rs, "status": status}
            self._update("ReplicaSet", out, status=True)
        if next_available is not None:
            m = rs["metadata"]
            self._enqueue_at(next_available, ("ReplicaSet", m["namespace"], m["name"]))

    def _ready_since(self, pod: JSON) -> float | None:
        plan = self._plans.get(pod["metadata"].get("uid", ""))
        if plan is not None and plan.ready_since is not None:
            return plan.ready_since
        for c in status_of(pod).get("conditions") or []:
            if c.get("type") == "Ready":
                return parse_timestamp(c.get("lastTransitionTime"))
        return None

    def _create_pod_for_replicaset(self, rs: JSON) -> JSON:
        steps = self._rs_steps.get(rs["metadata"]["uid"], 1)
        return self._create_pod(
            rs,
            "ReplicaSet",
            spec_of(rs).get("template") or {},
            name=None,
            delay=self._readiness_seconds() / steps,
        )

    def _create_pod(
        self,
        owner: JSON,
        owner_kind: str,
        template: JSON,
        *,
        name: str | None,
        delay: float,
        extra_labels: dict[str, str] | None = None,
        node: str | None = None,
        spec_extra: JSON | None = None,
    ) -> JSON:
        """Create a pod from a template, bound to a node at once (the scheduler's part)."""
        ns = owner["metadata"]["namespace"]
        tmeta = template.get("metadata") or {}
        pod_meta: JSON = {"namespace": ns}
        labels = {**(tmeta.get("labels") or {}), **(extra_labels or {})}
        if labels:
            pod_meta["labels"] = labels
        if tmeta.get("annotations"):
            pod_meta["annotations"] = dict(tmeta["annotations"])
        if tmeta.get("finalizers"):
            pod_meta["finalizers"] = list(tmeta["finalizers"])
        pod_meta["ownerReferences"] = [new_controller_ref(owner, owner_kind)]
        spec = _copy(template.get("spec") or {})
        if spec_extra:
            spec.update(spec_extra)
        spec["nodeName"] = node or spec.get("nodeName") or self._pick_node()
        pod: JSON = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}
        if name is not None:
            pod_meta["name"] = name
            created = self._create("Pod", ns, pod)
        else:
            # generateName, with the suffix drawn from the injected random source
            prefix = f"{owner['metadata']['name']}-"
            pod_meta["generateName"] = prefix
            for attempt in itertools.count(1):
                pod_meta["name"] = prefix + random_suffix(self._rng)
                try:
                    created = self._create("Pod", ns, pod)
                    break
                except StatusError as e:
                    if e.reason != "AlreadyExists" or attempt >= 8:
                        raise
        now = self._clock()
        self._plans[created["metadata"]["uid"]] = _PodPlan(
            node=spec["nodeName"],
            delay=delay,
            created=now,
            running_at=now + delay * _start_share(spec),
            ready_at=now + delay,
            start_ts=timestamp(now),
        )
        return created

    def _pick_node(self) -> str:
        node = self.nodes[self._node_cursor % len(self.nodes)]
        self._node_cursor += 1
        return node

    # ============================================================================================
    # The kubelet: pod status

    def _sync_pod(self, ns: str, name: str) -> None:
        pod = self._get("Pod", ns, name)
        if pod is None or is_deleting(pod):
            return
        if status_of(pod).get("phase") in ("Succeeded", "Failed"):
            return
        now = self._clock()
        if not spec_of(pod).get("nodeName"):
            bound = {**pod, "spec": {**pod["spec"], "nodeName": self._pick_node()}}
            pod = self._update("Pod", bound, manager=SCHEDULER)
        uid = pod["metadata"]["uid"]
        plan = self._plans.get(uid)
        if plan is None:
            delay = self._readiness_seconds()
            plan = self._plans[uid] = _PodPlan(
                node=spec_of(pod)["nodeName"],
                delay=delay,
                created=now,
                running_at=now + delay * _start_share(spec_of(pod)),
                ready_at=now + delay,
                start_ts=timestamp(now),
            )
        containers = [c for c in spec_of(pod).get("containers") or [] if isinstance(c, dict)]
        init_containers = [
            c for c in spec_of(pod).get("initContainers") or [] if isinstance(c, dict)
        ]
        broken = [
            c["name"]
            for c in [*init_containers, *containers]
            if self.faults.is_broken(c.get("image", ""))
        ]
        wake: float | None = None
        if plan.running_ts is None:
            if now < plan.running_at:
                wake = plan.running_at
            elif broken:
                if now >= plan.next_pull:
                    plan.pull_failures += 1
                    backoff = min(
                        _IMAGE_PULL_BACKOFF_CAP,
                        max(plan.delay, 0.5) * 2 ** (plan.pull_failures - 1),
                    )
                    plan.next_pull = now + backoff
                wake = plan.next_pull
            else:
                # running now (maybe after the image became pullable): readiness follows
                plan.running_ts = timestamp(now)
                plan.pod_ip = plan.pod_ip or self._allocate_ip(plan.node)
                remaining = plan.ready_at - plan.running_at
                plan.ready_at = max(plan.ready_at, now + (remaining if plan.pull_failures else 0))
                for c in [*init_containers, *containers]:
                    plan.container_ids.setdefault(
                        c["name"], f"containerd://{self._rng.getrandbits(256):064x}"
                    )
        if plan.running_ts is not None and plan.ready_ts is None:
            if now >= plan.ready_at:
                plan.ready_ts = timestamp(now)
                plan.ready_since = now
            else:
                wake = plan.ready_at
        status = self._pod_status(pod, plan, containers, init_containers, set(broken))
        if status != status_of(pod):
            out = {**pod, "status": status}
            self._update("Pod", out, status=True, manager=KUBELET)
        if wake is not None:
            self._enqueue_at(wake, ("Pod", ns, name))

    def _allocate_ip(self, node: str) -> str:
        index = self.nodes.index(node) if node in self.nodes else 0
        n = self._ip_counters[index] = self._ip_counters[index] % 253 + 1
        return f"10.244.{index + 1}.{n + 1}"

    def _pod_status(
        self,
        pod: JSON,
        plan: _PodPlan,
        containers: list[JSON],
        init_containers: list[JSON],
        broken: set[str],
    ) -> JSON:
        running = plan.running_ts is not None
        ready = plan.ready_ts is not None
        start = plan.start_ts
        node_index = self.nodes.index(plan.node) if plan.node in self.nodes else 0
        host_ip = f"172.18.0.{node_index + 2}"
        pulling = not running and plan.pull_failures > 0
        not_ready_names = [c["name"] for c in containers]

        def cond(
            ctype: str,
            ok: bool,
            since: str | None,
            reason: str | None = None,
            message: str | None = None,
        ) -> JSON:
            c: JSON = {
                "type": ctype,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": since or start,
            }
            if reason:
                c["reason"] = reason
            if message:
                c["message"] = message
            return c

        unready_msg = f"containers with unready status: [{' '.join(not_ready_names)}]"
        conditions = [
            cond(
                "PodReadyToStartContainers",
                running or pulling,
                plan.running_ts or (start if pulling else None),
            ),
            cond("Initialized", True, start),
            cond(
                "Ready",
                ready,
                plan.ready_ts,
                None if ready else "ContainersNotReady",
                None if ready else unready_msg,
            ),
            cond(
                "ContainersReady",
                ready,
                plan.ready_ts,
                None if ready else "ContainersNotReady",
                None if ready else unready_msg,
            ),
            cond("PodScheduled", True, start),
        ]
        statuses = [
            self._container_status(
                c, plan, running=running, ready=ready, broken=c["name"] in broken
            )
            for c in containers
        ]
        status: JSON = {
            "phase": "Running" if running else "Pending",
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
        }
        if running and plan.pod_ip:
            status["podIP"] = plan.pod_ip
            status["podIPs"] = [{"ip": plan.pod_ip}]
        status["startTime"] = start
        if init_containers:
            status["initContainerStatuses"] = [
                self._container_status(
                    c, plan, running=running, ready=running, broken=c["name"] in broken, init=True
                )
                for c in init_containers
            ]
        status["containerStatuses"] = statuses
        status["qosClass"] = status_of(pod).get("qosClass", "BestEffort")
        return status

    def _container_status(
        self,
        c: JSON,
        plan: _PodPlan,
        *,
        running: bool,
        ready: bool,
        broken: bool,
        init: bool = False,
    ) -> JSON:
        image = c.get("image", "")
        out: JSON = {"name": c["name"]}
        if running:
            full = normalize_image(image)
            digest = hashlib.sha256(full.encode()).hexdigest()
            repo = full.split("@", 1)[0] if "@" in full else full.rsplit(":", 1)[0]
            if init:
                state: JSON = {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": plan.running_ts,
                        "finishedAt": plan.running_ts,
                        "containerID": plan.container_ids.get(c["name"], ""),
                    }
                }
            else:
                state = {"running": {"startedAt": plan.running_ts}}
            out.update(
                state=state,
                lastState={},
                ready=ready,
                restartCount=0,
                image=full,
                imageID=f"{repo}@sha256:{digest}",
                containerID=plan.container_ids.get(c["name"], ""),
                started=not init,
            )
            return out
        if broken and plan.pull_failures > 0:
            full = normalize_image(image)
            if plan.pull_failures == 1:
                waiting = {
                    "reason": "ErrImagePull",
                    "message": (
                        f'rpc error: code = NotFound desc = failed to pull and unpack image "{full}": '
                        f'failed to resolve reference "{full}": {full}: not found'
                    ),
                }
            else:
                waiting = {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{image}"',
                }
        else:
            waiting = {"reason": "PodInitializing" if init else "ContainerCreating"}
        out.update(
            state={"waiting": waiting},
            lastState={},
            ready=False,
            restartCount=0,
            image=image,
            imageID="",
            started=False,
        )
        return out

    # ============================================================================================
    # StatefulSets (pkg/controller/statefulset)

    def _sync_statefulset(self, ns: str, name: str) -> None:
        sts = self._get("StatefulSet", ns, name)
        if sts is None or is_deleting(sts):
            return
        spec = spec_of(sts)
        uid = sts["metadata"]["uid"]
        want = replicas_of(sts)
        template = spec.get("template") or {}
        collision = status_of(sts).get("collisionCount")
        update_revision = f"{name}-{template_hash(template, collision)}"
        self._revision_templates.setdefault(uid, {})[update_revision] = template
        current_revision = status_of(sts).get("currentRevision") or update_revision
        strategy = spec.get("updateStrategy") or {}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        partition = (
            int((strategy.get("rollingUpdate") or {}).get("partition") or 0) if rolling else 0
        )
        ordered = spec.get("podManagementPolicy", "OrderedReady") != "Parallel"
        pods: dict[int, JSON] = {}
        for pod in self._owned(uid, "Pod"):
            ordinal = _ordinal(pod["metadata"]["name"], name)
            if ordinal is not None and not is_deleting(pod):
                pods[ordinal] = pod
        self._manage_statefulset(
            sts, pods, want, ordered, rolling, partition, current_revision, update_revision
        )
        self._write_statefulset_status(sts, pods, want, current_revision, update_revision, rolling)

    def _manage_statefulset(
        self,
        sts: JSON,
        pods: dict[int, JSON],
        want: int,
        ordered: bool,
        rolling: bool,
        partition: int,
        current_revision: str,
        update_revision: str,
    ) -> None:
        name = sts["metadata"]["name"]
        ns = sts["metadata"]["namespace"]
        readiness = self._readiness_seconds()
        delay = readiness / max(1, want) if ordered else readiness
        # failed pods are replaced
        for i, pod in list(pods.items()):
            if status_of(pod).get("phase") == "Failed":
                self._delete("Pod", pod)
                del pods[i]
        # create missing pods; OrderedReady waits for each predecessor to be running and ready
        for i in range(want):
            if i not in pods:
                revision = update_revision if i >= partition else current_revision
                template = (
                    self._revision_templates.get(sts["metadata"]["uid"], {}).get(revision)
                    or spec_of(sts).get("template")
                    or {}
                )
                pname = f"{name}-{i}"
                extra_spec = {"hostname": pname}
                if spec_of(sts).get("serviceName"):
                    extra_spec["subdomain"] = spec_of(sts)["serviceName"]
                pods[i] = self._create_pod(
                    sts,
                    "StatefulSet",
                    template,
                    name=pname,
                    delay=delay,
                    extra_labels={
                        CONTROLLER_REVISION_HASH: revision,
                        STS_POD_NAME: pname,
                        POD_INDEX: str(i),
                    },
                    spec_extra=extra_spec,
                )
                if ordered:
                    return
            elif ordered and not pod_ready(pods[i]):
                return
        # scale down from the highest ordinal
        condemned = sorted((i for i in pods if i >= want), reverse=True)
        if condemned:
            if ordered and not all(pod_ready(pods[i]) for i in pods if i < want):
                return
            for i in condemned:
                self._delete("Pod", pods.pop(i))
                if ordered:
                    return
            return
        # rolling update from the highest ordinal down, one pod at a time
        if not rolling:
            return
        for i in sorted(pods, reverse=True):
            if i < partition:
                break
            pod = pods[i]
            if (pod["metadata"].get("labels") or {}).get(
                CONTROLLER_REVISION_HASH
            ) != update_revision:
                self._delete("Pod", pod)
                del pods[i]
                self._enqueue(("StatefulSet", ns, name))
                return
            if not pod_ready(pod):
                return

    def _write_statefulset_status(
        self,
        sts: JSON,
        pods: dict[int, JSON],
        want: int,
        current_revision: str,
        update_revision: str,
        rolling: bool,
    ) -> None:
        now = self._clock()
        min_ready = int(spec_of(sts).get("minReadySeconds") or 0)
        ready = available = current = updated = 0
        next_available: float | None = None
        for pod in pods.values():
            revision = (pod["metadata"].get("labels") or {}).get(CONTROLLER_REVISION_HASH)
            if pod_ready(pod):
                ready += 1
                since = self._ready_since(pod)
                if min_ready == 0 or (since is not None and since + min_ready <= now):
                    available += 1
                elif since is not None:
                    at = since + min_ready
                    next_available = at if next_available is None else min(next_available, at)
            if revision == current_revision:
                current += 1
            if revision == update_revision:
                updated += 1
        if rolling and updated == want and ready == want and len(pods) == want:
            current_revision = update_revision
            current = updated
        status = dict(status_of(sts))
        status.update(
            observedGeneration=int(meta(sts).get("generation") or 0),
            replicas=len(pods),
            readyReplicas=ready,
            currentReplicas=current,
            updatedReplicas=updated,
            currentRevision=current_revision,
            updateRevision=update_revision,
            collisionCount=int(status_of(sts).get("collisionCount") or 0),
            availableReplicas=available,
        )
        omit_zero(
            status, ("readyReplicas", "currentReplicas", "updatedReplicas", "observedGeneration")
        )
        if status != status_of(sts):
            out = {**sts, "status": status}
            self._update("StatefulSet", out, status=True)
        if next_available is not None:
            m = sts["metadata"]
            self._enqueue_at(next_available, ("StatefulSet", m["namespace"], m["name"]))

    # ============================================================================================
    # DaemonSets (pkg/controller/daemon), on the pretend nodes

    def _sync_daemonset(self, ns: str, name: str) -> None:
        ds = self._get("DaemonSet", ns, name)
        if ds is None or is_deleting(ds):
            return
        spec = spec_of(ds)
        uid = ds["metadata"]["uid"]
        template = spec.get("template") or {}
        pod_hash = template_hash(template, status_of(ds).get("collisionCount"))
        generations = self._template_generations.setdefault(uid, {})
        if pod_hash not in generations:
            generations[pod_hash] = max(generations.values(), default=0) + 1
        by_node: dict[str, list[JSON]] = defaultdict(list)
        for pod in self._owned(uid, "Pod"):
            if not is_deleting(pod):
                by_node[spec_of(pod).get("nodeName", "")].append(pod)
        strategy = spec.get("updateStrategy") or {}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        ru = strategy.get("rollingUpdate") or {}
        desired = len(self.nodes)
        budget = int_or_percent(ru.get("maxUnavailable", 1), desired, round_up=True)
        if budget == 0 and not int_or_percent(ru.get("maxSurge", 0), desired, round_up=True):
            budget = 1
        fresh = not any(by_node.values())
        readiness = self._readiness_seconds()
        delay = readiness if fresh else readiness / max(1, math.ceil(desired / max(1, budget)))
        # extra pods on a node and pods on nodes that do not exist go away
        for node, pod_list in list(by_node.items()):
            if node not in self.nodes:
                for pod in pod_list:
                    self._delete("Pod", pod)
                del by_node[node]
                continue
            if len(pod_list) > 1:
                pod_list.sort(key=lambda p: (not _has_hash(p, pod_hash), not pod_ready(p)))
                for pod in pod_list[1:]:
                    self._delete("Pod", pod)
                del pod_list[1:]
        # every node runs one pod
        for node in self.nodes:
            if not by_node.get(node):
                by_node[node] = [
                    self._create_pod(
                        ds,
                        "DaemonSet",
                        template,
                        name=None,
                        delay=delay,
                        node=node,
                        extra_labels={
                            CONTROLLER_REVISION_HASH: pod_hash,
                            POD_TEMPLATE_GENERATION: str(generations[pod_hash]),
                        },
                        spec_extra=_daemon_pod_spec(template, node),
                    )
                ]
        # rolling update: replace old pods while the unavailability budget allows
        if rolling:
            unavailable = 0
            replace_now: list[JSON] = []
            candidates: list[JSON] = []
            for node in self.nodes:
                pod = by_node[node][0]
                if _has_hash(pod, pod_hash):
                    if not self._available(pod, ds):
                        unavailable += 1
                elif not self._available(pod, ds):
                    replace_now.append(pod)
                else:
                    candidates.append(pod)
            room = max(0, budget - unavailable)
            for pod in [*replace_now, *candidates[:room]]:
                self._delete("Pod", pod)
                by_node[spec_of(pod).get("nodeName", "")] = []
            if replace_now or candidates[:room]:
                self._enqueue(("DaemonSet", ns, name))
        self._write_daemonset_status(ds, by_node, pod_hash)

    def _available(self, pod: JSON, owner: JSON) -> bool:
        if not pod_ready(pod):
            return False
        min_ready = int(spec_of(owner).get("minReadySeconds") or 0)
        if min_ready == 0:
            return True
        since = self._ready_since(pod)
        return since is not None and since + min_ready <= self._clock()

    def _write_daemonset_status(
        self, ds: JSON, by_node: dict[str, list[JSON]], pod_hash: str
    ) -> None:
        now = self._clock()
        min_ready = int(spec_of(ds).get("minReadySeconds") or 0)
        scheduled = ready = updated = available = 0
        next_available: float | None = None
        for node in self.nodes:
            pods = by_node.get(node) or []
            if not pods:
                continue
            pod = pods[0]
            scheduled += 1
            if _has_hash(pod, pod_hash):
                updated += 1
            if pod_ready(pod):
                ready += 1
                since = self._ready_since(pod)
                if min_ready == 0 or (since is not None and since + min_ready <= now):
                    available += 1
                elif since is not None:
                    at = since + min_ready
                    next_available = at if next_available is None else min(next_available, at)
        desired = len(self.nodes)
        status = dict(status_of(ds))
        status.update(
            currentNumberScheduled=scheduled,
            numberMisscheduled=0,
            desiredNumberScheduled=desired,
            numberReady=ready,
            observedGeneration=int(meta(ds).get("generation") or 0),
            updatedNumberScheduled=updated,
            numberAvailable=available,
            numberUnavailable=desired - available,
        )
        omit_zero(
            status,
            (
                "observedGeneration",
                "updatedNumberScheduled",
                "numberAvailable",
                "numberUnavailable",
            ),
        )
        if status != status_of(ds):
            out = {**ds, "status": status}
            self._update("DaemonSet", out, status=True)
        if next_available is not None:
            m = ds["metadata"]
            self._enqueue_at(next_available, ("DaemonSet", m["namespace"], m["name"]))


# ------------------------------------------------------------------------------------------------


def _start_share(pod_spec: JSON) -> float:
    """The share of the readiness time spent starting containers.

    Without readiness probes the kubelet reports a container ready as soon as it runs; with
    one, the pod is Running but not Ready until the probe passes (the second half here).
    """
    probes = any(
        isinstance(c, dict) and c.get("readinessProbe") for c in pod_spec.get("containers") or []
    )
    return 0.5 if probes else 1.0


def _shallow_rs(rs: JSON) -> JSON:
    """A copy of a replica set whose annotations and spec (top level) may be changed."""
    m = rs["metadata"]
    return {
        **rs,
        "metadata": {**m, "annotations": dict(m.get("annotations") or {})},
        "spec": dict(spec_of(rs)),
    }


def _copy(value: Any) -> Any:
    """Deep copy of JSON-shaped data (much faster than copy.deepcopy)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _rv(obj: JSON) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _set_or_drop(d: JSON, key: str, value: int) -> None:
    if value:
        d[key] = value
    else:
        d.pop(key, None)


def _ordinal(pod_name: str, sts_name: str) -> int | None:
    prefix = f"{sts_name}-"
    if not pod_name.startswith(prefix):
        return None
    tail = pod_name[len(prefix) :]
    return int(tail) if tail.isdigit() else None


def _has_hash(pod: JSON, pod_hash: str) -> bool:
    return (pod["metadata"].get("labels") or {}).get(CONTROLLER_REVISION_HASH) == pod_hash


def _daemon_pod_spec(template: JSON, node: str) -> JSON:
    """What the DaemonSet controller adds to its pods: node affinity and its tolerations."""
    spec = template.get("spec") or {}
    affinity = _copy(spec.get("affinity") or {})
    affinity.setdefault("nodeAffinity", {})["requiredDuringSchedulingIgnoredDuringExecution"] = {
        "nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        ]
    }
    tolerations = list(spec.get("tolerations") or [])
    have = {(t.get("key"), t.get("effect")) for t in tolerations}
    for key, effect in (
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ):
        if (key, effect) not in have:
            tolerations.append({"key": key, "operator": "Exists", "effect": effect})
    return {"affinity": affinity, "tolerations": tolerations}
