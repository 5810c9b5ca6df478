"""Render an application's manifests for one cluster: the only place a rollout reads YAML.

An application is a directory of plain Kubernetes YAML (``apps/<name>/``). :func:`render_app`
is the one entry point, so Helm or Kustomize can be added behind it later without the flow
noticing. What it does, before any cluster is touched:

- loads every ``*.yaml`` and ``*.yml`` file of the directory (not sub-directories), in sorted
  file-name order, each possibly holding several ``---`` documents (empty ones are skipped);
- fills placeholders in string values and keys: ``${version}`` with the version rolled out and
  ``${cluster.<label>}`` with that label of the cluster (``${cluster.env}``,
  ``${cluster.fleetops.io/region}``). ``$${...}`` is an escape and leaves ``${...}`` as it is
  (for shell snippets in ConfigMaps). A placeholder fills a string: ``VERSION: ${version}``
  stays the string ``"1.10"``, never the number 1.1. Any other ``${...}``, or a label the
  cluster does not carry, is an error naming the file, line and placeholder;
- the version reaches container images **only through the placeholder**
  (``image: ghcr.io/acme/hello:${version}``): images are never rewritten behind the author's
  back, so sidecars stay pinned. An app that never mentions ``${version}`` is refused, since
  rolling a version out would change nothing;
- checks that every document is one object with ``apiVersion``, ``kind`` and ``metadata.name``
  (the error names the file and the document's position), and that no object appears twice.

Every problem is a :class:`~fleetops.errors.ConfigError` whose message starts with
``file:line``. The result is a list of plain dicts, ready for server-side apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from fleetops.domain.rollout import version_problem
from fleetops.errors import ConfigError

ObjectKey = tuple[str, str, str, str]

# ``$${anything}`` (an escape) or ``${anything}`` (a placeholder); a ``${`` without ``}`` too.
_PLACEHOLDER = re.compile(r"\$(\$?)\{([^{}]*)(\})?")
_STR_TAG = "tag:yaml.org,2002:str"
_VERSION = "version"
_CLUSTER = "cluster."
#: libyaml's parser when PyYAML has it (our wheels do): a rollout renders the app once per
#: cluster, and the pure-Python composer cost 7 ms per cluster for apps/hello
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    """``(apiVersion, kind, namespace, name)``; namespace is ``""`` when the object has none."""
    metadata = obj.get("metadata") or {}
    return (
        str(obj.get("apiVersion", "")),
        str(obj.get("kind", "")),
        str(metadata.get("namespace") or ""),
        str(metadata.get("name", "")),
    )


def _identity(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """What makes two objects the same on the server: the API group, not its version."""
    api_version, kind, namespace, name = object_key(obj)
    group = api_version.rpartition("/")[0]
    return group, kind, namespace, name


class _Substitution:
    """Fills placeholders in one file's scalars, remembering whether ${version} was used."""

    def __init__(self, path: Path, version: str, labels: Mapping[str, str]) -> None:
        self.path = path
        self.version = version
        self.labels = labels
        self.used_version = False
        self._visited: set[int] = set()  # an alias shares its anchor's node: fill it once

    def fill(self, node: ScalarNode) -> None:
        if node.tag != _STR_TAG or "$" not in node.value:
            return
        first_line = node.start_mark.line + (1 if node.style in ("|", ">") else 0)

        def replace(match: re.Match[str]) -> str:
            escaped, name, closed = match.group(1), match.group(2), match.group(3)
            line = first_line + node.value.count("\n", 0, match.start()) + 1
            if not closed:
                raise ConfigError(
                    f"{self.path}:{line}: unterminated placeholder {match.group(0)!r} "
                    "(write $${ to keep a literal ${)"
                )
            if escaped:
                return "${" + name + "}"
            return self.value(name.strip(), line)

        node.value = _PLACEHOLDER.sub(replace, node.value)

    def value(self, name: str, line: int) -> str:
        if name == _VERSION:
            self.used_version = True
            return self.version
        if name.startswith(_CLUSTER):
            label = name.removeprefix(_CLUSTER)
            if label in self.labels:
                return self.labels[label]
            known = ", ".join(sorted(self.labels)) or "none"
            raise ConfigError(
                f"{self.path}:{line}: placeholder ${{{name}}}: the cluster has no label "
                f"{label!r} (its labels: {known})"
            )
        raise ConfigError(
            f"{self.path}:{line}: unknown placeholder ${{{name}}}: use ${{version}} or "
            "${cluster.<label>}, or write $${...} for a literal ${...}"
        )

    def walk(self, node: Node, ancestors: frozenset[int] = frozenset()) -> None:
        if id(node) in ancestors:
            raise ConfigError(
                f"{self.path}:{node.start_mark.line + 1}: a YAML alias refers to an object "
                "containing it; Kubernetes objects cannot be recursive"
            )
        if id(node) in self._visited:
            return
        self._visited.add(id(node))
        if isinstance(node, ScalarNode):
            self.fill(node)
            return
        inner = ancestors | {id(node)}
        if isinstance(node, SequenceNode):
            for item in node.value:
                self.walk(item, inner)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                self.walk(key, inner)
                self.walk(value, inner)


