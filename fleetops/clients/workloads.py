"""An application's objects on one cluster: rollback point, server-side apply, readiness, restore.

:class:`Workloads` is what a rollout does to one cluster, on top of a :class:`KubeClient`
(composition: it sends raw REST requests through the client's ``ApiClient`` and maps errors with
:meth:`KubeClient.call`, so the error classes are the same as everywhere else):

- :meth:`Workloads.snapshot` records the live state of every object the rollout will change, or
  that it is absent: the :class:`RollbackPoint` stored in the rollout history before anything is
  applied. Server-owned fields are stripped (``uid``, ``resourceVersion``, ``managedFields``,
  ``creationTimestamp``, ``generation``, ``status`` and the deployment controller's revision
  annotation) so the recorded state can be applied again as it is.
- :meth:`Workloads.apply` is server-side apply (``PATCH`` with ``application/apply-patch+yaml``,
  field manager ``fleetops``, ``force`` by default), Namespaces and CRDs first. With
  ``dry_run=True`` it sends ``dryRun=All``: the server validates, defaults and merges without
  storing, and each object is reported created, changed (with the changed paths) or unchanged by
  comparing the server's answer with the live object, server-owned fields ignored.
- :meth:`Workloads.wait_ready` judges live state, never a cached status, with
  :func:`fleetops.domain.gates.workload_ready` against the generations the apply produced, the
  way ``kubectl rollout status`` follows a rollout: it reads every workload (GET), then keeps one
  watch open on the first one still progressing and judges the objects its events carry (each is
  the live object at its resourceVersion) instead of reading it again after every change. When
  that workload is ready it reads the others still pending again and watches the next one. A
  watch lasts at most ``_WATCH_CAP_SECONDS`` (5 s) before every pending workload is read again;
  ``watch=False`` polls instead. A Deployment reporting ``ProgressDeadlineExceeded`` fails at
  once with the controller's message; otherwise the wait ends at ``deadline_seconds``.
- :meth:`Workloads.restore` puts a rollback point back: objects that did not exist are deleted,
  the others are applied again in their recorded state (server-side apply with force, so fields
  the rollout added are dropped), then verified: equal to the record, workloads ready, deleted
  objects gone.
- :meth:`Workloads.is_at` is the resume check: every object exists, a server-side dry-run of the
  target objects changes nothing, and every workload is ready. Such a cluster is verified, not
  applied again.

**Secrets are refused.** An app may not contain ``v1 Secret`` objects (:class:`ConfigError`):
a rollback point records live state in the inventory, and live Secret data must never be stored
there. Secrets reach clusters through the secret rotation flow, which owns their values.

Errors: connection failures, timeouts, 429 and 5xx raise :class:`~fleetops.errors.TransientError`
subclasses (the task retries them); other 4xx raise the matching
:class:`~fleetops.errors.PermanentError` (a 422 is :class:`~fleetops.errors.Rejected` carrying the
server's ``Status`` message). Messages are redacted. Nothing here retries by itself, except that
:meth:`wait_ready` keeps reading through transient errors until its deadline.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field

from fleetops.clients.kube import KubeClient
from fleetops.domain.gates import (
    ClusterReadiness,
    Readiness,
    ReadinessStatus,
    cluster_readiness,
    is_workload,
    workload_ready,
)
from fleetops.errors import ConfigError, NotFound, PermanentError, Rejected, TransientError

FIELD_MANAGER = "fleetops"
APPLY_PATCH = "application/apply-patch+yaml"
DEFAULT_NAMESPACE = "default"

ObjectKey = tuple[str, str, str, str]
"""``(apiVersion, kind, namespace, name)``, namespace filled in for namespaced kinds."""

#: metadata the server owns: never recorded, never compared, never sent back
SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "managedFields",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
#: annotations controllers write; re-applying an old value would fight the controller
SERVER_ANNOTATIONS = ("deployment.kubernetes.io/revision",)

# Install order (Helm's, shortened): what others need first. Unknown kinds go last.
#: Built-in kinds whose names Kubernetes fixes (GA, served by every supported version): where
#: they live is known without asking, which saves each cluster step its discovery requests
#: (``/api/v1`` alone lists every core resource). Anything else, custom resources included, is
#: looked up in the cluster's discovery documents. (Kept to the kinds the sandbox serves, so a
#: test can check every entry against a cluster's own discovery.)
BUILT_IN: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "Pod"): ("pods", True),
    ("v1", "Service"): ("services", True),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("apps/v1", "DaemonSet"): ("daemonsets", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("apps/v1", "ReplicaSet"): ("replicasets", True),
    ("apps/v1", "StatefulSet"): ("statefulsets", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): (
        "customresourcedefinitions",
        False,
    ),
}

_ORDER = {
    kind: index
    for index, kind in enumerate(
        (
            "Namespace",
            "NetworkPolicy",
            "ResourceQuota",
            "LimitRange",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ConfigMap",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "DaemonSet",
            "Pod",
            "ReplicaSet",
            "Deployment",
            "StatefulSet",
            "Job",
            "CronJob",
            "Ingress",
        )
    )
}
_MAX_CHANGED_PATHS = 20
_WATCH_CAP_SECONDS = 5.0
#: a watch that ends sooner without a verdict is followed by a pause (no busy loop)
_MIN_WATCH_SECONDS = 0.2

_FROZEN = ConfigDict(frozen=True, extra="forbid")


# --- models ---------------------------------------------------------------------------------


class ObjectRef(BaseModel):
    """Which object: API version, kind, namespace (empty for cluster scope) and name."""

    model_config = _FROZEN

    api_version: str = Field(description="apiVersion, e.g. apps/v1.")
    kind: str = Field(description="Kind, e.g. Deployment.")
    namespace: str = Field(default="", description="Namespace; empty for cluster-scoped kinds.")
    name: str = Field(description="metadata.name.")

    @property
    def key(self) -> ObjectKey:
        return (self.api_version, self.kind, self.namespace, self.name)

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else f"{self.kind} {self.name}"
        )


class ObjectState(BaseModel):
    """One object of a rollback point: its state before the rollout, or that it was absent."""

    model_config = _FROZEN

    ref: ObjectRef = Field(description="The object.")
    state: Literal["present", "absent"] = Field(description="Whether it existed before.")
    manifest: dict[str, Any] | None = Field(
        default=None, description="Its live state, server-owned fields stripped (present only)."
    )


class RollbackPoint(BaseModel):
    """The live state of every object a rollout will change on one cluster, before it does."""

    model_config = _FROZEN

    system: str = Field(description="kube:<cluster id>.")
    objects: tuple[ObjectState, ...] = Field(description="In apply order.")

    @property
    def created_by_rollout(self) -> tuple[ObjectRef, ...]:
        """Objects that did not exist: a restore deletes them."""
        return tuple(o.ref for o in self.objects if o.state == "absent")


class Action(StrEnum):
    CREATED = "created"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


class AppliedObject(BaseModel):
    """What one server-side apply did (or, in a dry run, would do) to one object."""

    model_config = _FROZEN

    ref: ObjectRef = Field(description="The object.")
    action: Action = Field(description="created, changed or unchanged.")
    generation: int | None = Field(default=None, description="metadata.generation answered.")
    changed_paths: tuple[str, ...] = Field(
        default=(), description=f"Changed fields (first {_MAX_CHANGED_PATHS}), for the diff."
    )
    note: str = Field(default="", description="Anything the server could not check.")


class ApplyResult(BaseModel):
    """The outcome of :meth:`Workloads.apply` on one cluster."""

    model_config = _FROZEN

    system: str = Field(description="kube:<cluster id>.")
    dry_run: bool = Field(description="True for dryRun=All: nothing was stored.")
    objects: tuple[AppliedObject, ...] = Field(description="In apply order.")

    def count(self, action: Action) -> int:
        return sum(1 for o in self.objects if o.action is action)

    @property
    def summary(self) -> str:
        """``2 created, 1 changed, 1 unchanged``."""
        return ", ".join(f"{self.count(a)} {a.value}" for a in Action)

    def generations(self) -> dict[ObjectKey, int]:
        """Target generations for :meth:`Workloads.wait_ready`."""
        return {o.ref.key: o.generation for o in self.objects if o.generation is not None}


class RestoreAction(StrEnum):
    REAPPLIED = "reapplied"
    DELETED = "deleted"
    ALREADY_ABSENT = "already-absent"


class RestoredObject(BaseModel):
    """What a restore did to one object and whether the cluster now holds the recorded state."""

    model_config = _FROZEN

    ref: ObjectRef = Field(description="The object.")
    action: RestoreAction = Field(description="reapplied, deleted or already-absent.")
    verified: bool = Field(description="The live object equals the record (or is gone).")
    message: str = Field(default="", description="What differs, if anything.")


class RestoreResult(BaseModel):
    """The outcome of :meth:`Workloads.restore`: ok when every object is verified and ready."""

    model_config = _FROZEN

    system: str = Field(description="kube:<cluster id>.")
    ok: bool = Field(description="Every object verified and every workload ready.")
    objects: tuple[RestoredObject, ...] = Field(description="Per object.")
    readiness: ClusterReadiness = Field(description="Readiness of the re-applied workloads.")
    message: str = Field(description="One sentence for Slack and the history.")


class VersionCheck(BaseModel):
    """Whether a cluster already runs the target (resume): at it, or why not."""

    model_config = _FROZEN

    system: str = Field(description="kube:<cluster id>.")
    version: str = Field(description="The version checked.")
    at: bool = Field(description="All objects present, nothing to apply, every workload ready.")
    reason: str = Field(description="Why not, or that it is.")
    generations: dict[str, int] = Field(
        default_factory=dict, description="Live generation per workload (kind/namespace/name)."
    )


# --- helpers --------------------------------------------------------------------------------


def strip_server_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``obj`` without what the server owns, fit to be applied again."""
    out = copy.deepcopy(dict(obj))
    out.pop("status", None)
    metadata = out.get("metadata")
    if isinstance(metadata, dict):
        for name in SERVER_METADATA:
            metadata.pop(name, None)
        annotations = metadata.get("annotations")
        if isinstance(annotations, dict):
            for name in SERVER_ANNOTATIONS:
                annotations.pop(name, None)
            if not annotations:
                metadata.pop("annotations")
    return out


