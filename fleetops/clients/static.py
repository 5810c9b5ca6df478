"""Static clusters: the contexts of a kubeconfig file, and the fleet file (``clusters.yaml``).

Two inputs, both files an operator edits:

- **A kubeconfig** (``FLEETOPS_KUBECONFIG``): every context is a cluster
  ``static/<source>/static/<context>``, ``<source>`` being ``FLEETOPS_STATIC_KUBECONFIG_SOURCE``
  (default ``kubeconfig``). Endpoint and CA come from the context's cluster entry.
- **The fleet file** (``deployments/clusters.yaml``, schema
  :class:`~fleetops.domain.sources.FleetFile`): static clusters with a name, source, location
  and labels, each pointing at a context of some kubeconfig; and the operator's label overrides.

A file that does not parse or validate raises :class:`~fleetops.errors.ConfigError` naming the
file and the line (``deployments/clusters.yaml:12: overrides.1.selector: ...``), taken from
YAML's own node marks, so the operator can go straight to it.

Credentials: a static cluster's token is its context user's ``token`` or ``tokenFile``, read when
needed and kept in memory only. Client certificates, exec plugins and basic auth are not
supported for probes and are reported as :class:`~fleetops.errors.AuthError`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from fleetops.clients._common import ClusterToken
from fleetops.domain.cluster import _SEGMENT, AuthMethod, Cluster, Provider
from fleetops.domain.inventory import SourceResult
from fleetops.domain.labels import derived_labels
from fleetops.domain.sources import DEFAULT_STATIC_LOCATION, FleetFile, StaticCluster
from fleetops.errors import AuthError, ConfigError, NotFound
from fleetops.settings import KubeSettings, StaticSettings

log = logging.getLogger(__name__)

SYSTEM = "static"


# --- YAML with line numbers ------------------------------------------------------------------

# libyaml's parser keeps node marks (line numbers) too and is ~10x faster on big kubeconfigs.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(path: Path, *, what: str) -> tuple[Any, yaml.Node | None]:
    """The document in ``path`` and its node tree; ConfigError naming file and line if broken."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc}") from exc
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_duplicate_keys(path, node)
        return loader.construct_document(node), node
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: the {what} is not valid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: the {what} is not valid YAML: {exc}") from exc
    finally:
        loader.dispose()


def _check_duplicate_keys(path: Path, node: yaml.Node) -> None:
    """YAML allows a key twice (the last wins silently); refuse it, naming the line.

    A node reached again through an alias is checked once (an anchor may even contain itself)."""
    stack = [node]
    visited: set[int] = set()
    while stack:
        current = stack.pop()
        if id(current) in visited:
            continue
        visited.add(id(current))
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    if key.value in seen:
                        raise ConfigError(
                            f"{path}:{line}: key {key.value!r} is repeated "
                            f"(first at line {seen[key.value]})"
                        )
                    seen[key.value] = line
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def _node_at(node: yaml.Node, loc: tuple[int | str, ...]) -> yaml.Node:
    """The deepest node along a pydantic error location (parts that are not keys are skipped)."""
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if str(k.value) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if 0 <= part < len(node.value) else None
        if child is not None:
            node = child
    return node


def _validation_error(
    path: Path, node: yaml.Node, exc: ValidationError, *, what: str
) -> ConfigError:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        line = _node_at(node, loc).start_mark.line + 1
        field = ".".join(str(p) for p in loc) or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{path}:{line}: {field}: {message}")
    head = f"the {what} is invalid:\n  " if len(problems) > 1 else ""
    return ConfigError(head + "\n  ".join(problems))


# --- the fleet file --------------------------------------------------------------------------


def load_fleet_file(path: Path) -> FleetFile:
    """Parse and validate the fleet file; an empty file is an empty fleet."""
    data, node = _load_yaml(path, what="fleet file")
    if data is None or node is None:
        return FleetFile()
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:{node.start_mark.line + 1}: the fleet file must be a mapping with "
            "'static' and 'overrides'"
        )
    try:
        return FleetFile.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(path, node, exc, what="fleet file") from exc


# --- kubeconfig files ------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeconfigContext:
    """One context of a kubeconfig: where the cluster is and, in memory only, its user."""

    name: str
    server: str
    ca_pem: str | None
    user: Mapping[str, Any]
    path: Path

    def __repr__(self) -> str:  # the user entry may hold a token
        return f"KubeconfigContext(name={self.name!r}, server={self.server!r}, path={self.path})"


