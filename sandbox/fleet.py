"""Many sandbox Kubernetes clusters in one process, the services around them, and the files
that point clients at them.

A :class:`Fleet` runs N :class:`~sandbox.kube.cluster.SandboxCluster` objects on ONE asyncio
loop, each behind its own HTTPS listener on ``127.0.0.1`` (a random free port), with its own CA
and its own bearer token. With ``services`` it also runs, all on 127.0.0.1:

- ``aws``: moto (EKS, Route 53, STS, IAM; :mod:`sandbox.clouds.aws`) publishing the EKS clusters;
  EKS clusters accept real ``k8s-aws-v1.`` tokens for themselves;
- ``gke``: the GKE API (:mod:`sandbox.clouds.gke`) publishing the GKE clusters, which accept
  the Google access token; one more project answers 403;
- ``aks``: ARM for AKS (:mod:`sandbox.clouds.aks`, HTTPS) publishing the AKS clusters, whose
  ``listClusterUserCredential`` kubeconfig carries a per-cluster user token; one more
  subscription answers 403;
- ``vault``: the real OpenBao server (:mod:`sandbox.vault`), seeded: KV v2 secrets, AppRole and
  Kubernetes auth against the first cluster's TokenReview (every cluster accepts service-account
  tokens it issued: :meth:`Fleet.service_account_token`);
- ``slack``: the Slack Web API stand-in (:mod:`sandbox.slack`).

Where each cluster is published is decided by :func:`sandbox.placement.place`: every cluster
appears in exactly one discovery source (EKS, GKE, AKS, the static kubeconfig, or the fleet
file). Without cloud services every cluster is a context of the static kubeconfig.

Files in the fleet's directory:

- ``kubeconfig``: every cluster (one context each, named after it, admin token), for kubectl;
- ``static-kubeconfig``: only the clusters of the kubeconfig source (``FLEETOPS_KUBECONFIG``);
- ``clusters.yaml``: the fleet file (schema ``fleetops.domain.sources.FleetFile``) listing the
  fleet-file clusters, each a context of ``kubeconfig``;
- ``sandbox.env`` (mode 0600): ``FLEETOPS_*`` and ``AWS_*`` settings pointing fleetops at all
  of it; ``fleet.json``: every cluster's provider, account, location and labels, and every
  service's address (no secrets); ``aks-ca.pem``: the AKS endpoint's CA; ``vault/bao.log``.

Tokens are checked fleet-wide, so a client that mixes up clusters gets what a real, separately
authenticated cluster would make obvious: no token or an unknown one is 401, another cluster's
token is 403 naming that token's user (``<cluster>-admin``).

Faults are switched at run time through the Python API (:meth:`Fleet.set_faults`,
:meth:`Fleet.outage`, :meth:`Fleet.set_service_faults`) or the plain-HTTP control endpoint (see
:mod:`sandbox.control`). An outage closes the listening socket and drops open connections, so
clients see "connection refused"; when it ends the service listens on the same port again.

Two ways to run: from a running loop (:meth:`Fleet.start` / :meth:`Fleet.stop`,
:meth:`Fleet.run_forever` for the CLI), or in a background thread for tests
(``with Fleet(...) as fleet:`` / :meth:`Fleet.start_in_thread` and :meth:`Fleet.close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hmac
import json
import logging
import os
import random
import resource
import secrets
import shlex
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from aiohttp import web

from sandbox.clouds.common import (
    AKS_SUBSCRIPTIONS,
    AWS_REGIONS,
    GKE_PROJECTS,
    CloudCluster,
    Listener,
    ProviderFaults,
    ProviderFaultsError,
    close_site,
    open_site,
)
from sandbox.control import control_app
from sandbox.kube.certs import ClusterCerts, issue_cluster_certs
from sandbox.kube.cluster import AuthResult, ClusterSpec, SandboxCluster
from sandbox.kube.faults import Faults
from sandbox.kube.satokens import ServiceAccountIssuer
from sandbox.placement import CLOUD_PROVIDERS, Placement, place

if TYPE_CHECKING:
    from sandbox.clouds.aks import AksSandbox
    from sandbox.clouds.aws import AwsSandbox
    from sandbox.clouds.gke import GkeSandbox
    from sandbox.slack import SlackServer
    from sandbox.vault import VaultSeed, VaultServer

log = logging.getLogger(__name__)

T = TypeVar("T")

HOST = "127.0.0.1"
KUBECONFIG = "kubeconfig"
STATIC_KUBECONFIG = "static-kubeconfig"
FLEET_FILE = "clusters.yaml"
SANDBOX_ENV = "sandbox.env"
FLEET_JSON = "fleet.json"
VAULT_DIR = "vault"

#: every service a fleet can run beside its clusters (the CLI's default: all of them)
SERVICES: tuple[str, ...] = ("aws", "gke", "aks", "vault", "slack")
#: the cloud provider whose clusters a cloud service publishes
PROVIDER_OF_SERVICE = {"aws": "eks", "gke": "gke", "aks": "aks"}

#: a project / subscription the sandbox's caller may not read (403), for fault tests
GKE_FORBIDDEN_PROJECT = "fleetops-restricted"
AKS_FORBIDDEN_SUBSCRIPTION = "00000000-0000-4000-8000-0000000000ff"
#: who the GKE access token is (a Google service account), as GKE clusters report it
GKE_IDENTITY = "fleetops-discovery@fleetops-prod.iam.gserviceaccount.com"
SLACK_CHANNEL = "fleetops"
#: the service account Vault's Kubernetes auth role admits (namespace, name)
VAULT_SERVICE_ACCOUNT = ("fleetops", "fleetops")

MASTERS = ("system:masters", "system:authenticated")
UNAUTHORIZED = AuthResult(ok=False, status=401)

#: how long a cluster waits for in-flight requests (watches) when it stops
SHUTDOWN_TIMEOUT = 1.0

ClusterFactory = Callable[..., SandboxCluster]
Authenticator = Callable[[str | None], AuthResult]


class UnknownClusterError(LookupError):
    """No cluster of that name in the fleet."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no cluster named {name!r} in the fleet")
        self.name = name


