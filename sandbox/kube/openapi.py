"""The OpenAPI documents a sandbox cluster serves, and unknown-field checks built on them.

kubectl 1.32 reads ``/openapi/v3`` to learn whether the server validates fields itself (it
looks for a ``fieldValidation`` parameter on each kind's PATCH operation) and then sends
``fieldValidation=Strict`` instead of validating client-side; ``kubectl explain`` and
client-side apply read the schemas. The schemas are derived once per process from the model
classes of the official Python client (their ``openapi_types``/``attribute_map`` are generated
from the real Kubernetes OpenAPI spec), plus the list-merge annotations strategic merge patch
needs. Documents for built-in group-versions are built lazily, once, and shared by every
cluster; a cluster's CRDs add their own group-versions from their ``openAPIV3Schema``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import weakref
from typing import Any

from sandbox.kube.resources import BUILTIN_TYPES, Registry, ResourceType

# python model class -> (root kinds) for each built-in resource
_ROOTS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("", "v1", "namespaces"): ("V1Namespace", "V1NamespaceList"),
    ("", "v1", "configmaps"): ("V1ConfigMap", "V1ConfigMapList"),
    ("", "v1", "secrets"): ("V1Secret", "V1SecretList"),
    ("", "v1", "services"): ("V1Service", "V1ServiceList"),
    ("", "v1", "serviceaccounts"): ("V1ServiceAccount", "V1ServiceAccountList"),
    ("", "v1", "events"): ("CoreV1Event", "CoreV1EventList"),
    ("", "v1", "pods"): ("V1Pod", "V1PodList"),
    ("apps", "v1", "deployments"): ("V1Deployment", "V1DeploymentList"),
    ("apps", "v1", "replicasets"): ("V1ReplicaSet", "V1ReplicaSetList"),
    ("apps", "v1", "statefulsets"): ("V1StatefulSet", "V1StatefulSetList"),
    ("apps", "v1", "daemonsets"): ("V1DaemonSet", "V1DaemonSetList"),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions"): (
        "V1CustomResourceDefinition",
        "V1CustomResourceDefinitionList",
    ),
    ("authentication.k8s.io", "v1", "tokenreviews"): ("V1TokenReview", ""),
    ("authentication.k8s.io", "v1", "selfsubjectreviews"): ("V1SelfSubjectReview", ""),
    ("authorization.k8s.io", "v1", "selfsubjectaccessreviews"): (
        "V1SelfSubjectAccessReview",
        "",
    ),
    ("events.k8s.io", "v1", "events"): ("EventsV1Event", "EventsV1EventList"),
}
_EXTRA_MODELS = ("V1Status", "V1DeleteOptions", "V1Scale", "V1WatchEvent", "V1Patch")

META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_META_MODELS = {
    "V1ObjectMeta", "V1ListMeta", "V1LabelSelector", "V1LabelSelectorRequirement",
    "V1OwnerReference", "V1ManagedFieldsEntry", "V1Status", "V1StatusDetails", "V1StatusCause",
    "V1DeleteOptions", "V1Preconditions", "V1Condition", "V1WatchEvent", "V1Patch",
}  # fmt: skip
_APPS_PREFIXES = (
    "V1Deployment", "V1ReplicaSet", "V1StatefulSet", "V1DaemonSet", "V1RollingUpdateDeployment",
    "V1RollingUpdateStatefulSetStrategy", "V1RollingUpdateDaemonSet",
)  # fmt: skip
_APIEXT_PREFIXES = (
    "V1CustomResource", "V1JSONSchemaProps", "V1ExternalDocumentation", "V1ValidationRule",
    "V1WebhookConversion", "V1SelectableField",
)  # fmt: skip

# list-merge annotations (what strategic merge patch and apply need), keyed by definition name
_LIST_META: dict[str, dict[str, dict[str, Any]]] = {
    "io.k8s.api.core.v1.PodSpec": {
        "containers": {"merge": "name", "keys": ["name"]},
        "initContainers": {"merge": "name", "keys": ["name"]},
        "ephemeralContainers": {"merge": "name", "keys": ["name"]},
        "volumes": {"merge": "name", "keys": ["name"], "strategy": "merge,retainKeys"},
        "imagePullSecrets": {"merge": "name", "keys": ["name"]},
        "tolerations": {"atomic": True},
        "hostAliases": {"merge": "ip", "keys": ["ip"]},
    },
    "io.k8s.api.core.v1.Container": {
        "env": {"merge": "name", "keys": ["name"]},
        "ports": {"merge": "containerPort", "keys": ["containerPort", "protocol"]},
        "volumeMounts": {"merge": "mountPath", "keys": ["mountPath"]},
        "volumeDevices": {"merge": "devicePath", "keys": ["devicePath"]},
        "envFrom": {"atomic": True},
        "args": {"atomic": True},
        "command": {"atomic": True},
    },
    "io.k8s.api.core.v1.ServiceSpec": {
        "ports": {"merge": "port", "keys": ["port", "protocol"]},
        "clusterIPs": {"atomic": True},
        "ipFamilies": {"atomic": True},
        "externalIPs": {"atomic": True},
    },
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {
        "ownerReferences": {"merge": "uid", "keys": ["uid"]},
        "finalizers": {"set": True},
        "managedFields": {"atomic": True},
    },
}
for _status in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"):
    _LIST_META[f"io.k8s.api.apps.v1.{_status}Status"] = {
        "conditions": {"merge": "type", "keys": ["type"]}
    }
for _status in ("Pod", "Namespace", "Service"):
    _LIST_META[f"io.k8s.api.core.v1.{_status}Status"] = {
        "conditions": {"merge": "type", "keys": ["type"]}
    }

_INT_OR_STRING = {
    ("io.k8s.api.core.v1.ServicePort", "targetPort"),
    ("io.k8s.api.apps.v1.RollingUpdateDeployment", "maxSurge"),
    ("io.k8s.api.apps.v1.RollingUpdateDeployment", "maxUnavailable"),
    ("io.k8s.api.apps.v1.RollingUpdateDaemonSet", "maxSurge"),
    ("io.k8s.api.apps.v1.RollingUpdateDaemonSet", "maxUnavailable"),
    ("io.k8s.api.apps.v1.RollingUpdateStatefulSetStrategy", "maxUnavailable"),
    ("io.k8s.api.core.v1.HTTPGetAction", "port"),
    ("io.k8s.api.core.v1.TCPSocketAction", "port"),
}


def definition_name(cls_name: str) -> str:
    """The Go OpenAPI definition name for a Python client model class."""
    if cls_name in _META_MODELS:
        return META + cls_name[2:]
    for prefix, pkg in (
        ("CoreV1", "io.k8s.api.core.v1."),
        ("EventsV1", "io.k8s.api.events.v1."),
        ("ApiextensionsV1", "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1."),
        ("AuthenticationV1", "io.k8s.api.authentication.v1."),
    ):
        if cls_name.startswith(prefix):
            return pkg + cls_name[len(prefix) :]
    bare = re.sub(r"^V\d+((alpha|beta)\d+)?", "", cls_name)
    if cls_name.startswith(_APPS_PREFIXES):
        return "io.k8s.api.apps.v1." + bare
    if cls_name.startswith(_APIEXT_PREFIXES):
        return "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1." + bare
    if cls_name.startswith(("V1TokenReview", "V1UserInfo", "V1SelfSubjectReview")):
        return "io.k8s.api.authentication.v1." + bare
    if cls_name.startswith(
        ("V1SelfSubjectAccessReview", "V1ResourceAttributes", "V1NonResourceAttributes",
         "V1SubjectAccessReviewStatus", "V1FieldSelectorAttributes", "V1LabelSelectorAttributes")
    ):  # fmt: skip
        return "io.k8s.api.authorization.v1." + bare
    if cls_name.startswith("V1Scale"):
        return "io.k8s.api.autoscaling.v1." + bare
    return "io.k8s.api.core.v1." + bare


class _Schemas:
    """Definitions derived from the client's models: {definition name: schema (with $refs)}."""

    def __init__(self) -> None:
        from kubernetes.client import models

        self.models = models
        self.defs: dict[str, dict[str, Any]] = {}
        self.fields: dict[str, dict[str, Any]] = {}  # def -> {json field: type descriptor}
        self.root_of: dict[tuple[str, str, str], str] = {}
        for key, (kind_cls, list_cls) in _ROOTS.items():
            self.root_of[key] = self._model(kind_cls)
            if list_cls:
                self._model(list_cls)
        for extra in _EXTRA_MODELS:
            if hasattr(models, extra):
                self._model(extra)
        gvks: dict[str, tuple[str, str, str]] = {}
        for t in BUILTIN_TYPES:
            root = _ROOTS.get((t.group, t.version, t.plural))
            if root:
                gvks[definition_name(root[0])] = (t.group, t.version, t.kind)
                if root[1]:
                    gvks[definition_name(root[1])] = (t.group, t.version, t.list_kind)
        gvks[META + "Status"] = ("", "v1", "Status")
        gvks[META + "DeleteOptions"] = ("", "v1", "DeleteOptions")
        gvks["io.k8s.api.autoscaling.v1.Scale"] = ("autoscaling", "v1", "Scale")
        for name, gvk in gvks.items():
            if name in self.defs:
                self.defs[name]["x-kubernetes-group-version-kind"] = [
                    {"group": gvk[0], "kind": gvk[2], "version": gvk[1]}
                ]

    def _model(self, cls_name: str) -> str:
        name = definition_name(cls_name)
        if name in self.defs:
            return name
        cls = getattr(self.models, cls_name)
        schema: dict[str, Any] = {"type": "object", "properties": {}}
        self.defs[name] = schema
        doc = (cls.__doc__ or "").strip()
        if doc and "NOTE: This class is auto generated" not in doc:
            schema["description"] = doc.splitlines()[0]
        fields: dict[str, Any] = {}
        for attr, typ in cls.openapi_types.items():
            json_name = cls.attribute_map[attr]
            prop = self._type(typ, name, json_name)
            fields[json_name] = prop
            meta = _LIST_META.get(name, {}).get(json_name)
            if meta and prop.get("type") == "array":
                if meta.get("atomic"):
                    prop["x-kubernetes-list-type"] = "atomic"
                elif meta.get("set"):
                    prop["x-kubernetes-list-type"] = "set"
                    prop["x-kubernetes-patch-strategy"] = "merge"
                else:
                    prop["x-kubernetes-list-type"] = "map"
                    prop["x-kubernetes-list-map-keys"] = meta["keys"]
                    prop["x-kubernetes-patch-merge-key"] = meta["merge"]
                    prop["x-kubernetes-patch-strategy"] = meta.get("strategy", "merge")
            if (name, json_name) in _INT_OR_STRING:
                prop.clear()
                prop.update({"x-kubernetes-int-or-string": True, "format": "int-or-string"})
            schema["properties"][json_name] = prop
        self.fields[name] = fields
        return name

    def _type(self, typ: str, owner: str, field_name: str) -> dict[str, Any]:
        typ = typ.strip()
        if typ.startswith("List[") and typ.endswith("]"):
            return {"type": "array", "items": self._type(typ[5:-1], owner, field_name)}
        if typ.startswith("Dict[str,") and typ.endswith("]"):
            inner = typ[len("Dict[str,") : -1]
            return {"type": "object", "additionalProperties": self._type(inner, owner, field_name)}
        if typ == "str":
            return {"type": "string"}
        if typ == "int":
            return {"type": "integer", "format": "int64"}
        if typ == "float":
            return {"type": "number", "format": "double"}
        if typ == "bool":
            return {"type": "boolean"}
        if typ == "datetime":
            return {"type": "string", "format": "date-time"}
        if typ in ("bytes", "bytearray"):
            return {"type": "string", "format": "byte"}
        if typ == "object":
            return {}
        if hasattr(self.models, typ):
            return {"$ref": "#/definitions/" + self._model(typ)}
        return {}


