"""Amazon EKS through boto3: discover clusters across accounts and regions, mint IAM tokens.

Credentials come from the standard AWS chain (environment, shared config, SSO, instance or pod
role) unless a ``boto3.Session`` is passed in. Per account, :class:`AwsSessions` either uses
those ambient credentials (and checks, once, that they belong to the account) or assumes the
account's role with STS, keeping the assumed credentials until five minutes before they expire.

Throttling and transient errors are retried by botocore itself (``retries`` mode ``adaptive``
or ``standard`` with a bounded number of attempts, from settings); when that gives up, the
error surfaces as :class:`~fleetops.errors.RateLimited` or another
:class:`~fleetops.errors.ClientError` naming the account, region and call.

An EKS bearer token (:func:`eks_token`) is what ``aws eks get-token`` and aws-iam-authenticator
produce: ``k8s-aws-v1.`` + unpadded URL-safe base64 of an STS ``GetCallerIdentity`` URL presigned
locally (no network call) with the header ``x-k8s-aws-id: <cluster name>`` signed in, valid for
60 seconds. Its ``expires_at`` is read back from the signed URL (``X-Amz-Date`` +
``X-Amz-Expires``) minus a 10 s margin, so a caller that caches it (kubectl, via the exec
credential) asks for a new one before the API server refuses it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.exceptions as bexc
import botocore.session
from botocore.config import Config
from botocore.loaders import Loader
from pydantic import SecretStr

from fleetops.clients._common import ClusterToken, bounded_map, clean
from fleetops.domain.cluster import AuthMethod, Cluster, Provider
from fleetops.domain.inventory import SourceResult
from fleetops.domain.labels import derived_labels, normalise_labels
from fleetops.domain.sources import EksAccount, EksSourceConfig
from fleetops.errors import (
    AuthError,
    ClientError,
    ConfigError,
    NotFound,
    PermanentError,
    RateLimited,
    Rejected,
    TransientError,
    Unreachable,
    error_for_status,
)
from fleetops.settings import AwsSettings, EksSettings

log = logging.getLogger(__name__)

SYSTEM = "eks"
TOKEN_PREFIX = "k8s-aws-v1."
CLUSTER_ID_HEADER = "x-k8s-aws-id"
#: what aws-iam-authenticator and ``aws eks get-token`` sign the URL for
TOKEN_LIFETIME_SECONDS = 60
#: how long before the URL expires a cached token is considered stale
TOKEN_MARGIN_SECONDS = 10
#: assumed-role credentials are renewed when they have less than this left
_RENEW_BEFORE = timedelta(minutes=5)
_ASSUME_ROLE_SECONDS = 3600

# Error codes botocore's own retry logic counts as throttling, and the ones that mean "who you
# are or what you may do is the problem".
_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "LimitExceededException",
    }
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnauthorizedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "AuthFailure",
        "IncompleteSignature",
        "MissingAuthenticationToken",
    }
)
_NOT_FOUND_CODES = frozenset({"ResourceNotFoundException", "NoSuchEntity", "NotFoundException"})

T = TypeVar("T")


def aws_error(exc: Exception, *, context: str) -> ClientError:
    """The fleetops error for a boto3/botocore exception; ``context`` says what was being done."""
    if isinstance(exc, bexc.ClientError):
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(error.get("Code", ""))
        status = int(meta.get("HTTPStatusCode") or 0)
        retries = int(meta.get("RetryAttempts") or 0)
        message = f"{context}: {code or 'error'}: {clean(error.get('Message', exc))}"
        if retries:
            message += f" (after {retries} retries)"
        if code in _THROTTLING_CODES:
            return RateLimited(message, system=SYSTEM, status=status or 429)
        if code in _AUTH_CODES:
            return AuthError(message, system=SYSTEM, status=status or 403)
        if code in _NOT_FOUND_CODES:
            return NotFound(message, system=SYSTEM, status=status or 404)
        if status:
            return error_for_status(status, message, system=SYSTEM)
        return PermanentError(message, system=SYSTEM)
    message = f"{context}: {clean(exc)}"
    if isinstance(exc, bexc.ConnectionError | bexc.HTTPClientError):
        return Unreachable(message, system=SYSTEM)
    if isinstance(
        exc,
        bexc.NoCredentialsError
        | bexc.PartialCredentialsError
        | bexc.CredentialRetrievalError
        | bexc.TokenRetrievalError
        | bexc.NoAuthTokenError
        | bexc.UnauthorizedSSOTokenError,
    ):
        return AuthError(message, system=SYSTEM)
    if isinstance(exc, bexc.ParamValidationError):
        return Rejected(message, system=SYSTEM)
    if isinstance(exc, bexc.MetadataRetrievalError | bexc.IncompleteReadError):
        return TransientError(message, system=SYSTEM)
    return PermanentError(message, system=SYSTEM)


def _call(context: str, function: Callable[[], T]) -> T:
    """Run one SDK call, translating its exceptions."""
    try:
        return function()
    except (bexc.BotoCoreError, bexc.ClientError) as exc:
        raise aws_error(exc, context=context) from exc


def botocore_config(settings: AwsSettings, *, max_pool_connections: int = 10) -> Config:
    """The client configuration: botocore's retry mode and attempts, timeouts, pool size."""
    return Config(
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        max_pool_connections=max(10, max_pool_connections),
    )