def _named(
    path: Path, node: yaml.Node, items: Any, section: str, key: str
) -> dict[str, Mapping[str, Any]]:
    if items is None:
        return {}
    if not isinstance(items, list):
        line = _node_at(node, (section,)).start_mark.line + 1
        raise ConfigError(f"{path}:{line}: '{section}' must be a list")
    found: dict[str, Mapping[str, Any]] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item or not isinstance(item.get(key), dict):
            line = _node_at(node, (section, index)).start_mark.line + 1
            raise ConfigError(f"{path}:{line}: {section}[{index}] needs 'name' and '{key}'")
        found[str(item["name"])] = item[key]
    return found


def read_kubeconfig(path: Path) -> dict[str, KubeconfigContext]:
    """Every context of the kubeconfig at ``path``, by name, with server, CA and user."""
    data, node = _load_yaml(path, what="kubeconfig")
    if data is None or node is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: a kubeconfig must be a mapping")
    clusters = _named(path, node, data.get("clusters"), "clusters", "cluster")
    users = _named(path, node, data.get("users"), "users", "user")
    contexts = _named(path, node, data.get("contexts"), "contexts", "context")
    result: dict[str, KubeconfigContext] = {}
    for index, (name, context) in enumerate(contexts.items()):
        line = _node_at(node, ("contexts", index)).start_mark.line + 1
        cluster = clusters.get(str(context.get("cluster")))
        if cluster is None or not cluster.get("server"):
            raise ConfigError(
                f"{path}:{line}: context {name!r} names cluster {context.get('cluster')!r}, "
                "which is not in 'clusters' or has no 'server'"
            )
        user = users.get(str(context.get("user")), {})
        result[name] = KubeconfigContext(
            name=name,
            server=str(cluster["server"]),
            ca_pem=_ca_pem(path, line, name, cluster),
            user=user,
            path=path,
        )
    return result


def _ca_pem(path: Path, line: int, context: str, cluster: Mapping[str, Any]) -> str | None:
    if cluster.get("insecure-skip-tls-verify"):
        log.warning(
            "%s: context %s asks to skip TLS verification; fleetops verifies anyway", path, context
        )
    if cluster.get("certificate-authority-data"):
        try:
            return base64.b64decode(str(cluster["certificate-authority-data"])).decode("ascii")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{path}:{line}: context {context!r}: certificate-authority-data is not base64 PEM"
            ) from exc
    if cluster.get("certificate-authority"):
        ca_path = (path.parent / str(cluster["certificate-authority"])).expanduser()
        try:
            return ca_path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{path}:{line}: context {context!r}: cannot read certificate-authority {ca_path}: "
                f"{exc}"
            ) from exc
    return None


def user_token(context: KubeconfigContext) -> ClusterToken:
    """The bearer token of a context's user (``token`` or ``tokenFile``), in memory."""
    user = context.user
    where = f"kubeconfig {context.path}, context {context.name!r}"
    if user.get("token"):
        return ClusterToken(token=SecretStr(str(user["token"])))
    if user.get("tokenFile"):
        token_path = (context.path.parent / str(user["tokenFile"])).expanduser()
        try:
            return ClusterToken(token=SecretStr(token_path.read_text(encoding="utf-8").strip()))
        except OSError as exc:
            raise AuthError(f"{where}: cannot read tokenFile: {exc}", system=SYSTEM) from exc
    kinds = sorted(k for k in ("client-certificate", "client-certificate-data", "exec",
                               "auth-provider", "username") if user.get(k))  # fmt: skip
    detail = f" (it has {', '.join(kinds)}, which fleetops does not use)" if kinds else ""
    raise AuthError(f"{where}: the user has no bearer token{detail}", system=SYSTEM)


# --- discovery -------------------------------------------------------------------------------


def _static_cluster(
    *,
    source: str,
    location: str,
    name: str,
    context: KubeconfigContext,
    labels: Mapping[str, str],
) -> Cluster:
    region = None if location == DEFAULT_STATIC_LOCATION else location
    return Cluster(
        provider=Provider.STATIC,
        account=source,
        location=location,
        name=name,
        endpoint=context.server,
        ca_data=context.ca_pem,
        labels={
            **labels,
            **derived_labels(provider=Provider.STATIC.value, account=source, region=region),
        },
        auth=AuthMethod.STATIC_KUBECONFIG,
    )