_lock = threading.Lock()
_warm_lock = threading.Lock()  # never held while building, so warm_up() never waits for a build
_schemas: _Schemas | None = None
_warming = False
_builtin_v3: dict[str, dict[str, Any]] = {}
_builtin_v2: dict[str, Any] | None = None
_per_registry: weakref.WeakKeyDictionary[Registry, dict[str, Any]] = weakref.WeakKeyDictionary()


def warm_up() -> None:
    """Build the schemas in a background thread (importing the client's models takes ~1 s),
    so the first write or OpenAPI request of a freshly started fleet does not wait for it."""
    global _warming
    if _schemas is not None or _warming:
        return
    with _warm_lock:
        if _schemas is not None or _warming:
            return
        _warming = True
    threading.Thread(target=schemas, name="openapi-warm-up", daemon=True).start()


def schemas() -> _Schemas:
    global _schemas
    if _schemas is None:
        with _lock:
            if _schemas is None:
                _schemas = _Schemas()
    return _schemas


def _rewrite_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                out[k] = prefix + v.rsplit("/", 1)[-1]
            else:
                out[k] = _rewrite_refs(v, prefix)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, prefix) for v in node]
    return node


def _closure(roots: list[str]) -> list[str]:
    s = schemas()
    seen: list[str] = []
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name not in s.defs:
            continue
        seen.append(name)
        for ref in re.findall(r'"\$ref": "#/definitions/([^"]+)"', json.dumps(s.defs[name])):
            stack.append(ref)
    return sorted(seen)


