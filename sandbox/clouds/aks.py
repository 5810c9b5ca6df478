"""An Azure Resource Manager stand-in for AKS that azure-mgmt-containerservice talks to unchanged.

Serves, over HTTPS on 127.0.0.1 (its own trustme CA: azure-core refuses to send a bearer token
over plain HTTP), the ARM paths fleetops uses::

    GET  /subscriptions/{s}/providers/Microsoft.ContainerService/managedClusters
    GET  /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters
    GET  /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{n}
    POST .../managedClusters/{n}/listClusterUserCredential

Clients use ``ContainerServiceClient(credential, subscription_id, base_url=sandbox.url,
connection_verify=sandbox.ca_file)``, ``credential`` being anything with ``get_token`` that
returns the sandbox's ``access_token``.

Faithful where discovery depends on it: ``api-version`` is required (any ``YYYY-MM-DD`` form
is accepted); path segments and resource group names match case-insensitively, as in ARM;
lists come ``page_size`` at a time with an absolute ``nextLink`` carrying a ``$skipToken``;
``ManagedCluster`` properties are nested as ARM returns them (ids with ``resourcegroups`` in
lower case, as AKS writes them). ``listClusterUserCredential`` returns the kubeconfig a
local-accounts cluster hands out (no Entra ID / kubelogin exec entry): server, CA and a bearer
token that the sandbox cluster accepts (given per cluster by ``user_token``).

``properties.fqdn`` is the one deliberate difference: AKS returns a host name (the API server
listens on 443, and its kubeconfig says ``https://FQDN:443``); every sandbox cluster shares
127.0.0.1, so the sandbox returns ``127.0.0.1:PORT``, and the kubeconfig's ``server`` is
``https://127.0.0.1:PORT``. A client that adds ``:443`` to a bare host name only reaches both.

Errors are ARM's ``{"error": {"code", "message"}}``: 401 ``AuthenticationFailed`` (no token) or
``InvalidAuthenticationToken`` (wrong token), 403 ``AuthorizationFailed`` for a subscription the
caller may not read, 404 ``SubscriptionNotFound`` / ``ResourceGroupNotFound`` /
``ResourceNotFound``, 400 ``MissingApiVersionParameter``; injected faults are 429
``SubscriptionRequestsThrottled`` with ``Retry-After``, which azure-core's RetryPolicy honours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import ssl
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import trustme
import yaml
from aiohttp import web

from sandbox.clouds.common import (
    HOST,
    CloudCluster,
    Listener,
    ProviderFaults,
    RequestLog,
    error_json,
    fault_middleware,
)

RP = "Microsoft.ContainerService"
TYPE = f"{RP}/ManagedClusters"
TENANT_ID = "00000000-0000-4000-8000-00000000a1b2"
#: the object id ARM names in AuthorizationFailed messages (the sandbox's one caller)
CALLER_OBJECT_ID = "00000000-0000-4000-8000-00000000f1ee"

#: provider-neutral status -> (provisioningState, powerState.code)
AKS_STATE = {
    "RUNNING": ("Succeeded", "Running"),
    "PROVISIONING": ("Creating", "Running"),
    "STOPPED": ("Succeeded", "Stopped"),
    "DEGRADED": ("Updating", "Running"),
    "ERROR": ("Failed", "Running"),
    "DELETING": ("Deleting", "Running"),
}

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = r"/resourcegroups/(?P<rg>[^/]+)"
_MC = r"/providers/microsoft\.containerservice/managedclusters"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(rf"^{_SUB}{_MC}/?$", re.I), "list_subscription"),
    ("GET", re.compile(rf"^{_SUB}{_RG}{_MC}/?$", re.I), "list_group"),
    ("GET", re.compile(rf"^{_SUB}{_RG}{_MC}/(?P<name>[^/]+)/?$", re.I), "get"),
    (
        "POST",
        re.compile(rf"^{_SUB}{_RG}{_MC}/(?P<name>[^/]+)/listclusterusercredential/?$", re.I),
        "user_credential",
    ),
]
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")

UserToken = Callable[[CloudCluster], str]


def arm_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """ARM's error body, with the request id headers ARM always sends."""
    request_id = str(uuid.uuid4())
    all_headers = {"x-ms-request-id": request_id, "x-ms-correlation-request-id": request_id}
    all_headers.update(headers or {})
    return error_json(status, {"error": {"code": code, "message": message}}, headers=all_headers)