class StaticClusters:
    """The static clusters of a kubeconfig and a fleet file, and their tokens.

    ``fleet_path`` is where ``fleet`` was read from: kubeconfig paths in it are relative to it.
    """

    def __init__(
        self,
        *,
        kubeconfig: Path | None = None,
        kubeconfig_source: str = "kubeconfig",
        fleet: FleetFile | None = None,
        fleet_path: Path | None = None,
    ) -> None:
        if not _SEGMENT.match(kubeconfig_source):
            raise ConfigError(f"static source name {kubeconfig_source!r} is not a valid id part")
        self.kubeconfig = kubeconfig
        self.kubeconfig_source = kubeconfig_source
        self.fleet = fleet if fleet is not None else FleetFile()
        self.fleet_dir = fleet_path.parent if fleet_path is not None else Path.cwd()
        # Parsed kubeconfigs by path, kept while the file's (mtime, size, inode) is unchanged:
        # a rollout asks one kubeconfig for hundreds of tokens, and parsing it each time is
        # quadratic in the fleet. An edited file is read again at once.
        self._parsed: dict[Path, tuple[tuple[int, int, int], dict[str, KubeconfigContext]]] = {}
        self._parsed_lock = threading.Lock()

    @classmethod
    def from_settings(cls, kube: KubeSettings, static: StaticSettings) -> StaticClusters:
        """From ``FLEETOPS_KUBECONFIG`` and the fleet file (skipped when it does not exist)."""
        fleet_path = static.fleet_file
        fleet = None
        if fleet_path is not None and fleet_path.exists():
            fleet = load_fleet_file(fleet_path)
        return cls(
            kubeconfig=kube.kubeconfig,
            kubeconfig_source=static.kubeconfig_source,
            fleet=fleet,
            fleet_path=fleet_path,
        )

    @property
    def accounts(self) -> tuple[str, ...]:
        """The static source names covered: the kubeconfig's and the fleet file's."""
        names = set(self.fleet.static_sources)
        if self.kubeconfig is not None:
            names.add(self.kubeconfig_source)
        return tuple(sorted(names))

    def discover(self, *, name: str = "static") -> SourceResult:
        """Every context of the kubeconfig and every static cluster of the fleet file."""
        if not self.accounts:
            raise ConfigError(
                "no static source is configured: set FLEETOPS_KUBECONFIG or list clusters under "
                "'static' in the fleet file"
            )
        clusters = [*self._from_kubeconfig(), *self._from_fleet()]
        return SourceResult(
            name=name, provider=Provider.STATIC, accounts=self.accounts, clusters=tuple(clusters)
        )

    def _from_kubeconfig(self) -> Iterator[Cluster]:
        if self.kubeconfig is None:
            return
        contexts = read_kubeconfig(self.kubeconfig)
        unusable = sorted(name for name in contexts if not _SEGMENT.match(name))
        if unusable:
            raise ConfigError(
                f"{self.kubeconfig}: context names {', '.join(map(repr, unusable))} cannot be "
                "cluster names (use letters, digits and . _ : @ -); rename them, or list them "
                "in the fleet file with a 'name' and 'context'"
            )
        for name, context in contexts.items():
            yield _static_cluster(
                source=self.kubeconfig_source,
                location=DEFAULT_STATIC_LOCATION,
                name=name,
                context=context,
                labels={},
            )

    def _from_fleet(self) -> Iterator[Cluster]:
        cache: dict[Path, dict[str, KubeconfigContext]] = {}
        for entry in self.fleet.static:
            context = self._context_of(entry, cache)
            yield _static_cluster(
                source=entry.source,
                location=entry.effective_location,
                name=entry.name,
                context=context,
                labels=entry.labels,
            )

    def _context_of(
        self, entry: StaticCluster, cache: dict[Path, dict[str, KubeconfigContext]]
    ) -> KubeconfigContext:
        path = (self.fleet_dir / entry.kubeconfig).expanduser()
        if path not in cache:
            cache[path] = self._read(path)
        context = cache[path].get(entry.context_name)
        if context is None:
            raise ConfigError(
                f"static cluster {entry.id}: no context {entry.context_name!r} in {path}"
            )
        return context

    def _read(self, path: Path) -> dict[str, KubeconfigContext]:
        """``read_kubeconfig(path)``, parsed once while the file stays the same."""
        try:
            info = path.stat()
        except OSError:
            return read_kubeconfig(path)  # names the file and the problem
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        with self._parsed_lock:
            cached = self._parsed.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        contexts = read_kubeconfig(path)
        with self._parsed_lock:
            self._parsed[path] = (stamp, contexts)
        return contexts

    def context_for(self, cluster: Cluster) -> KubeconfigContext:
        """The kubeconfig context a static cluster is reached through."""
        if self.kubeconfig is not None and cluster.account == self.kubeconfig_source:
            context = self._read(self.kubeconfig).get(cluster.name)
            if context is not None:
                return context
        for entry in self.fleet.static:
            if entry.id == cluster.id:
                return self._context_of(entry, {})
        raise NotFound(
            f"cluster {cluster.id}: no kubeconfig context of the configured static sources",
            system=SYSTEM,
        )

    def token_for(self, cluster: Cluster) -> ClusterToken:
        """The cluster's token, read from its kubeconfig context's user."""
        return user_token(self.context_for(cluster))