_loader_lock = threading.Lock()
_shared_loader: Loader | None = None


def new_session(*, loader: Loader | None = None, **credentials: str) -> boto3.Session:
    """A new ``boto3.Session`` (standard credential chain unless ``credentials`` are given)
    whose botocore data loader is ``loader``, by default one shared by the whole process.

    The loader caches the service models and endpoint data it has parsed (megabytes of JSON):
    with a loader per session, every discovery, and every assumed role within it, parsed them
    again, most of the CPU time of an EKS discovery, holding the interpreter lock the other
    sources need.
    """
    global _shared_loader
    core = botocore.session.Session()
    with _loader_lock:
        shared = loader if loader is not None else _shared_loader
        if shared is None:
            session = boto3.Session(botocore_session=core, **credentials)
            _shared_loader = core.get_component("data_loader")
            return session
        core.register_component("data_loader", shared)
        search_paths = list(shared.search_paths)
        session = boto3.Session(botocore_session=core, **credentials)
        shared.search_paths[:] = search_paths  # boto3 appended its data path once more
        return session


@dataclass(frozen=True)
class _Assumed:
    session: boto3.Session
    expiration: datetime


class AwsSessions:
    """A boto3 session per AWS account: the ambient one, or an assumed role (cached).

    ``base_session`` holds the ambient credentials (default: a new session with the standard
    chain, see :func:`new_session`). Thread-safe: discovery and token minting may share one
    instance, and roles of different accounts are assumed at the same time (one STS client).
    """

    def __init__(
        self,
        *,
        base_session: boto3.Session | None = None,
        endpoint_url: str | None = None,
        config: Config | None = None,
        sts_region: str = "us-east-1",
        role_session_name: str = "fleetops-discovery",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.base_session = base_session if base_session is not None else new_session()
        self.endpoint_url = endpoint_url
        self.config = config if config is not None else Config()
        self.sts_region = sts_region
        self.role_session_name = role_session_name
        self._clock = clock
        self._lock = threading.Lock()  # the dictionaries below
        self._client_lock = threading.Lock()  # creating clients from a session is not thread-safe
        self._ambient_lock = threading.Lock()
        self._role_locks: dict[str, threading.Lock] = {}  # one assume_role at a time per role
        self._assumed: dict[str, _Assumed] = {}
        self._ambient_account: str | None = None
        self._sts_client: Any = None

    @classmethod
    def from_settings(
        cls,
        aws: AwsSettings,
        eks: EksSettings,
        *,
        base_session: boto3.Session | None = None,
    ) -> AwsSessions:
        return cls(
            base_session=base_session,
            endpoint_url=aws.endpoint_url,
            config=botocore_config(aws, max_pool_connections=eks.max_workers),
            sts_region=eks.regions[0] if eks.regions else "us-east-1",
            role_session_name=eks.role_session_name,
        )

    def client(self, service: str, *, account: EksAccount, region: str) -> Any:
        """A boto3 client for ``service`` in ``region`` with ``account``'s credentials."""
        session = self.session_for(account)
        with self._client_lock:
            return session.client(
                service, region_name=region, endpoint_url=self.endpoint_url, config=self.config
            )

    def session_for(self, account: EksAccount) -> boto3.Session:
        """The session for ``account``; raises :class:`AuthError` if the ambient credentials
        belong to another account, or if the role cannot be assumed."""
        if account.role_arn is None:
            ambient = self.ambient_account()
            if ambient != account.account_id:
                raise AuthError(
                    f"account {account.account_id}: the ambient AWS credentials belong to "
                    f"account {ambient}; list a role ARN for {account.account_id} instead",
                    system=SYSTEM,
                )
            return self.base_session
        role_arn = account.role_arn
        with self._lock:
            role_lock = self._role_locks.setdefault(role_arn, threading.Lock())
        with role_lock:  # other roles are assumed meanwhile
            with self._lock:
                cached = self._assumed.get(role_arn)
            if cached is not None and cached.expiration - self._clock() > _RENEW_BEFORE:
                return cached.session
            assumed = self._assume(role_arn)
            with self._lock:
                self._assumed[role_arn] = assumed
            return assumed.session

    def ambient_account(self) -> str:
        """The account the ambient credentials belong to (STS GetCallerIdentity, once)."""
        with self._ambient_lock:
            if self._ambient_account is None:
                sts = self._sts()
                identity = _call(
                    "ambient credentials: sts get_caller_identity", sts.get_caller_identity
                )
                self._ambient_account = str(identity["Account"])
            return self._ambient_account

    def _sts(self) -> Any:
        """The STS client of the ambient credentials (made once; boto3 clients are thread-safe)."""
        with self._client_lock:
            if self._sts_client is None:
                self._sts_client = self.base_session.client(
                    "sts",
                    region_name=self.sts_region,
                    endpoint_url=self.endpoint_url,
                    config=self.config,
                )
            return self._sts_client

    def _assume(self, role_arn: str) -> _Assumed:
        sts = self._sts()
        answer = _call(
            f"sts assume_role {role_arn}",
            lambda: sts.assume_role(
                RoleArn=role_arn,
                RoleSessionName=self.role_session_name,
                DurationSeconds=_ASSUME_ROLE_SECONDS,
            ),
        )
        creds = answer["Credentials"]
        session = new_session(
            loader=self.base_session._session.get_component("data_loader"),
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        expiration = creds["Expiration"]
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        return _Assumed(session=session, expiration=expiration)


# --- discovery -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    account: EksAccount
    region: str
    client: Any


class EksDiscovery:
    """Lists the EKS clusters of every configured account and region.

    ``page_size`` is ``list_clusters``' ``maxResults``; ``max_workers`` bounds the concurrent
    calls (listings of account/region pairs and ``describe_cluster`` per cluster, the latter
    started as soon as their own listing is in).
    """

    def __init__(
        self,
        config: EksSourceConfig,
        *,
        sessions: AwsSessions,
        page_size: int = 100,
        max_workers: int = 8,
    ) -> None:
        if not 1 <= page_size <= 100:
            raise ConfigError(f"EKS page size must be 1 to 100, got {page_size}")
        self.config = config
        self.sessions = sessions
        self.page_size = page_size
        self.max_workers = max_workers

    @classmethod
    def from_settings(
        cls, aws: AwsSettings, eks: EksSettings, *, base_session: boto3.Session | None = None
    ) -> EksDiscovery:
        """Discovery as configured by ``FLEETOPS_AWS_*`` and ``FLEETOPS_EKS_*``."""
        try:
            config = EksSourceConfig(accounts=eks.accounts, regions=eks.regions)
        except ValueError as exc:
            raise ConfigError(f"EKS source: {exc}") from exc
        return cls(
            config,
            sessions=AwsSessions.from_settings(aws, eks, base_session=base_session),
            page_size=eks.page_size,
            max_workers=eks.max_workers,
        )

    def discover(self, *, name: str = "eks") -> SourceResult:
        """Every cluster of every account and region; raises on the first failure.

        Every account's role is assumed (or the ambient account checked) at once. Then, at most
        ``max_workers`` calls at a time, each account/region is listed and its clusters are
        described as soon as its own listing is in, without waiting for the other listings.
        A failed listing is what is raised (the first in account/region order) even if a
        describe_cluster failed too, and once one has failed no describe_cluster call starts.
        """
        bounded_map(
            self.sessions.session_for,
            self.config.accounts,
            max_workers=self.max_workers,
            name="eks-session",
        )
        pairs = [(a, r) for a in self.config.accounts for r in self.config.regions]
        failed = threading.Event()
        with ThreadPoolExecutor(
            max_workers=max(1, self.max_workers), thread_name_prefix="eks"
        ) as pool:

            def list_target(pair: tuple[EksAccount, str]) -> list[Future[Cluster | None]]:
                account, region = pair
                try:
                    client = self.sessions.client("eks", account=account, region=region)
                    target = _Target(account, region, client)
                    names = self._list(target)
                except BaseException:
                    failed.set()
                    raise
                return [pool.submit(self._describe_unless, failed, target, n) for n in names]

            listings = [pool.submit(list_target, pair) for pair in pairs]
            wait(listings)
            describes = [
                f for listing in listings if not listing.exception() for f in listing.result()
            ]
            wait(describes)
        for listing in listings:
            listing.result()  # the first failed listing, in account/region order
        clusters = tuple(c for c in (f.result() for f in describes) if c is not None)
        return SourceResult(
            name=name, provider=Provider.EKS, accounts=self.config.account_ids, clusters=clusters
        )

    def list_cluster_names(self, account: EksAccount, region: str) -> list[str]:
        """Names of the clusters in one account and region (every page)."""
        client = self.sessions.client("eks", account=account, region=region)
        return self._list(_Target(account, region, client))

    def _list(self, target: _Target) -> list[str]:
        context = f"account {target.account.account_id} region {target.region}: list_clusters"

        def pages() -> Iterator[Mapping[str, Any]]:
            paginator = target.client.get_paginator("list_clusters")
            yield from paginator.paginate(PaginationConfig={"PageSize": self.page_size})

        def collect() -> list[str]:
            return [name for page in pages() for name in page.get("clusters", [])]

        return _call(context, collect)

    def _describe_unless(
        self, failed: threading.Event, target: _Target, name: str
    ) -> Cluster | None:
        return None if failed.is_set() else self._describe_one((target, name))

    def _describe_one(self, item: tuple[_Target, str]) -> Cluster | None:
        target, name = item
        context = (
            f"account {target.account.account_id} region {target.region}: describe_cluster {name}"
        )
        try:
            answer = _call(context, lambda: target.client.describe_cluster(name=name))
        except NotFound:
            log.info("EKS cluster %s disappeared between list and describe", name)
            return None
        return cluster_from_eks(
            answer["cluster"], account=target.account.account_id, region=target.region
        )


def cluster_from_eks(data: Mapping[str, Any], *, account: str, region: str) -> Cluster | None:
    """A :class:`Cluster` from ``describe_cluster``'s ``cluster``; None while it has no endpoint
    yet (a cluster being created), since nothing could connect to it."""
    name = str(data["name"])
    endpoint = data.get("endpoint")
    if not endpoint:
        log.info(
            "EKS cluster %s in %s/%s has no endpoint yet (status %s); skipped",
            name,
            account,
            region,
            data.get("status"),
        )
        return None
    version = data.get("version")
    tags = {str(k): str(v) for k, v in (data.get("tags") or {}).items()}
    labels = {
        **normalise_labels(tags),
        **derived_labels(
            provider=Provider.EKS.value, account=account, region=region, kubernetes_version=version
        ),
    }
    return Cluster(
        provider=Provider.EKS,
        account=account,
        location=region,
        name=name,
        endpoint=str(endpoint),
        ca_data=_pem((data.get("certificateAuthority") or {}).get("data"), cluster=name),
        kubernetes_version=str(version) if version else None,
        provider_status=data.get("status"),
        labels=labels,
        auth=AuthMethod.EKS_IAM,
    )


def _pem(data: str | None, *, cluster: str) -> str | None:
    if not data:
        return None
    try:
        return base64.b64decode(data, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        log.warning("EKS cluster %s: certificateAuthority.data is not base64 PEM; ignored", cluster)
        return None


# --- tokens ----------------------------------------------------------------------------------


def _retrieve_cluster_id(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    if CLUSTER_ID_HEADER in params:
        context[CLUSTER_ID_HEADER] = params.pop(CLUSTER_ID_HEADER)


def _inject_cluster_id(request: Any, **_: Any) -> None:
    if CLUSTER_ID_HEADER in request.context:
        request.headers[CLUSTER_ID_HEADER] = request.context[CLUSTER_ID_HEADER]


def token_sts_client(
    session: boto3.Session, *, region: str, endpoint_url: str | None = None
) -> Any:
    """An STS client that signs ``x-k8s-aws-id`` into presigned GetCallerIdentity URLs.

    The cluster name travels through the request context (as the AWS CLI does), so one client
    can mint tokens for many clusters, from many threads.
    """
    sts = session.client("sts", region_name=region, endpoint_url=endpoint_url)
    sts.meta.events.register("provide-client-params.sts.GetCallerIdentity", _retrieve_cluster_id)
    sts.meta.events.register("before-sign.sts.GetCallerIdentity", _inject_cluster_id)
    return sts


def token_from_client(sts: Any, cluster_name: str) -> ClusterToken:
    """Mint an EKS token for ``cluster_name`` with a client from :func:`token_sts_client`."""
    url = _call(
        f"presign sts get_caller_identity for {cluster_name}",
        lambda: sts.generate_presigned_url(
            "get_caller_identity",
            Params={CLUSTER_ID_HEADER: cluster_name},
            ExpiresIn=TOKEN_LIFETIME_SECONDS,
            HttpMethod="GET",
        ),
    )
    encoded = base64.urlsafe_b64encode(str(url).encode("utf-8")).decode("ascii").rstrip("=")
    return ClusterToken(token=SecretStr(TOKEN_PREFIX + encoded), expires_at=_url_expiry(str(url)))


def eks_token(
    cluster_name: str,
    *,
    session: boto3.Session,
    region: str,
    endpoint_url: str | None = None,
) -> ClusterToken:
    """A bearer token for the EKS cluster ``cluster_name``, signed with ``session``'s credentials.

    ``region`` is the cluster's (STS is called regionally); ``endpoint_url`` overrides the STS
    endpoint (the sandbox). Made locally: no network call.
    """
    return token_from_client(
        token_sts_client(session, region=region, endpoint_url=endpoint_url), cluster_name
    )


def _url_expiry(url: str) -> datetime:
    query = parse_qs(urlsplit(url).query)
    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    lifetime = int(query["X-Amz-Expires"][0])
    return signed + timedelta(seconds=lifetime - TOKEN_MARGIN_SECONDS)


class EksTokens:
    """Mints EKS tokens for clusters of the configured accounts, reusing STS clients."""

    def __init__(self, sessions: AwsSessions, accounts: tuple[EksAccount, ...]) -> None:
        self.sessions = sessions
        self._accounts = {a.account_id: a for a in accounts}
        # (account, region) -> (the session the client was made from, the client)
        self._clients: dict[tuple[str, str], tuple[boto3.Session, Any]] = {}
        self._lock = threading.Lock()

    def token_for(self, cluster: Cluster) -> ClusterToken:
        """A token for ``cluster`` (an EKS cluster of a configured account)."""
        account = self._accounts.get(cluster.account)
        if account is None:
            raise ConfigError(
                f"cluster {cluster.id}: account {cluster.account} is not in FLEETOPS_EKS_ACCOUNTS, "
                "so fleetops does not know which credentials to sign its token with"
            )
        session = self.sessions.session_for(account)  # a new session once a role is renewed
        key = (account.account_id, cluster.location)
        with self._lock:
            cached = self._clients.get(key)
            if cached is None or cached[0] is not session:
                client = token_sts_client(
                    session, region=cluster.location, endpoint_url=self.sessions.endpoint_url
                )
                cached = (session, client)
                self._clients[key] = cached
        return token_from_client(cached[1], cluster.name)
