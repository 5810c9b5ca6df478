"""A Google Kubernetes Engine API stand-in that google-cloud-container (REST) talks to unchanged.

Serves, on plain HTTP on 127.0.0.1, the read paths fleetops uses, exactly as
``container.googleapis.com/v1`` does (both the ``locations`` paths and the deprecated ``zones``
ones that the client also knows)::

    GET /v1/projects/{project}/locations/{location}/clusters          ("-": every location)
    GET /v1/projects/{project}/locations/{location}/clusters/{name}
    GET /v1/projects/{project}/zones/{zone}/clusters                  ("-": every zone)
    GET /v1/projects/{project}/zones/{zone}/clusters/{name}

Clients use ``ClusterManagerClient(credentials=google.oauth2.credentials.Credentials(token=T),
transport="rest", client_options={"api_endpoint": url})``.

Answers are camelCase ``Cluster`` JSON. ``endpoint`` is where the one real difference lies: GKE
returns a bare IP (port 443 implied); every sandbox cluster lives on 127.0.0.1, so the sandbox
returns ``127.0.0.1:PORT``. Build the API server URL as ``https://{endpoint}`` and it works for
both. ``masterAuth.clusterCaCertificate`` is the base64 of the CA PEM, as on GKE.

Errors are Google's: a missing or wrong bearer token is 401 ``UNAUTHENTICATED``; a project the
caller may not read (or that does not exist; Google does not tell the two apart) is 403
``PERMISSION_DENIED`` naming the permission; an unknown cluster is 404 ``NOT_FOUND``; an injected
fault is 429 ``RESOURCE_EXHAUSTED`` (quota exceeded). Note that google-api-core maps REST errors
by HTTP status, so the client raises ``Unauthorized``, ``Forbidden`` and ``TooManyRequests``
(the parents of ``Unauthenticated``, ``PermissionDenied`` and ``ResourceExhausted``, which the
gRPC transport raises); the ``status`` field of the body carries the gRPC code.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from sandbox.clouds.common import (
    CloudCluster,
    Listener,
    ProviderFaults,
    RequestLog,
    error_json,
    fault_middleware,
)

log = logging.getLogger(__name__)

#: ``Cluster.Status`` and ``NodePool.Status`` numbers, for ``$alt=json;enum-encoding=int``
STATUS_NUMBERS = {
    "PROVISIONING": 1,
    "RUNNING": 2,
    "RECONCILING": 3,
    "STOPPING": 4,
    "ERROR": 5,
    "DEGRADED": 6,
}

#: provider-neutral status -> GKE ``Cluster.Status``
GKE_STATUS = {
    "RUNNING": "RUNNING",
    "PROVISIONING": "PROVISIONING",
    "STOPPED": "STOPPING",
    "DEGRADED": "DEGRADED",
    "ERROR": "ERROR",
    "DELETING": "STOPPING",
}

_DOCS = "https://developers.google.com/identity/sign-in/web/devconsole-project"


def project_number(project: str) -> str:
    """A stable 12-digit project number for a project id (GCP shows both)."""
    digest = hashlib.sha256(project.encode()).hexdigest()
    return str(100_000_000_000 + int(digest[:12], 16) % 900_000_000_000)


def google_error(
    code: int,
    status: str,
    message: str,
    *,
    reason: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """``{"error": {"code", "message", "status", ...}}`` as Google APIs answer errors."""
    error: dict[str, Any] = {"code": code, "message": message}
    if reason is not None:
        error["errors"] = [{"message": message, "domain": "global", "reason": reason}]
    error["status"] = status
    if details:
        error["details"] = details
    return error_json(code, {"error": error}, headers=headers)


def _error_info(reason: str, domain: str, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": domain,
        "metadata": metadata,
    }


class GkeSandbox:
    """GKE's cluster API for a set of sandbox clusters across several projects.

    ``projects`` maps a project id to whether the caller may read it; projects that hold
    clusters are readable unless marked ``False``; any other project answers 403, like a
    project that does not exist. ``access_token`` is the one bearer token accepted.
    """

    def __init__(
        self,
        clusters: Iterable[CloudCluster],
        *,
        access_token: str,
        projects: Mapping[str, bool] | None = None,
        faults: ProviderFaults | None = None,
        created_at: datetime | None = None,
    ) -> None:
        if not access_token:
            raise ValueError("access_token must not be empty")
        self.access_token = access_token
        self.faults = faults if faults is not None else ProviderFaults()
        self.requests = RequestLog()
        self._projects: dict[str, bool] = dict(projects or {})
        self._clusters: dict[tuple[str, str, str], CloudCluster] = {}
        self._created_at = (created_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        for cluster in clusters:
            self.add_cluster(cluster)
        self._listener: Listener | None = None

    # -- what it serves ------------------------------------------------------------------------

    def add_cluster(self, cluster: CloudCluster) -> None:
        """Publish a cluster (replaces one with the same project, location and name)."""
        if cluster.provider != "gke":
            raise ValueError(f"{cluster.id} is not a GKE cluster")
        self._clusters[(cluster.account, cluster.location, cluster.name)] = cluster
        self._projects.setdefault(cluster.account, True)

    def remove_cluster(self, cluster_id: str) -> None:
        """Stop publishing ``gke/<project>/<location>/<name>`` (KeyError if unknown)."""
        _, project, location, name = cluster_id.split("/")
        del self._clusters[(project, location, name)]

    def set_project_readable(self, project: str, readable: bool) -> None:
        self._projects[project] = readable

    @property
    def clusters(self) -> list[CloudCluster]:
        return list(self._clusters.values())

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the client's ``api_endpoint``."""
        if self._listener is None:
            raise RuntimeError("the GKE sandbox has not been started yet")
        return self._listener.url

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1 (from inside the running loop that will serve it)."""
        self._listener = Listener(self.app())
        await self._listener.start(port, listen=not self.faults.outage)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    async def apply_faults(self, **changes: Any) -> dict[str, Any]:
        """Change fault switches; an outage closes the listener (connections refused)."""
        result = self.faults.update(**changes)
        if self._listener is not None:
            if self.faults.outage:
                await self._listener.pause()
            else:
                await self._listener.resume()
        return result

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[fault_middleware(self.faults, self.requests, self._throttled)]
        )
        app.router.add_get("/v1/projects/{project}/locations/{location}/clusters", self._list)
        app.router.add_get("/v1/projects/{project}/zones/{location}/clusters", self._list)
        app.router.add_get("/v1/projects/{project}/locations/{location}/clusters/{name}", self._get)
        app.router.add_get("/v1/projects/{project}/zones/{location}/clusters/{name}", self._get)
        return app

    # -- handlers -------------------------------------------------------------------------------

    async def _list(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        location = request.match_info["location"]
        denied = self._authorize(request, "container.clusters.list", f"projects/{project}")
        if denied is not None:
            return denied
        found = [
            self.cluster_json(cluster, base=self._base(request), int_enums=_int_enums(request))
            for (p, loc, _), cluster in sorted(self._clusters.items())
            if p == project and location in ("-", loc)
        ]
        body: dict[str, Any] = {}
        if found:  # proto3 JSON leaves empty repeated fields out
            body["clusters"] = found
        return web.json_response(body)

    async def _get(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        location = request.match_info["location"]
        name = request.match_info["name"]
        resource = f"projects/{project}/locations/{location}/clusters/{name}"
        denied = self._authorize(request, "container.clusters.get", resource)
        if denied is not None:
            return denied
        cluster = self._clusters.get((project, location, name))
        if cluster is None:
            return google_error(404, "NOT_FOUND", f"Not found: {resource}.", reason="notFound")
        body = self.cluster_json(cluster, base=self._base(request), int_enums=_int_enums(request))
        return web.json_response(body)

    def _authorize(
        self, request: web.Request, permission: str, resource: str
    ) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential. Expected OAuth 2 access "
                f"token, login cookie or other valid authentication credential. See {_DOCS}.",
                details=[
                    _error_info(
                        "CREDENTIALS_MISSING",
                        "googleapis.com",
                        {"service": "container.googleapis.com", "method": _method(request)},
                    )
                ],
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        if not hmac.compare_digest(token.strip(), self.access_token):
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                f"login cookie or other valid authentication credential. See {_DOCS}.",
                headers={
                    "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                    'error="invalid_token"'
                },
            )
        project = request.match_info["project"]
        if not self._projects.get(project, False):
            return google_error(
                403,
                "PERMISSION_DENIED",
                f'Required "{permission}" permission(s) for "{resource}".',
                reason="forbidden",
            )
        return None

    def _throttled(self, request: web.Request) -> web.Response:
        project = request.match_info.get("project", "")
        number = project_number(project)
        return google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute' "
            f"of service 'container.googleapis.com' for consumer 'project_number:{number}'.",
            reason="rateLimitExceeded",
            details=[
                _error_info(
                    "RATE_LIMIT_EXCEEDED",
                    "googleapis.com",
                    {
                        "service": "container.googleapis.com",
                        "consumer": f"projects/{number}",
                        "quota_metric": "container.googleapis.com/read_requests",
                        "quota_limit": "defaultPerMinutePerProject",
                    },
                )
            ],
        )

    @staticmethod
    def _base(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    # -- rendering ------------------------------------------------------------------------------

    def cluster_json(
        self, cluster: CloudCluster, *, base: str, int_enums: bool = False
    ) -> dict[str, Any]:
        """The cluster as GKE's ``Cluster`` resource (the fields discovery reads, and more).

        ``int_enums``: enums as numbers, which the REST client asks for with
        ``$alt=json;enum-encoding=int`` (Google honours it; so does the sandbox).
        """

        def enum(name: str) -> str | int:
            return STATUS_NUMBERS[name] if int_enums else name

        zonal = cluster.location.count("-") >= 2  # us-central1-a is a zone, us-central1 a region
        zones = [cluster.location] if zonal else [f"{cluster.location}-{z}" for z in "abc"]
        version = cluster.version_number
        path = f"projects/{cluster.account}/locations/{cluster.location}/clusters/{cluster.name}"
        status = GKE_STATUS[cluster.status]
        body: dict[str, Any] = {
            "name": cluster.name,
            "nodeConfig": {"machineType": "e2-standard-4", "diskSizeGb": 100},
            "masterAuth": {"clusterCaCertificate": cluster.ca_base64},
            "loggingService": "logging.googleapis.com/kubernetes",
            "monitoringService": "monitoring.googleapis.com/kubernetes",
            "network": "default",
            "clusterIpv4Cidr": "10.4.0.0/14",
            "nodePools": [
                {
                    "name": "default-pool",
                    "config": {"machineType": "e2-standard-4", "diskSizeGb": 100},
                    "initialNodeCount": 1,
                    "locations": zones,
                    "selfLink": f"{base}/v1/{path}/nodePools/default-pool",
                    "version": version,
                    "status": enum("RUNNING"),
                }
            ],
            "locations": zones,
            "resourceLabels": dict(cluster.labels),
            "labelFingerprint": hashlib.sha256(
                repr(sorted(cluster.labels.items())).encode()
            ).hexdigest()[:16],
            "selfLink": f"{base}/v1/{path}",
            "zone": cluster.location,
            "endpoint": cluster.host_port,
            "initialClusterVersion": version,
            "currentMasterVersion": version,
            "currentNodeVersion": version,
            "createTime": self._created_at,
            "status": enum(status),
            "subnetwork": "default",
            "currentNodeCount": 3,
            "id": hashlib.sha256(cluster.id.encode()).hexdigest(),
            "location": cluster.location,
        }
        if status != "RUNNING":
            body["statusMessage"] = f"cluster is {status.lower()}"
        return body


def _int_enums(request: web.Request) -> bool:
    """Whether the caller asked for numeric enums (``$alt=json;enum-encoding=int``)."""
    alt = request.query.get("$alt", "")
    return "enum-encoding=int" in alt.split(";")


def _method(request: web.Request) -> str:
    listing = not request.match_info.get("name")
    verb = "ListClusters" if listing else "GetCluster"
    return f"google.container.v1.ClusterManager.{verb}"
