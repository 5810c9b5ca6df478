"""The HTTP face of one sandbox cluster: the kube-apiserver's REST paths on aiohttp.

Every request goes through the cluster's fault middleware first, then authentication (a
bearer token checked by the cluster's authenticator; ``/livez``, ``/readyz`` and ``/healthz``
are open, as on a default cluster), then one dispatcher that parses the path the way the
apiserver's router does::

    /api/v1[/namespaces/{ns}]/{resource}[/{name}[/{subresource}]]
    /apis/{group}/{version}[/namespaces/{ns}]/{resource}[/{name}[/{subresource}]]

Writes go to :class:`~sandbox.kube.store.Store`; errors leave as ``Status`` objects with the
real reason, code and message. ``dryRun=All`` runs every step but the commit.

Not emulated: protobuf and CBOR encodings (JSON and YAML only), ``pods/log``, ``exec``,
``attach``, ``portforward``, ``proxy``, ``serviceaccounts/token``, RBAC (an authenticated user may do
anything), admission webhooks, API priority and fairness, and field selectors beyond
``metadata.name`` / ``metadata.namespace``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from sandbox.kube import errors, openapi
from sandbox.kube.errors import StatusError
from sandbox.kube.resources import (
    CRDS,
    NAMESPACES,
    REVIEW_TYPES,
    SELFSUBJECTACCESSREVIEWS,
    SELFSUBJECTREVIEWS,
    TOKENREVIEWS,
    ResourceType,
)
from sandbox.kube.store import Store, deep_copy, parse_time

if TYPE_CHECKING:
    from sandbox.kube.cluster import AuthResult, ClusterSpec

log = logging.getLogger(__name__)

JSON = "application/json"
AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)
CR_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
)
HEALTH_PATHS = ("/livez", "/readyz", "/healthz")
HEALTH_CHECKS = (
    "ping",
    "log",
    "etcd",
    "informer-sync",
    "poststarthook/start-apiextensions-controllers",
    "poststarthook/crd-informer-synced",
)
DEFAULT_WATCH_TIMEOUT = 1800.0
BOOKMARK_INTERVAL = 30.0
WATCH_POLL = 1.0  # how often an idle watch checks for a vanished client or a shutdown
# the resources whose DELETE answers the object (ReturnDeletedObject) rather than a Status
RETURNS_DELETED = {("", "pods"), ("", "serviceaccounts"), ("", "services"), ("", "namespaces")}
GO_VERSIONS = {"28": "go1.20.13", "29": "go1.21.13", "30": "go1.22.8", "31": "go1.22.9",
               "32": "go1.23.4", "33": "go1.24.2"}  # fmt: skip


def status_response(err: StatusError, headers: dict[str, str] | None = None) -> web.Response:
    hdrs = {"Cache-Control": "no-cache, private"}
    retry = (err.details or {}).get("retryAfterSeconds")
    if retry is not None:
        hdrs["Retry-After"] = str(int(retry))
    if headers:
        hdrs.update(headers)
    return json_response(err.to_status(), status=err.code, headers=hdrs)


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None, content_type: str = JSON
) -> web.Response:
    hdrs = {"Cache-Control": "no-cache, private"}
    if headers:
        hdrs.update(headers)
    resp = web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(), status=status, headers=hdrs
    )
    resp.headers["Content-Type"] = content_type
    return resp


def success_status(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {"name": obj["metadata"]["name"]}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural
    details["uid"] = obj["metadata"].get("uid", "")
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


# ------------------------------------------------------------------------------------------------
# Table output (what ``kubectl get`` prints), as the apiserver's printers produce it.

_NAME_DESC = (
    "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
_AGE_DESC = (
    "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is not guaranteed to be set in happens-before order across separate "
    "operations. Clients may not set this value. It is represented in RFC3339 form and is in "
    "UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)


def _col(name: str, typ: str = "string", desc: str = "", priority: int = 0, fmt: str = "") -> dict:
    return {"name": name, "type": typ, "format": fmt, "description": desc, "priority": priority}


NAME_COL = _col("Name", fmt="name", desc=_NAME_DESC)
AGE_COL = _col("Age", desc=_AGE_DESC)
CONTAINERS_COL = _col("Containers", desc="Names of each container in the template.", priority=1)
IMAGES_COL = _col("Images", desc="Images referenced by each container in the template.", priority=1)

COLUMNS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("", "pods"): [
        NAME_COL,
        _col("Ready", desc="The aggregate readiness state of this pod for accepting traffic."),
        _col("Status", desc="The aggregate status of the containers in this pod."),
        _col(
            "Restarts",
            desc="The number of times the containers in this pod have been restarted and when "
            "the last container in this pod has restarted.",
        ),
        AGE_COL,
        _col("IP", priority=1, desc="podIP address allocated to the pod."),
        _col("Node", priority=1, desc="NodeName indicates in which node this pod is scheduled."),
        _col(
            "Nominated Node",
            priority=1,
            desc="nominatedNodeName is set only when this pod preempts other pods on the node.",
        ),
        _col(
            "Readiness Gates",
            priority=1,
            desc="If specified, all readiness gates will be evaluated for pod readiness.",
        ),
    ],
    ("apps", "deployments"): [
        NAME_COL,
        _col("Ready", desc="Number of the pod with ready state"),
        _col(
            "Up-to-date",
            desc="Total number of non-terminating pods targeted by this deployment that have the desired template spec.",
        ),
        _col(
            "Available",
            desc="Total number of available non-terminating pods (ready for at least minReadySeconds) targeted by this deployment.",
        ),
        AGE_COL,
        CONTAINERS_COL,
        IMAGES_COL,
        _col(
            "Selector",
            priority=1,
            desc="Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
        ),
    ],
    ("apps", "replicasets"): [
        NAME_COL,
        _col("Desired", "integer", desc="Replicas is the number of desired pods."),
        _col(
            "Current",
            "integer",
            desc="Replicas is the most recently observed number of non-terminating pods.",
        ),
        _col(
            "Ready",
            "integer",
            desc="The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition.",
        ),
        AGE_COL,
        CONTAINERS_COL,
        IMAGES_COL,
        _col(
            "Selector",
            priority=1,
            desc="Selector is a label query over pods that should match the replica count.",
        ),
    ],
    ("apps", "statefulsets"): [
        NAME_COL,
        _col("Ready", desc="Number of the pod with ready state"),
        AGE_COL,
        CONTAINERS_COL,
        IMAGES_COL,
    ],
    ("apps", "daemonsets"): [
        NAME_COL,
        _col(
            "Desired",
            "integer",
            desc="The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).",
        ),
        _col(
            "Current",
            "integer",
            desc="The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
        ),
        _col(
            "Ready",
            "integer",
            desc="numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
        ),
        _col(
            "Up-to-date",
            "integer",
            desc="The total number of nodes that are running updated daemon pod",
        ),
        _col(
            "Available",
            "integer",
            desc="The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
        ),
        _col(
            "Node Selector",
            desc="NodeSelector is a selector which must be true for the pod to fit on a node.",
        ),
        AGE_COL,
        CONTAINERS_COL,
        IMAGES_COL,
        _col(
            "Selector",
            priority=1,
            desc="A label query over pods that are managed by the daemon set.",
        ),
    ],
    ("", "services"): [
        NAME_COL,
        _col("Type", desc="type determines how the Service is exposed."),
        _col(
            "Cluster-IP",
            desc="clusterIP is the IP address of the service and is usually assigned randomly.",
        ),
        _col(
            "External-IP",
            desc="externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
        ),
        _col("Port(s)", desc="The list of ports that are exposed by this service."),
        AGE_COL,
        _col(
            "Selector",
            priority=1,
            desc="Route service traffic to pods with label keys and values matching this selector.",
        ),
    ],
    ("", "namespaces"): [NAME_COL, _col("Status", desc="The status of the namespace"), AGE_COL],
    ("", "configmaps"): [
        NAME_COL,
        _col("Data", desc="Data contains the configuration data."),
        AGE_COL,
    ],
    ("", "secrets"): [
        NAME_COL,
        _col("Type", desc="Used to facilitate programmatic handling of secret data."),
        _col("Data", desc="Data contains the secret data."),
        AGE_COL,
    ],
    ("", "serviceaccounts"): [
        NAME_COL,
        _col(
            "Secrets",
            desc="Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
        ),
        AGE_COL,
    ],
    ("", "events"): [
        _col(
            "Last Seen",
            desc="The time at which the most recent occurrence of this event was recorded.",
        ),
        _col(
            "Type",
            desc="Type of this event (Normal, Warning), new types could be added in the future",
        ),
        _col(
            "Reason",
            desc="This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
        ),
        _col("Object", desc="The object that this event is about."),
        _col(
            "Subobject",
            priority=1,
            desc="If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
        ),
        _col("Source", priority=1, desc="The component reporting this event."),
        _col("Message", desc="A human-readable description of the status of this operation."),
        _col("First Seen", priority=1, desc="The time at which the event was first recorded."),
        _col("Count", priority=1, desc="The number of times this event has occurred."),
        {**NAME_COL, "priority": 1},
    ],
}
DEFAULT_COLUMNS = [NAME_COL, _col("Created At", "date", desc=_AGE_DESC)]


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def format_labels(labels: dict[str, str] | None) -> str:
    if not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def format_selector(selector: dict[str, Any] | None, *, none: str = "<none>") -> str:
    """metav1.FormatLabelSelector: the selector's string form (requirements sorted by key)."""
    if not selector:
        return none
    reqs: list[tuple[str, str]] = []
    for k, v in (selector.get("matchLabels") or {}).items():
        reqs.append((k, f"{k}={v}"))
    for expr in selector.get("matchExpressions") or []:
        key = expr.get("key", "")
        op = expr.get("operator")
        values = ",".join(sorted(expr.get("values") or []))
        if op == "In":
            reqs.append((key, f"{key} in ({values})"))
        elif op == "NotIn":
            reqs.append((key, f"{key} notin ({values})"))
        elif op == "Exists":
            reqs.append((key, key))
        elif op == "DoesNotExist":
            reqs.append((key, f"!{key}"))
    out = ",".join(s for _, s in sorted(reqs, key=lambda r: r[0]))
    return out or none


