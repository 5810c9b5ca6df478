"""What the three cloud stand-ins share: the cluster record they publish, fault switches, hosting.

The fleet decides which sandbox Kubernetes cluster is published by which provider and hands each
provider a list of :class:`CloudCluster` records. A provider renders those records in its own
wire format (EKS ``describe-cluster``, GKE ``Cluster``, AKS ``ManagedCluster``) so that discovery
through the real SDK leads to the sandbox cluster's real endpoint and CA.

:class:`ProviderFaults` are one provider's switches (latency, error rate, outage). Each provider
renders an injected error in its own shape (AWS ``ThrottlingException``, Google
``RESOURCE_EXHAUSTED``, Azure 429 with ``Retry-After``), so the SDK's own retry logic is what the
tests observe. Like the cluster switches in :mod:`sandbox.kube.faults`, one object is kept and
changed in place at run time; never replace it.

:class:`Listener` hosts an aiohttp app on ``127.0.0.1`` and can stop listening and listen again
on the same port: that is what an outage is (clients see "connection refused").
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

HOST = "127.0.0.1"

Provider = Literal["eks", "gke", "aks"]
PROVIDERS: tuple[str, ...] = ("eks", "gke", "aks")

#: provider-neutral cluster states; each provider maps them onto its own vocabulary
STATUSES: tuple[str, ...] = ("RUNNING", "PROVISIONING", "STOPPED", "DEGRADED", "ERROR", "DELETING")

# Suggested placements (the fleet decides; these keep ids consistent across tests and the demo).
AWS_MANAGEMENT_ACCOUNT = "123456789012"
AWS_ACCOUNTS: tuple[str, ...] = ("111111111111", "222222222222")
AWS_REGIONS: tuple[str, ...] = ("us-east-1", "us-west-2", "eu-west-1")
GKE_PROJECTS: tuple[str, ...] = ("fleetops-prod", "fleetops-staging")
GKE_LOCATIONS: tuple[str, ...] = ("us-central1", "europe-west1-b", "asia-east1")
AKS_SUBSCRIPTIONS: tuple[str, ...] = (
    "00000000-0000-4000-8000-000000000001",
    "00000000-0000-4000-8000-000000000002",
)
AKS_LOCATIONS: tuple[str, ...] = ("eastus", "westeurope", "southeastasia")


@dataclass(frozen=True)
class CloudCluster:
    """One sandbox Kubernetes cluster as a cloud provider publishes it.

    ``account`` is the AWS account id, GCP project id or Azure subscription id; ``location`` the
    region or zone. ``endpoint`` is the sandbox cluster's ``https://127.0.0.1:PORT`` and
    ``ca_pem`` its CA. ``kubernetes_version`` is the cluster's gitVersion (``v1.31.4``); each
    provider shows it the way it does (EKS ``1.31``, GKE and AKS ``1.31.4``).
    ``resource_group`` is used by AKS only (default ``rg-<location>``).
    """

    provider: Provider
    account: str
    location: str
    name: str
    endpoint: str
    ca_pem: str
    kubernetes_version: str = "v1.31.4"
    labels: dict[str, str] = field(default_factory=dict)
    status: str = "RUNNING"
    resource_group: str = ""

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, got {self.provider!r}")
        for name in ("account", "location", "name"):
            value = getattr(self, name)
            if not value or "/" in value:
                raise ValueError(f"{name} must be a non-empty path segment, got {value!r}")
        parts = urlsplit(self.endpoint)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"endpoint must be an https URL, got {self.endpoint!r}")
        if "BEGIN CERTIFICATE" not in self.ca_pem:
            raise ValueError("ca_pem must be a PEM certificate")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if not self.resource_group:
            object.__setattr__(self, "resource_group", f"rg-{self.location}")

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def id(self) -> str:
        """``provider/account/location/name``: the inventory's cluster id."""
        return f"{self.provider}/{self.account}/{self.location}/{self.name}"

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT``: what GKE's ``endpoint`` and AKS's ``fqdn`` carry in the sandbox.

        The real fields hold a bare IP or host name (port 443 implied); every sandbox cluster
        shares 127.0.0.1, so the port has to travel with it. Build URLs as ``https://{value}``.
        """
        parts = urlsplit(self.endpoint)
        return parts.netloc

    @property
    def ca_base64(self) -> str:
        """Base64 of the CA PEM (EKS ``certificateAuthority.data``, GKE, kubeconfig)."""
        return base64.b64encode(self.ca_pem.encode("ascii")).decode("ascii")

    @property
    def version_number(self) -> str:
        """``1.31.4`` from ``v1.31.4`` (providers never show the leading ``v``)."""
        return self.kubernetes_version.removeprefix("v")

    @property
    def minor_version(self) -> str:
        """``1.31``: what EKS calls the version."""
        return ".".join(self.version_number.split(".")[:2])


# -- fault switches -----------------------------------------------------------------------------

SWITCHES = ("latency_seconds", "error_rate", "outage", "retry_after_seconds")


class ProviderFaultsError(ValueError):
    """A provider fault switch was given a bad value; ``field`` names the switch."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(eq=False)