class UnknownServiceError(LookupError):
    """No service of that name runs in this fleet."""

    def __init__(self, name: str, running: Iterable[str]) -> None:
        known = ", ".join(running) or "none"
        super().__init__(f"no service named {name!r} runs in the fleet (running: {known})")
        self.name = name


class ServiceFaultsError(ValueError):
    """A service fault switch was given a bad value; ``field`` names the switch."""

    def __init__(self, field_name: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def cluster_names(count: int, prefix: str = "sbx") -> list[str]:
    """``sbx-01 .. sbx-12``: zero-padded to the width of ``count`` (at least two digits)."""
    if count < 1:
        raise ValueError(f"a fleet needs at least one cluster, got {count}")
    width = max(2, len(str(count)))
    return [f"{prefix}-{index:0{width}d}" for index in range(1, count + 1)]


def username(cluster: str) -> str:
    """The user a cluster's admin token authenticates as (named in 403 answers elsewhere)."""
    return f"{cluster}-admin"


def aks_username(placement: Placement) -> str:
    """The user of an AKS cluster's ``listClusterUserCredential`` kubeconfig."""
    return f"clusterUser_{placement.resource_group}_{placement.name}"


@dataclass(frozen=True)
class _Identity:
    cluster: str
    username: str
    groups: tuple[str, ...] = MASTERS


@dataclass(eq=False)
class _Member:
    name: str
    token: str
    faults: Faults
    placement: Placement
    issuer: ServiceAccountIssuer
    user_token: str = ""
    certs: ClusterCerts | None = None
    cluster: SandboxCluster | None = None
    ssl_context: Any = None
    runner: web.AppRunner | None = None
    site: web.SockSite | None = None
    port: int = 0

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.port}"


@dataclass
class _Services:
    aws: AwsSandbox | None = None
    gke: GkeSandbox | None = None
    aks: AksSandbox | None = None
    vault: VaultServer | None = None
    vault_seed: VaultSeed | None = None
    slack: SlackServer | None = None
    slack_listener: Listener | None = None
    started: list[str] = field(default_factory=list)