def _diff(before: Any, after: Any, path: str, out: list[str]) -> None:
    if len(out) >= _MAX_CHANGED_PATHS:
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            _diff(before.get(key), after.get(key), f"{path}.{key}" if path else str(key), out)
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for index, (b, a) in enumerate(zip(before, after, strict=True)):
            _diff(b, a, f"{path}[{index}]", out)
    elif before != after:
        out.append(path or ".")


def changed_paths(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[str, ...]:
    """Paths where two objects differ, server-owned fields ignored (at most 20)."""
    out: list[str] = []
    _diff(strip_server_fields(before), strip_server_fields(after), "", out)
    return tuple(out)


class _Resource:
    """Where an object lives on this server (from discovery)."""

    __slots__ = ("namespaced", "plural")

    def __init__(self, plural: str, namespaced: bool) -> None:
        self.plural = plural
        self.namespaced = namespaced


_BUILT_IN_RESOURCES = {key: _Resource(*where) for key, where in BUILT_IN.items()}


class _Target:
    """An object ready to be sent: its ref, its URL path, its body (namespace filled in)."""

    __slots__ = ("body", "collection", "path", "ref")

    def __init__(self, ref: ObjectRef, collection: str, body: dict[str, Any]) -> None:
        self.ref = ref
        self.collection = collection
        self.path = f"{collection}/{ref.name}"
        self.body = body


def _absent(ref: ObjectRef) -> Readiness:
    """The verdict on a workload that does not exist (yet, or any more): not ready."""
    return Readiness(
        kind=ref.kind,
        namespace=ref.namespace,
        name=ref.name,
        status=ReadinessStatus.PROGRESSING,
        message=f"Waiting for {ref}: it does not exist",
    )


def _combine(
    workloads: Sequence[_Target], verdicts: Mapping[ObjectKey, Readiness]
) -> ClusterReadiness:
    """The cluster's readiness from the latest verdict on each workload, in apply order."""
    return cluster_readiness(verdicts[t.ref.key] for t in workloads if t.ref.key in verdicts)


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-blank newline-terminated lines of a byte stream whose chunks may split or join
    lines. An unterminated tail (a stream cut in the middle of an event) is dropped."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if line.strip():
                yield line


def _watch_events(chunks: Iterable[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(type, object)`` of each event of a watch stream (newline-delimited JSON).

    Stops at the first line that is not a watch event: the caller then reads the object again.
    """
    for line in _lines(chunks):
        try:
            event = json.loads(line)
        except ValueError:
            return
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(kind, str) or not isinstance(obj, dict):
            return
        yield kind, obj


# --- the client -----------------------------------------------------------------------------


class Workloads:
    """An app's objects on one cluster (see the module docstring).

    ``kube`` is owned by the caller (close it there). ``clock`` (monotonic seconds) and ``sleep``
    drive :meth:`wait_ready` and the verification of :meth:`restore`.
    """

    def __init__(
        self,
        kube: KubeClient,
        *,
        field_manager: str = FIELD_MANAGER,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.kube = kube
        self.system = kube.system
        self.field_manager = field_manager
        self._clock = clock
        self._sleep = sleep
        self._discovery: dict[str, dict[str, _Resource]] = {}

    # --- requests ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        """One request; the decoded JSON answer, or a fleetops error for a non-2xx answer."""
        api = self.kube.api_client

        def send() -> Any:
            headers = {"Accept": "application/json"}
            if content_type is not None:
                headers["Content-Type"] = content_type
            request = api.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query) or None,
                header_params=headers,
                # JSON bodies are encoded by the client; apply-patch YAML is sent as JSON text
                body=json.dumps(body) if content_type == APPLY_PATCH else body,
                auth_settings=["BearerToken"],
            )
            response = api.call_api(*request, _request_timeout=self.kube.request_timeout)
            response.read()  # type: ignore[no-untyped-call]
            if response.status >= 400:
                raise ApiException(http_resp=response)
            return json.loads(response.data) if response.data else None

        return self.kube.call(send)

    def _get(self, target: _Target) -> dict[str, Any] | None:
        """The live object, or None when it does not exist (read fresh every time)."""
        try:
            live = self._request("GET", target.path)
        except NotFound:
            return None
        return live if isinstance(live, dict) else None

    def _resources(self, api_version: str) -> dict[str, _Resource]:
        cached = self._discovery.get(api_version)
        if cached is not None:
            return cached
        path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        try:
            answer = self._request("GET", path)
        except NotFound as exc:
            raise Rejected(
                f"the cluster does not serve apiVersion {api_version}",
                system=self.system,
                status=404,
            ) from exc
        found: dict[str, _Resource] = {}
        for resource in (answer or {}).get("resources", ()):
            name = str(resource.get("name", ""))
            if "/" in name or not resource.get("kind"):
                continue  # a subresource
            found.setdefault(
                str(resource["kind"]), _Resource(name, bool(resource.get("namespaced")))
            )
        self._discovery[api_version] = found
        return found

    def _resource(self, api_version: str, kind: str) -> _Resource | None:
        known = _BUILT_IN_RESOURCES.get((api_version, kind))
        return known if known is not None else self._resources(api_version).get(kind)

    def _targets(self, objects: Iterable[Mapping[str, Any]]) -> list[_Target]:
        """The objects located (built-in kinds from BUILT_IN, others by discovery), in apply
        order; Secrets refused."""
        targets: list[_Target] = []
        for obj in objects:
            api_version = str(obj.get("apiVersion", ""))
            kind = str(obj.get("kind", ""))
            metadata = obj.get("metadata") or {}
            name = str(metadata.get("name", ""))
            if not api_version or not kind or not name:
                raise ConfigError(
                    f"object without apiVersion, kind or metadata.name: {kind} {name}"
                )
            if kind == "Secret" and api_version == "v1":
                raise ConfigError(
                    f"Secret {metadata.get('namespace') or DEFAULT_NAMESPACE}/{name}: an app rolled "
                    "out by fleetops may not contain Secrets. Its rollback point would store the "
                    "live secret data in the inventory; Secrets are propagated by the secret "
                    "rotation flow instead"
                )
            resource = self._resource(api_version, kind)
            if resource is None:
                raise Rejected(
                    f"the cluster does not serve kind {kind} in {api_version}", system=self.system
                )
            body = copy.deepcopy(dict(obj))
            namespace = ""
            if resource.namespaced:
                namespace = str(metadata.get("namespace") or DEFAULT_NAMESPACE)
                body["metadata"]["namespace"] = namespace
            else:
                body["metadata"].pop("namespace", None)
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            collection = (
                f"{base}/namespaces/{namespace}/{resource.plural}"
                if resource.namespaced
                else f"{base}/{resource.plural}"
            )
            ref = ObjectRef(api_version=api_version, kind=kind, namespace=namespace, name=name)
            targets.append(_Target(ref, collection, body))
        return sorted(targets, key=lambda t: _ORDER.get(t.ref.kind, len(_ORDER)))

    def _apply_one(
        self, target: _Target, body: Mapping[str, Any], *, force: bool, dry_run: bool
    ) -> dict[str, Any]:
        query = [("fieldManager", self.field_manager), ("force", "true" if force else "false")]
        if dry_run:
            query.append(("dryRun", "All"))
        answer = self._request(
            "PATCH", target.path, query=query, body=body, content_type=APPLY_PATCH
        )
        if not isinstance(answer, dict):
            raise TransientError(f"{target.ref}: apply answered no object", system=self.system)
        return answer

    # --- public API --------------------------------------------------------------------------

    def snapshot(self, objects: Iterable[Mapping[str, Any]]) -> RollbackPoint:
        """The live state of every object in ``objects`` (or that it is absent), in apply order."""
        states: list[ObjectState] = []
        for target in self._targets(objects):
            live = self._get(target)
            if live is None:
                states.append(ObjectState(ref=target.ref, state="absent"))
            else:
                states.append(
                    ObjectState(ref=target.ref, state="present", manifest=strip_server_fields(live))
                )
        return RollbackPoint(system=self.system, objects=tuple(states))

    def apply(
        self,
        objects: Iterable[Mapping[str, Any]],
        *,
        field_manager: str | None = None,
        force: bool = True,
        dry_run: bool = False,
    ) -> ApplyResult:
        """Server-side apply of every object, in install order; see the module docstring.

        In a dry run, an object whose namespace is itself created by this apply cannot be checked
        by the server (the namespace does not exist yet): it is reported created, with a note.
        """
        manager = field_manager or self.field_manager
        saved, self.field_manager = self.field_manager, manager
        try:
            return self._apply(objects, force=force, dry_run=dry_run)
        finally:
            self.field_manager = saved

    def _apply(
        self, objects: Iterable[Mapping[str, Any]], *, force: bool, dry_run: bool
    ) -> ApplyResult:
        results: list[AppliedObject] = []
        new_namespaces: set[str] = set()
        for target in self._targets(objects):
            live = self._get(target)
            try:
                answer = self._apply_one(target, target.body, force=force, dry_run=dry_run)
            except NotFound:
                if not (dry_run and live is None and target.ref.namespace in new_namespaces):
                    raise
                results.append(
                    AppliedObject(
                        ref=target.ref,
                        action=Action.CREATED,
                        note=f"not checked by the server: namespace {target.ref.namespace} is "
                        "created by this rollout",
                    )
                )
                continue
            generation = (answer.get("metadata") or {}).get("generation")
            paths: tuple[str, ...] = ()
            if live is None:
                action = Action.CREATED
                if target.ref.kind == "Namespace" and target.ref.api_version == "v1":
                    new_namespaces.add(target.ref.name)
            else:
                paths = changed_paths(live, answer)
                action = Action.CHANGED if paths else Action.UNCHANGED
            results.append(
                AppliedObject(
                    ref=target.ref,
                    action=action,
                    generation=generation if isinstance(generation, int) else None,
                    changed_paths=paths,
                )
            )
        return ApplyResult(system=self.system, dry_run=dry_run, objects=tuple(results))

    def readiness(
        self,
        objects: Iterable[Mapping[str, Any]],
        *,
        applied_generations: Mapping[ObjectKey, int] | None = None,
    ) -> ClusterReadiness:
        """One look at the live objects: readiness now, without waiting."""
        workloads = [t for t in self._targets(objects) if is_workload(t.body)]
        verdicts: dict[ObjectKey, Readiness] = {}
        self._read_pending(workloads, verdicts, applied_generations or {})
        return _combine(workloads, verdicts)

    def _judge_live(
        self, target: _Target, generation: int | None
    ) -> tuple[Readiness, dict[str, Any] | None]:
        """A workload's verdict from a fresh GET, and the live object (None when it is absent)."""
        live = self._get(target)
        if live is None:
            return _absent(target.ref), None
        return workload_ready(live, target_generation=generation), live

    def _read_pending(
        self,
        workloads: Sequence[_Target],
        verdicts: dict[ObjectKey, Readiness],
        generations: Mapping[ObjectKey, int],
    ) -> list[tuple[_Target, dict[str, Any]]]:
        """GET every workload not judged done yet and record its verdict in ``verdicts``.

        Returns the workloads still progressing that exist, with their live object (what a
        watch starts from). Workloads already ready (or untracked) are not read again.
        """
        watchable: list[tuple[_Target, dict[str, Any]]] = []
        for target in workloads:
            known = verdicts.get(target.ref.key)
            if known is not None and known.status is not ReadinessStatus.PROGRESSING:
                continue
            verdict, live = self._judge_live(target, generations.get(target.ref.key))
            verdicts[target.ref.key] = verdict
            if verdict.status is ReadinessStatus.PROGRESSING and live is not None:
                watchable.append((target, live))
        return watchable

    def wait_ready(
        self,
        objects: Iterable[Mapping[str, Any]],
        *,
        applied_generations: Mapping[ObjectKey, int],
        deadline_seconds: float,
        poll_seconds: float = 1.0,
        watch: bool = True,
    ) -> ClusterReadiness:
        """Wait until every workload is rolled out at its applied generation.

        Returns READY, or FAILED: at once when a workload reports ``ProgressDeadlineExceeded``
        (the controller's message), else when ``deadline_seconds`` pass (with what was still
        pending). Each round reads every workload not yet ready fresh from the server (the
        first round reads them all); when the last one is ready, those judged ready in earlier
        rounds are read once more, so READY means every workload is ready at the same time,
        from live state. Transient read errors are retried on the next round; if the deadline
        passes with the last read failing, that error is raised (the task decides on retries).

        Between rounds, ``watch=True`` keeps one watch stream open on the first pending
        workload, from the resourceVersion of its read, and judges each object the stream
        carries (the live object at that version) without reading it again. The next round
        starts when that workload is ready (or has failed: then the wait ends), when it is
        deleted, when the server ends the stream (at most ``_WATCH_CAP_SECONDS``, so the other
        pending workloads are re-read at least that often) or sends an ``ERROR`` (such as
        410 Gone), or when the watch fails. A watch the server refuses for good (say, no
        permission to watch) turns the rest of the wait into polling. ``watch=False`` (and a
        round with no pending workload to watch, or a failed read) sleeps ``poll_seconds``.
        """
        workloads = [t for t in self._targets(objects) if is_workload(t.body)]
        deadline = self._clock() + deadline_seconds
        verdicts: dict[ObjectKey, Readiness] = {}
        watched: ObjectKey | None = None  # judged by the watch just before this round: live
        while True:
            error: TransientError | None = None
            watchable: list[tuple[_Target, dict[str, Any]]] = []
            earlier = any(
                v.status is ReadinessStatus.READY and key != watched for key, v in verdicts.items()
            )
            watched = None
            try:
                watchable = self._read_pending(workloads, verdicts, applied_generations)
            except TransientError as exc:
                error = exc
            else:
                state = _combine(workloads, verdicts)
                if state.status is ReadinessStatus.READY and earlier:
                    # some were judged ready in an earlier round: READY means all at once, now
                    verdicts.clear()
                    continue
                if state.status is not ReadinessStatus.PROGRESSING:
                    return state
            remaining = deadline - self._clock()
            if remaining <= 0:
                if error is not None:
                    raise error
                return state.model_copy(
                    update={
                        "status": ReadinessStatus.FAILED,
                        "message": f"not ready within {deadline_seconds:g}s: {state.message}",
                    }
                )
            if not (watch and watchable and error is None):
                self._sleep(min(poll_seconds, remaining))
                continue
            target, live = watchable[0]
            try:
                verdict = self._await_done(
                    target,
                    live,
                    generation=applied_generations.get(target.ref.key),
                    seconds=min(_WATCH_CAP_SECONDS, remaining),
                )
            except PermanentError:
                watch = False  # the server will not serve this watch: poll instead
                continue
            if verdict is not None:
                verdicts[target.ref.key] = verdict
                watched = target.ref.key
                if verdict.status is ReadinessStatus.FAILED:
                    return _combine(workloads, verdicts)

    def _await_done(
        self, target: _Target, live: Mapping[str, Any], *, generation: int | None, seconds: float
    ) -> Readiness | None:
        """:meth:`_follow`, with transient errors swallowed (the next round reads again and
        raises at the deadline if reads fail) and no busy loop when a watch ends at once."""
        started = self._clock()
        try:
            verdict = self._follow(target, live, generation=generation, seconds=seconds)
        except TransientError:
            verdict = None
        if verdict is None:
            waited = self._clock() - started
            self._sleep(max(0.0, min(seconds, _MIN_WATCH_SECONDS) - waited))
        return verdict

    def _follow(
        self, target: _Target, live: Mapping[str, Any], *, generation: int | None, seconds: float
    ) -> Readiness | None:
        """Watch ``target`` from ``live``'s resourceVersion until it is done, for ``seconds``.

        One ``GET ?watch=true`` (``fieldSelector=metadata.name=...``, ``timeoutSeconds``) whose
        events are newline-delimited JSON ``{"type", "object"}``. ADDED and MODIFIED carry the
        live object at their resourceVersion: it is judged as it comes, and the verdict is
        returned once it is no longer progressing (ready, failed or untracked). BOOKMARK events
        are skipped. None means "read it again": the stream ended (timeout), the object was
        DELETED, or the server sent an ERROR (e.g. 410 Gone, resourceVersion too old) or
        something that is not a watch event. Errors are raised as fleetops errors.
        """
        version = str((live.get("metadata") or {}).get("resourceVersion", ""))
        api = self.kube.api_client
        query = [
            ("watch", "true"),
            ("fieldSelector", f"metadata.name={target.ref.name}"),
            ("resourceVersion", version),
            ("timeoutSeconds", str(max(1, int(seconds)))),
        ]

        def follow() -> Readiness | None:
            request = api.param_serialize(
                method="GET",
                resource_path=target.collection,
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            # the server sends nothing while the object does not change: wait past its timeout
            timeout = (self.kube.timeout_seconds, seconds + self.kube.timeout_seconds)
            response = api.call_api(*request, _request_timeout=timeout)
            raw = response.response
            try:
                if response.status >= 400:
                    response.read()  # type: ignore[no-untyped-call]
                    raise ApiException(http_resp=response)
                for kind, obj in _watch_events(raw.stream(None, decode_content=True)):
                    if kind in ("ADDED", "MODIFIED"):
                        verdict = workload_ready(obj, target_generation=generation)
                        if verdict.status is not ReadinessStatus.PROGRESSING:
                            return verdict
                    elif kind != "BOOKMARK":
                        return None  # DELETED, ERROR or unknown: read it again
                return None
            finally:
                raw.close()  # an unfinished stream cannot go back to the pool
                raw.release_conn()

        return self.kube.call(follow)

    def restore(
        self, point: RollbackPoint, *, deadline_seconds: float = 600.0, poll_seconds: float = 1.0
    ) -> RestoreResult:
        """Put the cluster back to ``point`` and verify it (see the module docstring).

        Recorded objects are applied first (install order), then the objects the rollout
        created are deleted (reverse order, namespaces last). ``ok`` is False, with the reason,
        when an object differs from the record, is still there, or a workload is not ready
        within ``deadline_seconds``.
        """
        if point.system != self.system:
            raise ConfigError(f"rollback point of {point.system} cannot restore {self.system}")
        present = [o.manifest for o in point.objects if o.state == "present" and o.manifest]
        absent = [
            {
                "apiVersion": o.ref.api_version,
                "kind": o.ref.kind,
                "metadata": {"name": o.ref.name, "namespace": o.ref.namespace},
            }
            for o in point.objects
            if o.state == "absent"
        ]
        reapply = self._targets(present)
        remove = list(reversed(self._targets(absent)))
        generations: dict[ObjectKey, int] = {}
        for target in reapply:
            answer = self._apply_one(target, target.body, force=True, dry_run=False)
            generation = (answer.get("metadata") or {}).get("generation")
            if isinstance(generation, int):
                generations[target.ref.key] = generation
        deleted: dict[ObjectKey, bool] = {}
        for target in remove:
            try:
                self._request(
                    "DELETE",
                    target.path,
                    body={
                        "kind": "DeleteOptions",
                        "apiVersion": "v1",
                        "propagationPolicy": "Background",
                    },
                    content_type="application/json",
                )
                deleted[target.ref.key] = True
            except NotFound:
                deleted[target.ref.key] = False

        readiness = self.wait_ready(
            present,
            applied_generations=generations,
            deadline_seconds=deadline_seconds,
            poll_seconds=poll_seconds,
        )
        results: list[RestoredObject] = []
        for target in reapply:
            live = self._get(target)
            if live is None:
                results.append(
                    RestoredObject(
                        ref=target.ref,
                        action=RestoreAction.REAPPLIED,
                        verified=False,
                        message="gone after it was applied",
                    )
                )
                continue
            paths = changed_paths(target.body, live)
            results.append(
                RestoredObject(
                    ref=target.ref,
                    action=RestoreAction.REAPPLIED,
                    verified=not paths,
                    message=f"differs from the record at {', '.join(paths)}" if paths else "",
                )
            )
        for target in remove:
            gone = self._wait_gone(
                target, deadline_seconds=max(1.0, deadline_seconds), poll_seconds=poll_seconds
            )
            results.append(
                RestoredObject(
                    ref=target.ref,
                    action=RestoreAction.DELETED
                    if deleted[target.ref.key]
                    else RestoreAction.ALREADY_ABSENT,
                    verified=gone,
                    message="" if gone else "still present (terminating)",
                )
            )
        problems = [f"{r.ref}: {r.message}" for r in results if not r.verified]
        if readiness.status is not ReadinessStatus.READY:
            problems.append(readiness.message)
        ok = not problems
        message = (
            f"restored {len(reapply)} object(s) and removed {len(remove)} created by the rollout"
            if ok
            else "restore not verified: " + "; ".join(problems)
        )
        return RestoreResult(
            system=self.system, ok=ok, objects=tuple(results), readiness=readiness, message=message
        )

    def _wait_gone(self, target: _Target, *, deadline_seconds: float, poll_seconds: float) -> bool:
        deadline = self._clock() + deadline_seconds
        while True:
            if self._get(target) is None:
                return True
            if self._clock() >= deadline:
                return False
            self._sleep(min(poll_seconds, 0.2))

    def is_at(self, objects: Iterable[Mapping[str, Any]], version: str) -> VersionCheck:
        """Whether the cluster already runs ``objects`` (rendered for ``version``) and is ready.

        True only when every object exists, a server-side dry-run apply of them changes
        nothing, and every workload is rolled out. Then a resumed rollout verifies the cluster
        instead of applying again.
        """
        items = list(objects)
        dry = self.apply(items, dry_run=True)

        def check(at: bool, reason: str, generations: dict[str, int] | None = None) -> VersionCheck:
            return VersionCheck(
                system=self.system,
                version=version,
                at=at,
                reason=reason,
                generations=generations or {},
            )

        missing = [str(o.ref) for o in dry.objects if o.action is Action.CREATED]
        if missing:
            return check(False, f"not at {version}: missing {', '.join(missing)}")
        changed = [
            f"{o.ref} ({', '.join(o.changed_paths)})"
            for o in dry.objects
            if o.action is Action.CHANGED
        ]
        if changed:
            return check(False, f"not at {version}: would change {'; '.join(changed)}")
        generations = dry.generations()
        state = self.readiness(items, applied_generations=generations)
        if state.status is not ReadinessStatus.READY:
            return check(False, f"at {version} but not ready: {state.message}")
        by_workload = {
            f"{kind}/{namespace}/{name}": generation
            for (_, kind, namespace, name), generation in generations.items()
            if kind in ("Deployment", "StatefulSet", "DaemonSet")
        }
        return check(True, f"at {version} and ready: {state.message}", by_workload)