# ------------------------------------------------------------------------------------------------
# Paths


def _params(*names: str) -> list[dict[str, Any]]:
    descs = {
        "dryRun": "When present, indicates that modifications should not be persisted.",
        "fieldManager": "fieldManager is a name associated with the actor or entity that is "
        "making these changes.",
        "fieldValidation": "fieldValidation instructs the server on how to handle objects in "
        "the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values "
        "are: - Ignore - Warn - Strict",
        "force": 'Force is going to "force" Apply requests.',
        "pretty": "If 'true', then the output is pretty printed.",
        "labelSelector": "A selector to restrict the list of returned objects by their labels.",
        "fieldSelector": "A selector to restrict the list of returned objects by their fields.",
        "limit": "limit is a maximum number of responses to return for a list call.",
        "continue": "The continue option should be set when retrieving more results from the "
        "server.",
        "resourceVersion": "resourceVersion sets a constraint on what resource versions a "
        "request may be served from.",
        "resourceVersionMatch": "resourceVersionMatch determines how resourceVersion is "
        "applied to list calls.",
        "timeoutSeconds": "Timeout for the list/watch call.",
        "watch": "Watch for changes to the described resources.",
        "allowWatchBookmarks": 'allowWatchBookmarks requests watch events with type "BOOKMARK".',
        "sendInitialEvents": "`sendInitialEvents=true` may be set together with `watch=true`.",
        "gracePeriodSeconds": "The duration in seconds before the object should be deleted.",
        "propagationPolicy": "Whether and how garbage collection will be performed.",
        "orphanDependents": "Deprecated: please use the PropagationPolicy.",
    }
    types = {
        "force": "boolean", "limit": "integer", "timeoutSeconds": "integer", "watch": "boolean",
        "allowWatchBookmarks": "boolean", "sendInitialEvents": "boolean",
        "gracePeriodSeconds": "integer", "orphanDependents": "boolean",
    }  # fmt: skip
    out = []
    for n in names:
        out.append(
            {
                "name": n,
                "in": "query",
                "description": descs.get(n, n),
                "schema": {"type": types.get(n, "string"), "uniqueItems": True},
            }
        )
    return out