#: libyaml's safe loader when PyYAML was built with it (it is in our wheels), else pure Python
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(raw: bytes) -> Any:
    """A YAML body, as the apiserver reads it: JSON is YAML, and clients such as kubectl and
    fleetops send apply patches as JSON, which ``json`` parses much faster than YAML does."""
    if raw.lstrip()[:1] == b"{":
        try:
            return json.loads(raw)
        except ValueError:
            pass  # not JSON after all: YAML decides
    return yaml.load(raw, Loader=_YAML_LOADER)


class Tables:
    """Builds ``meta.k8s.io/v1`` Table rows for one resource type."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def age(self, ts: str | None) -> str:
        t = parse_time(ts)
        if t is None:
            return "<unknown>"
        return human_duration(self.clock() - t)

    def columns(self, rt: ResourceType) -> list[dict[str, Any]]:
        if rt.custom:
            cols = [dict(NAME_COL)]
            printer = rt.columns() or [
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
            ]
            for c in printer:
                cols.append(
                    _col(
                        c.get("name", ""),
                        c.get("type", "string"),
                        desc=c.get("description", "")
                        or (
                            "Custom resource definition column (in JSONPath format): "
                            + c.get("jsonPath", "")
                        ),
                        priority=int(c.get("priority", 0)),
                        fmt=c.get("format", ""),
                    )
                )
            return cols
        return COLUMNS.get(rt.storage, DEFAULT_COLUMNS)

    def cells(self, rt: ResourceType, obj: dict[str, Any]) -> list[Any]:
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        age = self.age(meta.get("creationTimestamp"))
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        key = rt.storage
        if rt.custom:
            return [name, *self._custom_cells(rt, obj)]
        if key == ("", "pods"):
            return self._pod_cells(obj, age)
        if key == ("apps", "deployments"):
            names, images = _containers(spec)
            return [
                name,
                f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
                status.get("updatedReplicas", 0),
                status.get("availableReplicas", 0),
                age,
                names,
                images,
                format_selector(spec.get("selector")),
            ]
        if key == ("apps", "replicasets"):
            names, images = _containers(spec)
            return [
                name,
                spec.get("replicas", 1),
                status.get("replicas", 0),
                status.get("readyReplicas", 0),
                age,
                names,
                images,
                format_selector(spec.get("selector")),
            ]
        if key == ("apps", "statefulsets"):
            names, images = _containers(spec)
            return [
                name,
                f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
                age,
                names,
                images,
            ]
        if key == ("apps", "daemonsets"):
            names, images = _containers(spec)
            node_selector = ((spec.get("template") or {}).get("spec") or {}).get("nodeSelector")
            return [
                name,
                status.get("desiredNumberScheduled", 0),
                status.get("currentNumberScheduled", 0),
                status.get("numberReady", 0),
                status.get("updatedNumberScheduled", 0),
                status.get("numberAvailable", 0),
                format_labels(node_selector),
                age,
                names,
                images,
                format_selector(spec.get("selector")),
            ]
        if key == ("", "services"):
            return self._service_cells(obj, age)
        if key == ("", "namespaces"):
            return [name, status.get("phase", ""), age]
        if key == ("", "configmaps"):
            return [name, len(obj.get("data") or {}) + len(obj.get("binaryData") or {}), age]
        if key == ("", "secrets"):
            return [name, obj.get("type", ""), len(obj.get("data") or {}), age]
        if key == ("", "serviceaccounts"):
            return [name, len(obj.get("secrets") or []), age]
        if key == ("", "events"):
            return self._event_cells(obj)
        created = meta.get("creationTimestamp")
        return [name, created]

    def _pod_cells(self, pod: dict[str, Any], age: str) -> list[Any]:
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        total = len(spec.get("containers") or [])
        reason = status.get("reason") or status.get("phase", "")
        ready = 0
        restarts = 0
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += int(cs.get("restartCount", 0))
            state = cs.get("state") or {}
            waiting = state.get("waiting") or {}
            terminated = state.get("terminated")
            if waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated is not None and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated is not None:
                if terminated.get("signal"):
                    reason = f"Signal:{terminated['signal']}"
                else:
                    reason = f"ExitCode:{terminated.get('exitCode', 0)}"
            elif cs.get("ready") and "running" in state:
                ready += 1
        if pod["metadata"].get("deletionTimestamp") and status.get("phase") not in (
            "Succeeded",
            "Failed",
        ):
            reason = "Terminating"
        ips = status.get("podIPs") or []
        ip = ips[0].get("ip") if ips else ""
        gates = spec.get("readinessGates") or []
        gate_cell = "<none>"
        if gates:
            conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
            ok = sum(1 for g in gates if conds.get(g.get("conditionType")) == "True")
            gate_cell = f"{ok}/{len(gates)}"
        return [
            pod["metadata"]["name"],
            f"{ready}/{total}",
            reason,
            str(restarts),
            age,
            ip or "<none>",
            spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>",
            gate_cell,
        ]

    def _service_cells(self, svc: dict[str, Any], age: str) -> list[Any]:
        spec = svc.get("spec") or {}
        stype = spec.get("type", "ClusterIP")
        ips = spec.get("clusterIPs") or []
        internal = ips[0] if ips else "<none>"
        external_ips = spec.get("externalIPs") or []
        if stype in ("ClusterIP", "NodePort"):
            external = ",".join(external_ips) if external_ips else "<none>"
        elif stype == "LoadBalancer":
            ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            lb = sorted(
                {
                    i.get("ip") or i.get("hostname")
                    for i in ingress
                    if i.get("ip") or i.get("hostname")
                }
            )
            lb_str = ",".join(lb)
            if len(lb_str) > 16:
                lb_str = lb_str[:13] + "..."
            if external_ips:
                external = ",".join([*(lb_str.split(",") if lb_str else []), *external_ips])
            else:
                external = lb_str or "<pending>"
        elif stype == "ExternalName":
            external = spec.get("externalName", "")
        else:
            external = "<unknown>"
        pieces = []
        for p in spec.get("ports") or []:
            if p.get("nodePort"):
                pieces.append(f"{p.get('port')}:{p['nodePort']}/{p.get('protocol', 'TCP')}")
            else:
                pieces.append(f"{p.get('port')}/{p.get('protocol', 'TCP')}")
        ports = ",".join(pieces) or "<none>"
        return [
            svc["metadata"]["name"],
            stype,
            internal,
            external,
            ports,
            age,
            format_labels(spec.get("selector")),
        ]

    def _event_cells(self, ev: dict[str, Any]) -> list[Any]:
        first = ev.get("firstTimestamp") or ev.get("deprecatedFirstTimestamp")
        last = ev.get("lastTimestamp") or ev.get("deprecatedLastTimestamp") or ev.get("eventTime")
        count = ev.get("count") or ev.get("deprecatedCount") or 0
        last_seen = self.age(last)
        if count > 1 and first:
            last_seen = f"{last_seen} (x{count} over {self.age(first)})"
        obj = ev.get("involvedObject") or ev.get("regarding") or {}
        source = ev.get("source") or ev.get("deprecatedSource") or {}
        src = source.get("component", "")
        if source.get("host"):
            src = f"{src}, {source['host']}"
        if not src:
            src = ev.get("reportingComponent") or ev.get("reportingController") or ""
        return [
            last_seen,
            ev.get("type", ""),
            ev.get("reason", ""),
            f"{(obj.get('kind') or '').lower()}/{obj.get('name', '')}",
            obj.get("fieldPath", ""),
            src,
            (ev.get("message") or ev.get("note") or "").strip(),
            self.age(first),
            str(count),
            ev["metadata"]["name"],
        ]

    def _custom_cells(self, rt: ResourceType, obj: dict[str, Any]) -> list[Any]:
        printer = rt.columns() or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        ]
        out: list[Any] = []
        for c in printer:
            found = jsonpath(obj, c.get("jsonPath", ""))
            if found is None:
                out.append(None)
                continue
            typ = c.get("type", "string")
            if typ == "date":
                out.append(self.age(found) if isinstance(found, str) else "<invalid>")
            elif typ == "integer":
                out.append(found if isinstance(found, int) else None)
            elif typ == "number":
                out.append(found if isinstance(found, int | float) else None)
            elif typ == "boolean":
                out.append(found if isinstance(found, bool) else None)
            elif isinstance(found, str):
                out.append(found)
            else:
                out.append(json.dumps(found, separators=(",", ":")))
        return out

    def table(
        self,
        rt: ResourceType,
        items: list[dict[str, Any]],
        *,
        include: str,
        list_meta: dict[str, Any] | None = None,
        with_columns: bool = True,
    ) -> dict[str, Any]:
        rows = []
        for item in items:
            row: dict[str, Any] = {"cells": self.cells(rt, item)}
            if include == "Object":
                row["object"] = item
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": item.get("metadata", {}),
                }
            rows.append(row)
        table: dict[str, Any] = {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": list_meta or {},
            "columnDefinitions": self.columns(rt) if with_columns else None,
            "rows": rows,
        }
        return table


def _containers(spec: dict[str, Any]) -> tuple[str, str]:
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return (
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
    )


def jsonpath(obj: Any, path: str) -> Any:
    """The simple JSONPath subset CRD printer columns use: ``.a.b``, ``[0]``, ``[?(@.k=="v")]``."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    cur = obj
    i = 0
    while i < len(path) and cur is not None:
        ch = path[i]
        if ch == ".":
            j = i + 1
            while j < len(path) and path[j] not in ".[":
                j += 1
            key = path[i + 1 : j]
            cur = cur.get(key) if isinstance(cur, dict) and key else (cur if not key else None)
            i = j
        elif ch == "[":
            j = path.index("]", i)
            inner = path[i + 1 : j]
            if inner.startswith("?(") and inner.endswith(")"):
                cond = inner[2:-1]
                lhs, _, rhs = cond.partition("==")
                field_name = lhs.strip().removeprefix("@.")
                want = rhs.strip().strip("'\"")
                match = None
                for item in cur if isinstance(cur, list) else []:
                    if isinstance(item, dict) and str(item.get(field_name)) == want:
                        match = item
                        break
                cur = match
            else:
                try:
                    idx = int(inner)
                    cur = (
                        cur[idx] if isinstance(cur, list) and -len(cur) <= idx < len(cur) else None
                    )
                except ValueError:
                    cur = cur.get(inner.strip("'\"")) if isinstance(cur, dict) else None
            i = j + 1
        else:
            return None
    return cur


