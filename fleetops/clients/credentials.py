"""Short-lived credentials for any cluster of the inventory, whatever its provider.

The inventory records *how* to get a credential (:class:`~fleetops.domain.cluster.AuthMethod`),
never the credential. :class:`ClusterCredentials` turns that into a bearer token when a
connection needs one:

=====================  =====================================================================
``eks-iam``            a presigned STS token (:func:`fleetops.clients.eks.eks_token`), signed
                       with the account's credentials (ambient, or its assumed role)
``gcp-access-token``   a Google OAuth access token of the configured credentials (refreshed)
``aks-user-credential`` the token of the cluster's ``listClusterUserCredential`` kubeconfig, or
                       an Entra token for the AKS server application (Entra ID clusters)
``static-kubeconfig``  the ``token``/``tokenFile`` of the cluster's kubeconfig context user
=====================  =====================================================================

:func:`exec_credential` wraps a token as a ``client.authentication.k8s.io/v1`` ExecCredential,
which is what ``fleetops token CLUSTER_ID`` prints for kubectl's exec plugin.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import SecretStr

from fleetops.clients._common import ClusterToken
from fleetops.domain.cluster import AuthMethod, Cluster
from fleetops.errors import ConfigError
from fleetops.settings import Settings

EXEC_API_VERSION = "client.authentication.k8s.io/v1"

__all__ = ["ClusterCredentials", "ClusterToken", "TokenSource", "exec_credential", "token_for"]


class TokenSource(Protocol):
    """Anything that can mint a token for a cluster of its provider."""

    def token_for(self, cluster: Cluster) -> ClusterToken: ...


class _Lazy:
    """A token source built on first use: a provider that is not configured costs nothing
    (and fails, with a clear error, only if one of its clusters needs a token)."""

    def __init__(self, factory: Callable[[], TokenSource]) -> None:
        self._factory = factory
        self._source: TokenSource | None = None
        self._lock = threading.Lock()

    def token_for(self, cluster: Cluster) -> ClusterToken:
        with self._lock:
            if self._source is None:
                self._source = self._factory()
        return self._source.token_for(cluster)


class ClusterCredentials:
    """Mints short-lived tokens per auth method; give the sources you have.

    Thread-safe as long as the sources are (the ones in ``fleetops.clients`` are).
    """

    def __init__(
        self,
        *,
        eks: TokenSource | None = None,
        gke: TokenSource | None = None,
        aks: TokenSource | None = None,
        static: TokenSource | None = None,
    ) -> None:
        self._sources: dict[AuthMethod, TokenSource | None] = {
            AuthMethod.EKS_IAM: eks,
            AuthMethod.GCP_ACCESS_TOKEN: gke,
            AuthMethod.AKS_USER_CREDENTIAL: aks,
            AuthMethod.STATIC_KUBECONFIG: static,
        }

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        aws_session: Any = None,
        google_credentials: Any = None,
        azure_credential: Any = None,
    ) -> ClusterCredentials:
        """Every source as configured by ``FLEETOPS_*``; SDK credentials may be injected
        (a ``boto3.Session``, google-auth credentials, an azure-core ``TokenCredential``)."""

        def eks() -> TokenSource:
            from fleetops.clients.eks import AwsSessions, EksTokens

            sessions = AwsSessions.from_settings(
                settings.aws, settings.eks, base_session=aws_session
            )
            return EksTokens(sessions, settings.eks.accounts)

        def gke() -> TokenSource:
            from fleetops.clients.gke import gke_tokens

            return gke_tokens(settings.gke, credentials=google_credentials)

        def aks() -> TokenSource:
            from fleetops.clients.aks import AksClients, AksTokens

            return AksTokens(AksClients.from_settings(settings.aks, credential=azure_credential))

        def static() -> TokenSource:
            from fleetops.clients.static import StaticClusters

            return StaticClusters.from_settings(settings.kube, settings.static)

        return cls(eks=_Lazy(eks), gke=_Lazy(gke), aks=_Lazy(aks), static=_Lazy(static))

    def token_for(self, cluster: Cluster) -> ClusterToken:
        """A fresh bearer token for ``cluster``, by its auth method."""
        source = self._sources.get(cluster.auth)
        if source is None:
            raise ConfigError(
                f"cluster {cluster.id}: no credential source for auth method {cluster.auth.value}"
            )
        return source.token_for(cluster)


def token_for(
    cluster: Cluster, *, settings: Settings, credentials: ClusterCredentials | None = None
) -> ClusterToken:
    """A token for one cluster: with ``credentials`` if given, else built from ``settings``."""
    source = credentials if credentials is not None else ClusterCredentials.from_settings(settings)
    return source.token_for(cluster)


def exec_credential(
    token: ClusterToken | SecretStr, expires_at: datetime | None = None
) -> dict[str, Any]:
    """A ``client.authentication.k8s.io/v1`` ExecCredential for kubectl's exec plugin.

    ``expires_at`` defaults to the token's own; kubectl caches the token until then (and for
    the process's life when there is none). The result holds the secret: print it, never log it.
    """
    if isinstance(token, ClusterToken):
        expires_at = expires_at if expires_at is not None else token.expires_at
        secret = token.token
    else:
        secret = token
    status: dict[str, str] = {"token": secret.get_secret_value()}
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        status["expirationTimestamp"] = (
            expires_at.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
    return {"apiVersion": EXEC_API_VERSION, "kind": "ExecCredential", "spec": {}, "status": status}
