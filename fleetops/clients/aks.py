"""Azure Kubernetes Service through azure-mgmt-containerservice: discovery and user credentials.

The ARM credential is azure-identity's ``DefaultAzureCredential`` (environment, workload or
managed identity, Azure CLI...) unless one is injected, or a fixed token is configured (the
sandbox). Every page of ``managedClusters`` is listed per subscription (azure-core follows
``nextLink``); throttling (429 with ``Retry-After``) and 5xx answers are retried by azure-core's
own ``RetryPolicy`` (``retry_total`` from settings).

Discovery lists ``managedClusters`` and nothing else: the API server address is the cluster's
``fqdn`` (its ``privateFqdn`` when it has no public one) on port 443, as in the kubeconfig AKS
hands out. An AKS ``ManagedCluster`` does not carry the API server's CA: only the kubeconfig
that ``listClusterUserCredential`` returns does, together with the user credential. That call
is an ARM POST per cluster (counted against the subscription's write limits) handing out a
credential, so discovery does not make it: the CA comes with every token instead
(:class:`AksTokens`, :attr:`ClusterToken.ca_data`), the probe of a new or changed cluster
records it in the inventory, and every connection trusts the CA its own fresh kubeconfig
names (a rotated CA is picked up at the next connection). The kubeconfig is read in memory
whenever a token is needed and never stored. A kubeconfig whose user is a bearer token (local
accounts) gives that token; one whose user is the ``kubelogin`` exec plugin (Entra ID
clusters) means "an Entra token for the AKS server application", which the same ARM
credential provides.

The resource group, needed to ask for credentials, is in the ARM id; it is kept as the label
``fleetops.io/resource-group`` so a token needs no listing when the name is label-safe (a
listing of the subscription finds it otherwise).
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import yaml
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.containerservice import ContainerServiceClient
from pydantic import SecretStr

from fleetops.clients._common import ClusterToken, bounded_map, clean
from fleetops.domain.cluster import AuthMethod, Cluster, Provider
from fleetops.domain.inventory import SourceResult
from fleetops.domain.labels import FLEETOPS_PREFIX, derived_labels, normalise_labels
from fleetops.domain.sources import AksSourceConfig
from fleetops.errors import (
    AuthError,
    ClientError,
    ConfigError,
    NotFound,
    PermanentError,
    RateLimited,
    Unreachable,
    error_for_status,
)
from fleetops.settings import AksSettings

log = logging.getLogger(__name__)

SYSTEM = "aks"
ARM_SCOPE = "https://management.azure.com/.default"
#: the Entra application every AKS API server with Entra ID integration accepts tokens for
AKS_SERVER_APP_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
RESOURCE_GROUP_LABEL = f"{FLEETOPS_PREFIX}resource-group"

T = TypeVar("T")

# libyaml's loader: one kubeconfig per cluster is parsed, ~10x faster than PyYAML's pure Python.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def azure_error(exc: BaseException, *, context: str) -> ClientError:
    """The fleetops error for an azure-core / azure-identity exception."""
    if isinstance(exc, HttpResponseError):
        status = int(exc.status_code or 0)
        error = getattr(exc, "error", None)
        code = getattr(error, "code", None)
        detail = getattr(error, "message", None) or exc.reason or exc.message
        message = f"{context}: {status or ''} {code or ''}: {clean(detail)}".replace("  ", " ")
        if isinstance(exc, ClientAuthenticationError) and not status:
            return AuthError(message, system=SYSTEM)  # a credential that could not get a token
        if status == 429:
            return RateLimited(message, system=SYSTEM, retry_after=_retry_after(exc))
        if status:
            return error_for_status(status, message, system=SYSTEM)
        return PermanentError(message, system=SYSTEM)
    message = f"{context}: {clean(exc)}"
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return Unreachable(message, system=SYSTEM)
    return PermanentError(message, system=SYSTEM)


def _retry_after(exc: HttpResponseError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _call(context: str, function: Callable[[], T]) -> T:
    try:
        return function()
    except AzureError as exc:
        raise azure_error(exc, context=context) from exc


class StaticTokenCredential:
    """An azure-core ``TokenCredential`` that always returns one fixed ARM token (the sandbox)."""

    def __init__(self, token: SecretStr, *, lifetime_seconds: int = 3600) -> None:
        self._token = token
        self._lifetime = lifetime_seconds

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token.get_secret_value(), int(time.time()) + self._lifetime)


def azure_credential(
    *, access_token: SecretStr | None = None, credential: TokenCredential | None = None
) -> TokenCredential:
    """``credential`` if given, a fixed ``access_token``, or ``DefaultAzureCredential``."""
    if credential is not None:
        return credential
    if access_token is not None:
        return StaticTokenCredential(access_token)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


# --- user credentials ------------------------------------------------------------------------


@dataclass(frozen=True)
class UserKubeconfig:
    """What fleetops reads from a ``listClusterUserCredential`` kubeconfig (kept in memory)."""

    server: str
    ca_pem: str | None
    token: SecretStr | None
    """The user's bearer token (local accounts); None for an Entra ID (kubelogin) user."""
    entra_server_id: str | None
    """For an Entra ID user: the application to get an Entra token for."""


