"""JSON patch, JSON merge patch and strategic merge patch, as the real apiserver applies them.

All three are pure functions: they deep-copy what they are given and never mutate their inputs.
Errors are ``StatusError`` with the code, reason and message the apiserver answers:

- JSON patch (RFC 6902, evanphx/json-patch semantics): a body that is not a list of
  operations is ``400 BadRequest``; any operation that cannot be applied (missing path, failed
  ``test``, bad index, unknown op) is ``422 Invalid`` with the generic message
  ``the server rejected our request due to an error in our request`` (the apiserver drops
  the library's text), which kubectl prints as ``The request is invalid: ...``.
- JSON merge patch (RFC 7386): a ``null`` body is ``400 Invalid JSON Patch``.
- Strategic merge patch: only for built-in kinds; for custom resources the apiserver does not
  accept the content type and answers ``415 UnsupportedMediaType``. Lists are merged by the
  same ``patchMergeKey`` the Go types declare; the ``$patch``, ``$retainKeys``,
  ``$setElementOrder/<list>`` and ``$deleteFromPrimitiveList/<list>`` directives are honoured
  with the real ordering rules (items named in the patch come first, in patch order).

This module also holds the merge schema of the built-in kinds (which lists are keyed, by what,
which maps are atomic); ``sandbox.kube.managed`` uses the same table for server-side apply.
"""

from __future__ import annotations

import json
import marshal
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox.kube.errors import StatusError

__all__ = [
    "ANY",
    "ATOMIC",
    "Atomic",
    "KeyedList",
    "SetList",
    "Struct",
    "apply_schema_for",
    "go_format",
    "is_builtin",
    "json_copy",
    "json_patch",
    "merge_patch",
    "schema_for",
    "skeleton_for",
    "strategic_merge_patch",
    "to_json",
]

# =============================================================================================
# Copies
# =============================================================================================