# ------------------------------------------------------------------------------------------------
# Request handling


@dataclass
class Target:
    """What a resource path addresses."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool = False


@dataclass
class Options:
    dry_run: bool = False
    manager: str = ""
    validation: str = "Warn"
    warnings: list[str] = field(default_factory=list)


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def _check_watch_options(q: Any) -> None:
    """What the API server's validation of a watch's ListOptions refuses (422 Invalid):
    ``sendInitialEvents`` needs ``resourceVersionMatch=NotOlderThan``, and that match is only
    for a watch that asks for initial events, never with ``continue``."""
    match = q.get("resourceVersionMatch") or ""
    causes: list[dict[str, str]] = []

    def forbidden(message: str) -> None:
        causes.append(
            {"reason": "FieldValueForbidden", "message": f"Forbidden: {message}",
             "field": "resourceVersionMatch"}
        )  # fmt: skip

    if "sendInitialEvents" in q and match != "NotOlderThan":
        forbidden("sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
    if match:
        if "sendInitialEvents" not in q:
            forbidden(
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
            )
        if match != "NotOlderThan":
            causes.append(
                {"reason": "FieldValueNotSupported",
                 "message": f'Unsupported value: "{match}": supported values: "NotOlderThan"',
                 "field": "resourceVersionMatch"}
            )  # fmt: skip
        if q.get("continue"):
            forbidden("resourceVersionMatch is forbidden when continue is provided")
    if causes:
        raise errors.invalid("ListOptions", "", causes, group="meta.k8s.io")


class ApiServer:
    """Routes, authentication and encoding for one cluster."""

    def __init__(
        self,
        *,
        store: Store,
        spec: ClusterSpec,
        authenticator: Callable[[str | None], AuthResult],
        middlewares: list[Any] | None = None,
        clock: Callable[[], float] = time.time,
        down: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.spec = spec
        self.authenticator = authenticator
        self.middlewares = list(middlewares or [])
        self.clock = clock
        self.tables = Tables(clock)
        self.closing = False
        self.down = down  # an outage: open watch streams are cut, as a dead apiserver cuts them

    def app(self) -> web.Application:
        app = web.Application(middlewares=self.middlewares, client_max_size=3 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        # open watches end (cleanly, like an apiserver going away) instead of holding shutdown
        self.closing = True

    # --- entry ---------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except StatusError as e:
            return status_response(e)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:  # a bug here must still answer like an apiserver would
            log.exception("sandbox apiserver error on %s %s", request.method, request.path)
            return status_response(errors.internal_error(str(e)))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        path_clean = (path.rstrip("/") or "/") if len(path) > 1 else path
        for hp in HEALTH_PATHS:
            if path_clean == hp or path_clean.startswith(hp + "/"):
                return self._health(request, hp, path_clean)
        user = self._authenticate(request)
        if path_clean == "/version":
            # system:public-info-viewer: every authenticated user may read the version
            return json_response(self.version_info())
        if path_clean == "/api" or path_clean == "/apis":
            return self._discovery_root(request, core=path_clean == "/api")
        if path_clean.startswith("/openapi/"):
            return self._openapi(request, path_clean)
        if path_clean.startswith("/api/") or path_clean.startswith("/apis/"):
            return await self._resource(request, path_clean, user)
        raise StatusError(404, "NotFound", "the server could not find the requested resource",
                          details={})  # fmt: skip

    # --- auth ------------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> AuthResult:
        header = request.headers.get("Authorization", "")
        token: str | None = None
        if header[:7].lower() == "bearer ":
            token = header[7:].strip() or None
        result = self.authenticator(token)
        if result.status == 401 or (not result.ok and result.status != 403):
            raise errors.unauthorized()
        return result

    def _forbid(self, user: AuthResult, verb: str, t: Target) -> None:
        if user.ok:
            return
        raise errors.forbidden(
            user=user.username or "system:anonymous",
            verb=verb,
            resource=t.rt.plural,
            group=t.rt.group,
            name=t.name or "",
            namespace=t.namespace or "",
        )

    # --- non-resource endpoints -------------------------------------------------------------------

    def _health(self, request: web.Request, base: str, path: str) -> web.Response:
        name = base.lstrip("/")
        if path != base:
            check = path[len(base) + 1 :]
            if check not in HEALTH_CHECKS:
                return web.Response(status=404, text="404 page not found\n")
            return web.Response(text="ok", content_type="text/plain")
        if "verbose" in request.query:
            lines = [f"[+]{c} ok" for c in HEALTH_CHECKS]
            lines.append(f"{name} check passed")
            return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
        return web.Response(text="ok", content_type="text/plain")

    def version_info(self) -> dict[str, Any]:
        git_version = self.spec.kubernetes_version
        core = git_version.lstrip("v").split("-")[0].split("+")[0]
        parts = core.split(".")
        major = parts[0] if parts else "1"
        minor = parts[1] if len(parts) > 1 else "0"
        return {
            "major": major,
            "minor": minor,
            "gitVersion": git_version,
            "gitCommit": _fake_commit(git_version),
            "gitTreeState": "clean",
            "buildDate": "2024-12-10T11:37:04Z",
            "goVersion": GO_VERSIONS.get(minor, "go1.22.9"),
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def _wants_aggregated(self, request: web.Request) -> str | None:
        accept = request.headers.get("Accept", "")
        for part in accept.split(","):
            params = {
                k.strip(): v.strip() for k, _, v in (p.partition("=") for p in part.split(";")[1:])
            }
            if (
                params.get("as") == "APIGroupDiscoveryList"
                and params.get("g") == "apidiscovery.k8s.io"
            ):
                if params.get("v") == "v2":
                    return "v2"
                if params.get("v") == "v2beta1":
                    return "v2beta1"
        return None

    def _discovery_root(self, request: web.Request, *, core: bool) -> web.Response:
        registry = self.store.registry
        agg = self._wants_aggregated(request)
        if agg is not None:
            doc = registry.aggregated(core)
            ctype = AGGREGATED_V2
            if agg == "v2beta1":
                doc = {**doc, "apiVersion": "apidiscovery.k8s.io/v2beta1"}
                ctype = AGGREGATED_V2BETA1
            return json_response(doc, content_type=ctype, headers={"Vary": "Accept"})
        if core:
            return json_response(registry.api_versions(), headers={"Vary": "Accept"})
        return json_response(registry.api_group_list(), headers={"Vary": "Accept"})

    def _openapi(self, request: web.Request, path: str) -> web.Response:
        registry = self.store.registry
        if path == "/openapi/v2":
            return json_response(openapi.v2_document(registry))
        if path == "/openapi/v3":
            return json_response(openapi.v3_index(registry))
        if path.startswith("/openapi/v3/"):
            gv = path[len("/openapi/v3/") :]
            doc = openapi.v3_document(registry, gv)
            if doc is not None:
                headers = {}
                if request.query.get("hash"):
                    headers["Cache-Control"] = "public, immutable"
                    headers["Expires"] = "Thu, 01 Jan 2099 00:00:00 GMT"
                return json_response(doc, headers=headers)
        return web.Response(status=404, text="404 page not found\n")

    # --- resource endpoints ------------------------------------------------------------------------

    def _parse(self, path: str) -> tuple[str, str, list[str]]:
        segs = [s for s in path.split("/") if s]
        if segs[0] == "api":
            if len(segs) < 2:
                raise _page_not_found()
            return "", segs[1], segs[2:]
        if len(segs) < 3:
            if len(segs) == 2:
                return segs[1], "", []
            raise _page_not_found()
        return segs[1], segs[2], segs[3:]

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        watch_path = False
        if rest and rest[0] == "watch":
            watch_path = True
            rest = rest[1:]
        namespace: str | None = None
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            namespace = rest[1]
            rest = rest[2:]
        if not rest or len(rest) > 3:
            raise _not_found_resource()
        rt = self.store.registry.get(group, version, rest[0])
        if rt is None:
            raise _not_found_resource()
        if namespace is not None and not rt.namespaced:
            raise _not_found_resource()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None:
            allowed = set()
            if rt.has_status:
                allowed.add("status")
            if rt.has_scale:
                allowed.add("scale")
            if rt is NAMESPACES:
                allowed.add("finalize")
            if sub not in allowed:
                raise _not_found_resource()
        if name is not None and rt.namespaced and namespace is None:
            raise _not_found_resource()
        return Target(rt, namespace, name, sub, watch_path)

    async def _resource(
        self, request: web.Request, path: str, user: AuthResult
    ) -> web.StreamResponse:
        group, version, rest = self._parse(path)
        registry = self.store.registry
        if not rest:
            if not version:
                doc = registry.api_group(group)
                if doc is None:
                    raise _page_not_found()
                return json_response(doc)
            doc = registry.resource_list(group, version)
            if doc is None:
                raise _page_not_found()
            return json_response(doc)
        if not registry.has_group_version(group, version):
            raise _page_not_found()
        t = self._target(group, version, rest)
        method = request.method
        query = request.query
        if t.name is None:
            if method == "GET":
                if t.watch_path or _flag(query.get("watch")):
                    self._forbid(user, "watch", t)
                    self._need_verb(t, "watch")
                    return await self._watch(request, t)
                self._forbid(user, "list", t)
                self._need_verb(t, "list")
                return self._list(request, t)
            if method == "POST":
                if t.rt in (SELFSUBJECTREVIEWS, SELFSUBJECTACCESSREVIEWS):
                    # every authenticated user may ask about itself (system:basic-user)
                    return await self._self_review(request, t, user)
                self._forbid(user, "create", t)
                self._need_verb(t, "create")
                if t.rt.namespaced and t.namespace is None:
                    raise errors.method_not_allowed()
                return await self._create(request, t)
            if method == "DELETE":
                self._forbid(user, "deletecollection", t)
                self._need_verb(t, "deletecollection")
                return await self._delete_collection(request, t)
            raise errors.method_not_allowed()
        if t.watch_path or (method == "GET" and _flag(query.get("watch"))):
            self._forbid(user, "watch", t)
            return await self._watch(request, t)
        if t.subresource == "scale":
            return await self._scale(request, t, user)
        if method == "GET":
            self._forbid(user, "get", t)
            self._need_verb(t, "get")
            obj = self.store.get(t.rt, t.namespace, t.name)
            return self._object_response(request, t, obj)
        if method == "PUT":
            self._forbid(user, "update", t)
            self._need_verb(t, "update")
            return await self._replace(request, t)
        if method == "PATCH":
            self._forbid(user, "patch", t)
            self._need_verb(t, "patch")
            return await self._patch(request, t)
        if method == "DELETE" and t.subresource is None:
            self._forbid(user, "delete", t)
            self._need_verb(t, "delete")
            return await self._delete(request, t)
        raise errors.method_not_allowed()

    def _need_verb(self, t: Target, verb: str) -> None:
        if verb not in t.rt.verbs:
            raise errors.method_not_allowed()

    # --- options -------------------------------------------------------------------------------

    def _options(self, request: web.Request, body_dry_run: list[str] | None = None) -> Options:
        q = request.query
        opts = Options()
        dry = q.getall("dryRun", []) + list(body_dry_run or [])
        for d in dry:
            if d != "All":
                raise errors.invalid(
                    "CreateOptions" if request.method == "POST" else "UpdateOptions",
                    "",
                    [{"reason": "FieldValueNotSupported",
                      "message": f'Unsupported value: "{d}": supported values: "All"',
                      "field": "dryRun"}],
                    group="meta.k8s.io",
                )  # fmt: skip
        opts.dry_run = bool(dry)
        manager = q.get("fieldManager")
        if manager is None:
            agent = request.headers.get("User-Agent", "")
            manager = agent.split("/", 1)[0]
        if len(manager) > 128:
            raise errors.invalid(
                "PatchOptions", "",
                [{"reason": "FieldValueTooLong",
                  "message": "Too long: may not be more than 128 bytes", "field": "fieldManager"}],
                group="meta.k8s.io",
            )  # fmt: skip
        opts.manager = manager
        validation = q.get("fieldValidation", "")
        if validation not in ("", "Strict", "Warn", "Ignore"):
            raise errors.bad_request(
                f'fieldValidation: Unsupported value: "{validation}": supported values: '
                '"Ignore", "Strict", "Warn"'
            )
        opts.validation = validation or "Warn"
        return opts

    async def _body(self, request: web.Request, *, patch: bool = False) -> tuple[Any, str]:
        ctype = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        raw = await request.read()
        if patch:
            if ctype not in PATCH_TYPES:
                raise StatusError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: " + ", ".join(PATCH_TYPES),
                )
        elif ctype not in ("application/json", "application/yaml", ""):
            raise StatusError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml, "
                "application/vnd.kubernetes.protobuf",
            )
        if not raw.strip():
            if patch:
                raise errors.bad_request(
                    "the server rejected our request due to an error in our request"
                )
            raise errors.bad_request(
                "the server rejected our request due to an error in our request"
            )
        try:
            if ctype in ("application/yaml", "application/apply-patch+yaml"):
                data = _load_yaml(raw)
            else:
                data = json.loads(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise errors.bad_request(f"error decoding body: {e}") from None
        return data, ctype

    def _check_body(self, t: Target, body: Any, *, what: str) -> dict[str, Any]:
        rt = t.rt
        if not isinstance(body, dict):
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                "json: cannot unmarshal into Go value of type map[string]interface {}"
            )
        api_version = body.get("apiVersion")
        kind = body.get("kind")
        if api_version and api_version != rt.api_version:
            other = self.store.registry.by_kind(api_version, kind or "")
            if other is None or other.storage != rt.storage:
                raise errors.bad_request(
                    f"the API version in the data ({api_version}) does not match the expected "
                    f"API version ({rt.api_version})"
                )
        if kind and kind != rt.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        meta = body.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                "json: cannot unmarshal into Go struct field of type v1.ObjectMeta"
            )
        ns = (meta or {}).get("namespace")
        if rt.namespaced and ns and t.namespace and ns != t.namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        return body

    def _validate_fields(
        self, t: Target, body: dict[str, Any], opts: Options, *, apply: bool = False
    ) -> dict:
        """fieldValidation: unknown fields fail (Strict), warn (Warn) or vanish (Ignore)."""
        unknown = openapi.unknown_fields(t.rt, body)
        if not unknown:
            return body
        if opts.validation == "Strict":
            if apply:
                raise errors.bad_request(
                    f"failed to create typed patch object ({_obj_ref(t, body)}; "
                    f"{t.rt.api_version}, Kind={t.rt.kind}): "
                    + ", ".join(f".{u}: field not declared in schema" for u in unknown)
                )
            rt = t.rt
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict '
                "decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown)
            )
        if opts.validation == "Warn":
            opts.warnings.extend(f'unknown field "{u}"' for u in unknown)
        return openapi.drop_unknown(t.rt, body)

    def _headers(self, opts: Options) -> dict[str, str]:
        if not opts.warnings:
            return {}
        return {"Warning": ", ".join(f'299 - "{_escape(w)}"' for w in opts.warnings)}

    # --- reads -----------------------------------------------------------------------------------

    def _table_requested(self, request: web.Request) -> bool:
        accept = request.headers.get("Accept", "")
        for part in accept.split(","):
            params = {
                k.strip(): v.strip() for k, _, v in (p.partition("=") for p in part.split(";")[1:])
            }
            if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
                return True
            if part.strip().split(";")[0] in ("application/json", "*/*", ""):
                return False
        return False

    def _object_response(
        self, request: web.Request, t: Target, obj: dict[str, Any], *, status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> web.Response:  # fmt: skip
        if self._table_requested(request):
            include = request.query.get("includeObject", "Metadata")
            table = self.tables.table(
                t.rt, [obj], include=include,
                list_meta={"resourceVersion": obj["metadata"].get("resourceVersion", "")},
            )  # fmt: skip
            return json_response(table, status=status, headers=headers)
        return json_response(obj, status=status, headers=headers)

    def _list(self, request: web.Request, t: Target) -> web.Response:
        q = request.query
        limit = 0
        if q.get("limit"):
            try:
                limit = max(0, int(q["limit"]))
            except ValueError:
                raise errors.bad_request(f"invalid limit: {q['limit']}") from None
        start_after = None
        cont = q.get("continue")
        if cont:
            start_after = self._decode_continue(cont)
        items, rv, more = self.store.list_page(
            t.rt,
            t.namespace,
            label_selector=q.get("labelSelector"),
            field_selector=q.get("fieldSelector"),
            limit=limit,
            start_after=start_after,
        )
        meta: dict[str, Any] = {"resourceVersion": rv}
        if more is not None:
            last_key, remaining = more
            meta["continue"] = self._encode_continue(int(rv), last_key)
            meta["remainingItemCount"] = remaining
        if self._table_requested(request):
            include = q.get("includeObject", "Metadata")
            return json_response(self.tables.table(t.rt, items, include=include, list_meta=meta))
        if not t.rt.custom:
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
        body = {"kind": t.rt.list_kind, "apiVersion": t.rt.api_version, "metadata": meta,
                "items": items}  # fmt: skip
        return json_response(body)

    def _encode_continue(self, rv: int, key: tuple[str, str]) -> str:
        raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{key[0]}/{key[1]}\x00"})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def _decode_continue(self, token: str) -> tuple[str, str]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
            rv = int(data["rv"])
            start = str(data["start"]).rstrip("\x00")
            ns, _, name = start.partition("/")
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise errors.bad_request(
                "continue key is not valid: incorrect encoded start resourceVersion "
                "(version meta.k8s.io/v1)"
            ) from None
        if rv < self.store.oldest_resource_version:
            raise errors.gone(
                "The provided continue parameter is too old to display a consistent list result. "
                "You can start a new list without the continue parameter, or use the continue "
                "token in this response to retrieve the remainder of the results. Continuing "
                "with the provided token results in an inconsistent list - objects that were "
                "created, modified, or deleted between the time the first chunk was returned "
                "and now may show up in the list."
            )
        return (ns, name)

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        field_selector = q.get("fieldSelector") or ""
        if t.name is not None:
            name_sel = f"metadata.name={t.name}"
            field_selector = f"{field_selector},{name_sel}" if field_selector else name_sel
        timeout = DEFAULT_WATCH_TIMEOUT
        if q.get("timeoutSeconds"):
            raw = q["timeoutSeconds"]
            try:
                seconds = int(raw)  # ListOptions.timeoutSeconds is an int64
            except ValueError:
                raise errors.bad_request(
                    f'timeoutSeconds: invalid value {raw!r}: strconv.ParseInt: parsing "{raw}": '
                    "invalid syntax"
                ) from None
            if seconds != 0:  # 0 is "not set": the server's own timeout
                timeout = float(seconds)
        _check_watch_options(q)
        bookmarks = _flag(q.get("allowWatchBookmarks"))
        send_initial = _flag(q.get("sendInitialEvents"))
        rv = q.get("resourceVersion")
        table = self._table_requested(request)
        include = q.get("includeObject", "Metadata")
        error_event: dict[str, Any] | None = None
        watcher = None
        try:
            watcher = self.store.watch(
                t.rt,
                t.namespace,
                resource_version=None if send_initial else rv,
                label_selector=q.get("labelSelector"),
                field_selector=field_selector,
            )
        except StatusError as e:
            if e.code != 410:
                raise
            error_event = {"type": "ERROR", "object": e.to_status()}
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"},
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        first_table = True

        def encode(kind: str, obj: dict[str, Any]) -> bytes:
            nonlocal first_table
            if table and kind in ("ADDED", "MODIFIED", "DELETED"):
                obj = self.tables.table(
                    t.rt, [obj], include=include,
                    list_meta={"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                    with_columns=first_table,
                )  # fmt: skip
                if not first_table:
                    obj.pop("columnDefinitions", None)
                first_table = False
            return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"

        try:
            if error_event is not None:
                await resp.write(json.dumps(error_event, separators=(",", ":")).encode() + b"\n")
                return resp
            assert watcher is not None
            for kind, obj in watcher.initial:
                await resp.write(encode(kind, obj))
            if send_initial and bookmarks:
                await resp.write(
                    encode("BOOKMARK", self._bookmark(t, {"k8s.io/initial-events-end": "true"}))
                )
            deadline = time.monotonic() + timeout
            last = time.monotonic()
            while not self.closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                transport = request.transport
                if transport is None or transport.is_closing():
                    break  # the client went away
                if self.down():
                    transport.abort()
                    return resp
                try:
                    event = await asyncio.wait_for(
                        watcher.queue.get(), timeout=min(remaining, WATCH_POLL)
                    )
                except TimeoutError:
                    if bookmarks and time.monotonic() - last >= BOOKMARK_INTERVAL:
                        await resp.write(encode("BOOKMARK", self._bookmark(t)))
                        last = time.monotonic()
                    continue
                await resp.write(encode(event.type, event.object))
                last = time.monotonic()
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            if watcher is not None:
                watcher.close()
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            await resp.write_eof()
        return resp

    def _bookmark(self, t: Target, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": self.store.resource_version}
        if annotations:
            meta["annotations"] = annotations
        return {"kind": t.rt.kind, "apiVersion": t.rt.api_version, "metadata": meta}

    # --- writes ----------------------------------------------------------------------------------

    async def _create(self, request: web.Request, t: Target) -> web.Response:
        body, _ = await self._body(request)
        opts = self._options(request)
        if t.rt is TOKENREVIEWS:
            return self._token_review(t, body)
        if t.rt in REVIEW_TYPES:
            raise errors.method_not_allowed()
        body = self._check_body(t, body, what="create")
        if str((body.get("metadata") or {}).get("resourceVersion") or "0") != "0":
            # what etcd3's store answers (an internal error, not a 4xx)
            raise errors.internal_error(
                "resourceVersion should not be set on objects to be created"
            )
        body = self._validate_fields(t, body, opts)
        obj = self.store.create(t.rt, t.namespace, body, manager=opts.manager, dry_run=opts.dry_run)
        return self._object_response(request, t, obj, status=201, headers=self._headers(opts))

    async def _replace(self, request: web.Request, t: Target) -> web.Response:
        body, _ = await self._body(request)
        opts = self._options(request)
        body = self._check_body(t, body, what="update")
        body = self._validate_fields(t, body, opts)
        meta = body.get("metadata") or {}
        if meta.get("name") and meta["name"] != t.name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({t.name})"
            )
        if t.subresource == "finalize":
            obj = self.store.get(t.rt, t.namespace, t.name)
            obj["spec"] = body.get("spec") or {}
            body = obj
            sub = "finalize"
        else:
            sub = t.subresource
        assert t.name is not None
        obj = self.store.update(
            t.rt, t.namespace, t.name, body, manager=opts.manager,
            subresource=sub if sub != "finalize" else None, dry_run=opts.dry_run,
        )  # fmt: skip
        return self._object_response(request, t, obj, headers=self._headers(opts))

    async def _patch(self, request: web.Request, t: Target) -> web.Response:
        from sandbox.kube import patch as patching

        body, ctype = await self._body(request, patch=True)
        opts = self._options(request)
        force_param = request.query.get("force")
        assert t.name is not None
        if t.rt.custom and ctype == "application/strategic-merge-patch+json":
            raise errors.unsupported_media_type(ctype)
        if ctype == "application/apply-patch+yaml":
            if not request.query.get("fieldManager"):
                raise errors.invalid(
                    "PatchOptions", "",
                    [{"reason": "FieldValueRequired",
                      "message": "Required value: is required for apply patch",
                      "field": "fieldManager"}],
                    group="meta.k8s.io",
                )  # fmt: skip
            body = self._check_body(t, body, what="apply")
            if not body.get("apiVersion") or not body.get("kind"):
                missing = "apiVersion" if not body.get("apiVersion") else "kind"
                raise errors.bad_request(
                    f"error decoding YAML: Object '{missing.capitalize() if missing == 'kind' else missing}'"
                    " is missing in '" + json.dumps(body, separators=(",", ":")) + "'"
                )
            body = self._validate_fields(t, body, opts, apply=True)
            obj, created = self.store.apply(
                t.rt, t.namespace, t.name, body, manager=opts.manager,
                force=_flag(force_param), dry_run=opts.dry_run, subresource=t.subresource,
            )  # fmt: skip
            return self._object_response(
                request, t, obj, status=201 if created else 200, headers=self._headers(opts)
            )
        if force_param is not None:
            raise errors.invalid(
                "PatchOptions", "",
                [{"reason": "FieldValueForbidden",
                  "message": "Forbidden: may not be specified for non-apply patch",
                  "field": "force"}],
                group="meta.k8s.io",
            )  # fmt: skip
        live = self.store.get(t.rt, t.namespace, t.name)
        if ctype == "application/json-patch+json":
            if not isinstance(body, list):
                raise errors.bad_request(
                    "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
                )
            patched = patching.json_patch(live, body)
        else:
            if not isinstance(body, dict):
                raise errors.bad_request(
                    "json: cannot unmarshal array into Go value of type map[string]interface {}"
                )
            unknown_patch = openapi.unknown_fields(t.rt, body, partial=True)
            if unknown_patch and opts.validation == "Strict":
                rt = t.rt
                raise errors.bad_request(
                    f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                    "strict decoding error: "
                    + ", ".join(f'unknown field "{u}"' for u in unknown_patch)
                )
            if ctype == "application/merge-patch+json":
                patched = patching.merge_patch(live, body)
            else:
                patched = patching.strategic_merge_patch(
                    live, body, kind=t.rt.kind, api_version=t.rt.api_version
                )
        if not isinstance(patched, dict):
            raise errors.bad_request("the patch produced something that is not an object")
        patched = self._validate_fields(t, patched, opts)
        obj = self.store.update(
            t.rt, t.namespace, t.name, patched, manager=opts.manager,
            subresource=t.subresource, dry_run=opts.dry_run,
        )  # fmt: skip
        return self._object_response(request, t, obj, headers=self._headers(opts))

    async def _delete_options(self, request: web.Request) -> tuple[Options, dict[str, Any]]:
        raw = await request.read()
        body: dict[str, Any] = {}
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as e:
                raise errors.bad_request(f"error decoding body: {e}") from None
            if not isinstance(body, dict):
                raise errors.bad_request("DeleteOptions must be an object")
        dry = body.get("dryRun") or []
        opts = self._options(request, body_dry_run=dry if isinstance(dry, list) else [dry])
        q = request.query
        propagation = body.get("propagationPolicy") or q.get("propagationPolicy")
        if body.get("orphanDependents") is True or q.get("orphanDependents") == "true":
            propagation = "Orphan"
        if propagation and propagation not in ("Orphan", "Background", "Foreground"):
            raise errors.invalid(
                "DeleteOptions", "",
                [{"reason": "FieldValueNotSupported",
                  "message": f'Unsupported value: "{propagation}": supported values: '
                             '"Foreground", "Background", "Orphan"',
                  "field": "propagationPolicy"}],
                group="meta.k8s.io",
            )  # fmt: skip
        return opts, {
            "propagation": propagation,
            "preconditions": body.get("preconditions") or None,
        }

    async def _delete(self, request: web.Request, t: Target) -> web.Response:
        opts, extra = await self._delete_options(request)
        assert t.name is not None
        obj = self.store.delete(
            t.rt, t.namespace, t.name, dry_run=opts.dry_run,
            propagation=extra["propagation"], preconditions=extra["preconditions"],
        )  # fmt: skip
        pending = bool(obj["metadata"].get("deletionTimestamp"))
        if t.rt.storage in RETURNS_DELETED or t.rt is CRDS or pending:
            return self._object_response(request, t, obj)
        return json_response(success_status(t.rt, obj))

    async def _delete_collection(self, request: web.Request, t: Target) -> web.Response:
        opts, extra = await self._delete_options(request)
        q = request.query
        items = self.store.delete_collection(
            t.rt, t.namespace, label_selector=q.get("labelSelector"),
            field_selector=q.get("fieldSelector"), dry_run=opts.dry_run,
            propagation=extra["propagation"],
        )  # fmt: skip
        if not t.rt.custom:
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
        return json_response(
            {"kind": t.rt.list_kind, "apiVersion": t.rt.api_version,
             "metadata": {"resourceVersion": self.store.resource_version}, "items": items}
        )  # fmt: skip

    # --- scale -----------------------------------------------------------------------------------

    def _to_scale(self, t: Target, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        spec_path, status_path, selector_path = t.rt.scale_paths or (
            ".spec.replicas",
            ".status.replicas",
            "",
        )
        if t.rt.custom:
            replicas = jsonpath(obj, spec_path) or 0
            current = jsonpath(obj, status_path) or 0
            selector = jsonpath(obj, selector_path) if selector_path else ""
            selector = selector if isinstance(selector, str) else ""
        else:
            replicas = (obj.get("spec") or {}).get("replicas", 1)
            current = (obj.get("status") or {}).get("replicas", 0)
            selector = format_selector((obj.get("spec") or {}).get("selector"), none="")
        scale_meta = {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        }
        if not t.rt.namespaced:
            scale_meta.pop("namespace")
        status: dict[str, Any] = {"replicas": current}
        if selector:
            status["selector"] = selector
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": scale_meta,
            "spec": {"replicas": replicas},
            "status": status,
        }

    async def _scale(self, request: web.Request, t: Target, user: AuthResult) -> web.Response:
        from sandbox.kube import patch as patching

        assert t.name is not None
        method = request.method
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch"}.get(method)
        if verb is None:
            raise errors.method_not_allowed()
        self._forbid(user, verb, t)
        live = self.store.get(t.rt, t.namespace, t.name)
        scale = self._to_scale(t, live)
        if method == "GET":
            return json_response(scale)
        if method == "PUT":
            body, _ = await self._body(request)
        else:
            body, ctype = await self._body(request, patch=True)
        opts = self._options(request)
        if method == "PUT":
            new_scale = body
            rv = ((new_scale or {}).get("metadata") or {}).get("resourceVersion")
            if rv and rv != live["metadata"]["resourceVersion"]:
                raise errors.conflict(t.rt.plural, t.name, t.rt.group)
        elif ctype == "application/json-patch+json":
            new_scale = patching.json_patch(scale, body)
        elif (
            ctype == "application/merge-patch+json"
            or ctype == "application/strategic-merge-patch+json"
        ):
            new_scale = patching.merge_patch(scale, body)
        else:
            # server-side apply of a Scale: only spec.replicas is meaningful
            new_scale = patching.merge_patch(scale, {"spec": (body or {}).get("spec") or {}})
        replicas = ((new_scale or {}).get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid(
                "Scale", t.name,
                [{"reason": "FieldValueInvalid",
                  "message": f"Invalid value: {json.dumps(replicas)}: must be greater than or "
                             "equal to 0",
                  "field": "spec.replicas"}],
                group="autoscaling",
            )  # fmt: skip
        updated = deep_copy(live)
        if t.rt.custom and t.rt.scale_paths:
            _set_path(updated, t.rt.scale_paths[0], replicas)
        else:
            updated.setdefault("spec", {})["replicas"] = replicas
        obj = self.store.update(
            t.rt, t.namespace, t.name, updated, manager=opts.manager, subresource="scale",
            dry_run=opts.dry_run,
        )  # fmt: skip
        return json_response(self._to_scale(t, obj))

    # --- reviews -------------------------------------------------------------------------------

    async def _self_review(self, request: web.Request, t: Target, user: AuthResult) -> web.Response:
        body, _ = await self._body(request)
        if not isinstance(body, dict):
            raise errors.bad_request(f"{t.rt.kind} must be an object")
        info: dict[str, Any] = {"username": user.username or "system:anonymous"}
        if user.groups:
            info["groups"] = list(user.groups)
        if t.rt is SELFSUBJECTREVIEWS:
            status: dict[str, Any] = {"userInfo": info}
            spec = None
        else:
            spec = body.get("spec") or {}
            if not spec.get("resourceAttributes") and not spec.get("nonResourceAttributes"):
                raise errors.invalid(
                    "SelfSubjectAccessReview", "",
                    [{"reason": "FieldValueRequired",
                      "message": "Required value: exactly one of nonResourceAttributes or "
                                 "resourceAttributes must be specified",
                      "field": "spec.resourceAttributes"}],
                    group="authorization.k8s.io",
                )  # fmt: skip
            # RBAC is not emulated: a cluster's own users may do anything, others nothing
            status = {"allowed": bool(user.ok)}
            if user.ok:
                status["reason"] = ""
        review: dict[str, Any] = {
            "kind": t.rt.kind,
            "apiVersion": t.rt.api_version,
            "metadata": {"creationTimestamp": None},
        }
        if spec is not None:
            review["spec"] = spec
        review["status"] = status
        return json_response(review, status=201)

    # --- tokenreviews ---------------------------------------------------------------------------

    def _token_review(self, t: Target, body: Any) -> web.Response:
        if not isinstance(body, dict):
            raise errors.bad_request("TokenReview must be an object")
        spec = body.get("spec") or {}
        token = spec.get("token")
        if not token:
            raise errors.invalid(
                "TokenReview", "",
                [{"reason": "FieldValueRequired", "message": "Required value: token is required",
                  "field": "spec.token"}],
                group="authentication.k8s.io",
            )  # fmt: skip
        result = self.authenticator(token)
        status: dict[str, Any]
        if result.ok:
            user: dict[str, Any] = {"username": result.username}
            if result.uid:
                user["uid"] = result.uid
            if result.groups:
                user["groups"] = list(result.groups)
            status = {"authenticated": True, "user": user}
            audiences = spec.get("audiences")
            if audiences:
                status["audiences"] = list(audiences)
        else:
            status = {"user": {}, "error": "invalid bearer token"}
        review = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        return json_response(review, status=201)


def _set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    keys = [k for k in path.strip().lstrip(".").split(".") if k]
    cur = obj
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = cur[k] = {}
        cur = nxt
    if keys:
        cur[keys[-1]] = value


def _obj_ref(t: Target, body: dict[str, Any]) -> str:
    name = (body.get("metadata") or {}).get("name") or t.name or ""
    return f"{t.namespace}/{name}" if t.namespace else name


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _page_not_found() -> StatusError:
    return StatusError(404, "NotFound", "the server could not find the requested resource",
                       details={})  # fmt: skip


def _not_found_resource() -> StatusError:
    return StatusError(404, "NotFound", "the server could not find the requested resource",
                       details={})  # fmt: skip


def _fake_commit(version: str) -> str:
    import hashlib

    return hashlib.sha1(version.encode()).hexdigest()
