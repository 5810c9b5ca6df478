"""A Kubernetes API client for one cluster, built in memory, and the registration probe.

:class:`KubeClient` wraps the official client (``kubernetes.client.ApiClient``) configured from
what the inventory knows (endpoint, CA) plus a short-lived bearer token, without a kubeconfig
and without temporary files: the CA goes in as ``Configuration.ca_cert_data`` (PEM text, handed
to ``SSLContext.load_verify_locations(cadata=...)`` by urllib3). TLS verification is always on;
with no CA on record the system trust store is used. The client never retries by itself
(urllib3 ``retries=False``): retrying is the calling task's decision, made on the error class.

:func:`probe` is what registration does: ``GET /version`` (timed) then ``GET /readyz``. An API
server that cannot be reached, or refuses the token, raises (:class:`~fleetops.errors.Unreachable`,
:class:`~fleetops.errors.AuthError`...); one that answers ``/version`` but is not ready returns a
failed :class:`~fleetops.domain.cluster.ProbeResult` carrying the version and the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException, OpenApiException
from pydantic import SecretStr

from fleetops.clients._common import ClusterToken, clean
from fleetops.domain.cluster import Cluster, ProbeResult
from fleetops.errors import (
    ClientError,
    FleetopsError,
    PermanentError,
    Unreachable,
    error_for_status,
)

T = TypeVar("T")


def kube_error(exc: BaseException, *, system: str, secrets: tuple[str, ...] = ()) -> ClientError:
    """The fleetops error for an exception of the kubernetes client or urllib3 under it."""
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        if status == 0:  # the REST layer reports TLS failures as status 0
            return Unreachable(f"TLS: {clean(exc.reason, secrets=secrets)}", system=system)
        detail = _status_message(exc.body) or exc.reason or ""
        retry_after = _retry_after(exc.headers)
        message = f"{status} {clean(detail, secrets=secrets)}".strip()
        return error_for_status(status, message, system=system, retry_after=retry_after)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return kube_error(exc.reason, system=system, secrets=secrets)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return Unreachable(f"TLS: {clean(exc, secrets=secrets)}", system=system)
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return Unreachable(f"cannot connect: {clean(exc, secrets=secrets)}", system=system)
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return Unreachable(f"timed out: {clean(exc, secrets=secrets)}", system=system)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return Unreachable(clean(exc, secrets=secrets), system=system)
    return PermanentError(clean(exc, secrets=secrets), system=system)


def _status_message(body: Any) -> str | None:
    """``message`` of a Kubernetes ``Status`` body, if the body is one."""
    if not body:
        return None
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return str(body)[:200]
    return str(data.get("message")) if isinstance(data, dict) and data.get("message") else None


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class KubeClient:
    """The official Kubernetes client for one cluster, configured in memory.

    ``api_client`` is a ``kubernetes.client.ApiClient`` for any typed API
    (``kubernetes.client.CoreV1Api(kube.api_client)``); call :meth:`call` around SDK calls to
    get fleetops errors. Close it (or use ``with``) to release its connection pool.
    """

    def __init__(
        self,
        *,
        system: str,
        endpoint: str,
        ca_pem: str | None,
        token: SecretStr,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not endpoint.startswith("https://"):
            raise PermanentError(f"endpoint {endpoint!r} is not https", system=system)
        self.system = system
        self.timeout_seconds = timeout_seconds
        self._secret = token.get_secret_value()
        configuration = k8s.Configuration(
            host=endpoint.rstrip("/"),
            api_key={"BearerToken": self._secret},
            api_key_prefix={"BearerToken": "Bearer"},
            ca_cert_data=ca_pem,
            verify_ssl=True,
            retries=False,
        )
        self.api_client = k8s.ApiClient(configuration)

    @classmethod
    def for_cluster(
        cls, cluster: Cluster, token: ClusterToken, *, timeout_seconds: float = 10.0
    ) -> KubeClient:
        """A client for ``cluster``'s API server with ``token``, trusting the CA the token came
        with (AKS) or else the one the inventory recorded."""
        return cls(
            system=f"kube:{cluster.id}",
            endpoint=cluster.endpoint,
            ca_pem=token.ca_data or cluster.ca_data,
            token=token.token,
            timeout_seconds=timeout_seconds,
        )

    @property
    def request_timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeout for ``_request_timeout=``."""
        return (self.timeout_seconds, self.timeout_seconds)

    def call(self, function: Callable[[], T]) -> T:
        """Run one SDK call, translating its exceptions (token values redacted)."""
        try:
            return function()
        except (OpenApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise kube_error(exc, system=self.system, secrets=(self._secret,)) from exc

    def version(self) -> str:
        """``gitVersion`` from ``/version``."""
        info = self.call(
            lambda: k8s.VersionApi(self.api_client).get_code(_request_timeout=self.request_timeout)
        )
        return str(info.git_version)

    def readyz(self) -> tuple[bool, str]:
        """``(ready, body)`` from ``/readyz``; a non-2xx answer is "not ready", not an error,
        except 401/403/429 (the token or the server's load is the problem) which raise."""

        def get() -> Any:
            request = self.api_client.param_serialize(
                method="GET", resource_path="/readyz", auth_settings=["BearerToken"]
            )
            response = self.api_client.call_api(*request, _request_timeout=self.request_timeout)
            response.read()  # type: ignore[no-untyped-call]
            return response

        response = self.call(get)
        body = (response.data or b"").decode("utf-8", "replace").strip()
        status = int(response.status)
        if status in (401, 403, 429):
            raise error_for_status(
                status,
                f"/readyz: {clean(body, secrets=(self._secret,))}",
                system=self.system,
                retry_after=_retry_after(response.getheaders()),
            )
        if 200 <= status < 300:
            return True, body
        return (
            False,
            f"/readyz answered {status}: {clean(body, secrets=(self._secret,), limit=300)}",
        )

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def probe(
    cluster: Cluster,
    token: ClusterToken,
    *,
    timeout_seconds: float = 10.0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ProbeResult:
    """Connect to ``cluster`` with ``token``: read ``/version`` (timed) and ``/readyz``.

    Raises the :class:`~fleetops.errors.ClientError` of a server that cannot be reached or
    refuses the token; returns ``ok=False`` with the version when the server answers but is
    not ready. The result carries the CA the token came with, if any (AKS).
    """
    at = clock()
    with KubeClient.for_cluster(cluster, token, timeout_seconds=timeout_seconds) as kube:
        started = time.perf_counter()
        version = kube.version()
        latency_ms = (time.perf_counter() - started) * 1000.0
        ready, detail = kube.readyz()
    return ProbeResult(
        ok=ready,
        at=at,
        version=version,
        latency_ms=round(latency_ms, 3),
        error=None if ready else detail,
        ca_data=token.ca_data,
    )


def failed_probe(error: FleetopsError, *, at: datetime) -> ProbeResult:
    """The probe result to record for a probe that raised ``error`` (message already redacted)."""
    return ProbeResult(ok=False, at=at, error=str(error))