class ProviderFaults:
    """One cloud provider's fault switches (all off by default)."""

    latency_seconds: float = 0.0
    """Added before every API answer."""
    error_rate: float = 0.0
    """Share (0..1) of API requests answered with the provider's throttling error."""
    outage: bool = False
    """The provider stops listening: connections are refused."""
    retry_after_seconds: int = 1
    """Sent as ``Retry-After`` where the provider does (Azure; Google and AWS send none)."""
    rng: random.Random = field(default_factory=random.Random, repr=False)
    """Random source for ``error_rate``; pass ``random.Random(seed)`` for determinism."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.update(**{name: getattr(self, name) for name in SWITCHES})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of every switch."""
        return {name: getattr(self, name) for name in SWITCHES}

    def update(self, **changes: Any) -> dict[str, Any]:
        """Validate every change first, then apply them together; returns :meth:`to_dict`.

        Raises :class:`ProviderFaultsError` naming the first bad field (nothing applied then).
        Prefer the provider's ``apply_faults`` for ``outage``: it also closes the listener.
        """
        clean = {name: _validate(name, value) for name, value in changes.items()}
        for name, value in clean.items():
            setattr(self, name, value)
        return self.to_dict()

    def reset(self) -> dict[str, Any]:
        """Every switch back to off (the random source is kept)."""
        return self.update(latency_seconds=0.0, error_rate=0.0, outage=False, retry_after_seconds=1)

    def inject_error(self) -> bool:
        """Draw once: whether this request gets the provider's throttling error."""
        if self.error_rate <= 0:
            return False
        with self._lock:  # random.Random is not safe to share between threads
            return self.rng.random() < self.error_rate


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProviderFaultsError(name, f"must be a finite number, got {value!r}")
    return float(value)


def _validate(name: str, value: Any) -> Any:
    if name == "latency_seconds":
        number = _number(name, value)
        if number < 0:
            raise ProviderFaultsError(name, f"must be >= 0, got {value!r}")
        return number
    if name == "error_rate":
        number = _number(name, value)
        if not 0.0 <= number <= 1.0:
            raise ProviderFaultsError(name, f"must be between 0 and 1, got {value!r}")
        return number
    if name == "outage":
        if not isinstance(value, bool):
            raise ProviderFaultsError(name, f"must be true or false, got {value!r}")
        return value
    if name == "retry_after_seconds":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ProviderFaultsError(name, f"must be an integer >= 0, got {value!r}")
        return value
    raise ProviderFaultsError(name, f"unknown fault switch (known: {', '.join(SWITCHES)})")


# -- what the servers saw ----------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request a provider answered (or refused to), for tests to read back."""

    method: str
    path: str
    status: int
    injected: bool
    """True when the answer was an injected fault (throttling error)."""
    at: float


class RequestLog:
    """The last ``maxlen`` requests a provider saw; thread-safe."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, method: str, path: str, status: int, *, injected: bool = False) -> None:
        with self._lock:
            self._records.append(RequestRecord(method, path, status, injected, time.time()))

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def injected(self) -> int:
        """How many answers were injected faults."""
        return sum(1 for record in self.records() if record.injected)


# -- aiohttp hosting with outages --------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fault_middleware(
    faults: ProviderFaults,
    log: RequestLog,
    throttled: Callable[[web.Request], web.Response],
) -> Middleware:
    """Outage, latency and error rate for an aiohttp provider; ``throttled`` renders the error.

    During an outage a request that still arrives (on a connection opened before it began) is
    dropped without an answer, as a vanished server would.
    """

    @web.middleware
    async def provider_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        if faults.outage:
            drop_connection(request)
            log.add(request.method, request.path, 0, injected=True)
            raise web.HTTPServiceUnavailable()  # never reaches the client: transport is gone
        if faults.latency_seconds > 0:
            await asyncio.sleep(faults.latency_seconds)
        if faults.inject_error():
            error = throttled(request)
            log.add(request.method, request.path, error.status, injected=True)
            return error
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            log.add(request.method, request.path, exc.status)
            raise
        log.add(request.method, request.path, response.status)
        return response

    return provider_faults


def drop_connection(request: web.Request) -> None:
    """Abort the request's TCP connection (no answer is sent)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def listening_socket(port: int) -> socket.socket:
    """A non-blocking listening socket on 127.0.0.1 (``port`` 0 picks a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_site(
    runner: web.AppRunner, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.SockSite, int]:
    """Start serving ``runner`` on ``127.0.0.1:port`` (0: a free port); returns the site and port."""
    sock = listening_socket(port)
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        sock.close()
        raise
    return site, sock.getsockname()[1]


async def close_site(site: web.BaseSite | None, runner: web.AppRunner | None) -> None:
    """Stop listening on ``site`` and drop ``runner``'s open connections (new ones are refused)."""
    if site is not None:
        await site.stop()
    server = runner.server if runner is not None else None
    if server is not None:
        for connection in server.connections:
            connection.force_close()


class Listener:
    """Serves one aiohttp app on ``127.0.0.1``; can stop and resume listening on the same port.

    All methods are coroutines for the loop the app runs on.
    """

    def __init__(self, app: web.Application, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._app = app
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        return "https" if self._ssl_context is not None else "http"

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:PORT`` (the same during an outage)."""
        if not self.port:
            raise RuntimeError("the listener has not been started yet")
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._site is not None

    async def start(self, port: int = 0, *, listen: bool = True) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self.port = port
        if listen or not port:
            await self.resume()
        if not listen:
            await self.pause()

    async def resume(self) -> None:
        """Listen again (same port); nothing happens if already listening."""
        if self._site is not None or self._runner is None:
            return
        self._site, self.port = await open_site(self._runner, self.port, self._ssl_context)

    async def pause(self) -> None:
        """Stop listening and drop open connections: new connections are refused."""
        site, self._site = self._site, None
        await close_site(site, self._runner)

    async def stop(self) -> None:
        await self.pause()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def error_json(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON error answer with the given status."""
    return web.json_response(body, status=status, headers=headers)