class AksSandbox:
    """ARM's AKS API for a set of sandbox clusters across several subscriptions.

    ``subscriptions`` maps a subscription id to whether the caller may read it; subscriptions
    that hold clusters are readable unless marked ``False``; any other one is 404
    ``SubscriptionNotFound``. ``access_token`` is the one bearer token accepted.
    ``user_token(cluster)`` (or a mapping from cluster id) gives the token written into that
    cluster's user kubeconfig.
    """

    def __init__(
        self,
        clusters: Iterable[CloudCluster],
        *,
        access_token: str,
        user_token: UserToken | Mapping[str, str],
        subscriptions: Mapping[str, bool] | None = None,
        page_size: int = 100,
        faults: ProviderFaults | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        if not access_token:
            raise ValueError("access_token must not be empty")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.access_token = access_token
        self.page_size = page_size
        self.faults = faults if faults is not None else ProviderFaults()
        self.requests = RequestLog()
        if isinstance(user_token, Mapping):
            tokens = dict(user_token)
            self._user_token: UserToken = lambda cluster: tokens[cluster.id]
        else:
            self._user_token = user_token
        self._subscriptions: dict[str, bool] = {
            k.lower(): v for k, v in (subscriptions or {}).items()
        }
        self._clusters: dict[tuple[str, str, str], CloudCluster] = {}
        for cluster in clusters:
            self.add_cluster(cluster)
        self._ca = trustme.CA(organization_name="fleetops sandbox", organization_unit_name="aks")
        self._leaf = self._ca.issue_cert(HOST, "localhost", common_name="management.azure.test")
        self._own_directory = directory is None
        self._directory = Path(directory) if directory is not None else None
        self._listener: Listener | None = None

    # -- what it serves ------------------------------------------------------------------------

    def add_cluster(self, cluster: CloudCluster) -> None:
        """Publish a cluster (replaces one with the same subscription, group and name)."""
        if cluster.provider != "aks":
            raise ValueError(f"{cluster.id} is not an AKS cluster")
        key = (cluster.account.lower(), cluster.resource_group.lower(), cluster.name.lower())
        self._clusters[key] = cluster
        self._subscriptions.setdefault(cluster.account.lower(), True)

    def remove_cluster(self, cluster_id: str) -> None:
        """Stop publishing the cluster with this id (KeyError if unknown)."""
        for key, cluster in list(self._clusters.items()):
            if cluster.id == cluster_id:
                del self._clusters[key]
                return
        raise KeyError(cluster_id)

    def set_subscription_readable(self, subscription: str, readable: bool) -> None:
        self._subscriptions[subscription.lower()] = readable

    @property
    def clusters(self) -> list[CloudCluster]:
        return list(self._clusters.values())

    # -- TLS and lifecycle ----------------------------------------------------------------------

    @property
    def ca_pem(self) -> bytes:
        """The CA that signed the server certificate (trust it to talk to the sandbox)."""
        return self._ca.cert_pem.bytes()

    @property
    def ca_file(self) -> str:
        """Path of the CA PEM, for ``connection_verify=`` (written by :meth:`start`)."""
        if self._directory is None:
            raise RuntimeError("the AKS sandbox has not been started yet")
        return str(self._directory / "aks-ca.pem")

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``: the client's ``base_url``."""
        if self._listener is None:
            raise RuntimeError("the AKS sandbox has not been started yet")
        return self._listener.url

    def ssl_context(self) -> ssl.SSLContext:
        """Server context presenting the sandbox's certificate for 127.0.0.1 and localhost."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._leaf.configure_cert(ctx)
        return ctx

    async def start(self, port: int = 0) -> None:
        """Write the CA file and listen on 127.0.0.1 (inside the loop that will serve it)."""
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="fleetops-aks-"))
        self._directory.mkdir(parents=True, exist_ok=True)
        Path(self.ca_file).write_bytes(self.ca_pem)
        self._listener = Listener(self.app(), ssl_context=self.ssl_context())
        await self._listener.start(port, listen=not self.faults.outage)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
        if self._own_directory and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

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
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    # -- handlers -------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        for method, pattern, handler_name in _ROUTES:
            match = pattern.match(request.path)
            if match is None:
                continue
            if request.method != method:
                return arm_error(
                    405,
                    "MethodNotAllowed",
                    f"The requested resource does not support http method '{request.method}'.",
                )
            invalid = _check_api_version(request)
            if invalid is not None:
                return invalid
            params = match.groupdict()
            refused = self._check_subscription(params["sub"])
            if refused is not None:
                return refused
            handler: Callable[[web.Request, dict[str, str]], web.Response] = getattr(
                self, f"_{handler_name}"
            )
            return handler(request, params)
        return arm_error(
            404,
            "NotFound",
            f"No HTTP resource was found that matches the request URI '{request.url}'.",
        )

    def _authenticate(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = f'Bearer authorization_uri="https://login.microsoftonline.com/{TENANT_ID}", error="invalid_token"'
        if scheme.lower() != "bearer" or not token:
            return arm_error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                headers={"WWW-Authenticate": challenge},
            )
        if not hmac.compare_digest(token.strip().encode(), self.access_token.encode()):
            return arm_error(
                401,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
                headers={
                    "WWW-Authenticate": f'{challenge}, error_description="The access token is invalid."'
                },
            )
        return None

    def _check_subscription(self, subscription: str) -> web.Response | None:
        readable = self._subscriptions.get(subscription.lower())
        if readable is None:
            return arm_error(
                404,
                "SubscriptionNotFound",
                f"The subscription '{subscription}' could not be found.",
            )
        if not readable:
            return arm_error(
                403,
                "AuthorizationFailed",
                f"The client '{CALLER_OBJECT_ID}' with object id '{CALLER_OBJECT_ID}' does not have "
                f"authorization to perform action '{RP}/managedClusters/read' over scope "
                f"'/subscriptions/{subscription}' or the scope is invalid. If access was recently "
                "granted, please refresh your credentials.",
            )
        return None

    def _list_subscription(self, request: web.Request, params: dict[str, str]) -> web.Response:
        sub = params["sub"].lower()
        found = [c for (s, _, _), c in sorted(self._clusters.items()) if s == sub]
        return self._page(request, found)

    def _list_group(self, request: web.Request, params: dict[str, str]) -> web.Response:
        sub, group = params["sub"].lower(), params["rg"].lower()
        missing = self._check_group(sub, params["rg"])
        if missing is not None:
            return missing
        found = [c for (s, g, _), c in sorted(self._clusters.items()) if (s, g) == (sub, group)]
        return self._page(request, found)

    def _get(self, request: web.Request, params: dict[str, str]) -> web.Response:
        cluster = self._find(params)
        if isinstance(cluster, web.Response):
            return cluster
        return web.json_response(self.managed_cluster_json(cluster))

    def _user_credential(self, request: web.Request, params: dict[str, str]) -> web.Response:
        cluster = self._find(params)
        if isinstance(cluster, web.Response):
            return cluster
        kubeconfig = self.user_kubeconfig(cluster)
        value = base64.b64encode(kubeconfig.encode()).decode("ascii")
        return web.json_response({"kubeconfigs": [{"name": "clusterUser", "value": value}]})

    def _check_group(self, sub: str, group: str) -> web.Response | None:
        if any((s, g) == (sub, group.lower()) for (s, g, _) in self._clusters):
            return None
        return arm_error(
            404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found."
        )

    def _find(self, params: dict[str, str]) -> CloudCluster | web.Response:
        sub, group, name = params["sub"].lower(), params["rg"], params["name"]
        missing = self._check_group(sub, group)
        if missing is not None:
            return missing
        cluster = self._clusters.get((sub, group.lower(), name.lower()))
        if cluster is None:
            return arm_error(
                404,
                "ResourceNotFound",
                f"The Resource '{RP}/managedClusters/{name}' under resource group '{group}' was "
                "not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        return cluster

    def _page(self, request: web.Request, clusters: list[CloudCluster]) -> web.Response:
        offset = _decode_skip_token(request.query.get("$skipToken", ""))
        if offset is None:
            return arm_error(400, "InvalidSkipToken", "The $skipToken value is invalid.")
        page = clusters[offset : offset + self.page_size]
        body: dict[str, Any] = {"value": [self.managed_cluster_json(c) for c in page]}
        if offset + self.page_size < len(clusters):
            token = _encode_skip_token(offset + self.page_size)
            api_version = request.query["api-version"]
            body["nextLink"] = (
                f"{request.scheme}://{request.host}{request.path}"
                f"?api-version={api_version}&$skipToken={token}"
            )
        return web.json_response(body)

    def _throttled(self, request: web.Request) -> web.Response:
        match = re.match(_SUB, request.path, re.I)
        subscription = match.group("sub") if match else "unknown"
        seconds = self.faults.retry_after_seconds
        operation = "write" if request.method == "POST" else "read"
        return arm_error(
            429,
            "SubscriptionRequestsThrottled",
            f"Number of '{operation}' requests for subscription '{subscription}' actor "
            f"'{CALLER_OBJECT_ID}' exceeded. Please try again after '{seconds}' seconds after "
            "additional tasks are completed.",
            headers={
                "Retry-After": str(seconds),
                f"x-ms-ratelimit-remaining-subscription-{operation}s": "0",
            },
        )

    # -- rendering ------------------------------------------------------------------------------

    def managed_cluster_json(self, cluster: CloudCluster) -> dict[str, Any]:
        """The cluster as ARM's ``ManagedCluster`` (the fields discovery reads, and more)."""
        provisioning, power = AKS_STATE[cluster.status]
        version = cluster.version_number
        suffix = hashlib.sha256(cluster.id.encode()).hexdigest()[:8]
        return {
            "id": (
                f"/subscriptions/{cluster.account}/resourcegroups/{cluster.resource_group}"
                f"/providers/{RP}/managedClusters/{cluster.name}"
            ),
            "location": cluster.location,
            "name": cluster.name,
            "tags": dict(cluster.labels),
            "type": TYPE,
            "sku": {"name": "Base", "tier": "Free"},
            "identity": {
                "type": "SystemAssigned",
                "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, cluster.id)),
                "tenantId": TENANT_ID,
            },
            "properties": {
                "provisioningState": provisioning,
                "powerState": {"code": power},
                "kubernetesVersion": version,
                "currentKubernetesVersion": version,
                "dnsPrefix": f"{cluster.name}-dns",
                "fqdn": cluster.host_port,
                "azurePortalFQDN": f"{cluster.name}-dns-{suffix}.portal.hcp.{cluster.location}.azmk8s.io",
                "agentPoolProfiles": [
                    {
                        "name": "nodepool1",
                        "count": 3,
                        "vmSize": "Standard_D4s_v5",
                        "osType": "Linux",
                        "mode": "System",
                        "type": "VirtualMachineScaleSets",
                        "orchestratorVersion": version,
                        "currentOrchestratorVersion": version,
                        "provisioningState": provisioning,
                        "powerState": {"code": power},
                    }
                ],
                "nodeResourceGroup": f"MC_{cluster.resource_group}_{cluster.name}_{cluster.location}",
                "enableRBAC": True,
                "disableLocalAccounts": False,
                "supportPlan": "KubernetesOfficial",
                "maxAgentPools": 100,
                "networkProfile": {
                    "networkPlugin": "azure",
                    "serviceCidr": "10.0.0.0/16",
                    "dnsServiceIP": "10.0.0.10",
                    "loadBalancerSku": "standard",
                },
            },
        }

    def user_kubeconfig(self, cluster: CloudCluster) -> str:
        """The local-accounts user kubeconfig AKS returns (one cluster, context and user)."""
        user = f"clusterUser_{cluster.resource_group}_{cluster.name}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster.name,
                    "cluster": {
                        "certificate-authority-data": cluster.ca_base64,
                        "server": cluster.endpoint,
                    },
                }
            ],
            "contexts": [
                {"name": cluster.name, "context": {"cluster": cluster.name, "user": user}}
            ],
            "current-context": cluster.name,
            "preferences": {},
            "users": [{"name": user, "user": {"token": self._user_token(cluster)}}],
        }
        # libyaml's emitter: one kubeconfig per listClusterUserCredential, ~10x cheaper on CPU.
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        return yaml.dump(config, Dumper=dumper, sort_keys=False)


def _check_api_version(request: web.Request) -> web.Response | None:
    version = request.query.get("api-version")
    if not version:
        return arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    if not _API_VERSION.match(version):
        return arm_error(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{version}' is invalid. The supported versions are '2026-08-01'.",
        )
    return None


def _encode_skip_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_skip_token(token: str) -> int | None:
    """The offset a ``$skipToken`` stands for; None when it is not one of ours."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError:
        return None
    prefix, _, number = text.partition(":")
    if prefix != "offset" or not number.isdigit():
        return None
    return int(number)