LIST_PARAMS = (
    "allowWatchBookmarks", "continue", "fieldSelector", "labelSelector", "limit",
    "resourceVersion", "resourceVersionMatch", "sendInitialEvents", "timeoutSeconds", "watch",
)  # fmt: skip
WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")
PATCH_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force")
DELETE_PARAMS = ("dryRun", "gracePeriodSeconds", "orphanDependents", "propagationPolicy")
PATCH_CONTENT = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
# custom resources take no strategic merge patch; kubectl reads this to choose a merge patch
CR_PATCH_CONTENT = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
)


def _op_id(verb: str, rt: ResourceType, suffix: str = "") -> str:
    group = rt.group.split(".")[0] if rt.group else "core"
    group = "".join(p.capitalize() for p in group.split("-"))
    scope = "Namespaced" if rt.namespaced else ""
    return f"{verb}{group}{rt.version.capitalize()}{scope}{rt.kind}{suffix}"


def _paths(rt: ResourceType, kind_ref: str, list_ref: str, ref_prefix: str, *, v3: bool) -> dict:
    base = f"/api/{rt.version}" if not rt.group else f"/apis/{rt.group}/{rt.version}"
    patch_content = CR_PATCH_CONTENT if rt.custom else PATCH_CONTENT
    ns_base = f"{base}/namespaces/{{namespace}}" if rt.namespaced else base
    gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}

    def op(verb: str, action: str, params: tuple[str, ...], *, body: str | None = None,
           resp: str | None = None, content: tuple[str, ...] = ("application/json",),
           suffix: str = "") -> dict[str, Any]:  # fmt: skip
        o: dict[str, Any] = {
            "description": f"{action} {rt.kind}",
            "operationId": _op_id(verb, rt, suffix),
            "tags": [f"{rt.group or 'core'}_{rt.version}"],
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        }
        if v3:
            o["parameters"] = _params(*params)
            if body:
                o["requestBody"] = {
                    "content": {c: {"schema": {"$ref": ref_prefix + body}} for c in content},
                    "required": True,
                }
            if resp:
                o["responses"] = {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"$ref": ref_prefix + resp}}},
                    }
                }
        else:
            params_v2 = [
                {"uniqueItems": True, "type": p["schema"]["type"], "description": p["description"],
                 "name": p["name"], "in": "query"}
                for p in _params(*params)
            ]  # fmt: skip
            if body:
                params_v2.insert(
                    0, {"name": "body", "in": "body", "required": True,
                        "schema": {"$ref": ref_prefix + body}},
                )  # fmt: skip
            o["parameters"] = params_v2
            o["consumes"] = list(content)
            o["produces"] = ["application/json", "application/yaml"]
            if resp:
                o["responses"] = {
                    "200": {"description": "OK", "schema": {"$ref": ref_prefix + resp}}
                }
        return o

    path_params = []
    if rt.namespaced:
        path_params.append({"name": "namespace", "in": "path", "required": True,
                            "description": "object name and auth scope", "schema": {"type": "string"}})  # fmt: skip
    name_param = {"name": "name", "in": "path", "required": True,
                  "description": f"name of the {rt.kind}", "schema": {"type": "string"}}  # fmt: skip

    def pp(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if v3:
            return params
        return [{k: v for k, v in p.items() if k != "schema"} | {"type": "string"} for p in params]

    paths: dict[str, Any] = {}
    verbs = set(rt.verbs)
    coll: dict[str, Any] = {"parameters": pp(path_params)}
    if "list" in verbs:
        coll["get"] = op("list", "list", LIST_PARAMS, resp=list_ref)
    if "create" in verbs:
        coll["post"] = op("create", "post", WRITE_PARAMS, body=kind_ref, resp=kind_ref)
    if "deletecollection" in verbs:
        coll["delete"] = op("deleteCollection", "deletecollection", DELETE_PARAMS + LIST_PARAMS,
                            body=META + "DeleteOptions", resp=META + "Status")  # fmt: skip
    paths[f"{ns_base}/{rt.plural}"] = coll
    if "get" in verbs:
        item = {
            "parameters": pp([name_param, *path_params]),
            "get": op("read", "get", (), resp=kind_ref),
            "put": op("replace", "put", WRITE_PARAMS, body=kind_ref, resp=kind_ref),
            "patch": op("patch", "patch", PATCH_PARAMS, body=META + "Patch", resp=kind_ref,
                        content=patch_content),
            "delete": op("delete", "delete", DELETE_PARAMS, body=META + "DeleteOptions",
                         resp=META + "Status"),
        }  # fmt: skip
        paths[f"{ns_base}/{rt.plural}/{{name}}"] = item
        if rt.has_status:
            paths[f"{ns_base}/{rt.plural}/{{name}}/status"] = {
                "parameters": pp([name_param, *path_params]),
                "get": op("read", "get", (), resp=kind_ref, suffix="Status"),
                "put": op("replace", "put", WRITE_PARAMS, body=kind_ref, resp=kind_ref,
                          suffix="Status"),
                "patch": op("patch", "patch", PATCH_PARAMS, body=META + "Patch", resp=kind_ref,
                            content=patch_content, suffix="Status"),
            }  # fmt: skip
        if rt.has_scale:
            scale = "io.k8s.api.autoscaling.v1.Scale"
            paths[f"{ns_base}/{rt.plural}/{{name}}/scale"] = {
                "parameters": pp([name_param, *path_params]),
                "get": op("read", "get", (), resp=scale, suffix="Scale"),
                "put": op("replace", "put", WRITE_PARAMS, body=scale, resp=scale, suffix="Scale"),
                "patch": op("patch", "patch", PATCH_PARAMS, body=META + "Patch", resp=scale,
                            content=patch_content, suffix="Scale"),
            }  # fmt: skip
            for method in ("get", "put", "patch"):
                paths[f"{ns_base}/{rt.plural}/{{name}}/scale"][method][
                    "x-kubernetes-group-version-kind"
                ] = {"group": "autoscaling", "version": "v1", "kind": "Scale"}
    if rt.namespaced and "list" in verbs:
        paths[f"{base}/{rt.plural}"] = {
            "get": op("list", "list", LIST_PARAMS, resp=list_ref, suffix="ForAllNamespaces")
        }
        paths[f"{base}/{rt.plural}"]["get"]["operationId"] = _op_id(
            "list", rt, "ForAllNamespaces"
        ).replace("Namespaced", "")
    return paths


# ------------------------------------------------------------------------------------------------
# Built-in documents


def _gv_key(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _builtin_gv_doc(group: str, version: str) -> dict[str, Any]:
    key = _gv_key(group, version)
    doc = _builtin_v3.get(key)
    if doc is not None:
        return doc
    s = schemas()
    paths: dict[str, Any] = {}
    roots = [META + "Status", META + "DeleteOptions", META + "Patch"]
    for t in BUILTIN_TYPES:
        if t.group != group or t.version != version:
            continue
        kind_def = s.root_of[(t.group, t.version, t.plural)]
        list_cls = _ROOTS[(t.group, t.version, t.plural)][1]
        list_def = definition_name(list_cls) if list_cls else kind_def
        roots += [kind_def, list_def]
        if t.has_scale:
            roots.append("io.k8s.api.autoscaling.v1.Scale")
        paths.update(_paths(t, kind_def, list_def, "#/components/schemas/", v3=True))
    components = {
        name: _rewrite_refs(s.defs[name], "#/components/schemas/") for name in _closure(roots)
    }
    if META + "Patch" not in components:
        components[META + "Patch"] = {"type": "object", "description": "Patch is provided to "
                                      "give a concrete name and type to the Kubernetes PATCH "
                                      "request body."}  # fmt: skip
    doc = {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "BearerToken": {"type": "apiKey", "description": "Bearer Token authentication",
                                "name": "authorization", "in": "header"}
            },
        },
    }  # fmt: skip
    _builtin_v3[key] = doc
    return doc


