"""One cluster's object store: what etcd plus the apiserver's registry strategies do.

Objects are plain JSON-ready dicts kept in their storage form (one copy per object, whatever
version it is read through). Every write goes through the same steps the real apiserver takes:
convert to storage, default, validate, apply the type's strategy (status kept apart from the
main resource, ``metadata.generation`` bumped on spec changes), record managed fields, then
commit with the next ``resourceVersion`` and tell watchers. Every method returns deep copies.

Simplified on purpose (see the report in the module docs of ``server.py`` too):

* Namespace deletion is synchronous: the DELETE answers the namespace in phase ``Terminating``
  (as the real server does) and the namespace controller's work -- deleting everything in it
  and then the namespace -- happens at once, before the answer, instead of over seconds.
* Garbage collection of dependents (``ownerReferences``) is synchronous as well; ``Foreground``
  deletes dependents first, ``Orphan`` strips the owner references.
* Pods are deleted at once (no kubelet to honour the grace period).
* Lists are answered from the current state; ``continue`` tokens page through it by key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import marshal
import random
import re
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sandbox.kube import errors
from sandbox.kube.errors import StatusError
from sandbox.kube.patch import json_copy
from sandbox.kube.resources import (
    CONFIGMAPS,
    CRDS,
    NAMESPACES,
    SERVICEACCOUNTS,
    SERVICES,
    Registry,
    ResourceType,
    from_storage,
    to_storage,
)

CONTROLLER_MANAGER = "kube-controller-manager"
APISERVER = "kube-apiserver"
INITIAL_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
UNDELETABLE_NAMESPACES = ("default", "kube-public", "kube-system")
DEFAULT_HISTORY = 1000

Key = tuple[str, str]  # (namespace or "", name)


deep_copy = json_copy  # a fast deep copy for JSON-shaped data (the API boundary's)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class WatchEvent:
    """A committed change. ``old`` is the object before the change (None for ADDED)."""

    type: str
    rt: ResourceType
    object: dict[str, Any]
    old: dict[str, Any] | None = None

    @property
    def resource_version(self) -> int:
        return int(self.object["metadata"]["resourceVersion"])


def _pack(obj: dict[str, Any]) -> bytes:
    # marshal (exact for JSON-shaped data) is ~3x faster to produce than JSON text; zlib'd it
    # is about a sixth larger than zlib'd compact JSON, still a third of the raw size
    try:
        data = marshal.dumps(obj, 2)
    except ValueError:  # not plain JSON types (a str subclass, say): normalise them first
        data = marshal.dumps(json.loads(json.dumps(obj)), 2)
    return zlib.compress(data, 1)


def _unpack(data: bytes) -> dict[str, Any]:
    return marshal.loads(zlib.decompress(data))


class _Packed:
    """One history entry; ``old`` shares the bytes of the object's previous entry.

    While the entry's object is still the live version, ``new`` is that (never changed in
    place) stored dict itself, costing no memory of its own; it is packed (zlib'd marshal)
    when a later write supersedes it. Objects that are written once and never again
    (a cluster's bootstrap objects, most ConfigMaps) are thus never packed at all.
    """

    __slots__ = ("new", "old", "rt", "rv", "type")

    def __init__(
        self, rv: int, type: str, rt: ResourceType, new: dict[str, Any] | bytes, old: bytes | None
    ) -> None:
        self.rv = rv
        self.type = type
        self.rt = rt
        self.new = new
        self.old = old

    def packed(self) -> bytes:
        """The entry's object as bytes (packing it now if it was still held as a dict)."""
        if not isinstance(self.new, bytes):
            self.new = _pack(self.new)
        return self.new

    def unpack(self) -> WatchEvent:
        old = _unpack(self.old) if self.old is not None else None
        new = _unpack(self.new) if isinstance(self.new, bytes) else deep_copy(self.new)
        return WatchEvent(self.type, self.rt, new, old)


class Watcher:
    """One watch: the events it must replay first, then a queue of live ones."""

    def __init__(self, store: Store, rt: ResourceType, namespace: str | None, matches) -> None:
        self.store = store
        self.rt = rt
        self.namespace = namespace
        self._matches = matches
        self.queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self.initial: list[tuple[str, dict[str, Any]]] = []

    def translate(self, event: WatchEvent) -> tuple[str, dict[str, Any]] | None:
        """The (type, object) this watch sees for ``event``, in the watched version, or None.

        An object that stops matching the selectors is seen as DELETED, one that starts matching
        as ADDED, the way the apiserver's watch cache reports it.
        """
        if event.rt.storage != self.rt.storage:
            return None
        meta = event.object["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return None
        now = self._matches(event.object)
        before = event.old is not None and self._matches(event.old)
        if event.type == "ADDED":
            kind = "ADDED" if now else None
        elif event.type == "DELETED":
            kind = "DELETED" if now else None
        elif now and before:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif before:
            kind = "DELETED"
        else:
            kind = None
        if kind is None:
            return None
        obj = deep_copy(event.object)
        if kind == "DELETED" and event.type == "MODIFIED":
            # the object still exists; report it as it is now, like the watch cache does
            pass
        return kind, from_storage(self.rt, obj)

    def close(self) -> None:
        self.store._drop_watcher(self)


# ------------------------------------------------------------------------------------------------
# Validation: messages worded as the apiserver's field errors.

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
DNS1035_LABEL_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
QUALIFIED_NAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def go_value(value: Any) -> str:
    """How a field error prints an invalid value (JSON for strings, maps and numbers)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Causes:
    """Collects field errors; ``raise_for`` turns them into a 422 Invalid."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def required(self, path: str, detail: str = "") -> None:
        msg = "Required value" + (f": {detail}" if detail else "")
        self.items.append({"reason": "FieldValueRequired", "message": msg, "field": path})

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.items.append(
            {
                "reason": "FieldValueInvalid",
                "message": f"Invalid value: {go_value(value)}: {detail}",
                "field": path,
            }
        )

    def duplicate(self, path: str, value: Any) -> None:
        self.items.append(
            {
                "reason": "FieldValueDuplicate",
                "message": f"Duplicate value: {go_value(value)}",
                "field": path,
            }
        )

    def unsupported(self, path: str, value: Any, supported: Iterable[str]) -> None:
        opts = ", ".join(json.dumps(s) for s in supported)
        self.items.append(
            {
                "reason": "FieldValueNotSupported",
                "message": f"Unsupported value: {go_value(value)}: supported values: {opts}",
                "field": path,
            }
        )

    def raise_for(self, rt: ResourceType, name: str) -> None:
        if self.items:
            raise errors.invalid(rt.kind, name, self.items, group=rt.group)


def _check_name(causes: Causes, path: str, name: str, style: str) -> None:
    if style == "label":
        if len(name) > 63:
            causes.invalid(path, name, "must be no more than 63 characters")
        if not _DNS1123_LABEL.match(name):
            causes.invalid(path, name, DNS1123_LABEL_MSG)
    elif style == "dns1035":
        if len(name) > 63:
            causes.invalid(path, name, "must be no more than 63 characters")
        if not _DNS1035_LABEL.match(name):
            causes.invalid(path, name, DNS1035_LABEL_MSG)
    else:
        if len(name) > 253:
            causes.invalid(path, name, "must be no more than 253 characters")
        if not _DNS1123_SUBDOMAIN.match(name):
            causes.invalid(path, name, DNS1123_SUBDOMAIN_MSG)


def _check_qualified_key(causes: Causes, path: str, key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        causes.invalid(path, key, "prefix part must be non-empty")
    elif prefix:
        if len(prefix) > 253:
            causes.invalid(path, key, "prefix part must be no more than 253 characters")
        elif not _DNS1123_SUBDOMAIN.match(prefix):
            causes.invalid(path, key, "prefix part " + DNS1123_SUBDOMAIN_MSG)
    if not name:
        causes.invalid(path, key, "name part must be non-empty")
    elif len(name) > 63:
        causes.invalid(path, key, "name part must be no more than 63 characters")
    elif not _QUALIFIED_NAME.match(name):
        causes.invalid(path, key, QUALIFIED_NAME_MSG)


def _check_labels(causes: Causes, path: str, labels: Any) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        causes.invalid(path, labels, "must be a map of strings")
        return
    for key, value in labels.items():
        _check_qualified_key(causes, path, key)
        if not isinstance(value, str):
            causes.invalid(path, value, "must be a string")
        elif len(value) > 63:
            causes.invalid(path, value, "must be no more than 63 characters")
        elif not _LABEL_VALUE.match(value):
            causes.invalid(path, value, LABEL_VALUE_MSG)


def _name_style(rt: ResourceType) -> str:
    if rt is NAMESPACES:
        return "label"
    if rt.storage == ("", "services"):
        return "dns1035"
    return "subdomain"


def _check_pod_spec(causes: Causes, path: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        causes.required(path)
        return
    containers = spec.get("containers")
    if not containers:
        causes.required(f"{path}.containers")
    seen: set[str] = set()
    for list_name in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(list_name) or []):
            cpath = f"{path}.{list_name}[{i}]"
            if not isinstance(c, dict):
                causes.invalid(cpath, c, "must be an object")
                continue
            cname = c.get("name")
            if not cname:
                causes.required(f"{cpath}.name")
            else:
                if not _DNS1123_LABEL.match(cname) or len(cname) > 63:
                    causes.invalid(f"{cpath}.name", cname, DNS1123_LABEL_MSG)
                if cname in seen:
                    causes.duplicate(f"{cpath}.name", cname)
                seen.add(cname)
            if not c.get("image"):
                causes.required(f"{cpath}.image")
            for j, port in enumerate(c.get("ports") or []):
                cp = port.get("containerPort") if isinstance(port, dict) else None
                if cp is None:
                    causes.required(f"{cpath}.ports[{j}].containerPort")
                elif not isinstance(cp, int) or not 0 < cp < 65536:
                    causes.invalid(
                        f"{cpath}.ports[{j}].containerPort",
                        cp,
                        "must be between 1 and 65535, inclusive",
                    )
    restart = spec.get("restartPolicy")
    if restart is not None and restart not in ("Always", "OnFailure", "Never"):
        causes.unsupported(f"{path}.restartPolicy", restart, ("Always", "OnFailure", "Never"))


def _selector_matches(selector: dict[str, Any], labels: Mapping[str, str]) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key = expr.get("key")
        op = expr.get("operator")
        values = expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _check_workload(causes: Causes, rt: ResourceType, obj: dict, old: dict | None) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = {}
    replicas = spec.get("replicas")
    if replicas is not None and (not isinstance(replicas, int) or replicas < 0):
        causes.invalid("spec.replicas", replicas, "must be greater than or equal to 0")
    selector = spec.get("selector")
    template = spec.get("template")
    tlabels = ((template or {}).get("metadata") or {}).get("labels") or {}
    if selector is None:
        causes.required("spec.selector")
    elif not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.invalid("spec.selector", selector, f"empty selector is invalid for {rt.singular}")
    if not isinstance(template, dict):
        causes.required("spec.template")
        return
    if selector is None or not _selector_matches(selector, tlabels):
        causes.invalid(
            "spec.template.metadata.labels", tlabels, "`selector` does not match template `labels`"
        )
    _check_labels(causes, "spec.template.metadata.labels", tlabels)
    _check_pod_spec(causes, "spec.template.spec", template.get("spec"))
    restart = (template.get("spec") or {}).get("restartPolicy", "Always")
    if restart != "Always":
        causes.unsupported("spec.template.spec.restartPolicy", restart, ("Always",))
    if old is not None:
        old_sel = (old.get("spec") or {}).get("selector")
        if old_sel != selector and selector is not None:
            causes.invalid("spec.selector", selector, "field is immutable")
    if rt.kind == "Deployment":
        strategy = spec.get("strategy") or {}
        stype = strategy.get("type", "RollingUpdate")
        if stype not in ("Recreate", "RollingUpdate"):
            causes.unsupported("spec.strategy.type", stype, ("Recreate", "RollingUpdate"))


def _check_crd(causes: Causes, obj: dict) -> None:
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    name = obj["metadata"].get("name", "")
    if not group:
        causes.required("spec.group")
    elif "." not in group:
        causes.invalid("spec.group", group, "should be a domain with at least one dot")
    if not plural:
        causes.required("spec.names.plural")
    if not names.get("kind"):
        causes.required("spec.names.kind")
    if not names.get("listKind"):
        pass  # defaulted
    if group and plural and name != f"{plural}.{group}":
        causes.invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group')
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        if scope is None:
            causes.required("spec.scope")
        else:
            causes.unsupported("spec.scope", scope, ("Cluster", "Namespaced"))
    versions = spec.get("versions") or []
    if not versions:
        causes.invalid(
            "spec.versions", versions, "must have exactly one version marked as storage version"
        )
    storage = [v for v in versions if v.get("storage")]
    if versions and len(storage) != 1:
        causes.invalid(
            "spec.versions", versions, "must have exactly one version marked as storage version"
        )
    for i, v in enumerate(versions):
        if not v.get("name"):
            causes.required(f"spec.versions[{i}].name")
        if not (v.get("schema") or {}).get("openAPIV3Schema"):
            causes.required(f"spec.versions[{i}].schema.openAPIV3Schema", "schemas are required")


def validate(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Raise 422 Invalid with the apiserver's field errors when ``obj`` is not acceptable."""
    causes = Causes()
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    if not name:
        causes.required("metadata.name", "name or generateName is required")
    else:
        _check_name(causes, "metadata.name", name, _name_style(rt))
    _check_labels(causes, "metadata.labels", meta.get("labels"))
    for key in meta.get("annotations") or {}:
        _check_qualified_key(causes, "metadata.annotations", key)
    storage = rt.storage
    if storage in (
        ("apps", "deployments"),
        ("apps", "replicasets"),
        ("apps", "statefulsets"),
        (
            "apps",
            "daemonsets",
        ),
    ):
        _check_workload(causes, rt, obj, old)
    elif storage == ("", "pods"):
        _check_pod_spec(causes, "spec", obj.get("spec"))
    elif storage == ("", "services"):
        for i, port in enumerate((obj.get("spec") or {}).get("ports") or []):
            p = port.get("port")
            if p is None:
                causes.required(f"spec.ports[{i}].port")
            elif not isinstance(p, int) or not 0 < p < 65536:
                causes.invalid(f"spec.ports[{i}].port", p, "must be between 1 and 65535, inclusive")
    elif rt is CRDS:
        _check_crd(causes, obj)
    elif rt.custom and rt.schema:
        _check_schema(causes, "", obj, rt.schema, top=True)
    causes.raise_for(rt, name)


_JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def _check_schema(
    causes: Causes, path: str, value: Any, schema: dict, *, top: bool = False
) -> None:
    """A light structural-schema check for custom resources (type, required, enum)."""
    if not isinstance(schema, dict):
        return
    stype = schema.get("type")
    if value is None:
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            causes.invalid(path, value, "must be an integer or string")
        return
    expected = _JSON_TYPES.get(stype or "")
    if expected is not None and (
        not isinstance(value, expected)
        or (stype in ("integer", "number") and isinstance(value, bool))
    ):
        causes.items.append(
            {
                "reason": "FieldValueTypeInvalid",
                "message": f'Invalid value: "{_json_type(value)}": {path or "body"} in body must be of type {stype}: "{_json_type(value)}"',
                "field": path or "<nil>",
            }
        )
        return
    if "enum" in schema and value not in schema["enum"]:
        causes.unsupported(path, value, [str(v) for v in schema["enum"]])
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for req in schema.get("required") or []:
            if req not in value:
                causes.required(f"{path}.{req}" if path else req)
        for key, sub in props.items():
            if key in value and not (top and key in ("metadata", "apiVersion", "kind")):
                _check_schema(causes, f"{path}.{key}" if path else key, value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, sub in value.items():
                if key not in props:
                    _check_schema(causes, f"{path}.{key}" if path else key, sub, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _check_schema(causes, f"{path}[{i}]", item, schema["items"])


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def prune(value: Any, schema: Any, *, top: bool = False) -> Any:
    """Drop fields a structural schema does not know (the apiserver's pruning), in place."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and extra is None:
            if schema.get("type") == "object" and not top:
                value.clear()
            return value
        for key in list(value):
            if top and key in ("apiVersion", "kind", "metadata"):
                continue
            if props is not None and key in props:
                prune(value[key], props[key])
            elif isinstance(extra, dict):
                prune(value[key], extra)
            elif extra is True:
                continue
            else:
                del value[key]
    elif isinstance(value, list):
        for item in value:
            prune(item, schema.get("items"))
    return value


# ------------------------------------------------------------------------------------------------
# Defaulting (the fields the apiserver fills in on write).


def _default_pod_spec(spec: dict[str, Any], *, pod: bool) -> None:
    for list_name in ("initContainers", "containers"):
        for c in spec.get(list_name) or []:
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            image = c.get("image") or ""
            tag = image.rsplit("/", 1)[-1]
            latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
            c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
            c.setdefault("resources", {})
            for port in c.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    if pod:
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault(
            "tolerations",
            [
                {
                    "key": f"node.kubernetes.io/{taint}",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
                for taint in ("not-ready", "unreachable")
            ],
        )


def _qos_class(spec: dict[str, Any]) -> str:
    containers = spec.get("containers") or []
    resources = [c.get("resources") or {} for c in containers if isinstance(c, dict)]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    for r in resources:
        limits = r.get("limits") or {}
        requests = r.get("requests") or limits
        if not limits.get("cpu") or not limits.get("memory") or requests != limits:
            return "Burstable"
    return "Guaranteed"


def _default_template(spec: dict[str, Any]) -> None:
    template = spec.get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {})
        template["metadata"].setdefault("creationTimestamp", None)
        if isinstance(template.get("spec"), dict):
            _default_pod_spec(template["spec"], pod=False)


def apply_defaults(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Fill in the defaults the apiserver sets on the types it knows."""
    storage = rt.storage
    spec = obj.get("spec")
    if storage == ("apps", "deployments") and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            ru = strategy.setdefault("rollingUpdate", {})
            ru.setdefault("maxUnavailable", "25%")
            ru.setdefault("maxSurge", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        _default_template(spec)
    elif storage == ("apps", "replicasets") and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        _default_template(spec)
    elif storage == ("apps", "statefulsets") and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        strategy = spec.setdefault("updateStrategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault(
            "persistentVolumeClaimRetentionPolicy",
            {"whenDeleted": "Retain", "whenScaled": "Retain"},
        )
        _default_template(spec)
    elif storage == ("apps", "daemonsets") and isinstance(spec, dict):
        strategy = spec.setdefault("updateStrategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            ru = strategy.setdefault("rollingUpdate", {})
            ru.setdefault("maxUnavailable", 1)
            ru.setdefault("maxSurge", 0)
        spec.setdefault("revisionHistoryLimit", 10)
        _default_template(spec)
    elif storage == ("", "pods") and isinstance(spec, dict):
        _default_pod_spec(spec, pod=True)
    elif storage == ("", "services"):
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            stype = spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
                    if "port" in port:
                        port.setdefault("targetPort", port["port"])
            if stype != "ExternalName":
                spec.setdefault("ipFamilies", ["IPv4"])
                spec.setdefault("ipFamilyPolicy", "SingleStack")
                spec.setdefault("internalTrafficPolicy", "Cluster")
            if stype in ("NodePort", "LoadBalancer"):
                spec.setdefault("externalTrafficPolicy", "Cluster")
            if stype == "LoadBalancer":
                spec.setdefault("allocateLoadBalancerNodePorts", True)
        obj.setdefault("status", {"loadBalancer": {}})
    elif storage == ("", "secrets"):
        obj.setdefault("type", "Opaque")
    elif rt is CRDS and isinstance(spec, dict):
        names = spec.setdefault("names", {})
        if names.get("kind"):
            names.setdefault("listKind", names["kind"] + "List")
            names.setdefault("singular", names["kind"].lower())
        spec.setdefault("conversion", {"strategy": "None"})
        for v in spec.get("versions") or []:
            if isinstance(v, dict):
                v.setdefault("served", True)


# ------------------------------------------------------------------------------------------------
# The store


def _generate_suffix(rng: random.Random) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(rng.choice(alphabet) for _ in range(5))


def _matcher(
    rt: ResourceType, label_selector: Any, field_selector: Any
) -> Callable[[dict[str, Any]], bool]:
    from sandbox.kube import selectors

    ls = label_selector
    fs = field_selector
    if isinstance(ls, str):
        ls = selectors.LabelSelector.parse(ls) if ls.strip() else None
    if isinstance(fs, str):
        # objects are matched in their storage form (events.k8s.io Events as core Events)
        fs = (
            selectors.FieldSelector.parse(
                fs, kind=rt.kind, group=rt.storage[0], custom=rt.custom, namespaced=rt.namespaced
            )
            if fs.strip()
            else None
        )
    if ls is None and fs is None:
        return lambda obj: True

    def matches(obj: dict[str, Any]) -> bool:
        if ls is not None and not ls.matches(obj["metadata"].get("labels") or {}):
            return False
        return fs is None or fs.matches(obj)

    return matches


def _strip_times(managed_fields: Any) -> Any:
    if not isinstance(managed_fields, list):
        return managed_fields
    return [{k: v for k, v in e.items() if k != "time"} for e in managed_fields]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal apart from managedFields timestamps: such a write is a no-op for the apiserver."""
    if a.keys() != b.keys():
        return False
    for k in a:
        if k == "metadata":
            ma, mb = a[k], b[k]
            if ma.keys() != mb.keys():
                return False
            for mk in ma:
                if mk == "managedFields":
                    if _strip_times(ma[mk]) != _strip_times(mb[mk]):
                        return False
                elif ma[mk] != mb[mk]:
                    return False
        elif a[k] != b[k]:
            return False
    return True


def _content(obj: dict[str, Any], *, with_status: bool) -> dict[str, Any]:
    return {
        k: v
        for k, v in obj.items()
        if k not in ("metadata", "apiVersion", "kind") and (with_status or k != "status")
    }


class Store:
    """One cluster's objects, resourceVersion counter and watch history."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        history: int = DEFAULT_HISTORY,
        rng: random.Random | None = None,
        root_ca_pem: str = "",
        bootstrap: bool = True,
    ) -> None:
        self.registry = Registry()
        self.clock = clock
        self._rng = rng or random.Random()
        self._objects: dict[tuple[str, str], dict[Key, dict[str, Any]]] = {}
        self._rv = 0
        # the watch history: compact (zlib'd marshal) so a long history costs little memory
        self._history: deque[_Packed] = deque(maxlen=history)
        # each live object's latest history entry (its bytes become the next event's ``old``)
        self._last_packed: dict[tuple[tuple[str, str], Key], _Packed] = {}
        self._compacted = 0  # highest resourceVersion no longer in the history
        self._subscribers: list[asyncio.Queue[WatchEvent]] = []
        self._watchers: list[Watcher] = []
        self._next_ip = 1
        self.root_ca_pem = root_ca_pem
        self._now: tuple[int, str] = (-1, "")
        if bootstrap:
            self._bootstrap()

    # --- basics ----------------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    @property
    def oldest_resource_version(self) -> int:
        """The oldest resourceVersion a watch may still start from."""
        return self._compacted

    def now(self) -> str:
        ts = self.clock()
        second = int(ts)  # RFC 3339 to the second: formatted once per second
        if second != self._now[0]:
            self._now = (second, rfc3339(ts))
        return self._now[1]

    def _bucket(self, rt: ResourceType) -> dict[Key, dict[str, Any]]:
        return self._objects.setdefault(rt.storage, {})

    def _key(self, rt: ResourceType, namespace: str | None, name: str) -> Key:
        return (namespace or "" if rt.namespaced else "", name)

    def _out(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        return from_storage(rt, deep_copy(obj))

    def _not_found(self, rt: ResourceType, name: str) -> StatusError:
        return errors.not_found(rt.plural, name, rt.group)

    # --- reads -----------------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._bucket(rt).get(self._key(rt, namespace, name))
        if obj is None:
            raise self._not_found(rt, name)
        return self._out(rt, obj)

    def exists(self, rt: ResourceType, namespace: str | None, name: str) -> bool:
        return self._key(rt, namespace, name) in self._bucket(rt)

    def list(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: Any = None,
        field_selector: Any = None,
    ) -> tuple[list[dict[str, Any]], str]:
        items, rv, _ = self.list_page(
            rt, namespace, label_selector=label_selector, field_selector=field_selector
        )
        return items, rv

    def list_page(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: Any = None,
        field_selector: Any = None,
        limit: int = 0,
        start_after: Key | None = None,
    ) -> tuple[list[dict[str, Any]], str, tuple[Key, int] | None]:
        """Items sorted by (namespace, name); with ``limit``, also (last key, remaining count)."""
        matches = _matcher(rt, label_selector, field_selector)
        bucket = self._bucket(rt)
        keys = sorted(
            k for k in bucket if (namespace is None or not rt.namespaced or k[0] == namespace)
        )
        if start_after is not None:
            keys = [k for k in keys if k > start_after]
        out: list[dict[str, Any]] = []
        more: tuple[Key, int] | None = None
        last_key: Key | None = None
        for i, k in enumerate(keys):
            obj = bucket[k]
            if not matches(obj):
                continue
            if limit and len(out) == limit and last_key is not None:
                remaining = sum(1 for k2 in keys[i:] if matches(bucket[k2]))
                more = (last_key, remaining)
                break
            out.append(self._out(rt, obj))
            last_key = k
        return out, self.resource_version, more

    # --- writes ----------------------------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        obj: dict[str, Any],
        *,
        manager: str,
        dry_run: bool = False,
        _managed_done: bool = False,
        subresource: str | None = None,
        _owned: bool = False,
        _answer: bool = True,
    ) -> dict[str, Any]:
        # _owned: ``obj`` is the store's own (not the caller's), so it is not copied first;
        # _answer=False: the caller ignores the answer, so it is not copied out (internal use)
        obj = to_storage(rt, obj if _owned else deep_copy(obj))
        obj["kind"] = rt.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            ns = namespace or meta.get("namespace") or "default"
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
            ns = ""
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + _generate_suffix(self._rng)
        name = meta.get("name") or ""
        if rt.namespaced and name:
            ns_obj = self._objects.get(NAMESPACES.storage, {}).get(("", ns))
            if ns_obj is None:
                raise errors.not_found("namespaces", ns)
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise StatusError(
                    403,
                    "Forbidden",
                    f'{rt.plural} "{name}" is forbidden: unable to create new content in '
                    f"namespace {ns} because it is being terminated",
                    details={"name": name, "kind": rt.plural, "group": rt.group or None}
                    if rt.group
                    else {"name": name, "kind": rt.plural},
                )
        # strategy: server-owned metadata
        for field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation", "selfLink"):  # fmt: skip
            meta.pop(field, None)
        if rt.custom and rt.schema:
            prune(obj, rt.schema, top=True)
        self._prepare_create(rt, obj)
        apply_defaults(rt, obj)
        validate(rt, obj, None)
        if (ns, name) in self._bucket(rt):
            raise errors.already_exists(rt.plural, name, rt.group)
        now = self.now()
        meta["uid"] = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        meta["creationTimestamp"] = now
        if rt.has_generation:
            meta["generation"] = 1
        if not _managed_done:
            obj = self._record(None, obj, rt, manager, now, subresource)
        if dry_run:
            # a dry-run create answers the would-be object, without a resourceVersion
            return self._out(rt, obj) if _answer else {}
        self._commit(rt, "ADDED", obj, None)
        self._after_create(rt, obj)
        return self._out(rt, obj) if _answer else {}

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        obj: dict[str, Any],
        *,
        manager: str,
        subresource: str | None = None,
        dry_run: bool = False,
        _managed_done: bool = False,
    ) -> dict[str, Any]:
        key = self._key(rt, namespace, name)
        live = self._bucket(rt).get(key)
        if live is None:
            raise self._not_found(rt, name)
        new = to_storage(rt, deep_copy(obj))
        new["kind"] = rt.kind
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        rv = meta.get("resourceVersion")
        if rv:
            if str(rv) != live["metadata"]["resourceVersion"]:
                raise errors.conflict(rt.plural, name, rt.group)
        elif rt.custom and not _managed_done:
            c = Causes()
            c.items.append(
                {
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: 0x0: must be specified for an update",
                    "field": "metadata.resourceVersion",
                }
            )
            c.raise_for(rt, name)
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        new = self._prepare_update(rt, new, live, subresource)
        if rt.custom and rt.schema:
            prune(new, rt.schema, top=True)
        apply_defaults(rt, new)
        validate(rt, new, live)
        now = self.now()
        if rt.has_generation and subresource != "status":
            with_status = not rt.has_status
            if _content(new, with_status=with_status) != _content(
                live, with_status=with_status
            ) or (
                rt.kind == "Deployment"
                and (new["metadata"].get("annotations") != live["metadata"].get("annotations"))
            ):
                new["metadata"]["generation"] = live["metadata"].get("generation", 0) + 1
        if not _managed_done:
            new = self._record(live, new, rt, manager, now, subresource)
        new["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        if _same(new, live):
            return self._out(rt, live)
        # finalizers gone from an object being deleted: it goes away now
        if live["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            if dry_run:
                return self._out(rt, new)
            return self._remove(rt, key, new)
        if dry_run:
            return self._out(rt, new)
        self._commit(rt, "MODIFIED", new, live)
        if rt is CRDS:
            self._crd_changed(new)
        return self._out(rt, new)

    def apply(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        applied: dict[str, Any],
        *,
        manager: str,
        force: bool = False,
        dry_run: bool = False,
        subresource: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Server-side apply; returns (object, created)."""
        from sandbox.kube import managed

        key = self._key(rt, namespace, name)
        live = self._bucket(rt).get(key)
        applied = deep_copy(applied)
        meta = applied.get("metadata")
        if not isinstance(meta, dict):
            meta = applied["metadata"] = {}
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        if rt.namespaced and namespace:
            meta.setdefault("namespace", namespace)
        now = self.now()
        if live is None:
            if subresource:
                raise self._not_found(rt, name)
            meta.pop("resourceVersion", None)
            result = managed.server_side_apply(
                None, applied, manager=manager, force=force, api_version=rt.api_version, now=now,
                custom=rt.custom, reset_fields=self._reset_fields(rt, None),
            )  # fmt: skip
            created = self.create(
                rt, namespace, result, manager=manager, dry_run=dry_run, _managed_done=True,
                _owned=True,  # built afresh from the (copied) applied configuration
            )  # fmt: skip
            return created, True
        # a view is enough: server_side_apply changes neither input, and update() copies the
        # answer (which shares the parts the apply left alone with ``live``) before keeping it
        live_out = from_storage(rt, dict(live))
        if (
            meta.get("resourceVersion")
            and str(meta["resourceVersion"]) != live_out["metadata"]["resourceVersion"]
        ):
            raise errors.conflict(rt.plural, name, rt.group)
        result = managed.server_side_apply(
            live_out, applied, manager=manager, force=force, api_version=rt.api_version, now=now,
            subresource=subresource, custom=rt.custom,
            reset_fields=self._reset_fields(rt, subresource),
        )  # fmt: skip
        result.setdefault("metadata", {})["resourceVersion"] = live_out["metadata"][
            "resourceVersion"
        ]
        out = self.update(
            rt,
            namespace,
            name,
            result,
            manager=manager,
            subresource=subresource,
            dry_run=dry_run,
            _managed_done=True,
        )
        return out, False

    @staticmethod
    def _reset_fields(rt: ResourceType, subresource: str | None) -> list[tuple[str, ...]]:
        """The paths an endpoint may not change (the strategies' GetResetFields)."""
        if subresource == "status":
            return [("spec",), ("metadata", "labels")] if not rt.custom else [("spec",)]
        if rt.has_status:
            return [("status",)]
        return []

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        dry_run: bool = False,
        propagation: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        key = self._key(rt, namespace, name)
        live = self._bucket(rt).get(key)
        if live is None:
            raise self._not_found(rt, name)
        if preconditions:
            if preconditions.get("uid") and preconditions["uid"] != live["metadata"]["uid"]:
                raise StatusError(
                    409,
                    "Conflict",
                    f"Operation cannot be fulfilled on {errors.qualified(rt.plural, rt.group)} "
                    f'"{name}": Precondition failed: UID in precondition: {preconditions["uid"]}, '
                    f"UID in object meta: {live['metadata']['uid']}",
                    details={
                        "name": name,
                        "kind": rt.plural,
                        **({"group": rt.group} if rt.group else {}),
                    },
                )
            if (
                preconditions.get("resourceVersion")
                and str(preconditions["resourceVersion"]) != live["metadata"]["resourceVersion"]
            ):
                raise StatusError(
                    409,
                    "Conflict",
                    f"Operation cannot be fulfilled on {errors.qualified(rt.plural, rt.group)} "
                    f'"{name}": Precondition failed: ResourceVersion in precondition: '
                    f"{preconditions['resourceVersion']}, ResourceVersion in object meta: "
                    f"{live['metadata']['resourceVersion']}",
                    details={
                        "name": name,
                        "kind": rt.plural,
                        **({"group": rt.group} if rt.group else {}),
                    },
                )
        if rt is NAMESPACES and name in UNDELETABLE_NAMESPACES:
            raise StatusError(
                403,
                "Forbidden",
                f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                details={"name": name, "kind": "namespaces"},
            )
        if dry_run:
            out = deep_copy(live)
            if rt is NAMESPACES:
                out["metadata"]["deletionTimestamp"] = self.now()
                out.setdefault("status", {})["phase"] = "Terminating"
            return self._out(rt, out)
        finalizers = list(live["metadata"].get("finalizers") or [])
        if rt is NAMESPACES:
            return self._delete_namespace(key, live)
        if finalizers:
            if live["metadata"].get("deletionTimestamp"):
                return self._out(rt, live)
            new = deep_copy(live)
            new["metadata"]["deletionTimestamp"] = self.now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            self._commit(rt, "MODIFIED", new, live)
            return self._out(rt, new)
        self._collect_dependents(live, propagation or "Background")
        return self._remove(rt, key, live)

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        label_selector: Any = None,
        field_selector: Any = None,
        dry_run: bool = False,
        propagation: str | None = None,
    ) -> list[dict[str, Any]]:
        items, _ = self.list(
            rt, namespace, label_selector=label_selector, field_selector=field_selector
        )
        out = []
        for item in items:
            meta = item["metadata"]
            try:
                out.append(
                    self.delete(
                        rt, meta.get("namespace"), meta["name"], dry_run=dry_run,
                        propagation=propagation,
                    )
                )  # fmt: skip
            except StatusError as e:
                if e.code != 404:
                    raise
        return out

    # --- watch -----------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[WatchEvent]:
        """A queue receiving every committed change (controllers use this)."""
        q: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self._subscribers.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[WatchEvent]) -> None:
        if q in self._subscribers:
            self._subscribers.remove(q)

    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        resource_version: str | None = None,
        label_selector: Any = None,
        field_selector: Any = None,
    ) -> Watcher:
        """Start a watch. No (or "0") resourceVersion: synthetic ADDED events for what exists now;
        otherwise the changes after that version, or 410 Expired when it is too old."""
        matches = _matcher(rt, label_selector, field_selector)
        watcher = Watcher(self, rt, namespace if rt.namespaced else None, matches)
        if not resource_version or resource_version == "0":
            items, _ = self.list(rt, namespace)
            for item in items:
                if matches(item):
                    watcher.initial.append(("ADDED", item))
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise errors.bad_request(f'invalid resource version "{resource_version}"') from None
            if since < self._compacted:
                raise errors.gone(f"too old resource version: {since} ({self._compacted + 1})")
            for packed in self._history:
                if packed.rv > since and packed.rt.storage == rt.storage:
                    seen = watcher.translate(packed.unpack())
                    if seen is not None:
                        watcher.initial.append(seen)
        self._watchers.append(watcher)
        return watcher

    def _drop_watcher(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    # --- internals -------------------------------------------------------------------------------

    def _record(
        self,
        old: dict[str, Any] | None,
        new: dict[str, Any],
        rt: ResourceType,
        manager: str,
        now: str,
        subresource: str | None,
    ) -> dict[str, Any]:
        from sandbox.kube import managed

        # ``new`` is this write's own copy and record_update never changes ``old``: views in
        # the served version (from_storage only touches the top level) are enough
        old_v = from_storage(rt, dict(old)) if old is not None else None
        out = managed.record_update(
            old_v, from_storage(rt, new), manager=manager, api_version=rt.api_version, now=now,
            subresource=subresource, custom=rt.custom, reuse_new=True,
        )  # fmt: skip
        return to_storage(rt, out)

    def _commit(
        self, rt: ResourceType, kind: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (
            obj["metadata"].get("namespace", "") if rt.namespaced else "",
            obj["metadata"]["name"],
        )
        bucket = self._bucket(rt)
        if kind == "DELETED":
            bucket.pop(key, None)
        else:
            bucket[key] = obj
        event = WatchEvent(kind, rt, obj, old)
        if self._history.maxlen:
            if len(self._history) == self._history.maxlen:
                self._compacted = self._history[0].rv
            slot = (rt.storage, key)
            previous = self._last_packed.get(slot) if old is not None else None
            old_packed = previous.packed() if previous is not None else None  # superseded now
            if kind == "DELETED":
                self._last_packed.pop(slot, None)
                entry = _Packed(self._rv, kind, rt, _pack(obj), old_packed)
            else:
                entry = _Packed(self._rv, kind, rt, obj, old_packed)
                self._last_packed[slot] = entry
            self._history.append(entry)
        else:
            self._compacted = self._rv
        for i, q in enumerate(self._subscribers):
            # ``old`` left the store with this commit (and its history entry is packed), so the
            # first subscriber may have it as it is; any others get copies
            q.put_nowait(
                WatchEvent(kind, rt, self._out(rt, obj), old if i == 0 else deep_copy(old))
            )
        for w in self._watchers:
            seen = w.translate(event)
            if seen is not None:
                w.queue.put_nowait(WatchEvent(seen[0], w.rt, seen[1]))

    def _remove(self, rt: ResourceType, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        # its own top level and metadata (the commit sets its resourceVersion); nothing else of
        # it is changed, and what leaves the store is copied out
        gone = {**obj, "metadata": dict(obj["metadata"])}
        self._commit(rt, "DELETED", gone, obj)
        if rt is CRDS:
            self._crd_removed(gone)
        return self._out(rt, gone)

    def _prepare_create(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        storage = rt.storage
        if rt.has_status and storage != ("", "services"):
            obj.pop("status", None)
        if rt is NAMESPACES:
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"].get("name", "")
        elif storage == ("", "pods"):
            spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
            obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}
        elif storage == ("", "services"):
            obj["status"] = {"loadBalancer": {}}
            spec = obj.setdefault("spec", {})
            if isinstance(spec, dict) and spec.get("type", "ClusterIP") != "ExternalName":
                if spec.get("clusterIP") in (None, ""):
                    spec["clusterIP"] = self._allocate_ip()
                if spec["clusterIP"] != "None":
                    spec.setdefault("clusterIPs", [spec["clusterIP"]])
                if spec.get("type") in ("NodePort", "LoadBalancer"):
                    for port in spec.get("ports") or []:
                        if isinstance(port, dict):
                            port.setdefault("nodePort", 30000 + self._rng.randrange(2768))
        elif storage == ("", "secrets"):
            self._fold_string_data(obj)
        elif rt is CRDS:
            spec = obj.get("spec") or {}
            names = dict(spec.get("names") or {})
            obj["status"] = {
                "acceptedNames": names,
                "conditions": [
                    {
                        "type": "NamesAccepted",
                        "status": "True",
                        "lastTransitionTime": self.now(),
                        "reason": "NoConflicts",
                        "message": "no conflicts found",
                    },
                    {
                        "type": "Established",
                        "status": "True",
                        "lastTransitionTime": self.now(),
                        "reason": "InitialNamesAccepted",
                        "message": "the initial names have been accepted",
                    },
                ],
                "storedVersions": [
                    v.get("name") for v in spec.get("versions") or [] if v.get("storage")
                ],
            }
            if not (obj["status"]["acceptedNames"]):
                obj["status"].pop("acceptedNames")

    def _prepare_update(
        self, rt: ResourceType, new: dict[str, Any], live: dict[str, Any], subresource: str | None
    ) -> dict[str, Any]:
        meta = new["metadata"]
        lmeta = live["metadata"]
        if subresource == "status":
            # only .status changes; everything else comes from the live object -- except that
            # the built-in status strategies keep metadata.annotations from the request (the
            # deployment controller writes its revision annotation this way)
            out = deep_copy(live)
            if "status" in new:
                out["status"] = new["status"]
            else:
                out.pop("status", None)
            if not rt.custom:
                if meta.get("annotations"):
                    out["metadata"]["annotations"] = meta["annotations"]
                else:
                    out["metadata"].pop("annotations", None)
            out["metadata"]["managedFields"] = meta.get("managedFields", lmeta.get("managedFields"))
            if out["metadata"]["managedFields"] is None:
                out["metadata"].pop("managedFields")
            return out
        # server-owned metadata comes from the live object
        for field in ("uid", "creationTimestamp", "generation", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "namespace"):  # fmt: skip
            if field in lmeta:
                meta[field] = lmeta[field]
            else:
                meta.pop(field, None)
        meta["name"] = lmeta["name"]
        if rt.has_status:
            if "status" in live:
                new["status"] = deep_copy(live["status"])
            else:
                new.pop("status", None)
        if rt is NAMESPACES:
            labels = meta.setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = lmeta["name"]
            new.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        elif rt.storage == ("", "services"):
            spec = new.get("spec")
            lspec = live.get("spec") or {}
            if isinstance(spec, dict):
                for f in ("clusterIP", "clusterIPs"):
                    if f in lspec and not spec.get(f):
                        spec[f] = lspec[f]
                if spec.get("type") in ("NodePort", "LoadBalancer"):
                    lports = {p.get("port"): p for p in lspec.get("ports") or []}
                    for port in spec.get("ports") or []:
                        old_port = lports.get(port.get("port"))
                        if old_port and "nodePort" in old_port:
                            port.setdefault("nodePort", old_port["nodePort"])
        elif rt.storage == ("", "secrets"):
            self._fold_string_data(new)
        elif rt is CRDS:
            status = new.setdefault("status", {})
            spec = new.get("spec") or {}
            status["acceptedNames"] = dict(spec.get("names") or {})
            stored = list(status.get("storedVersions") or [])
            for v in spec.get("versions") or []:
                if v.get("storage") and v.get("name") not in stored:
                    stored.append(v.get("name"))
            status["storedVersions"] = stored
        return new

    def _fold_string_data(self, obj: dict[str, Any]) -> None:
        string_data = obj.pop("stringData", None)
        data = obj.get("data")
        if data is not None:
            if not isinstance(data, dict):
                raise errors.bad_request("Secret.data must be a map of base64 strings")
            for k, v in data.items():
                try:
                    base64.b64decode(v or "", validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise errors.bad_request(
                        f'Secret in version "v1" cannot be handled as a Secret: illegal base64 '
                        f"data at input byte 0 (key {k})"
                    ) from None
        if string_data:
            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()

    def _allocate_ip(self) -> str:
        self._next_ip += 1
        return str(ipaddress.IPv4Address("10.96.0.0") + self._next_ip)

    def _after_create(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        if rt is NAMESPACES:
            ns = obj["metadata"]["name"]
            self.create(
                SERVICEACCOUNTS, ns, {"metadata": {"name": "default"}}, manager=CONTROLLER_MANAGER,
                _owned=True, _answer=False,
            )  # fmt: skip
            self.create(
                CONFIGMAPS,
                ns,
                {"metadata": {"name": "kube-root-ca.crt", "annotations": {
                    "kubernetes.io/description": "Contains a CA bundle that can be used to "
                    "verify the kube-apiserver when using internal endpoints such as the "
                    "internal service IP or kubernetes.default.svc. No other usage is "
                    "guaranteed across distributions of Kubernetes clusters."}},
                 "data": {"ca.crt": self.root_ca_pem}},
                manager=CONTROLLER_MANAGER, _owned=True, _answer=False,
            )  # fmt: skip
        elif rt is CRDS:
            self.registry.add(self._out(CRDS, obj))

    def _crd_changed(self, crd: dict[str, Any]) -> None:
        self.registry.add(self._out(CRDS, crd))

    def _crd_removed(self, crd: dict[str, Any]) -> None:
        name = crd["metadata"]["name"]
        types = self.registry.crd_types(name)
        if types:
            rt = types[0]
            for key, obj in list(self._bucket(rt).items()):
                self._remove(rt, key, obj)
            self._objects.pop(rt.storage, None)
        self.registry.remove(name)

    def _delete_namespace(self, key: Key, live: dict[str, Any]) -> dict[str, Any]:
        ns = key[1]
        terminating = deep_copy(live)
        terminating["metadata"]["deletionTimestamp"] = self.now()
        terminating["metadata"]["deletionGracePeriodSeconds"] = 0
        terminating["status"] = {"phase": "Terminating"}
        self._commit(NAMESPACES, "MODIFIED", terminating, live)
        answer = self._out(NAMESPACES, terminating)
        # the namespace controller's work, done at once
        seen: set[tuple[str, str]] = set()
        for rt in list(self.registry.types()):
            if not rt.namespaced or rt.storage in seen:
                continue
            seen.add(rt.storage)
            bucket = self._bucket(rt)
            for k in sorted(k for k in bucket if k[0] == ns):
                if k in bucket:
                    self._remove(rt, k, bucket[k])
        current = self._bucket(NAMESPACES).get(key)
        if current is not None:
            done = deep_copy(current)
            done["spec"]["finalizers"] = []
            self._remove(NAMESPACES, key, done)
        return answer

    def _collect_dependents(self, owner: dict[str, Any], propagation: str) -> None:
        """The garbage collector's work for ``owner``, done at once."""
        uid = owner["metadata"].get("uid")
        ns = owner["metadata"].get("namespace")
        seen: set[tuple[str, str]] = set()
        for rt in list(self.registry.types()):
            storage = rt.storage
            if storage in seen:
                continue
            seen.add(storage)
            bucket = self._objects.get(storage)
            if not bucket:
                continue
            for k, obj in list(bucket.items()):
                if ns and rt.namespaced and k[0] != ns:
                    continue
                refs = obj["metadata"].get("ownerReferences") or []
                if not any(r.get("uid") == uid for r in refs):
                    continue
                if propagation == "Orphan":
                    new = deep_copy(obj)
                    kept = [r for r in refs if r.get("uid") != uid]
                    if kept:
                        new["metadata"]["ownerReferences"] = kept
                    else:
                        new["metadata"].pop("ownerReferences", None)
                    self._commit(rt, "MODIFIED", new, obj)
                elif len(refs) == 1 or all(r.get("uid") == uid for r in refs):
                    if obj["metadata"].get("finalizers"):
                        continue
                    self._collect_dependents(obj, propagation)
                    if k in bucket:
                        self._remove(rt, k, bucket[k])

    def _bootstrap(self) -> None:
        for ns in INITIAL_NAMESPACES:
            self.create(
                NAMESPACES, None, {"metadata": {"name": ns}}, manager=APISERVER, _owned=True,
                _answer=False,
            )  # fmt: skip
        self.create(
            SERVICES,
            "default",
            {
                "metadata": {
                    "name": "kubernetes",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "clusterIP": "10.96.0.1",
                    "ports": [
                        {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}
                    ],
                },
            },
            manager=APISERVER,
            _owned=True,
            _answer=False,
        )

    def set_root_ca(self, pem: str) -> None:
        """Publish the cluster CA into every namespace's kube-root-ca.crt ConfigMap."""
        self.root_ca_pem = pem
        for (ns, name), obj in list(self._bucket(CONFIGMAPS).items()):
            if name == "kube-root-ca.crt" and obj.get("data", {}).get("ca.crt") != pem:
                new = deep_copy(obj)
                new["data"] = {"ca.crt": pem}
                self.update(
                    CONFIGMAPS, ns, name, self._out(CONFIGMAPS, new), manager=CONTROLLER_MANAGER
                )


def parse_time(value: str | None) -> float | None:
    """Seconds since the epoch for an RFC 3339 time (also MicroTime and offsets), else None."""
    if not value or not isinstance(value, str):
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