def json_copy(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, strings, numbers, booleans, None).

    A round trip through ``marshal`` (in C, exact for these types) is several times faster
    than ``copy.deepcopy``; values marshal cannot carry (subclasses, other objects) fall back
    to a copy by hand, which makes plain dicts and lists and shares everything else.
    """
    try:
        return marshal.loads(marshal.dumps(value, 2))  # version 2: no shared references
    except (ValueError, TypeError):
        return _copy_by_hand(value)


def _copy_by_hand(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_by_hand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_by_hand(v) for v in value]
    return value


# =============================================================================================
# Merge schema of the built-in kinds
# =============================================================================================


@dataclass(frozen=True)
class Struct:
    """An object whose fields are merged one by one; fields not listed are untyped (``ANY``)."""

    fields: Mapping[str, Node] = field(default_factory=dict)

    def child(self, name: str) -> Node:
        return self.fields.get(name, ANY)


@dataclass(frozen=True)
class Atomic:
    """A map or struct that server-side apply owns as one leaf (``+structType=atomic``)."""


@dataclass(frozen=True)
class KeyedList:
    """A list of objects merged by key.

    ``keys`` are the server-side apply ``listMapKeys`` (with ``key_defaults`` for keys the
    apiserver defaults, like ``protocol: TCP``); ``merge_key`` is the strategic merge patch
    ``patchMergeKey``. ``atomic_for_apply`` marks the few lists SMP merges but SSA replaces.
    """

    keys: tuple[str, ...]
    item: Node
    merge_key: str
    key_defaults: Mapping[str, Any] = field(default_factory=dict)
    atomic_for_apply: bool = False


@dataclass(frozen=True)
class SetList:
    """A list of scalars with set semantics (``+listType=set``; SMP ``patchStrategy=merge``)."""


Node = Struct | Atomic | KeyedList | SetList

ANY = Struct()
ATOMIC = Atomic()

_CONDITIONS = KeyedList(("type",), ANY, "type")
_OBJECT_META = Struct(
    {
        "finalizers": SetList(),
        "ownerReferences": KeyedList(("uid",), ATOMIC, "uid"),
    }
)
_ENV_VAR = Struct(
    {
        "valueFrom": Struct(
            {
                "secretKeyRef": ATOMIC,
                "configMapKeyRef": ATOMIC,
                "fieldRef": ATOMIC,
                "resourceFieldRef": ATOMIC,
            }
        )
    }
)
_CONTAINER = Struct(
    {
        "ports": KeyedList(
            ("containerPort", "protocol"), ANY, "containerPort", {"protocol": "TCP"}
        ),
        "env": KeyedList(("name",), _ENV_VAR, "name"),
        "volumeMounts": KeyedList(("mountPath",), ANY, "mountPath"),
        "volumeDevices": KeyedList(("devicePath",), ANY, "devicePath"),
        "resources": Struct({"claims": KeyedList(("name",), ANY, "name")}),
    }
)
_CONTAINERS = KeyedList(("name",), _CONTAINER, "name")
_POD_SPEC = Struct(
    {
        "containers": _CONTAINERS,
        "initContainers": _CONTAINERS,
        "ephemeralContainers": _CONTAINERS,
        "volumes": KeyedList(("name",), ANY, "name"),
        "imagePullSecrets": KeyedList(("name",), ATOMIC, "name"),
        "hostAliases": KeyedList(("ip",), ANY, "ip"),
        "topologySpreadConstraints": KeyedList(
            ("topologyKey", "whenUnsatisfiable"), ANY, "topologyKey"
        ),
        "schedulingGates": KeyedList(("name",), ANY, "name"),
        "resourceClaims": KeyedList(("name",), ANY, "name"),
        "nodeSelector": ATOMIC,
        "affinity": Struct(
            {"nodeAffinity": Struct({"requiredDuringSchedulingIgnoredDuringExecution": ATOMIC})}
        ),
    }
)
_POD_TEMPLATE = Struct({"metadata": _OBJECT_META, "spec": _POD_SPEC})
_POD_STATUS = Struct(
    {
        "conditions": _CONDITIONS,
        "podIPs": KeyedList(("ip",), ANY, "ip"),
        "hostIPs": KeyedList(("ip",), ANY, "ip"),
    }
)
_STATUS_WITH_CONDITIONS = Struct({"conditions": _CONDITIONS})
_WORKLOAD_SPEC = Struct({"selector": ATOMIC, "template": _POD_TEMPLATE})
_JOB_SPEC = Struct({"selector": ATOMIC, "template": _POD_TEMPLATE})


def _kind(**fields: Node) -> Struct:
    return Struct({"metadata": _OBJECT_META, **fields})


_SCHEMAS: dict[tuple[str, str], Struct] = {
    ("", "Pod"): _kind(spec=_POD_SPEC, status=_POD_STATUS),
    ("", "PodTemplate"): _kind(template=_POD_TEMPLATE),
    ("", "ReplicationController"): _kind(
        spec=Struct({"selector": ATOMIC, "template": _POD_TEMPLATE}),
        status=_STATUS_WITH_CONDITIONS,
    ),
    ("", "Service"): _kind(
        spec=Struct(
            {
                "ports": KeyedList(("port", "protocol"), ANY, "port", {"protocol": "TCP"}),
                "selector": ATOMIC,
            }
        ),
        status=_STATUS_WITH_CONDITIONS,
    ),
    ("", "Node"): _kind(
        status=Struct({"conditions": _CONDITIONS, "addresses": KeyedList(("type",), ANY, "type")})
    ),
    ("", "Namespace"): _kind(status=_STATUS_WITH_CONDITIONS),
    ("", "ServiceAccount"): _kind(secrets=KeyedList(("name",), ANY, "name")),
    ("", "PersistentVolumeClaim"): _kind(status=_STATUS_WITH_CONDITIONS),
    ("apps", "Deployment"): _kind(spec=_WORKLOAD_SPEC, status=_STATUS_WITH_CONDITIONS),
    ("apps", "ReplicaSet"): _kind(spec=_WORKLOAD_SPEC, status=_STATUS_WITH_CONDITIONS),
    ("apps", "StatefulSet"): _kind(spec=_WORKLOAD_SPEC, status=_STATUS_WITH_CONDITIONS),
    ("apps", "DaemonSet"): _kind(spec=_WORKLOAD_SPEC, status=_STATUS_WITH_CONDITIONS),
    ("batch", "Job"): _kind(
        spec=_JOB_SPEC,
        status=Struct({"conditions": KeyedList(("type",), ANY, "type", atomic_for_apply=True)}),
    ),
    ("batch", "CronJob"): _kind(
        spec=Struct({"jobTemplate": Struct({"metadata": _OBJECT_META, "spec": _JOB_SPEC})})
    ),
    ("policy", "PodDisruptionBudget"): _kind(
        spec=Struct({"selector": ATOMIC}), status=_STATUS_WITH_CONDITIONS
    ),
    ("autoscaling", "HorizontalPodAutoscaler"): _kind(status=_STATUS_WITH_CONDITIONS),
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _kind(status=_STATUS_WITH_CONDITIONS),
}

_BUILTIN_GROUPS = frozenset(
    {
        "",
        "apps",
        "batch",
        "autoscaling",
        "policy",
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "storage.k8s.io",
        "scheduling.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
        "apiextensions.k8s.io",
        "admissionregistration.k8s.io",
        "certificates.k8s.io",
        "node.k8s.io",
        "flowcontrol.apiserver.k8s.io",
        "apiregistration.k8s.io",
        "authentication.k8s.io",
        "authorization.k8s.io",
        "resource.k8s.io",
        "internal.apiserver.k8s.io",
        "storagemigration.k8s.io",
    }
)


def _group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def is_builtin(api_version: str, kind: str = "") -> bool:
    """Whether objects of this API version are served by the apiserver itself (not a CRD).

    Decided by API group: every group the apiserver serves natively counts as built-in.
    """
    del kind
    return _group_of(api_version) in _BUILTIN_GROUPS


def schema_for(kind: str, api_version: str, *, custom: bool | None = None) -> Struct | None:
    """The strategic-merge schema for a kind, or ``None`` for a custom resource."""
    if custom is None:
        custom = not is_builtin(api_version, kind)
    if custom:
        return None
    return _SCHEMAS.get((_group_of(api_version), kind), _kind())


def apply_schema_for(kind: str, api_version: str, *, custom: bool | None = None) -> Struct:
    """The schema server-side apply uses: the built-in one, or ObjectMeta only for a CR.

    Custom resources have no list keys we can know here, so their lists are atomic (the
    default for CRD schemas without ``x-kubernetes-list-type``).
    """
    return schema_for(kind, api_version, custom=custom) or _kind()


_TEMPLATE_SKELETON: dict[str, Any] = {
    "metadata": {"creationTimestamp": None},
    "spec": {"containers": None},
}
_SKELETONS: dict[tuple[str, str], dict[str, Any]] = {
    ("", "Pod"): {"spec": {"containers": None}, "status": {}},
    ("", "PodTemplate"): {"template": _TEMPLATE_SKELETON},
    ("", "ReplicationController"): {"spec": {}, "status": {}},
    ("", "Service"): {"spec": {}, "status": {"loadBalancer": {}}},
    ("", "Namespace"): {"spec": {}, "status": {}},
    ("", "Node"): {
        "spec": {},
        "status": {"daemonEndpoints": {"kubeletEndpoint": {}}, "nodeInfo": {}},
    },
    ("", "PersistentVolumeClaim"): {"spec": {"resources": {}}, "status": {}},
    ("", "PersistentVolume"): {"spec": {}, "status": {}},
    ("apps", "Deployment"): {
        "spec": {"selector": None, "template": _TEMPLATE_SKELETON, "strategy": {}},
        "status": {},
    },
    ("apps", "ReplicaSet"): {
        "spec": {"selector": None, "template": _TEMPLATE_SKELETON},
        "status": {},
    },
    ("apps", "StatefulSet"): {
        "spec": {"selector": None, "template": _TEMPLATE_SKELETON, "updateStrategy": {}},
        "status": {},
    },
    ("apps", "DaemonSet"): {
        "spec": {"selector": None, "template": _TEMPLATE_SKELETON, "updateStrategy": {}},
        "status": {},
    },
    ("batch", "Job"): {"spec": {"template": _TEMPLATE_SKELETON}, "status": {}},
    ("batch", "CronJob"): {
        "spec": {
            "jobTemplate": {
                "metadata": {"creationTimestamp": None},
                "spec": {"template": _TEMPLATE_SKELETON},
            }
        },
        "status": {},
    },
    ("networking.k8s.io", "Ingress"): {"spec": {}, "status": {"loadBalancer": {}}},
    ("policy", "PodDisruptionBudget"): {"spec": {}, "status": {}},
    ("autoscaling", "HorizontalPodAutoscaler"): {"spec": {"scaleTargetRef": {}}, "status": {}},
    ("rbac.authorization.k8s.io", "Role"): {"rules": None},
    ("rbac.authorization.k8s.io", "ClusterRole"): {"rules": None},
    ("rbac.authorization.k8s.io", "RoleBinding"): {"roleRef": {}},
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): {"roleRef": {}},
}


def skeleton_for(kind: str, api_version: str, *, custom: bool | None = None) -> dict[str, Any]:
    """The zero value of a kind as the apiserver's field manager sees it before a create.

    Go structs that are not pointers are always present (``spec``, ``spec.template``, ...),
    so a create does not count them as added; custom resources start from nothing.
    """
    if custom is None:
        custom = not is_builtin(api_version, kind)
    if custom:
        return {}
    base = json_copy(_SKELETONS.get((_group_of(api_version), kind), {}))
    return {"metadata": {"creationTimestamp": None}, **base}


# =============================================================================================
# Go-style value formatting (error messages quote values the way Go's %v prints them)
# =============================================================================================


def go_format(value: Any) -> str:
    """``fmt.Sprintf("%v", v)`` for a JSON value decoded by Go (``map[...]``, ``[a b]``)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{go_format(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, Sequence):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    return str(value)


def _go_type(value: Any) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64" if isinstance(value, float) else "int64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    return "[]interface {}"


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of two JSON values (``True`` is not ``1``; ``1`` is ``1.0``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# =============================================================================================
# JSON patch (RFC 6902)
# =============================================================================================

_MAX_JSON_PATCH_OPERATIONS = 10000


class _OpFailed(Exception):
    """An operation could not be applied; the apiserver answers the generic 422."""


def _rejected() -> StatusError:
    return StatusError(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
        details={},
    )


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise _OpFailed("operation missing path field")
    if path == "":
        return []
    if not path.startswith("/"):
        raise _OpFailed(f"invalid JSON pointer: {path}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(token: str, size: int, *, for_add: bool) -> int:
    if for_add and token == "-":
        return size
    if not re.fullmatch(r"[+-]?[0-9]+", token):
        raise _OpFailed(f"invalid index {token!r}")
    idx = int(token)
    limit = size + 1 if for_add else size
    if idx >= limit or idx < -limit:
        raise _OpFailed(f"Unable to access invalid index: {idx}")
    if idx < 0:
        idx += limit
    return idx


def _parent(doc: Any, tokens: list[str]) -> Any:
    cur = doc
    for token in tokens[:-1]:
        if isinstance(cur, dict):
            if token not in cur:
                raise _OpFailed("doc is missing path")
            cur = cur[token]
        elif isinstance(cur, list):
            cur = cur[_index(token, len(cur), for_add=False)]
        else:
            raise _OpFailed("doc is missing path")
    if not isinstance(cur, (dict, list)):
        raise _OpFailed("doc is missing path")
    return cur


def _get_at(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise _OpFailed("operation does not apply to the document root")
    container = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(container, dict):
        if last not in container:
            raise _OpFailed("missing value")
        return container[last]
    return container[_index(last, len(container), for_add=False)]


def _add_at(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        raise _OpFailed('add operation does not apply: doc is missing path: ""')
    container = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(container, dict):
        container[last] = value
    else:
        container.insert(_index(last, len(container), for_add=True), value)
    return doc


def _remove_at(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise _OpFailed("unable to remove the document root")
    container = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(container, dict):
        if last not in container:
            raise _OpFailed(f"Unable to remove nonexistent key: {last}: missing value")
        del container[last]
    else:
        del container[_index(last, len(container), for_add=False)]
    return doc


def _replace_at(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        raise _OpFailed('replace operation does not apply: doc is missing path: ""')
    container = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(container, dict):
        if last not in container:
            raise _OpFailed("replace operation does not apply: doc is missing key")
        container[last] = value
    else:
        container[_index(last, len(container), for_add=False)] = value
    return doc


def json_patch(obj: dict[str, Any], ops: Any) -> dict[str, Any]:
    """Apply an RFC 6902 JSON patch (``application/json-patch+json``) to a copy of ``obj``."""
    if not isinstance(ops, list):
        raise StatusError(
            400,
            "BadRequest",
            f"json: cannot unmarshal {_json_kind(ops)} into Go value of type jsonpatch.Patch",
        )
    for op in ops:
        if not isinstance(op, dict):
            raise StatusError(
                400,
                "BadRequest",
                f"json: cannot unmarshal {_json_kind(op)} into Go value of type jsonpatch.Operation",
            )
    if len(ops) > _MAX_JSON_PATCH_OPERATIONS:
        raise StatusError(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: The allowed maximum operations in a JSON patch is "
            f"{_MAX_JSON_PATCH_OPERATIONS}, got {len(ops)}",
        )
    doc: Any = json_copy(obj)
    try:
        for op in ops:
            doc = _apply_operation(doc, op)
    except _OpFailed:
        raise _rejected() from None
    if not isinstance(doc, dict):
        raise _rejected()
    return doc


def _apply_operation(doc: Any, op: dict[str, Any]) -> Any:
    kind = op.get("op")
    path = _pointer(op.get("path"))
    value = json_copy(op.get("value"))
    if kind == "add":
        return _add_at(doc, path, value)
    if kind == "remove":
        return _remove_at(doc, path)
    if kind == "replace":
        return _replace_at(doc, path, value)
    if kind == "test":
        try:
            current = _get_at(doc, path)
        except _OpFailed:
            if value is None:
                return doc
            raise
        if not _json_equal(current, value):
            raise _OpFailed("test failed")
        return doc
    if kind in ("move", "copy"):
        source = _pointer(op.get("from"))
        moved = json_copy(_get_at(doc, source))
        if kind == "move":
            if path[: len(source)] == source and len(path) > len(source):
                raise _OpFailed("cannot move a value into one of its children")
            if path == source:
                return doc
            doc = _remove_at(doc, source)
        return _add_at(doc, path, moved)
    raise _OpFailed(f"Unexpected kind: {kind if isinstance(kind, str) else 'unknown'}")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "array"


# =============================================================================================
# JSON merge patch (RFC 7386)
# =============================================================================================


def merge_patch(obj: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply an RFC 7386 JSON merge patch (``application/merge-patch+json``) to a copy."""
    if not isinstance(patch, dict):
        raise StatusError(400, "BadRequest", "Invalid JSON Patch")
    result = _merge_patch_value(json_copy(obj), patch)
    assert isinstance(result, dict)
    return result


def _merge_patch_value(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return json_copy(patch)
    result = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch_value(result.get(key), value)
    return result


# =============================================================================================
# Strategic merge patch
# =============================================================================================

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVES = "$deleteFromPrimitiveList/"


class _SmpError(Exception):
    def __init__(self, status: StatusError) -> None:
        super().__init__(status.message)
        self.status = status


def _bad_request(message: str) -> _SmpError:
    return _SmpError(StatusError(400, "BadRequest", message))


def _plain_error(message: str) -> _SmpError:
    """A library error the apiserver does not translate: 500 with an empty (Unknown) reason."""
    return _SmpError(StatusError(500, "", message))


def _unsupported_media_type() -> StatusError:
    return StatusError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
    )


def strategic_merge_patch(
    obj: dict[str, Any],
    patch: Any,
    *,
    kind: str,
    api_version: str,
    custom: bool | None = None,
) -> dict[str, Any]:
    """Apply a strategic merge patch to a copy of ``obj`` (a built-in ``kind``).

    ``custom`` says whether the type comes from a CRD; by default it is inferred from the API
    group. Custom resources raise ``415 UnsupportedMediaType`` like the real server.
    """
    schema = schema_for(kind, api_version, custom=custom)
    if schema is None:
        raise _unsupported_media_type()
    if not isinstance(patch, dict):
        raise StatusError(
            400,
            "BadRequest",
            f"json: cannot unmarshal {_json_kind(patch)} into Go value of type "
            "map[string]interface {}",
        )
    try:
        result = _smp_map(json_copy(obj), json_copy(patch), schema)
    except _SmpError as exc:
        raise exc.status from None
    return _strip_directives(result)


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [
            _strip_directives(v)
            for v in value
            if not (isinstance(v, dict) and v.get(_DIRECTIVE) in ("delete", "replace"))
        ]
    return value


def _discard_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _discard_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_discard_nulls(v) for v in value]
    return value


def _list_node(node: Node, name: str) -> Node:
    if isinstance(node, Struct):
        return node.child(name)
    return ANY


def _smp_map(original: dict[str, Any], patch: dict[str, Any], node: Node) -> dict[str, Any]:
    if _DIRECTIVE in patch:
        directive = patch[_DIRECTIVE]
        if directive == "replace":
            del patch[_DIRECTIVE]
            return _discard_nulls(patch)
        if directive == "delete":
            return {}
        raise _plain_error(f"unknown patch type: {go_format(directive)} in map: {go_format(patch)}")

    if _RETAIN_KEYS in patch:
        retain = patch.pop(_RETAIN_KEYS)
        if not isinstance(retain, list):
            raise _bad_request("invalid patch format of retainKeys")
        keep = {k for k in retain if isinstance(k, str)}
        for key, value in patch.items():
            if value is None or key.startswith(_DELETE_PRIMITIVES) or key.startswith(_SET_ORDER):
                continue
            if key not in keep:
                raise _bad_request("invalid patch format of retainKeys")
        for key in list(original):
            if key not in keep:
                del original[key]

    _merge_ordered_lists(original, patch, node)

    for key, patch_value in list(patch.items()):
        delete_list = False
        if key.startswith(_DELETE_PRIMITIVES):
            key = key[len(_DELETE_PRIMITIVES) :]
            delete_list = True
        elif key.startswith("$"):
            continue

        if patch_value is None:
            original.pop(key, None)
            continue
        if key not in original:
            if not delete_list:
                original[key] = _strip_directives(_discard_nulls(patch_value))
            continue
        current = original[key]
        if isinstance(current, dict) and isinstance(patch_value, dict):
            if not delete_list:
                original[key] = _smp_map(current, patch_value, _list_node(node, key))
        elif isinstance(current, list) and isinstance(patch_value, list):
            original[key] = _smp_list(current, patch_value, _list_node(node, key), delete_list)
        elif not delete_list:
            original[key] = _strip_directives(_discard_nulls(patch_value))
    return original


def _merge_key_of(node: Node) -> str:
    return node.merge_key if isinstance(node, KeyedList) else ""


def _smp_list(
    original: list[Any], patch: list[Any], node: Node, delete_list: bool = False
) -> list[Any]:
    if delete_list:
        return _merge_slice(original, patch, _merge_key_of(node), node, delete_list=True)
    if isinstance(node, (KeyedList, SetList)):
        return _merge_slice(original, patch, _merge_key_of(node), node)
    return _strip_directives(_discard_nulls(patch))


def _element_kind(*lists: list[Any]) -> str | None:
    """``"map"``, ``"scalar"`` or ``None`` (no elements); lists of lists are an error."""
    found: str | None = None
    for items in lists:
        for item in items:
            if isinstance(item, list):
                raise _SmpError(
                    StatusError(
                        422,
                        "Invalid",
                        "the server rejected our request due to an error in our request",
                        details={},
                    )
                )
            current = "map" if isinstance(item, dict) else "scalar"
            if found is None:
                found = current
            elif found != current:
                raise _plain_error(
                    "expected slice of only map or only non-map elements, but got a mix"
                )
    return found


def _merge_slice(
    original: list[Any],
    patch: list[Any],
    merge_key: str,
    node: Node,
    *,
    delete_list: bool = False,
) -> list[Any]:
    if not original and not patch:
        return original
    kind = _element_kind(original, patch)
    if kind != "map":
        if delete_list:
            return [item for item in original if not any(_json_equal(item, p) for p in patch)]
        merged = _dedupe_scalars([*original, *patch])
    else:
        if not merge_key:
            raise _plain_error("cannot merge lists without merge key")
        original, patch = _special_elements(original, patch, merge_key)
        merged = list(original)
        item_node = node.item if isinstance(node, KeyedList) else ANY
        for item in patch:
            if merge_key not in item:
                raise _plain_error(
                    f"map: {go_format(item)} does not contain declared merge key: {merge_key}"
                )
            position = _find_by_key(merged, merge_key, item[merge_key])
            if position >= 0:
                merged[position] = _smp_map(merged[position], item, item_node)
            else:
                merged.append(_strip_directives(item))
    if kind == "map":
        patch_items, server_only = _partition_maps(merged, patch, merge_key)
    else:
        patch_items, server_only = _partition_scalars(merged, patch)
    return _normalize_order(patch_items, server_only, patch, original, merge_key, kind or "scalar")


def _dedupe_scalars(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if not any(_json_equal(item, seen) for seen in out):
            out.append(item)
    return out


def _find_by_key(items: list[Any], key: str, value: Any) -> int:
    for i, item in enumerate(items):
        if isinstance(item, dict) and key in item and _json_equal(item[key], value):
            return i
    return -1


def _special_elements(
    original: list[Any], patch: list[Any], merge_key: str
) -> tuple[list[Any], list[Any]]:
    plain: list[Any] = []
    replace = False
    for item in patch:
        if _DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[_DIRECTIVE]
        if directive == "delete":
            if merge_key not in item:
                raise _plain_error(
                    f"map: {go_format(item)} does not contain declared merge key: {merge_key}"
                )
            original = [
                o
                for o in original
                if not (isinstance(o, dict) and _json_equal(o.get(merge_key), item[merge_key]))
            ]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise _plain_error("merging lists cannot yet be specified in the patch")
        else:
            raise _plain_error(
                f"unknown patch type: {go_format(directive)} in map: {go_format(item)}"
            )
    if replace:
        return [_strip_directives(_discard_nulls(p)) for p in plain], []
    return original, plain


def _in_list(item: Any, items: list[Any], merge_key: str, kind: str) -> int:
    for i, candidate in enumerate(items):
        if kind == "map":
            if (
                isinstance(candidate, dict)
                and isinstance(item, dict)
                and merge_key in candidate
                and _json_equal(candidate[merge_key], item.get(merge_key))
            ):
                return i
        elif _json_equal(candidate, item):
            return i
    return -1


def _partition_maps(
    merged: list[Any], reference: list[Any], merge_key: str
) -> tuple[list[Any], list[Any]]:
    patch_items: list[Any] = []
    server_only: list[Any] = []
    for item in merged:
        if not isinstance(item, dict) or merge_key not in item:
            raise _plain_error(
                f"map: {go_format(item)} does not contain declared merge key: {merge_key}"
            )
        if _in_list(item, reference, merge_key, "map") >= 0:
            patch_items.append(item)
        else:
            server_only.append(item)
    return patch_items, server_only


def _partition_scalars(merged: list[Any], reference: list[Any]) -> tuple[list[Any], list[Any]]:
    patch_items = [m for m in merged if any(_json_equal(m, r) for r in reference)]
    server_only = [m for m in merged if not any(_json_equal(m, r) for r in reference)]
    return patch_items, server_only


def _normalize_order(
    patch_items: list[Any],
    server_only: list[Any],
    patch_order: list[Any],
    server_order: list[Any],
    merge_key: str,
    kind: str,
) -> list[Any]:
    """Patch items in patch order, server-only items in live order, interleaved by live order."""

    def by(order: list[Any]) -> Any:
        def key(item: Any) -> int:
            i = _in_list(item, order, merge_key, kind)
            return i if i >= 0 else len(order)

        return key

    left = sorted(server_only, key=by(server_order))
    right = sorted(patch_items, key=by(patch_order))
    out: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if i >= len(left):
            out.append(right[j])
            j += 1
        elif j >= len(right):
            out.append(left[i])
            i += 1
        else:
            li = _in_list(left[i], server_order, merge_key, kind)
            ri = _in_list(right[j], server_order, merge_key, kind)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _merge_ordered_lists(original: dict[str, Any], patch: dict[str, Any], node: Node) -> None:
    """Handle every ``$setElementOrder/<list>`` directive (and its list) of one map."""
    for key in [k for k in patch if k.startswith(_SET_ORDER)]:
        order = patch[key]
        name = key[len(_SET_ORDER) :]
        if not name:
            raise _bad_request("invalid patch format of setElementOrder list")
        if not isinstance(order, list):
            raise _plain_error(f"expected a []interface {{}}, but received a {_go_type(order)}")
        list_node = _list_node(node, name)
        merge_key = _merge_key_of(list_node)
        found_original = isinstance(original.get(name), list)
        found_patch = name in patch
        original_list = original.get(name) if found_original else []
        patch_list = patch.get(name) if found_patch else []
        if found_patch and not isinstance(patch_list, list):
            raise _plain_error(
                f"expected a []interface {{}}, but received a {_go_type(patch_list)}"
            )
        if not found_original and not found_patch:
            del patch[key]
            continue
        if found_original and found_patch:
            merged = _smp_list(list(original_list), list(patch_list), list_node)
        elif found_patch:
            merged = _strip_directives(_discard_nulls(patch_list))
        else:
            merged = list(original_list)
        kind = _element_kind(original_list, patch_list, order) or ("map" if merge_key else "scalar")
        if kind == "map":
            if not merge_key:
                raise _plain_error("cannot merge lists without merge key")
            patch_items, server_only = _partition_maps(merged, order, merge_key)
        else:
            patch_items, server_only = _partition_scalars(merged, order)
        original[name] = _normalize_order(
            patch_items, server_only, order, list(original_list), merge_key, kind
        )
        patch.pop(name, None)
        del patch[key]


def to_json(value: Any) -> str:
    """Compact JSON like Go's encoder (sorted keys, HTML characters escaped)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