def _crd_gv_doc(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = [t for t in registry.types() if t.group == group and t.version == version and t.custom]
    if not types:
        return None
    s = schemas()
    roots = [META + "Status", META + "DeleteOptions", META + "ObjectMeta", META + "ListMeta"]
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    rev = ".".join(reversed(group.split(".")))
    for t in types:
        kind_def = f"{rev}.{version}.{t.kind}"
        list_def = f"{kind_def}List"
        schema = json.loads(json.dumps(t.schema or {"type": "object"}))
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"type": "string"}
        props["kind"] = {"type": "string"}
        props["metadata"] = {"$ref": "#/components/schemas/" + META + "ObjectMeta"}
        schema["x-kubernetes-group-version-kind"] = [
            {"group": group, "kind": t.kind, "version": version}
        ]
        components[kind_def] = schema
        components[list_def] = {
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string"},
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/" + kind_def}},
                "kind": {"type": "string"},
                "metadata": {"$ref": "#/components/schemas/" + META + "ListMeta"},
            },
            "x-kubernetes-group-version-kind": [
                {"group": group, "kind": t.list_kind, "version": version}
            ],
        }
        paths.update(_paths(t, kind_def, list_def, "#/components/schemas/", v3=True))
    for name in _closure(roots):
        components[name] = _rewrite_refs(s.defs[name], "#/components/schemas/")
    components.setdefault(META + "Patch", {"type": "object"})
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": components},
    }