def parse_user_kubeconfig(text: bytes | str, *, context: str) -> UserKubeconfig:
    """The first cluster and user of an AKS user kubeconfig; :class:`PermanentError` if unusable."""
    try:
        config = yaml.load(text, Loader=_Loader)  # noqa: S506 (a safe loader)
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        server = str(cluster["server"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise PermanentError(
            f"{context}: the user credential is not a kubeconfig with a cluster and a user "
            f"({type(exc).__name__})",
            system=SYSTEM,
        ) from None
    ca_pem: str | None = None
    if cluster.get("certificate-authority-data"):
        try:
            ca_pem = base64.b64decode(cluster["certificate-authority-data"]).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            log.warning("%s: certificate-authority-data is not base64 PEM", context)
    token = SecretStr(str(user["token"])) if user.get("token") else None
    server_id: str | None = None
    if token is None:
        exec_spec = user.get("exec") or {}
        provider = user.get("auth-provider") or {}
        args = [str(a) for a in exec_spec.get("args") or []]
        if "--server-id" in args[:-1]:
            server_id = args[args.index("--server-id") + 1]
        elif provider.get("name") == "azure":
            server_id = str((provider.get("config") or {}).get("apiserver-id") or AKS_SERVER_APP_ID)
        elif exec_spec:
            server_id = AKS_SERVER_APP_ID
        else:
            raise AuthError(
                f"{context}: the user credential has neither a token nor an Entra ID login",
                system=SYSTEM,
            )
    return UserKubeconfig(server=server, ca_pem=ca_pem, token=token, entra_server_id=server_id)


# --- discovery -------------------------------------------------------------------------------


class AksClients:
    """One ``ContainerServiceClient`` per subscription, made on first use (thread-safe)."""

    def __init__(
        self,
        *,
        credential: TokenCredential,
        base_url: str | None = None,
        connection_verify: str | bool = True,
        retry_total: int = 6,
    ) -> None:
        self.credential = credential
        self.base_url = base_url
        self.connection_verify = connection_verify
        self.retry_total = retry_total
        self._clients: dict[str, ContainerServiceClient] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, aks: AksSettings, *, credential: TokenCredential | None = None
    ) -> AksClients:
        return cls(
            credential=azure_credential(access_token=aks.access_token, credential=credential),
            base_url=aks.base_url,
            connection_verify=str(aks.ca_bundle) if aks.ca_bundle is not None else True,
            retry_total=aks.retry_total,
        )

    def client(self, subscription: str) -> ContainerServiceClient:
        with self._lock:
            client = self._clients.get(subscription)
            if client is None:
                kwargs: dict[str, Any] = {
                    "connection_verify": self.connection_verify,
                    "retry_total": self.retry_total,
                }
                if self.base_url:
                    kwargs["base_url"] = self.base_url
                client = ContainerServiceClient(self.credential, subscription, **kwargs)
                self._clients[subscription] = client
            return client

    def user_kubeconfig(self, subscription: str, resource_group: str, name: str) -> UserKubeconfig:
        """The cluster's user kubeconfig (``listClusterUserCredential``), parsed, in memory."""
        context = f"subscription {subscription}: listClusterUserCredential {resource_group}/{name}"
        result = _call(
            context,
            lambda: self.client(subscription).managed_clusters.list_cluster_user_credentials(
                resource_group, name
            ),
        )
        values = [k.value for k in result.kubeconfigs or [] if k.value]
        if not values:
            raise PermanentError(f"{context}: no kubeconfig in the answer", system=SYSTEM)
        return parse_user_kubeconfig(values[0], context=context)

    def list_managed(self, subscription: str) -> list[Any]:
        """Every ``ManagedCluster`` of the subscription (every page)."""
        return _call(
            f"subscription {subscription}: list managedClusters",
            lambda: list(self.client(subscription).managed_clusters.list()),
        )

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def resource_group_of(arm_id: str) -> str:
    """The resource group in an ARM resource id (``/subscriptions/S/resourceGroups/RG/...``)."""
    parts = arm_id.split("/")
    for index, part in enumerate(parts[:-1]):
        if part.lower() == "resourcegroups":
            return parts[index + 1]
    raise PermanentError(f"ARM id {arm_id!r} names no resource group", system=SYSTEM)


class AksDiscovery:
    """Lists the AKS clusters of every configured subscription."""

    def __init__(
        self, config: AksSourceConfig, *, clients: AksClients, max_workers: int = 8
    ) -> None:
        self.config = config
        self.clients = clients
        self.max_workers = max_workers

    @classmethod
    def from_settings(
        cls, aks: AksSettings, *, credential: TokenCredential | None = None
    ) -> AksDiscovery:
        """Discovery as configured by ``FLEETOPS_AKS_*``."""
        try:
            config = AksSourceConfig(subscriptions=aks.subscriptions)
        except ValueError as exc:
            raise ConfigError(f"AKS source: {exc}") from exc
        return cls(
            config,
            clients=AksClients.from_settings(aks, credential=credential),
            max_workers=aks.max_workers,
        )

    def discover(self, *, name: str = "aks") -> SourceResult:
        """Every cluster of every subscription (no CA: see the module docstring); raises on the
        first failure."""
        listed = bounded_map(
            self._list, self.config.subscriptions, max_workers=self.max_workers, name="aks-list"
        )
        return SourceResult(
            name=name,
            provider=Provider.AKS,
            accounts=self.config.subscriptions,
            clusters=tuple(cluster for clusters in listed for cluster in clusters),
        )

    def _list(self, subscription: str) -> list[Cluster]:
        return [
            cluster_from_aks(
                managed,
                subscription=subscription,
                resource_group=resource_group_of(str(managed.id)),
            )
            for managed in self.clients.list_managed(subscription)
        ]


def api_server_url(fqdn: str) -> str:
    """The API server URL of an AKS cluster's FQDN: ``https://FQDN:443``, as AKS's kubeconfig
    writes it (a FQDN with a port, as the sandbox gives, keeps it)."""
    host, _, port = fqdn.rpartition(":")
    if host and port.isdigit():
        return f"https://{fqdn}"
    return f"https://{fqdn}:443"


def cluster_from_aks(managed: Any, *, subscription: str, resource_group: str) -> Cluster:
    """A :class:`Cluster` (without CA) from an ARM ``ManagedCluster``."""
    props = managed.properties
    version = None
    fqdn = None
    status = None
    if props is not None:
        version = props.current_kubernetes_version or props.kubernetes_version
        fqdn = props.fqdn or props.private_fqdn
        power = _text(props.power_state.code) if props.power_state is not None else None
        status = _text(props.provisioning_state)
        if power and power != "Running":
            status = f"{status}/{power}" if status else power
    if not fqdn:
        raise PermanentError(
            f"cluster {managed.name}: AKS gives no API server address (no fqdn or privateFqdn)",
            system=SYSTEM,
        )
    location = _location(managed)
    group_label = normalise_labels({"rg": resource_group}).get("rg", "")
    labels = {
        **normalise_labels(dict(managed.tags or {})),
        **derived_labels(
            provider=Provider.AKS.value,
            account=subscription,
            region=location,
            kubernetes_version=version,
        ),
    }
    if group_label:
        labels[RESOURCE_GROUP_LABEL] = group_label
    return Cluster(
        provider=Provider.AKS,
        account=subscription,
        location=location,
        name=str(managed.name),
        endpoint=api_server_url(str(fqdn)),
        kubernetes_version=version,
        provider_status=status,
        labels=labels,
        auth=AuthMethod.AKS_USER_CREDENTIAL,
    )


class AksTokens:
    """Bearer tokens for AKS clusters: the user credential's token, or an Entra token."""

    def __init__(self, clients: AksClients) -> None:
        self.clients = clients

    def token_for(self, cluster: Cluster) -> ClusterToken:
        """A token for ``cluster``, with the CA its user kubeconfig names."""
        kubeconfig = self.user_kubeconfig(cluster)
        if kubeconfig.token is not None:
            return ClusterToken(token=kubeconfig.token, ca_data=kubeconfig.ca_pem)
        scope = f"{kubeconfig.entra_server_id or AKS_SERVER_APP_ID}/.default"
        access = _call(
            f"cluster {cluster.id}: Entra token", lambda: self.clients.credential.get_token(scope)
        )
        return ClusterToken(
            token=SecretStr(access.token),
            expires_at=datetime.fromtimestamp(access.expires_on, tz=UTC),
            ca_data=kubeconfig.ca_pem,
        )

    def user_kubeconfig(self, cluster: Cluster) -> UserKubeconfig:
        """The cluster's user kubeconfig, finding its resource group by label or by listing."""
        labelled = cluster.labels.get(RESOURCE_GROUP_LABEL)
        if labelled:
            try:
                return self.clients.user_kubeconfig(cluster.account, labelled, cluster.name)
            except NotFound:
                pass  # the group's name did not survive as a label value: look it up
        for managed in self.clients.list_managed(cluster.account):
            if managed.name == cluster.name and _location(managed) == cluster.location:
                group = resource_group_of(str(managed.id))
                return self.clients.user_kubeconfig(cluster.account, group, cluster.name)
        raise NotFound(
            f"cluster {cluster.id}: no managed cluster of that name and location in the "
            "subscription",
            system=SYSTEM,
        )


def _text(value: Any) -> str | None:
    """An SDK enum or string as its wire value (``Code.STOPPED`` -> ``Stopped``)."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _location(managed: Any) -> str:
    """ARM's location as AKS ids use it (``eastus``; display names like ``East US`` folded)."""
    return str(managed.location).replace(" ", "").lower()
