"""The resource types a sandbox cluster serves, and the discovery documents that describe them.

Built-in types are described once at import time and shared by every cluster; a cluster's
:class:`Registry` only adds the types its CustomResourceDefinitions define. Discovery documents
(``/api``, ``/api/v1``, ``/apis``, ``/apis/{group}/{version}`` and the aggregated
``apidiscovery.k8s.io/v2`` form) are built from the registry and cached until a CRD changes it,
so starting a cluster costs a dictionary copy, not a rebuild.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ALL_VERBS: tuple[str, ...] = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)
NO_COLLECTION_VERBS: tuple[str, ...] = (
    "create",
    "delete",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)
SUBRESOURCE_VERBS: tuple[str, ...] = ("get", "patch", "update")


@dataclass(frozen=True)
class ResourceType:
    """One served resource (one group/version/plural)."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    has_status: bool = False
    has_scale: bool = False
    verbs: tuple[str, ...] = ALL_VERBS
    categories: tuple[str, ...] = ()
    # Whether the real apiserver maintains metadata.generation for this type.
    has_generation: bool = False
    # Defined by a CustomResourceDefinition (no strategic merge patch, no unconditional update).
    custom: bool = False
    # Where objects are kept: several versions (or events.k8s.io/v1 Event and v1 Event) share one
    # storage location, the way the apiserver keeps one etcd key per object.
    storage_group: str | None = None
    storage_plural: str | None = None
    # CRD extras: additionalPrinterColumns, openAPIV3Schema, scale paths (kept as tuples/JSON).
    printer_columns: tuple[tuple[tuple[str, Any], ...], ...] = ()
    schema: Any = field(default=None, compare=False, hash=False)
    scale_paths: tuple[str, str, str] | None = None  # spec, status, labelSelector json paths

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def storage(self) -> tuple[str, str]:
        group = self.group if self.storage_group is None else self.storage_group
        return (group, self.storage_plural or self.plural)

    @property
    def qualified(self) -> str:
        """``deployments.apps`` / ``pods``: the name used in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def group_version(self) -> str:
        return self.api_version

    def columns(self) -> list[dict[str, Any]]:
        return [dict(c) for c in self.printer_columns]


def _rt(
    group: str,
    version: str,
    kind: str,
    plural: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    status: bool = False,
    scale: bool = False,
    verbs: tuple[str, ...] = ALL_VERBS,
    categories: tuple[str, ...] = (),
    generation: bool = False,
    storage_group: str | None = None,
) -> ResourceType:
    return ResourceType(
        group=group,
        version=version,
        kind=kind,
        plural=plural,
        singular=kind.lower(),
        namespaced=namespaced,
        short_names=short,
        has_status=status,
        has_scale=scale,
        verbs=verbs,
        categories=categories,
        has_generation=generation,
        storage_group=storage_group,
    )


NAMESPACES = _rt(
    "", "v1", "Namespace", "namespaces", namespaced=False, short=("ns",), status=True,
    verbs=NO_COLLECTION_VERBS,
)  # fmt: skip
CONFIGMAPS = _rt("", "v1", "ConfigMap", "configmaps", short=("cm",))
SECRETS = _rt("", "v1", "Secret", "secrets")
SERVICES = _rt("", "v1", "Service", "services", short=("svc",), status=True, categories=("all",))
SERVICEACCOUNTS = _rt("", "v1", "ServiceAccount", "serviceaccounts", short=("sa",))
EVENTS = _rt("", "v1", "Event", "events", short=("ev",))
PODS = _rt("", "v1", "Pod", "pods", short=("po",), status=True, categories=("all",))
DEPLOYMENTS = _rt(
    "apps", "v1", "Deployment", "deployments", short=("deploy",), status=True, scale=True,
    categories=("all",), generation=True,
)  # fmt: skip
REPLICASETS = _rt(
    "apps", "v1", "ReplicaSet", "replicasets", short=("rs",), status=True, scale=True,
    categories=("all",), generation=True,
)  # fmt: skip
STATEFULSETS = _rt(
    "apps", "v1", "StatefulSet", "statefulsets", short=("sts",), status=True, scale=True,
    categories=("all",), generation=True,
)  # fmt: skip
DAEMONSETS = _rt(
    "apps", "v1", "DaemonSet", "daemonsets", short=("ds",), status=True, categories=("all",),
    generation=True,
)  # fmt: skip
CRDS = _rt(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions",
    namespaced=False, short=("crd", "crds"), status=True, categories=("api-extensions",),
    generation=True,
)  # fmt: skip
TOKENREVIEWS = _rt(
    "authentication.k8s.io", "v1", "TokenReview", "tokenreviews", namespaced=False,
    verbs=("create",),
)  # fmt: skip
SELFSUBJECTREVIEWS = _rt(
    "authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", namespaced=False,
    verbs=("create",),
)  # fmt: skip
SELFSUBJECTACCESSREVIEWS = _rt(
    "authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews",
    namespaced=False, verbs=("create",),
)  # fmt: skip
EVENTS_V1 = _rt("events.k8s.io", "v1", "Event", "events", short=("ev",), storage_group="")

BUILTIN_TYPES: tuple[ResourceType, ...] = (
    NAMESPACES,
    CONFIGMAPS,
    SECRETS,
    SERVICES,
    SERVICEACCOUNTS,
    EVENTS,
    PODS,
    DEPLOYMENTS,
    REPLICASETS,
    STATEFULSETS,
    DAEMONSETS,
    CRDS,
    TOKENREVIEWS,
    SELFSUBJECTREVIEWS,
    SELFSUBJECTACCESSREVIEWS,
    EVENTS_V1,
)
# review types: answered on create, never stored
REVIEW_TYPES = (TOKENREVIEWS, SELFSUBJECTREVIEWS, SELFSUBJECTACCESSREVIEWS)

# Group order in /apis, as the real apiserver lists its built-in groups.
_BUILTIN_GROUP_ORDER = (
    "apps",
    "events.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "apiextensions.k8s.io",
)


def storage_version_hash(group: str, version: str, kind: str) -> str:
    """The ``storageVersionHash`` discovery field: base64 of the first 8 bytes of sha256(g/v/k)."""
    digest = hashlib.sha256(f"{group}/{version}/{kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


# ------------------------------------------------------------------------------------------------
# Events: events.k8s.io/v1 is another representation of the core v1 Event storage.

_EVENT_RENAMES = (
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
)


def to_storage(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Convert an object written through ``rt`` into its storage form (in place, returns it)."""
    if rt is EVENTS_V1 or (rt.group == "events.k8s.io" and rt.kind == "Event"):
        for core, new in _EVENT_RENAMES:
            if new in obj:
                obj[core] = obj.pop(new)
    obj["apiVersion"] = storage_api_version(rt)
    return obj