def _etag(doc: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128].upper()


def _registry_cache(registry: Registry) -> dict[str, Any]:
    cache = _per_registry.get(registry)
    if cache is None or cache.get("generation") != registry.generation:
        cache = {"generation": registry.generation}
        _per_registry[registry] = cache
    return cache


def v3_document(registry: Registry, gv_path: str) -> dict[str, Any] | None:
    """``/openapi/v3/<gv_path>`` (``api/v1``, ``apis/apps/v1``...), or None if not served."""
    parts = gv_path.strip("/").split("/")
    if parts[0] == "api" and len(parts) == 2:
        group, version = "", parts[1]
    elif parts[0] == "apis" and len(parts) == 3:
        group, version = parts[1], parts[2]
    else:
        return None
    if not registry.has_group_version(group, version):
        return None
    builtin = any(t.group == group and t.version == version for t in BUILTIN_TYPES)
    if builtin:
        return _builtin_gv_doc(group, version)
    cache = _registry_cache(registry)
    key = "v3:" + gv_path
    if key not in cache:
        cache[key] = _crd_gv_doc(registry, group, version)
    return cache[key]


def v3_index(registry: Registry) -> dict[str, Any]:
    cache = _registry_cache(registry)
    if "index" in cache:
        return cache["index"]
    paths: dict[str, Any] = {}
    gvs = [("", "v1")]
    for g in registry.groups():
        for v in registry.group_versions(g):
            gvs.append((g, v))
    for g, v in gvs:
        key = _gv_key(g, v)
        doc = v3_document(registry, key)
        if doc is None:
            continue
        etag_key = "etag:" + key
        etag = cache.get(etag_key) or _builtin_v3.get(etag_key)
        if etag is None:
            etag = _etag(doc)
            if any(t.group == g and t.version == v for t in BUILTIN_TYPES):
                _builtin_v3[etag_key] = etag  # type: ignore[assignment]
            else:
                cache[etag_key] = etag
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={etag}"}
    index = {"paths": paths}
    cache["index"] = index
    return index