def _construct(node: Node) -> Any:
    # A fresh constructor per document: it keeps state about anchors it has built.
    return SafeConstructor().construct_document(node)


def _check_object(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        kind = "a list" if isinstance(obj, list) else type(obj).__name__
        raise ConfigError(f"{where}: expected one Kubernetes object (a mapping), found {kind}")
    missing = [field for field in ("apiVersion", "kind") if not _non_empty(obj.get(field))]
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not _non_empty(metadata.get("name")):
        missing.append("metadata.name")
    if missing:
        raise ConfigError(f"{where}: object without {', '.join(missing)}")
    return obj


def _non_empty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _load(path: Path, substitution: _Substitution) -> list[tuple[dict[str, Any], str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    objects: list[tuple[dict[str, Any], str]] = []
    try:
        for index, node in enumerate(yaml.compose_all(text, Loader=_LOADER), start=1):
            if node is None:
                continue
            where = f"{path}:{node.start_mark.line + 1}: document {index}"
            if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null":
                continue
            substitution.walk(node)
            objects.append((_check_object(_construct(node), where), where))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(filter(None, (exc.context, exc.problem)))
        raise ConfigError(f"{at}: invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    return objects


def render_app(
    app_dir: Path, *, version: str, cluster_labels: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The objects of the app in ``app_dir`` for one cluster, in file and document order.

    Raise :class:`~fleetops.errors.ConfigError` (file and line in the message) for anything
    that would make the apply fail or do something else than the author meant.
    """
    problem = version_problem(version)
    if problem:
        raise ConfigError(problem)
    if not app_dir.is_dir():
        raise ConfigError(f"{app_dir}: no such application directory")
    files = sorted(
        (p for p in app_dir.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml")),
        key=lambda p: p.name,
    )
    if not files:
        raise ConfigError(f"{app_dir}: no *.yaml or *.yml manifests")
    rendered: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, str, str], str] = {}
    used_version = False
    for path in files:
        substitution = _Substitution(path, version, cluster_labels)
        for obj, where in _load(path, substitution):
            identity = _identity(obj)
            if identity in seen:
                _, kind, namespace, name = identity
                scoped = f"{namespace}/{name}" if namespace else name
                raise ConfigError(f"{where}: duplicate {kind} {scoped} (first at {seen[identity]})")
            seen[identity] = where
            rendered.append(obj)
        used_version = used_version or substitution.used_version
    if not rendered:
        raise ConfigError(f"{app_dir}: the manifests hold no objects")
    if not used_version:
        raise ConfigError(
            f"{app_dir}: no ${{version}} placeholder in any manifest, so rolling out a version "
            "would change nothing; put it in the image tag (image: registry/app:${version})"
        )
    return rendered