def from_storage(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Convert a stored object into the representation of ``rt`` (in place, returns it)."""
    if rt.group == "events.k8s.io" and rt.kind == "Event":
        for core, new in _EVENT_RENAMES:
            if core in obj:
                obj[new] = obj.pop(core)
    obj["apiVersion"] = rt.api_version
    obj["kind"] = rt.kind
    return obj


def storage_api_version(rt: ResourceType) -> str:
    if rt.group == "events.k8s.io" and rt.kind == "Event":
        return "v1"
    return rt.api_version


# ------------------------------------------------------------------------------------------------
# CustomResourceDefinition -> types


def crd_types(crd: dict[str, Any]) -> list[ResourceType]:
    """The served versions of a (valid) CRD as resource types."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec["group"]
    plural = names["plural"]
    kind = names["kind"]
    namespaced = spec.get("scope", "Namespaced") == "Namespaced"
    out = []
    for ver in spec.get("versions") or []:
        if not ver.get("served", True):
            continue
        subs = ver.get("subresources") or {}
        scale = subs.get("scale")
        scale_paths = None
        if isinstance(scale, dict):
            scale_paths = (
                scale.get("specReplicasPath", ".spec.replicas"),
                scale.get("statusReplicasPath", ".status.replicas"),
                scale.get("labelSelectorPath", ""),
            )
        columns = tuple(
            tuple(sorted(c.items())) for c in (ver.get("additionalPrinterColumns") or [])
        )
        schema = (ver.get("schema") or {}).get("openAPIV3Schema")
        out.append(
            ResourceType(
                group=group,
                version=ver["name"],
                kind=kind,
                plural=plural,
                singular=names.get("singular") or kind.lower(),
                namespaced=namespaced,
                short_names=tuple(names.get("shortNames") or ()),
                has_status="status" in subs,
                has_scale=scale_paths is not None,
                categories=tuple(names.get("categories") or ()),
                has_generation=True,
                custom=True,
                printer_columns=columns,
                schema=schema,
                scale_paths=scale_paths,
            )
        )
    return out


# ------------------------------------------------------------------------------------------------
# The registry


def _gv_sort_key(version: str) -> tuple[int, int, int, str]:
    """Kubernetes version priority: GA > beta > alpha, higher numbers first, others last."""
    import re

    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    major = int(m.group(1))
    stage = {"alpha": 2, "beta": 1, None: 0}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (stage, -major, -minor, version)


class Registry:
    """The types one cluster serves: the shared built-ins plus its CRDs' served versions."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {
            (t.group, t.version, t.plural): t for t in BUILTIN_TYPES
        }
        self._by_kind: dict[tuple[str, str], ResourceType] = {
            (t.api_version, t.kind): t for t in BUILTIN_TYPES
        }
        self._crds: dict[str, list[ResourceType]] = {}
        self._crd_versions: dict[str, list[str]] = {}  # group -> versions in CRD order
        self._cache: dict[str, Any] = {}
        self._generation = 0

    # lookups ------------------------------------------------------------------------------------

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        return self._by_kind.get((api_version, kind))

    def types(self) -> Iterable[ResourceType]:
        return self._types.values()

    def versions_of(self, group: str, plural: str) -> list[ResourceType]:
        return [t for t in self._types.values() if t.group == group and t.plural == plural]

    def group_versions(self, group: str) -> list[str]:
        versions = {t.version for t in self._types.values() if t.group == group}
        return sorted(versions, key=_gv_sort_key)

    def has_group_version(self, group: str, version: str) -> bool:
        return any(t.group == group and t.version == version for t in self._types.values())

    @property
    def generation(self) -> int:
        """Bumped whenever the set of types changes (used to invalidate cached documents)."""
        return self._generation

    # CRDs ---------------------------------------------------------------------------------------

    def add(self, crd: dict[str, Any]) -> list[ResourceType]:
        """Serve (or re-serve after an update) the versions of ``crd``."""
        name = crd["metadata"]["name"]
        self.remove(name)
        types = crd_types(crd)
        for t in types:
            self._types[(t.group, t.version, t.plural)] = t
            self._by_kind[(t.api_version, t.kind)] = t
        self._crds[name] = types
        self._invalidate()
        return types

    def remove(self, crd_name: str) -> list[ResourceType]:
        types = self._crds.pop(crd_name, [])
        for t in types:
            self._types.pop((t.group, t.version, t.plural), None)
            if self._by_kind.get((t.api_version, t.kind)) is t:
                self._by_kind.pop((t.api_version, t.kind), None)
        if types:
            self._invalidate()
        return types

    def crd_types(self, crd_name: str) -> list[ResourceType]:
        return list(self._crds.get(crd_name, []))

    def _invalidate(self) -> None:
        self._cache.clear()
        self._generation += 1

    # discovery ----------------------------------------------------------------------------------

    def groups(self) -> list[str]:
        """Non-core groups in /apis order: built-ins first, then CRD groups by name."""
        present = {t.group for t in self._types.values() if t.group}
        ordered = [g for g in _BUILTIN_GROUP_ORDER if g in present]
        ordered += sorted(present - set(ordered))
        return ordered

    def api_versions(self) -> dict[str, Any]:
        """``/api``: the core group's versions."""
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }

    def api_group(self, group: str) -> dict[str, Any] | None:
        versions = self.group_versions(group)
        if not versions:
            return None
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def api_group_list(self) -> dict[str, Any]:
        cached = self._cache.get("groups")
        if cached is None:
            groups = []
            for g in self.groups():
                doc = self.api_group(g)
                if doc is not None:
                    doc = dict(doc)
                    doc.pop("kind")
                    doc.pop("apiVersion")
                    groups.append(doc)
            cached = {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
            self._cache["groups"] = cached
        return cached

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        """``/api/v1`` or ``/apis/{group}/{version}``: an APIResourceList, or None if not served."""
        key = f"rl:{group}/{version}"
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        types = [t for t in self._types.values() if t.group == group and t.version == version]
        if not types:
            return None
        resources: list[dict[str, Any]] = []
        for t in sorted(types, key=lambda t: t.plural):
            entry: dict[str, Any] = {
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": list(t.verbs),
            }
            if t.short_names:
                entry["shortNames"] = list(t.short_names)
            if t.categories:
                entry["categories"] = list(t.categories)
            if "create" in t.verbs and t.verbs != ("create",):
                entry["storageVersionHash"] = storage_version_hash(t.group, t.version, t.kind)
            resources.append(entry)
            if t.has_scale:
                resources.append(
                    {
                        "name": f"{t.plural}/scale",
                        "singularName": "",
                        "namespaced": t.namespaced,
                        "group": "autoscaling",
                        "version": "v1",
                        "kind": "Scale",
                        "verbs": list(SUBRESOURCE_VERBS),
                    }
                )
            if t.has_status:
                resources.append(
                    {
                        "name": f"{t.plural}/status",
                        "singularName": "",
                        "namespaced": t.namespaced,
                        "kind": t.kind,
                        "verbs": list(SUBRESOURCE_VERBS),
                    }
                )
        resources.sort(key=lambda r: r["name"])
        doc = {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }
        self._cache[key] = doc
        return doc

    def aggregated(self, core: bool) -> dict[str, Any]:
        """The ``apidiscovery.k8s.io/v2`` APIGroupDiscoveryList for ``/api`` or ``/apis``."""
        key = "agg:core" if core else "agg:apis"
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        items = []
        groups = [""] if core else self.groups()
        for g in groups:
            versions = []
            for v in self.group_versions(g):
                resources = []
                types = [t for t in self._types.values() if t.group == g and t.version == v]
                for t in sorted(types, key=lambda t: t.plural):
                    res: dict[str, Any] = {
                        "resource": t.plural,
                        "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
                        "scope": "Namespaced" if t.namespaced else "Cluster",
                        "singularResource": t.singular,
                        "verbs": list(t.verbs),
                    }
                    if t.short_names:
                        res["shortNames"] = list(t.short_names)
                    if t.categories:
                        res["categories"] = list(t.categories)
                    subs = []
                    if t.has_scale:
                        subs.append(
                            {
                                "subresource": "scale",
                                "responseKind": {
                                    "group": "autoscaling",
                                    "version": "v1",
                                    "kind": "Scale",
                                },
                                "verbs": list(SUBRESOURCE_VERBS),
                            }
                        )
                    if t.has_status:
                        subs.append(
                            {
                                "subresource": "status",
                                "responseKind": {
                                    "group": t.group,
                                    "version": t.version,
                                    "kind": t.kind,
                                },
                                "verbs": list(SUBRESOURCE_VERBS),
                            }
                        )
                    if subs:
                        res["subresources"] = subs
                    resources.append(res)
                versions.append({"version": v, "resources": resources, "freshness": "Current"})
            items.append({"metadata": {"name": g, "creationTimestamp": None}, "versions": versions})
        doc = {
            "kind": "APIGroupDiscoveryList",
            "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": items,
        }
        self._cache[key] = doc
        return doc