def v2_document(registry: Registry) -> dict[str, Any]:
    """``/openapi/v2``: one Swagger 2.0 document for every served type."""
    global _builtin_v2
    if _builtin_v2 is None:
        s = schemas()
        paths: dict[str, Any] = {}
        for t in BUILTIN_TYPES:
            kind_def = s.root_of[(t.group, t.version, t.plural)]
            list_cls = _ROOTS[(t.group, t.version, t.plural)][1]
            list_def = definition_name(list_cls) if list_cls else kind_def
            paths.update(_paths(t, kind_def, list_def, "#/definitions/", v3=False))
        definitions = dict(s.defs)
        definitions.setdefault(META + "Patch", {"type": "object"})
        _builtin_v2 = {
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "unversioned"},
            "paths": paths,
            "definitions": definitions,
            "securityDefinitions": {
                "BearerToken": {"type": "apiKey", "name": "authorization", "in": "header",
                                "description": "Bearer Token authentication"}
            },
            "security": [{"BearerToken": []}],
        }  # fmt: skip
    crds = [t for t in registry.types() if t.custom]
    if not crds:
        return _builtin_v2
    cache = _registry_cache(registry)
    if "v2" not in cache:
        doc = dict(_builtin_v2)
        doc["paths"] = dict(doc["paths"])
        doc["definitions"] = dict(doc["definitions"])
        for t in crds:
            rev = ".".join(reversed(t.group.split(".")))
            kind_def = f"{rev}.{t.version}.{t.kind}"
            schema = _rewrite_refs(json.loads(json.dumps(t.schema or {"type": "object"})),
                                   "#/definitions/")  # fmt: skip
            schema["x-kubernetes-group-version-kind"] = [
                {"group": t.group, "kind": t.kind, "version": t.version}
            ]
            doc["definitions"][kind_def] = schema
            doc["definitions"][kind_def + "List"] = {
                "type": "object",
                "properties": {"items": {"type": "array",
                                         "items": {"$ref": "#/definitions/" + kind_def}}},
                "x-kubernetes-group-version-kind": [
                    {"group": t.group, "kind": t.list_kind, "version": t.version}
                ],
            }  # fmt: skip
            doc["paths"].update(_paths(t, kind_def, kind_def + "List", "#/definitions/", v3=False))
        cache["v2"] = doc
    return cache["v2"]