class Fleet:
    """N sandbox clusters on one loop, and optionally the services; see the module docstring."""

    def __init__(
        self,
        clusters: int = 3,
        *,
        directory: str | os.PathLike[str] | None = None,
        rollout_seconds: float = 2.0,
        kubernetes_version: str | None = None,
        control_port: int = 0,
        seed: int | None = None,
        prefix: str = "sbx",
        cluster_factory: ClusterFactory | None = None,
        services: Iterable[str] = (),
    ) -> None:
        if rollout_seconds < 0:
            raise ValueError(f"rollout_seconds must be >= 0, got {rollout_seconds}")
        if not 0 <= control_port <= 65535:
            raise ValueError(f"control_port must be 0..65535, got {control_port}")
        wanted = set(services)
        unknown = sorted(wanted - set(SERVICES))
        if unknown:
            raise ValueError(f"unknown service(s) {unknown}; known: {', '.join(SERVICES)}")
        self._services = tuple(s for s in SERVICES if s in wanted)
        providers = tuple(
            PROVIDER_OF_SERVICE[s] for s in self._services if s in PROVIDER_OF_SERVICE
        )
        self._placements = place(clusters, providers=providers, prefix=prefix)
        self._names = [p.name for p in self._placements]
        self._placed = bool(providers)
        self._own_directory = directory is None
        self._directory = Path(directory) if directory is not None else None
        self._rollout_seconds = rollout_seconds
        self._kubernetes_version = kubernetes_version
        self._control_port = control_port
        self._seed = seed
        self._factory: ClusterFactory = cluster_factory or SandboxCluster
        self._members: dict[str, _Member] = {}
        self._identities: dict[str, _Identity] = {}
        for placement in self._placements:
            name = placement.name
            member = _Member(
                name=name,
                token=secrets.token_urlsafe(32),
                faults=Faults(rng=self._rng(name)),
                placement=placement,
                issuer=ServiceAccountIssuer(name),
            )
            self._members[name] = member
            self._identities[member.token] = _Identity(name, username(name))
            if placement.source == "aks" and "aks" in self._services:
                member.user_token = secrets.token_urlsafe(32)
                self._identities[member.user_token] = _Identity(name, aks_username(placement))
        self._gke_token = f"ya29.sandbox-{secrets.token_urlsafe(40)}" if "gke" in wanted else ""
        self._aks_token = f"sandbox-arm-{secrets.token_urlsafe(40)}" if "aks" in wanted else ""
        self._slack_token = f"xoxb-sandbox-{secrets.token_hex(16)}" if "slack" in wanted else ""
        self._svc = _Services()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._control_runner: web.AppRunner | None = None
        self._control_url = ""
        self.timings: dict[str, float] = {}
        """Seconds each start-up phase took (``clusters``, ``aws``, ..., ``total``)."""

    def _rng(self, label: str) -> random.Random:
        return random.Random(f"{self._seed}:{label}") if self._seed is not None else random.Random()

    # -- names, paths, credentials ------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def services(self) -> tuple[str, ...]:
        """The services this fleet runs (a subset of :data:`SERVICES`, in that order)."""
        return self._services

    @property
    def directory(self) -> Path:
        if self._directory is None:
            raise RuntimeError("the fleet has not been started yet")
        return self._directory

    @property
    def kubeconfig_path(self) -> Path:
        """Every cluster, admin token: for kubectl and people."""
        return self.directory / KUBECONFIG

    @property
    def static_kubeconfig_path(self) -> Path:
        """The kubeconfig discovery reads as a static source (``FLEETOPS_KUBECONFIG``)."""
        return self.directory / (STATIC_KUBECONFIG if self._placed else KUBECONFIG)

    @property
    def fleet_file_path(self) -> Path:
        return self.directory / FLEET_FILE

    @property
    def env_path(self) -> Path:
        return self.directory / SANDBOX_ENV

    @property
    def json_path(self) -> Path:
        return self.directory / FLEET_JSON

    @property
    def control_url(self) -> str:
        if not self._control_url:
            raise RuntimeError("the fleet has not been started yet")
        return self._control_url

    @property
    def running(self) -> bool:
        return self._started

    def cluster(self, name: str) -> SandboxCluster:
        member = self._member(name)
        if member.cluster is None:
            raise RuntimeError("the fleet has not been started yet")
        return member.cluster

    def placement(self, name: str) -> Placement:
        """Where cluster ``name`` is published (source, account, location, labels)."""
        return self._member(name).placement

    def names_in(self, source: str) -> list[str]:
        """Clusters of one source: ``eks``, ``gke``, ``aks``, ``kubeconfig`` or ``fleet-file``."""
        return [p.name for p in self._placements if p.source == source]

    def faults(self, name: str) -> Faults:
        return self._member(name).faults

    def server(self, name: str) -> str:
        """``https://127.0.0.1:PORT`` of a started cluster (the same while it is in an outage)."""
        return self._member(name).server

    def port(self, name: str) -> int:
        return self._member(name).port

    def token(self, name: str) -> str:
        """The cluster's admin token (``<name>-admin``, system:masters)."""
        return self._member(name).token

    def user_token(self, name: str) -> str:
        """An AKS cluster's user token (the one its ``listClusterUserCredential`` hands out)."""
        member = self._member(name)
        if not member.user_token:
            raise LookupError(f"{name} is not an AKS cluster of a fleet running aks")
        return member.user_token

    def ca_pem(self, name: str) -> bytes:
        certs = self._member(name).certs
        if certs is None:
            raise RuntimeError("the fleet has not been started yet")
        return certs.ca_pem

    def service_account_token(
        self,
        name: str,
        namespace: str = VAULT_SERVICE_ACCOUNT[0],
        service_account: str = VAULT_SERVICE_ACCOUNT[1],
        *,
        audiences: Iterable[str] | None = None,
        expiration_seconds: int = 3600,
    ) -> str:
        """A service-account token cluster ``name`` issued (what a pod there would carry)."""
        return self._member(name).issuer.mint(
            namespace,
            service_account,
            audiences=audiences,
            expiration_seconds=expiration_seconds,
        )

    def describe(self, name: str) -> dict[str, Any]:
        """JSON-ready view of one cluster (no token)."""
        member = self._member(name)
        placement = member.placement
        return {
            "name": member.name,
            "id": placement.id,
            "provider": placement.provider,
            "source": placement.source,
            "account": placement.account,
            "location": placement.location,
            "labels": dict(placement.labels),
            "server": member.server,
            "port": member.port,
            "context": member.name,
            "user": username(member.name),
            "listening": member.site is not None,
            "faults": member.faults.to_dict(),
        }

    # -- services -----------------------------------------------------------------------------

    @property
    def aws(self) -> AwsSandbox:
        return self._service_object("aws", self._svc.aws)

    @property
    def gke(self) -> GkeSandbox:
        return self._service_object("gke", self._svc.gke)

    @property
    def aks(self) -> AksSandbox:
        return self._service_object("aks", self._svc.aks)

    @property
    def vault(self) -> VaultServer:
        return self._service_object("vault", self._svc.vault)

    @property
    def vault_seed(self) -> VaultSeed:
        return self._service_object("vault", self._svc.vault_seed)

    @property
    def slack(self) -> SlackServer:
        return self._service_object("slack", self._svc.slack)

    @property
    def slack_url(self) -> str:
        """``http://127.0.0.1:PORT/api/``: slack_sdk's ``base_url``."""
        listener = self._service_object("slack", self._svc.slack_listener)
        return f"{listener.url}/api/"

    @property
    def gke_access_token(self) -> str:
        self._service_object("gke", self._gke_token or None)
        return self._gke_token

    @property
    def aks_access_token(self) -> str:
        self._service_object("aks", self._aks_token or None)
        return self._aks_token

    @property
    def slack_token(self) -> str:
        self._service_object("slack", self._slack_token or None)
        return self._slack_token

    def _service_object(self, name: str, value: T | None) -> T:
        if name not in self._services:
            raise UnknownServiceError(name, self._services)
        if value is None:
            raise RuntimeError(f"the fleet's {name} service has not been started yet")
        return value

    def running_services(self) -> list[str]:
        """The services that are up (listening or in an outage), in :data:`SERVICES` order."""
        return [s for s in SERVICES if s in self._svc.started]

    async def describe_service(self, name: str) -> dict[str, Any]:
        """JSON-ready view of one service: where it listens and its switches (no secrets)."""
        faults = await self.service_faults_async(name)
        svc = self._svc
        info: dict[str, Any] = {"name": name, "faults": faults}
        if name == "aws" and svc.aws is not None:
            info |= {"url": svc.aws.endpoint_url, "listening": not svc.aws.faults.outage}
        elif name == "gke" and svc.gke is not None:
            info |= {"url": svc.gke.url, "listening": not svc.gke.faults.outage}
        elif name == "aks" and svc.aks is not None:
            info |= {"url": svc.aks.url, "listening": not svc.aks.faults.outage}
        elif name == "slack" and svc.slack_listener is not None:
            info |= {"url": self.slack_url, "listening": svc.slack_listener.listening}
        elif name == "vault" and svc.vault is not None:
            info |= {"url": svc.vault.addr, "listening": not svc.vault.outage, "pid": svc.vault.pid}
        return info

    async def service_faults_async(self, name: str) -> dict[str, Any]:
        """A running service's fault switches (from inside the fleet's loop)."""
        self._running_service(name)
        svc = self._svc
        if name == "aws" and svc.aws is not None:
            return svc.aws.faults.to_dict()
        if name == "gke" and svc.gke is not None:
            return svc.gke.faults.to_dict()
        if name == "aks" and svc.aks is not None:
            return svc.aks.faults.to_dict()
        if name == "slack" and svc.slack is not None:
            return svc.slack.faults.to_dict()
        assert name == "vault"
        assert svc.vault is not None
        return dict(await self._in_thread(svc.vault.faults))

    async def apply_service_faults(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change a service's fault switches (inside the fleet's loop); returns the switches.

        aws, gke, aks: ``latency_seconds``, ``error_rate`` (the provider's throttling error),
        ``retry_after_seconds``, ``outage``. slack: see :class:`sandbox.slack.SlackFaults`
        (``rate_limited``, ``rate_limited_calls``, ``error``, ``error_rate``, ``outage``, ...).
        vault: ``outage`` (connections refused; bao keeps its data), ``sealed``,
        ``latency_seconds``, ``error_rate`` with ``error_code`` (429 with ``Retry-After``, 500,
        503 in Vault's ``{"errors": [...]}`` shape) and ``retry_after_seconds``.
        Raises :class:`UnknownServiceError` or :class:`ServiceFaultsError` (nothing changes).
        """
        self._running_service(name)
        svc = self._svc
        try:
            if name == "aws" and svc.aws is not None:
                svc.aws.faults.update(**changes)  # validate everything before blocking a thread
                return dict(await self._in_thread(svc.aws.apply_faults, **changes))
            if name == "gke" and svc.gke is not None:
                return await svc.gke.apply_faults(**changes)
            if name == "aks" and svc.aks is not None:
                return await svc.aks.apply_faults(**changes)
            if name == "slack" and svc.slack is not None and svc.slack_listener is not None:
                from sandbox.slack import SlackFaultsError

                try:
                    result = svc.slack.faults.update(**changes)
                except SlackFaultsError as exc:
                    raise ServiceFaultsError(exc.field, str(exc)) from None
                if svc.slack.faults.outage:
                    await svc.slack_listener.pause()
                else:
                    await svc.slack_listener.resume()
                return result
        except ProviderFaultsError as exc:
            raise ServiceFaultsError(exc.field, str(exc)) from None
        assert name == "vault"
        assert svc.vault is not None
        from sandbox.vault import VaultFaultsError, validate_faults

        try:
            validate_faults(changes)  # every switch checked before blocking a thread
        except VaultFaultsError as exc:
            raise ServiceFaultsError(exc.field, str(exc)) from None
        return dict(await self._in_thread(svc.vault.update_faults, **changes))

    async def reset_service_faults_async(self, name: str | None = None) -> None:
        for service in [name] if name is not None else self.running_services():
            self._running_service(service)
            if service == "slack":
                from sandbox.slack import SlackFaults

                defaults = SlackFaults().to_dict()
            elif service == "vault":
                from sandbox.vault import default_faults

                defaults = default_faults()
            else:
                defaults = ProviderFaults().to_dict()
            await self.apply_service_faults(service, defaults)

    def service_faults(self, name: str) -> dict[str, Any]:
        """A running service's switches (from any thread but the fleet's own)."""
        return self._call(self.service_faults_async(name))

    def set_service_faults(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change a running service's switches (from any thread but the fleet's own)."""
        return self._call(self.apply_service_faults(name, changes))

    def service_outage(self, name: str, on: bool) -> dict[str, Any]:
        """Start or end a service's outage: its connections are refused."""
        return self.set_service_faults(name, outage=on)

    def reset_service_faults(self, name: str | None = None) -> None:
        """Every switch of one service (or of every service) back to off."""
        self._call(self.reset_service_faults_async(name))

    def _running_service(self, name: str) -> None:
        if name not in self._svc.started:
            raise UnknownServiceError(name, self.running_services())

    # -- cluster faults -----------------------------------------------------------------------

    async def apply_faults(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change fault switches from inside the fleet's loop; returns the new switches.

        Raises :class:`UnknownClusterError` or :class:`~sandbox.kube.faults.FaultsError`
        (nothing changes then). ``outage`` opens or closes the listener accordingly.
        """
        member = self._member(name)
        result = member.faults.update(**changes)
        if self._started:
            if member.faults.outage and member.site is not None:
                await self._close_listener(member)
            elif not member.faults.outage and member.site is None:
                try:
                    await self._open_listener(member)
                except OSError:
                    member.faults.outage = True
                    raise
        return result

    async def reset_faults_async(self, name: str | None = None) -> None:
        for member_name in [name] if name is not None else self._names:
            member = self._member(member_name)
            defaults = Faults(rng=member.faults.rng).to_dict()
            await self.apply_faults(member_name, defaults)

    def set_faults(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change fault switches of cluster ``name`` (from any thread but the fleet's own)."""
        if not self._started:
            return self._member(name).faults.update(**changes)
        return self._call(self.apply_faults(name, changes))

    def outage(self, name: str, on: bool) -> dict[str, Any]:
        """Start (``on=True``) or end an outage: connections to the cluster are refused."""
        return self.set_faults(name, outage=on)

    def reset_faults(self, name: str | None = None) -> None:
        """Every switch back to off, for one cluster or (``name=None``) all of them."""
        if not self._started:
            for member_name in [name] if name is not None else self._names:
                self._member(member_name).faults.reset()
            return
        self._call(self.reset_faults_async(name))

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the control endpoint, every cluster and service, then write the files."""
        if self._started or self._loop is not None:
            raise RuntimeError("the fleet is already started")
        self._loop = asyncio.get_running_loop()
        began = time.perf_counter()
        vault_boot: asyncio.Future[None] | None = None
        try:
            self._prepare_directory()
            _raise_open_files_limit(len(self._names) * 4 + 256)
            await self._start_control()  # first: a port in use fails before anything starts
            if "vault" in self._services:
                vault_boot = asyncio.ensure_future(self._boot_vault())  # bao boots meanwhile
            phase = time.perf_counter()
            with _gc_paused():
                for name in self._names:
                    await self._start_member(self._members[name])
            self.timings["clusters"] = time.perf_counter() - phase
            await self._start_services(vault_boot)
            self._started = True
            self._write_files()
        except BaseException:
            if vault_boot is not None:
                await asyncio.gather(vault_boot, return_exceptions=True)
            await self._teardown()
            raise
        self.timings["total"] = time.perf_counter() - began
        log.info(
            "sandbox fleet started: %d clusters, services %s in %s",
            len(self._names),
            ", ".join(self._services) or "none",
            self.directory,
        )

    async def stop(self) -> None:
        """Stop every service, stop listening, stop every cluster; safe to call twice."""
        if self._loop is None:
            return
        await self._teardown()

    async def run_forever(
        self,
        stop: asyncio.Event | None = None,
        *,
        on_ready: Callable[[Fleet], None] | None = None,
    ) -> None:
        """Start, call ``on_ready``, serve until ``stop`` is set (or cancelled), then stop."""
        await self.start()
        try:
            if on_ready is not None:
                on_ready(self)
            if stop is None:
                await asyncio.get_running_loop().create_future()
            else:
                await stop.wait()
        finally:
            await self.stop()

    def start_in_thread(self, *, timeout: float = 120.0) -> Fleet:
        """Run the fleet's loop in a daemon thread; returns once everything listens."""
        if self._thread is not None:
            raise RuntimeError("the fleet is already running in a thread")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="sandbox-fleet", daemon=True)
        thread.start()
        self._thread = thread
        future = asyncio.run_coroutine_threadsafe(self.start(), loop)
        try:
            future.result(timeout)
        except BaseException:
            future.cancel()
            self._stop_thread(loop, timeout)
            raise
        return self

    def close(self, *, timeout: float = 60.0) -> None:
        """Stop a fleet started with :meth:`start_in_thread` and join its thread."""
        loop, thread = self._loop, self._thread
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        finally:
            self._stop_thread(loop, timeout)

    def __enter__(self) -> Fleet:
        return self.start_in_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _member(self, name: str) -> _Member:
        try:
            return self._members[name]
        except KeyError:
            raise UnknownClusterError(name) from None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the fleet is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError(
                "called from the fleet's own loop; use `await fleet.apply_faults(...)` there"
            )
        try:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
        except FutureTimeoutError as exc:
            raise TimeoutError("the fleet's loop did not answer in time") from exc

    async def _in_thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call (moto, bao, hvac) in the fleet's worker threads."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sandbox-svc")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(function, *args, **kwargs)
        )

    def _authenticator(self, member: _Member) -> Authenticator:
        """Tokens this cluster accepts: its admin token (and AKS user token), the GKE access
        token on GKE clusters, service-account tokens it issued. Another cluster's token is 403
        naming that token's user; anything else is 401."""
        identities = self._identities
        gke_token = self._gke_token if member.placement.source == "gke" else ""
        issuer = member.issuer
        name = member.name

        def authenticate(token: str | None) -> AuthResult:
            if not token:
                return UNAUTHORIZED
            identity = identities.get(token)
            if identity is not None:
                if identity.cluster != name:
                    return AuthResult(
                        ok=False, status=403, username=identity.username,
                        groups=("system:authenticated",),
                    )  # fmt: skip
                return AuthResult(True, 200, identity.username, identity.groups)
            if gke_token and hmac.compare_digest(token.encode(), gke_token.encode()):
                return AuthResult(True, 200, GKE_IDENTITY, MASTERS)
            if token.count(".") == 2:
                user = issuer.authenticate(token)
                if user is not None:
                    return AuthResult(True, 200, user.username, user.groups, uid=user.uid)
            return UNAUTHORIZED

        return authenticate

    async def _start_member(self, member: _Member) -> None:
        member.certs = issue_cluster_certs(member.name)
        member.ssl_context = member.certs.server_context()
        spec_kwargs: dict[str, Any] = {
            "name": member.name,
            "token": member.token,
            "rollout_seconds": self._rollout_seconds,
        }
        if self._kubernetes_version is not None:
            spec_kwargs["kubernetes_version"] = self._kubernetes_version
        member.cluster = self._factory(
            ClusterSpec(**spec_kwargs),
            faults=member.faults,
            authenticator=self._authenticator(member),
        )
        await member.cluster.start()
        member.runner = web.AppRunner(
            member.cluster.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await member.runner.setup()
        await self._open_listener(member)
        if member.faults.outage:
            await self._close_listener(member)

    def _cloud_clusters(self, provider: str) -> list[CloudCluster]:
        records = []
        for placement in self._placements:
            if placement.source != provider:
                continue
            member = self._members[placement.name]
            assert member.certs is not None
            assert member.cluster is not None
            records.append(
                CloudCluster(
                    provider=provider,  # type: ignore[arg-type]
                    account=placement.account,
                    location=placement.location,
                    name=placement.name,
                    endpoint=member.server,
                    ca_pem=member.certs.ca_pem.decode("ascii"),
                    kubernetes_version=member.cluster.spec.kubernetes_version,
                    labels=dict(placement.labels),
                    resource_group=placement.resource_group,
                )
            )
        return records

    async def _boot_vault(self) -> None:
        from sandbox.vault import VaultServer

        began = time.perf_counter()
        workdir = self.directory / VAULT_DIR
        workdir.mkdir(mode=0o700, exist_ok=True)  # bao.log shows the root token
        workdir.chmod(0o700)
        self._svc.vault = VaultServer(workdir, rng=self._rng("vault"))
        self._svc.started.append("vault")  # from here on, teardown stops bao
        await self._in_thread(self._svc.vault.start)
        self.timings["vault_boot"] = time.perf_counter() - began

    async def _start_services(self, vault_boot: asyncio.Future[None] | None) -> None:
        svc = self._svc
        if "aws" in self._services:
            from sandbox.clouds.aws import AwsSandbox, eks_authenticator

            phase = time.perf_counter()
            svc.aws = AwsSandbox(
                self._cloud_clusters("eks"),
                faults=ProviderFaults(rng=self._rng("aws")),
                dns_regions=AWS_REGIONS,
            )
            svc.started.append("aws")
            await self._in_thread(svc.aws.start)
            for name in self.names_in("eks"):
                member = self._members[name]
                assert member.cluster is not None
                member.cluster.authenticator = eks_authenticator(
                    svc.aws, cluster_name=name, fallback=self._authenticator(member)
                )
            self.timings["aws"] = time.perf_counter() - phase
        if "gke" in self._services:
            from sandbox.clouds.gke import GkeSandbox

            phase = time.perf_counter()
            projects = dict.fromkeys(GKE_PROJECTS, True) | {GKE_FORBIDDEN_PROJECT: False}
            svc.gke = GkeSandbox(
                self._cloud_clusters("gke"),
                access_token=self._gke_token,
                projects=projects,
                faults=ProviderFaults(rng=self._rng("gke")),
            )
            svc.started.append("gke")
            await svc.gke.start()
            self.timings["gke"] = time.perf_counter() - phase
        if "aks" in self._services:
            from sandbox.clouds.aks import AksSandbox

            phase = time.perf_counter()
            members = self._members
            subscriptions = dict.fromkeys(AKS_SUBSCRIPTIONS, True)
            subscriptions[AKS_FORBIDDEN_SUBSCRIPTION] = False
            svc.aks = AksSandbox(
                self._cloud_clusters("aks"),
                access_token=self._aks_token,
                user_token=lambda cluster: members[cluster.name].user_token,
                subscriptions=subscriptions,
                faults=ProviderFaults(rng=self._rng("aks")),
                directory=self.directory,
            )
            svc.started.append("aks")
            await svc.aks.start()
            self.timings["aks"] = time.perf_counter() - phase
        if "slack" in self._services:
            from sandbox.slack import SlackServer

            phase = time.perf_counter()
            svc.slack = SlackServer(
                self._slack_token, rng=self._rng("slack"), channels=(SLACK_CHANNEL,)
            )
            svc.slack_listener = Listener(svc.slack.app())
            svc.started.append("slack")
            await svc.slack_listener.start()
            self.timings["slack"] = time.perf_counter() - phase
        if vault_boot is not None:
            from sandbox.vault import KubernetesAuthTarget

            await vault_boot
            phase = time.perf_counter()
            assert svc.vault is not None
            target = self._members[self._names[0]]
            assert target.certs is not None
            namespace, account = VAULT_SERVICE_ACCOUNT
            svc.vault_seed = await self._in_thread(
                svc.vault.seed,
                kubernetes=KubernetesAuthTarget(
                    host=target.server,
                    ca_pem=target.certs.ca_pem.decode("ascii"),
                    namespace=namespace,
                    service_account=account,
                    token_reviewer_jwt=target.token,
                ),
            )
            self.timings["vault_seed"] = time.perf_counter() - phase

    async def _open_listener(self, member: _Member) -> None:
        assert member.runner is not None
        member.site, member.port = await open_site(member.runner, member.port, member.ssl_context)

    async def _close_listener(self, member: _Member) -> None:
        site, member.site = member.site, None
        await close_site(site, member.runner)

    async def _start_control(self) -> None:
        runner = web.AppRunner(control_app(self), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._control_runner = runner
        _, port = await open_site(runner, self._control_port)
        self._control_url = f"http://{HOST}:{port}"

    async def _stop_services(self) -> None:
        svc, started = self._svc, list(self._svc.started)
        self._svc.started.clear()
        steps: list[Coroutine[Any, Any, Any]] = []
        if "slack" in started and svc.slack_listener is not None:
            steps.append(svc.slack_listener.stop())
        if "gke" in started and svc.gke is not None:
            steps.append(svc.gke.stop())
        if "aks" in started and svc.aks is not None:
            steps.append(svc.aks.stop())
        if "aws" in started and svc.aws is not None:
            steps.append(self._in_thread(svc.aws.stop))
        if "vault" in started and svc.vault is not None:
            steps.append(self._in_thread(svc.vault.close))
        results = await asyncio.gather(*steps, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("a sandbox service failed to stop cleanly: %r", result)

    async def _teardown(self) -> None:
        self._started = False
        await self._stop_services()
        if self._control_runner is not None:
            await self._control_runner.cleanup()
            self._control_runner = None
        members = list(self._members.values())
        await asyncio.gather(
            *(member.runner.cleanup() for member in members if member.runner is not None),
            return_exceptions=True,
        )
        for member in members:
            member.runner = None
            member.site = None
        results = await asyncio.gather(
            *(member.cluster.stop() for member in members if member.cluster is not None),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("a sandbox cluster failed to stop cleanly: %r", result)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._own_directory and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def _prepare_directory(self) -> None:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="fleetops-sandbox-"))
        self._directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self._directory, os.W_OK | os.X_OK):
            raise PermissionError(f"directory {self._directory} is not writable")

    # -- files --------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The settings ``sandbox.env`` holds: everything fleetops needs to reach the sandbox.

        Secrets (tokens, the AppRole secret id, the AWS secret key) are in here, which is why
        the file is private (mode 0600). Names under ``FLEETOPS_SANDBOX_`` are the sandbox's own
        (no fleetops setting reads them).
        """
        directory = self.directory.resolve()
        env = {
            "FLEETOPS_SANDBOX_DIR": str(directory),
            "FLEETOPS_SANDBOX_CONTROL_URL": self.control_url,
            "FLEETOPS_KUBECONFIG": str(directory / self.static_kubeconfig_path.name),
            "FLEETOPS_STATIC_FLEET_FILE": str(directory / FLEET_FILE),
        }
        svc = self._svc
        if svc.aws is not None:
            aws = svc.aws
            env |= aws.environment()
            env |= {
                "FLEETOPS_AWS_ENDPOINT_URL": aws.endpoint_url,
                "FLEETOPS_EKS_ACCOUNTS": ",".join(aws.role_arn(a) for a in aws.accounts),
                "FLEETOPS_EKS_REGIONS": ",".join(AWS_REGIONS),
                "FLEETOPS_SANDBOX_ROUTE53_ZONE_ID": aws.hosted_zone_id,
                "FLEETOPS_SANDBOX_ROUTE53_RECORD": aws.app_hostname,
            }
        if svc.gke is not None:
            env |= {
                "FLEETOPS_GKE_PROJECTS": ",".join(GKE_PROJECTS),
                "FLEETOPS_GKE_ENDPOINT": svc.gke.url,
                "FLEETOPS_GKE_ACCESS_TOKEN": self._gke_token,
                "FLEETOPS_SANDBOX_GKE_FORBIDDEN_PROJECT": GKE_FORBIDDEN_PROJECT,
            }
        if svc.aks is not None:
            env |= {
                "FLEETOPS_AKS_SUBSCRIPTIONS": ",".join(AKS_SUBSCRIPTIONS),
                "FLEETOPS_AKS_BASE_URL": svc.aks.url,
                "FLEETOPS_AKS_CA_BUNDLE": str(Path(svc.aks.ca_file).resolve()),
                "FLEETOPS_AKS_ACCESS_TOKEN": self._aks_token,
                "FLEETOPS_SANDBOX_AKS_FORBIDDEN_SUBSCRIPTION": AKS_FORBIDDEN_SUBSCRIPTION,
            }
        if svc.vault is not None and svc.vault_seed is not None:
            env |= svc.vault_seed.env()
            env["FLEETOPS_SANDBOX_VAULT_ROOT_TOKEN"] = svc.vault.root_token
        if svc.slack is not None:
            env |= {
                "FLEETOPS_SLACK_TOKEN": self._slack_token,
                "FLEETOPS_SLACK_BASE_URL": self.slack_url,
                "FLEETOPS_SLACK_CHANNEL": f"#{SLACK_CHANNEL}",
            }
        return env

    def _write_files(self) -> None:
        directory = self.directory.resolve()
        _write_file(self.kubeconfig_path, self._kubeconfig_text(self._names), private=True)
        if self._placed:
            static = self.names_in("kubeconfig")
            _write_file(self.static_kubeconfig_path, self._kubeconfig_text(static), private=True)
        _write_file(self.fleet_file_path, self._fleet_file_text(), private=False)
        env_text = "".join(
            f"{key}={shlex.quote(value)}\n" for key, value in self.environment().items()
        )
        _write_file(self.env_path, env_text, private=True)
        _write_file(
            self.json_path, json.dumps(self._fleet_json(directory), indent=2) + "\n", private=False
        )

    def _fleet_json(self, directory: Path) -> dict[str, Any]:
        counts = Counter(p.provider for p in self._placements)
        data: dict[str, Any] = {
            "control_url": self.control_url,
            "kubeconfig": str(directory / KUBECONFIG),
            "static_kubeconfig": str(directory / self.static_kubeconfig_path.name),
            "fleet_file": str(directory / FLEET_FILE),
            "env_file": str(directory / SANDBOX_ENV),
            "providers": dict(sorted(counts.items())),
            "clusters": [
                {
                    key: value
                    for key, value in self.describe(name).items()
                    if key not in ("faults", "listening")
                }
                | (
                    {"resource_group": self._members[name].placement.resource_group}
                    if self._members[name].placement.source == "aks"
                    else {}
                )
                for name in self._names
            ],
            "services": {},
        }
        svc = self._svc
        services: dict[str, Any] = data["services"]
        if svc.aws is not None:
            services["aws"] = {
                "endpoint_url": svc.aws.endpoint_url,
                "accounts": svc.aws.accounts,
                "role_arns": [svc.aws.role_arn(a) for a in svc.aws.accounts],
                "regions": list(AWS_REGIONS),
                "hosted_zone": svc.aws.hosted_zone,
                "hosted_zone_id": svc.aws.hosted_zone_id,
                "app_hostname": svc.aws.app_hostname,
            }
        if svc.gke is not None:
            services["gke"] = {
                "endpoint": svc.gke.url,
                "projects": list(GKE_PROJECTS),
                "forbidden_project": GKE_FORBIDDEN_PROJECT,
            }
        if svc.aks is not None:
            services["aks"] = {
                "base_url": svc.aks.url,
                "subscriptions": list(AKS_SUBSCRIPTIONS),
                "forbidden_subscription": AKS_FORBIDDEN_SUBSCRIPTION,
                "ca_file": str(Path(svc.aks.ca_file).resolve()),
            }
        if svc.vault is not None and svc.vault_seed is not None:
            seed = svc.vault_seed
            services["vault"] = {
                "addr": svc.vault.addr,
                "backend_addr": svc.vault.backend_addr,
                "pid": svc.vault.pid,
                "log": str(svc.vault.log_path.resolve()),
                "kv_mount": seed.kv_mount,
                "paths": list(seed.paths),
                "policy": seed.policy,
                "approle": {"mount": seed.approle_mount, "role": seed.approle_role},
                "kubernetes": {
                    "mount": seed.kubernetes_mount,
                    "role": seed.kubernetes_role,
                    "cluster": self._names[0],
                    "namespace": VAULT_SERVICE_ACCOUNT[0],
                    "service_account": VAULT_SERVICE_ACCOUNT[1],
                },
            }
        if svc.slack is not None:
            services["slack"] = {"base_url": self.slack_url, "channel": f"#{SLACK_CHANNEL}"}
        return data

    def _fleet_file_text(self) -> str:
        """The fleet file (``FleetFile`` schema): the fleet-file clusters, contexts of
        ``kubeconfig`` (relative to the fleet file)."""
        static = []
        for name in self.names_in("fleet-file"):
            placement = self._members[name].placement
            static.append(
                {
                    "name": name,
                    "source": placement.account,
                    "location": placement.location,
                    "kubeconfig": KUBECONFIG,
                    "context": name,
                    "labels": dict(placement.labels),
                }
            )
        header = (
            "# fleetops sandbox fleet file (FLEETOPS_STATIC_FLEET_FILE): static clusters known\n"
            "# only through this file and a context of the kubeconfig beside it.\n"
        )
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        body = {"version": 1, "static": static, "overrides": []}
        return header + yaml.dump(body, Dumper=dumper, sort_keys=False)

    def _kubeconfig_text(self, names: list[str]) -> str:
        members = [self._members[name] for name in names]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "current-context": members[0].name if members else "",
            "clusters": [
                {
                    "name": m.name,
                    "cluster": {
                        "server": m.server,
                        "certificate-authority-data": m.certs.ca_data if m.certs else "",
                    },
                }
                for m in members
            ],
            "users": [{"name": m.name, "user": {"token": m.token}} for m in members],
            "contexts": [
                {"name": m.name, "context": {"cluster": m.name, "user": m.name}} for m in members
            ],
        }
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: ~10x faster at 1,000
        return yaml.dump(config, Dumper=dumper, sort_keys=False)

    def _stop_thread(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        thread, self._thread = self._thread, None
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
        self._loop = None


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while hundreds of stores are built: its full passes over the
    growing heap cost 10-15% of start-up at 1,000 clusters and free nothing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _write_file(path: Path, text: str, *, private: bool) -> None:
    """Write atomically; ``private`` files (holding tokens) are created mode 0600."""
    mode = 0o600 if private else 0o644
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The settings of a ``sandbox.env`` file (``KEY=shell-quoted value`` lines)."""
    settings: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        words = shlex.split(value)
        settings[key.strip()] = words[0] if words else ""
    return settings


__all__ = [
    "CLOUD_PROVIDERS",
    "SERVICES",
    "Fleet",
    "ServiceFaultsError",
    "UnknownClusterError",
    "UnknownServiceError",
    "cluster_names",
    "read_env_file",
    "username",
]
