"""The pieces of a discovery run below Prefect: plan the sources, run one, probe one cluster.

The ``discover-clusters`` flow (``flows/discover.py``) orchestrates; its tasks
(``tasks/discovery.py``) each call one function of this module. Everything here is plain Python
that can be called from a test, a benchmark or a shell, with settings passed in.

- :func:`load_settings` reads ``FLEETOPS_*`` and turns a validation error into a
  :class:`~fleetops.errors.ConfigError` (redacted), so a malformed account, region, project or
  subscription stops a run before anything is called or written.
- :func:`plan_sources` decides which sources run and what each one covers, validating every
  source's configuration and the fleet file (``ConfigError`` naming the file and line).
- :func:`discover_source` builds one source's client from settings and lists its clusters.
- :func:`failed_source` is the :class:`~fleetops.domain.inventory.SourceResult` of a source that
  raised: it covers the same accounts, so none of their clusters count as missed.
- :func:`probe_cluster` connects to a cluster with a short-lived token (TLS verified with the
  CA from the provider) and returns the probe result; only transient errors are raised.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetops.clients._common import clean
from fleetops.clients.static import StaticClusters, load_fleet_file
from fleetops.domain.cluster import Cluster, ProbeResult, Provider
from fleetops.domain.inventory import LabelOverride, SourceResult
from fleetops.domain.sources import (
    AksSourceConfig,
    EksSourceConfig,
    GkeSourceConfig,
    SourceKind,
)
from fleetops.errors import ConfigError, FleetopsError, TransientError
from fleetops.runtime import settle_heap
from fleetops.settings import Settings

if TYPE_CHECKING:  # the Kubernetes client is imported when a probe runs, not by the CLI
    from fleetops.clients.credentials import ClusterCredentials

log = logging.getLogger(__name__)

_PROVIDER = {
    SourceKind.EKS: Provider.EKS,
    SourceKind.GKE: Provider.GKE,
    SourceKind.AKS: Provider.AKS,
    SourceKind.STATIC: Provider.STATIC,
}

#: the client module of each source kind (each imports its provider's SDK)
_CLIENT_MODULES = {
    SourceKind.EKS: "fleetops.clients.eks",
    SourceKind.GKE: "fleetops.clients.gke",
    SourceKind.AKS: "fleetops.clients.aks",
    SourceKind.STATIC: "fleetops.clients.static",
}


class DiscoveryFailed(FleetopsError):
    """Raised at the end of a run, after writing, when a source failed: the run ends Failed."""


class SourcePlan(BaseModel):
    """One source to run, and the accounts it answers for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SourceKind = Field(description="Kind of source.")
    provider: Provider = Field(description="Provider of its clusters.")
    accounts: tuple[str, ...] = Field(
        min_length=1, description="Accounts, projects, subscriptions or static source names."
    )

    @property
    def name(self) -> str:
        return self.kind.value


