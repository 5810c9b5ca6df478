"""Google Kubernetes Engine through google-cloud-container: discovery and access tokens.

Credentials are Application Default Credentials (``google.auth.default()``: a service account
key, workload identity, ``gcloud auth application-default login``...) unless a credentials
object or a plain access token is given. The same credentials give the bearer token for the
clusters' API servers: GKE accepts a Google OAuth access token with the ``cloud-platform``
scope, refreshed when it has expired.

The client uses the REST transport (``transport="rest"``) so that one HTTP endpoint, Google's or
the sandbox's, serves it. ``ListClusters`` on ``projects/P/locations/-`` answers every location
in one call; a response naming ``missingZones`` is incomplete and is reported as a transient
failure rather than as clusters having gone. Throttling (429) and 5xx answers are retried by
google-api-core's own ``Retry`` with exponential backoff up to a deadline (the client's default
retry covers only 503 and deadline errors).
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any, TypeVar

import google.auth
import google.auth.exceptions as auth_exc
import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.api_core.client_options import ClientOptions
from google.auth.credentials import Credentials as GoogleCredentials
from google.auth.transport.requests import Request as AuthRequest
from google.cloud import container_v1
from google.oauth2.credentials import Credentials as TokenCredentials
from pydantic import SecretStr

from fleetops.clients._common import ClusterToken, bounded_map, clean
from fleetops.domain.cluster import AuthMethod, Cluster, Provider
from fleetops.domain.inventory import SourceResult
from fleetops.domain.labels import derived_labels, normalise_labels
from fleetops.domain.sources import GkeSourceConfig
from fleetops.errors import (
    AuthError,
    ClientError,
    ConfigError,
    PermanentError,
    TransientError,
    Unreachable,
    error_for_status,
)
from fleetops.settings import GkeSettings

log = logging.getLogger(__name__)

SYSTEM = "gke"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"

_RETRYABLE = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.DeadlineExceeded,
)

T = TypeVar("T")


def google_error(exc: BaseException, *, context: str) -> ClientError:
    """The fleetops error for a google-api-core / google-auth / requests exception."""
    if isinstance(exc, gexc.RetryError):
        cause = exc.cause
        if cause is not None and cause is not exc:
            error = google_error(cause, context=context)
            error.args = (f"{error.args[0]} (retries exhausted)",)
            return error
        return TransientError(f"{context}: {clean(exc.message)}", system=SYSTEM)
    if isinstance(exc, gexc.GoogleAPICallError):
        status = int(exc.code) if exc.code is not None else 0
        message = f"{context}: {status or ''} {clean(exc.message)}".replace(":  ", ": ")
        if status:
            return error_for_status(status, message, system=SYSTEM)
        return PermanentError(message, system=SYSTEM)
    message = f"{context}: {clean(exc)}"
    if isinstance(exc, auth_exc.RefreshError | auth_exc.DefaultCredentialsError):
        return AuthError(message, system=SYSTEM)
    if isinstance(exc, auth_exc.TransportError | requests.ConnectionError | requests.Timeout):
        return Unreachable(message, system=SYSTEM)
    if isinstance(exc, requests.RequestException):
        return TransientError(message, system=SYSTEM)
    return PermanentError(message, system=SYSTEM)


def _call(context: str, function: Callable[[], T]) -> T:
    try:
        return function()
    except (gexc.GoogleAPIError, auth_exc.GoogleAuthError, requests.RequestException) as exc:
        raise google_error(exc, context=context) from exc


def google_credentials(
    *, access_token: SecretStr | None = None, credentials: GoogleCredentials | None = None
) -> GoogleCredentials:
    """The credentials to use: ``credentials`` if given, a fixed ``access_token``, or ADC."""
    if credentials is not None:
        return credentials
    if access_token is not None:
        return TokenCredentials(token=access_token.get_secret_value())  # type: ignore[no-untyped-call]
    found, _project = _call(
        "application default credentials",
        lambda: google.auth.default(scopes=[CLOUD_PLATFORM]),
    )
    return found


class GoogleTokens:
    """Access tokens from one set of Google credentials, refreshed when they have expired."""

    def __init__(self, credentials: GoogleCredentials) -> None:
        self.credentials = credentials
        self._lock = threading.Lock()

    def token(self) -> ClusterToken:
        """A valid access token (refreshing the credentials first if needed)."""
        with self._lock:
            creds = self.credentials
            if not creds.valid:
                _call("refresh Google credentials", lambda: creds.refresh(AuthRequest()))  # type: ignore[no-untyped-call]
            if not creds.token:
                raise AuthError("Google credentials hold no access token", system=SYSTEM)
            expiry = creds.expiry
            expires_at = expiry.replace(tzinfo=UTC) if expiry is not None else None
            return ClusterToken(token=SecretStr(str(creds.token)), expires_at=expires_at)

    def token_for(self, cluster: Cluster) -> ClusterToken:
        """The token for a GKE cluster: the same for every cluster these credentials may reach."""
        return self.token()


class GkeDiscovery:
    """Lists the GKE clusters of every configured project, all locations."""

    def __init__(
        self,
        config: GkeSourceConfig,
        *,
        credentials: GoogleCredentials,
        api_endpoint: str | None = None,
        timeout_seconds: float = 30.0,
        retry_deadline_seconds: float = 60.0,
        max_workers: int = 4,
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.timeout_seconds = timeout_seconds
        self.max_workers = max_workers
        self.retry = gretry.Retry(
            predicate=gretry.if_exception_type(*_RETRYABLE),
            initial=0.5,
            maximum=10.0,
            multiplier=2.0,
            timeout=retry_deadline_seconds,
        )
        options = ClientOptions(api_endpoint=api_endpoint) if api_endpoint else None
        self.client = container_v1.ClusterManagerClient(
            credentials=credentials, transport="rest", client_options=options
        )

    @classmethod
    def from_settings(
        cls, gke: GkeSettings, *, credentials: GoogleCredentials | None = None
    ) -> GkeDiscovery:
        """Discovery as configured by ``FLEETOPS_GKE_*``."""
        try:
            config = GkeSourceConfig(projects=gke.projects)
        except ValueError as exc:
            raise ConfigError(f"GKE source: {exc}") from exc
        return cls(
            config,
            credentials=google_credentials(access_token=gke.access_token, credentials=credentials),
            api_endpoint=gke.endpoint,
            timeout_seconds=gke.timeout_seconds,
            retry_deadline_seconds=gke.retry_deadline_seconds,
        )

    def discover(self, *, name: str = "gke") -> SourceResult:
        """Every cluster of every project; raises on the first failure."""
        per_project = bounded_map(
            self.list_project, self.config.projects, max_workers=self.max_workers, name="gke-list"
        )
        clusters = tuple(c for found in per_project for c in found)
        return SourceResult(
            name=name, provider=Provider.GKE, accounts=self.config.projects, clusters=clusters
        )

    def list_project(self, project: str) -> list[Cluster]:
        """The clusters of one project, every location."""
        context = f"project {project}: list clusters"
        answer = _call(
            context,
            lambda: self.client.list_clusters(
                parent=f"projects/{project}/locations/-",
                retry=self.retry,
                timeout=self.timeout_seconds,
            ),
        )
        missing: Sequence[str] = list(answer.missing_zones)
        if missing:
            raise TransientError(
                f"{context}: GKE could not list locations {', '.join(missing)}; "
                "the listing is incomplete",
                system=SYSTEM,
            )
        found = [cluster_from_gke(c, project=project) for c in answer.clusters]
        return [c for c in found if c is not None]

    def close(self) -> None:
        self.client.transport.close()  # type: ignore[no-untyped-call]


def split_location(location: str) -> tuple[str, str | None]:
    """``(region, zone)`` of a GKE location: ``us-central1`` is a region, ``us-central1-a`` a zone."""
    if location.count("-") >= 2:
        return location.rsplit("-", 1)[0], location
    return location, None


def cluster_from_gke(data: Any, *, project: str) -> Cluster | None:
    """A :class:`Cluster` from a ``container_v1.Cluster``; None while it has no endpoint yet."""
    if not data.endpoint:
        log.info("GKE cluster %s in %s has no endpoint yet; skipped", data.name, project)
        return None
    region, zone = split_location(data.location)
    version = data.current_master_version or None
    ca_data: str | None = None
    encoded = data.master_auth.cluster_ca_certificate if data.master_auth else ""
    if encoded:
        try:
            ca_data = base64.b64decode(encoded, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            log.warning("GKE cluster %s: clusterCaCertificate is not base64 PEM", data.name)
    labels = {
        **normalise_labels(dict(data.resource_labels)),
        **derived_labels(
            provider=Provider.GKE.value,
            account=project,
            region=region,
            zone=zone,
            kubernetes_version=version,
        ),
    }
    status = data.status
    return Cluster(
        provider=Provider.GKE,
        account=project,
        location=data.location,
        name=data.name,
        endpoint=f"https://{data.endpoint}",
        ca_data=ca_data,
        kubernetes_version=version,
        provider_status=getattr(status, "name", str(status)),
        labels=labels,
        auth=AuthMethod.GCP_ACCESS_TOKEN,
    )


def gke_tokens(gke: GkeSettings, *, credentials: GoogleCredentials | None = None) -> GoogleTokens:
    """Access tokens for GKE clusters as configured by ``FLEETOPS_GKE_*`` (or ``credentials``)."""
    return GoogleTokens(google_credentials(access_token=gke.access_token, credentials=credentials))