# ------------------------------------------------------------------------------------------------
# Unknown fields (server-side field validation)


def _root_schema(rt: ResourceType) -> tuple[dict[str, Any] | None, bool]:
    """(schema, is_custom) used to check objects of ``rt``; None when nothing is known."""
    if rt.custom:
        return rt.schema, True
    s = schemas()
    name = s.root_of.get((rt.group, rt.version, rt.plural))
    if name is None:
        return None, False
    return s.defs[name], False


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        return schemas().defs.get(ref.rsplit("/", 1)[-1], {})
    return schema


def _walk(value: Any, schema: dict[str, Any], path: str, out: list[str], *, drop: bool,
          partial: bool, custom: bool) -> None:  # fmt: skip
    schema = _resolve(schema)
    if not schema or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if schema.get("x-kubernetes-int-or-string"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and extra is None:
            return
        for key in list(value):
            if partial and key.startswith("$"):
                continue
            sub_path = f"{path}.{key}" if path else key
            if props is not None and key in props:
                _walk(value[key], props[key], sub_path, out, drop=drop, partial=partial,
                      custom=custom)  # fmt: skip
            elif isinstance(extra, dict):
                _walk(value[key], extra, sub_path, out, drop=drop, partial=partial,
                      custom=custom)  # fmt: skip
            elif extra is True:
                continue
            else:
                out.append(sub_path)
                if drop:
                    del value[key]
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _walk(item, items, f"{path}[{i}]", out, drop=drop, partial=partial,
                      custom=custom)  # fmt: skip


def _check(rt: ResourceType, obj: dict[str, Any], *, drop: bool, partial: bool) -> list[str]:
    schema, custom = _root_schema(rt)
    if schema is None or not isinstance(obj, dict):
        return []
    out: list[str] = []
    if custom:
        meta_schema = schemas().defs[META + "ObjectMeta"]
        for key in list(obj):
            if partial and key.startswith("$"):
                continue
            if key in ("apiVersion", "kind"):
                continue
            if key == "metadata":
                _walk(obj[key], meta_schema, "metadata", out, drop=drop, partial=partial,
                      custom=False)  # fmt: skip
                continue
            props = schema.get("properties") or {}
            if schema.get("x-kubernetes-preserve-unknown-fields"):
                continue
            if key in props:
                _walk(obj[key], props[key], key, out, drop=drop, partial=partial, custom=True)
            else:
                out.append(key)
                if drop:
                    del obj[key]
        return out
    _walk(obj, schema, "", out, drop=drop, partial=partial, custom=False)
    return out


def unknown_fields(rt: ResourceType, obj: Any, *, partial: bool = False) -> list[str]:
    """Dotted paths of the fields in ``obj`` the type's schema does not declare."""
    if not isinstance(obj, dict):
        return []
    return _check(rt, json.loads(json.dumps(obj)), drop=False, partial=partial)


def drop_unknown(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without the fields the schema does not declare (the decoder drops them)."""
    copy = json.loads(json.dumps(obj))
    _check(rt, copy, drop=True, partial=False)
    return copy