def load_settings() -> Settings:
    """``Settings()`` from the environment; a :class:`ConfigError` naming every bad field."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(p) for p in error["loc"])
            problems.append(f"{field}: {str(error['msg']).removeprefix('Value error, ')}")
        raise ConfigError("invalid settings: " + clean("; ".join(problems), limit=2000)) from None


def _static(settings: Settings) -> StaticClusters:
    return StaticClusters.from_settings(settings.kube, settings.static)


def configured_kinds(settings: Settings) -> tuple[SourceKind, ...]:
    """Source kinds with something to list in the settings (validating the fleet file)."""
    kinds = []
    if settings.eks.accounts or settings.eks.regions:
        kinds.append(SourceKind.EKS)
    if settings.gke.projects:
        kinds.append(SourceKind.GKE)
    if settings.aks.subscriptions:
        kinds.append(SourceKind.AKS)
    if _static(settings).accounts:
        kinds.append(SourceKind.STATIC)
    return tuple(kinds)


def plan_sources(settings: Settings, kinds: Sequence[SourceKind] = ()) -> tuple[SourcePlan, ...]:
    """The sources of a run: ``kinds``, or every configured one when empty.

    Raises :class:`ConfigError` for a source that is asked for but not configured (or
    misconfigured), for a broken fleet file, and when nothing at all is configured.
    """
    wanted = tuple(dict.fromkeys(kinds)) or configured_kinds(settings)
    if not wanted:
        raise ConfigError(
            "no discovery source is configured: set FLEETOPS_EKS_ACCOUNTS and "
            "FLEETOPS_EKS_REGIONS, FLEETOPS_GKE_PROJECTS, FLEETOPS_AKS_SUBSCRIPTIONS, "
            "FLEETOPS_KUBECONFIG or static clusters in the fleet file"
        )
    plans = []
    for kind in wanted:
        try:
            if kind is SourceKind.EKS:
                accounts = EksSourceConfig(
                    accounts=settings.eks.accounts, regions=settings.eks.regions
                ).account_ids
            elif kind is SourceKind.GKE:
                accounts = GkeSourceConfig(projects=settings.gke.projects).projects
            elif kind is SourceKind.AKS:
                accounts = AksSourceConfig(subscriptions=settings.aks.subscriptions).subscriptions
            else:
                accounts = _static(settings).accounts
                if not accounts:
                    raise ConfigError(
                        "set FLEETOPS_KUBECONFIG or list clusters under 'static' in the fleet file"
                    )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: "
                f"{str(e['msg']).removeprefix('Value error, ')}"
                for e in exc.errors(include_url=False, include_input=False)
            )
            raise ConfigError(f"source {kind.value} is not configured: {problems}") from None
        except ConfigError as exc:
            if str(exc).startswith("set FLEETOPS"):
                raise ConfigError(f"source {kind.value} is not configured: {exc}") from None
            raise
        plans.append(SourcePlan(kind=kind, provider=_PROVIDER[kind], accounts=accounts))
    return tuple(plans)


def load_overrides(settings: Settings) -> tuple[LabelOverride, ...]:
    """The label overrides of the fleet file (none when it does not exist)."""
    path = settings.static.fleet_file
    if path is None or not path.exists():
        return ()
    return load_fleet_file(path).overrides


def prepare_process(plans: Sequence[SourcePlan]) -> None:
    """Import the SDKs the plans use, then settle the process's heap (once per process).

    The flow calls it before listing: the sources then run without the garbage collector walking
    the SDKs' start-up objects (see :mod:`fleetops.runtime`).
    """
    for plan in plans:
        importlib.import_module(_CLIENT_MODULES[plan.kind])
    settle_heap()


def discover_source(plan: SourcePlan, settings: Settings) -> SourceResult:
    """List every cluster of one source; raises the source's :class:`ClientError` on failure."""
    name = plan.name
    if plan.kind is SourceKind.EKS:
        from fleetops.clients.eks import EksDiscovery

        return EksDiscovery.from_settings(settings.aws, settings.eks).discover(name=name)
    if plan.kind is SourceKind.GKE:
        from fleetops.clients.gke import GkeDiscovery

        gke = GkeDiscovery.from_settings(settings.gke)
        try:
            return gke.discover(name=name)
        finally:
            gke.close()
    if plan.kind is SourceKind.AKS:
        from fleetops.clients.aks import AksDiscovery

        aks = AksDiscovery.from_settings(settings.aks)
        try:
            return aks.discover(name=name)
        finally:
            aks.clients.close()
    return _static(settings).discover(name=name)


def failed_source(plan: SourcePlan, error: BaseException) -> SourceResult:
    """The result of a source that failed: its accounts covered, its error redacted."""
    if isinstance(error, FleetopsError):
        message = clean(error)
    else:
        message = clean(f"{type(error).__name__}: {error}")
    return SourceResult(
        name=plan.name, provider=plan.provider, accounts=plan.accounts, error=message
    )


def probe_cluster(
    cluster: Cluster,
    *,
    credentials: ClusterCredentials,
    timeout_seconds: float = 10.0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ProbeResult:
    """Read ``/version`` and ``/readyz`` of ``cluster`` with a fresh short-lived token.

    A transient failure (connection refused, timeout, 429, 5xx) is raised so the caller may
    retry it; any other failure (refused token, no credentials, bad TLS) is the failed result.
    The token lives only inside this call; a CA that came with it (AKS) is in the result, for
    the inventory to record, whether the server answered or not.
    """
    from fleetops.clients.kube import failed_probe, probe

    ca_data: str | None = None
    try:
        token = credentials.token_for(cluster)
        ca_data = token.ca_data
        return probe(cluster, token, timeout_seconds=timeout_seconds, clock=clock)
    except TransientError:
        raise
    except FleetopsError as exc:
        return failed_probe(exc, at=clock()).model_copy(update={"ca_data": ca_data})


def unreachable_probe(error: BaseException, *, at: datetime) -> ProbeResult:
    """The result to record for a probe whose transient failure outlasted its retries."""
    if isinstance(error, FleetopsError):
        return ProbeResult(ok=False, at=at, error=clean(error))
    return ProbeResult(ok=False, at=at, error=clean(f"{type(error).__name__}: {error}"))
