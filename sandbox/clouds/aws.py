"""AWS for the sandbox: moto's server (EKS, Route 53, STS, IAM) and EKS IAM bearer tokens.

:class:`AwsSandbox` runs moto's WSGI app on 127.0.0.1 in background threads, behind a fault
middleware, and seeds it:

* **Accounts and credentials.** moto tells accounts apart by access key. The sandbox creates the
  IAM user ``fleetops`` in the management account (default ``123456789012``) with an access key
  (:attr:`AwsSandbox.credentials`); from there a client assumes
  ``arn:aws:iam::<account>:role/fleetops-discovery`` (:meth:`AwsSandbox.role_arn`) in each
  account that holds clusters, exactly as against AWS. The role exists in each account (moto
  does not enforce trust policies; any role ARN would be accepted).
* **EKS.** Each ``CloudCluster`` becomes an EKS cluster in its account and region with its
  labels as tags. moto invents an endpoint and CA; the sandbox overwrites both on moto's stored
  cluster so that ``describe_cluster`` leads to the sandbox cluster (``endpoint`` is its
  ``https://127.0.0.1:PORT``, ``certificateAuthority.data`` the base64 of its CA PEM).
* **Route 53.** A public hosted zone (``sandbox.fleetops.test.``) owned by the management account
  with one weighted ``A`` record per region for the demo app (``hello.sandbox.fleetops.test.``,
  ``SetIdentifier`` = region, weight 100, value 127.0.0.1).

Faults (:class:`~sandbox.clouds.common.ProviderFaults`) apply to every AWS API request (not to
moto's own ``/moto-api``): latency; an error rate answered with AWS's throttling error in the
protocol's own shape (EKS, rest-json: HTTP 400 ``x-amzn-ErrorType: ThrottlingException``;
Route 53, STS and IAM, XML: HTTP 400 ``<Code>Throttling</Code>``), which botocore's legacy,
standard and adaptive retry modes all classify as throttling and retry; and an outage, which
closes the listening socket and open connections (``EndpointConnectionError``).

EKS bearer tokens (``k8s-aws-v1.`` + unpadded urlsafe base64 of a presigned STS
``GetCallerIdentity`` URL, as ``aws eks get-token`` and aws-iam-authenticator make them) are
checked by :func:`check_eks_token` without calling STS: moto cannot answer the presigned GET,
but it holds every access key's secret, so the sandbox verifies the SigV4 signature itself with
``x-k8s-aws-id`` set to the cluster being logged into. A token minted for another cluster, with
another secret, expired, or for another action fails.

moto keeps its state in module globals: one :class:`AwsSandbox` may run per process at a time
(start resets moto's state).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
from botocore.config import Config
from werkzeug.serving import BaseWSGIServer, make_server

from sandbox.clouds.common import (
    AWS_MANAGEMENT_ACCOUNT,
    HOST,
    CloudCluster,
    ProviderFaults,
    RequestLog,
)

log = logging.getLogger(__name__)

TOKEN_PREFIX = "k8s-aws-v1."
CLUSTER_ID_HEADER = "x-k8s-aws-id"
#: aws-iam-authenticator refuses presigned URLs valid for longer than this
MAX_TOKEN_LIFETIME = 900
#: allowed clock skew for a token dated in the future (STS allows five minutes)
CLOCK_SKEW = 300
STS_HOST = re.compile(
    r"^sts(-fips)?(\.[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d)?\.amazonaws\.com(\.cn)?$"
)
_ALLOWED_QUERY = {
    "action",
    "version",
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-security-token",
    "x-amz-signature",
    "x-amz-signedheaders",
}
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

USER_NAME = "fleetops"
ROLE_NAME = "fleetops-discovery"
HOSTED_ZONE = "sandbox.fleetops.test."
APP_HOSTNAME = "hello.sandbox.fleetops.test."

#: provider-neutral status -> EKS cluster status (EKS has no "stopped": an unusable cluster
#: is FAILED)
EKS_STATUS = {
    "RUNNING": "ACTIVE",
    "PROVISIONING": "CREATING",
    "STOPPED": "FAILED",
    "DEGRADED": "UPDATING",
    "ERROR": "FAILED",
    "DELETING": "DELETING",
}

_XML_NAMESPACES = {
    "route53": "https://route53.amazonaws.com/doc/2013-04-01/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
    "iam": "https://iam.amazonaws.com/doc/2010-05-08/",
}
#: the sandbox's own set-up requests carry this header and pass the fault switches
SETUP_HEADER = "x-fleetops-sandbox-setup"
_SETUP_ENVIRON = "HTTP_X_FLEETOPS_SANDBOX_SETUP"
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request")

_active_lock = threading.Lock()
_active: list[AwsSandbox] = []


@dataclass(frozen=True)
class AwsCredentials:
    """An access key pair (plus a session token for assumed roles)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def boto3_kwargs(self) -> dict[str, str | None]:
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "aws_session_token": self.session_token,
        }


# -- EKS bearer tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownKey:
    """What the token checker needs to know about an access key."""

    secret_access_key: str
    arn: str
    session_token: str | None = None


SecretLookup = Callable[[str], KnownKey | None]


@dataclass(frozen=True)
class EksTokenCheck:
    """The outcome of :func:`check_eks_token`: ``username`` (the caller's ARN) or ``reason``."""

    username: str | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.username is not None


def moto_key_lookup(access_key_id: str) -> KnownKey | None:
    """The secret and ARN moto holds for an access key (IAM user key or assumed-role key)."""
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends

    for account_id, account in list(iam_backends.items()):
        for partition, backend in list(account.items()):
            key = backend.access_keys.get(access_key_id)
            if key is None:
                continue
            if key.role_arn:
                sts = sts_backends[account_id][partition]
                for role in list(sts.assumed_roles):
                    if role.access_key_id == access_key_id:
                        return KnownKey(key.secret_access_key, role.arn, role.session_token)
                return None
            user = backend.get_user_from_access_key_id(access_key_id)
            if user is None:
                return None
            return KnownKey(key.secret_access_key, user.arn)
    return None


def check_eks_token(
    token: str,
    *,
    cluster_name: str,
    now: float,
    extra_sts_hosts: Collection[str] = (),
    lookup: SecretLookup = moto_key_lookup,
) -> EksTokenCheck:
    """Verify an EKS IAM bearer token for ``cluster_name`` the way EKS does, without STS.

    The checks of aws-iam-authenticator (``k8s-aws-v1.`` prefix, an https STS host, path ``/``,
    only the expected query parameters, ``Action=GetCallerIdentity``, ``Version=2011-06-15``,
    ``x-k8s-aws-id`` among the signed headers, ``X-Amz-Expires`` at most 900 and the URL not
    expired at ``now``), then what STS itself would do: the access key must exist, an assumed
    role's session token must match, and the SigV4 signature must be the one made with the key's
    secret over the URL and the headers ``host`` and ``x-k8s-aws-id: <cluster_name>``; a token
    signed for another cluster therefore fails. ``extra_sts_hosts`` (``host:port``) are accepted
    as STS hosts too, over http or https (the sandbox's moto endpoint, for clients that presign
    against it).
    """
    if not token.startswith(TOKEN_PREFIX):
        return EksTokenCheck(None, "not a k8s-aws-v1 token")
    encoded = token[len(TOKEN_PREFIX) :]
    try:
        url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return EksTokenCheck(None, "token is not base64 of a URL")
    parts = urlsplit(url)
    extra = parts.netloc in extra_sts_hosts
    if not (extra and parts.scheme in ("http", "https")) and parts.scheme != "https":
        return EksTokenCheck(None, f"unexpected scheme {parts.scheme!r}")
    if not extra and not STS_HOST.match(parts.netloc):
        return EksTokenCheck(None, f"unexpected host {parts.netloc!r}")
    if parts.path != "/":
        return EksTokenCheck(None, f"unexpected path {parts.path!r}")

    raw_pairs = [pair.partition("=")[::2] for pair in parts.query.split("&") if pair]
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        lower = key.lower()
        if lower not in _ALLOWED_QUERY:
            return EksTokenCheck(None, f"unexpected query parameter {key!r}")
        if lower in params:
            return EksTokenCheck(None, f"query parameter {key!r} repeated")
        params[lower] = value

    if params.get("action") != "GetCallerIdentity":
        return EksTokenCheck(None, "Action is not GetCallerIdentity")
    if params.get("version") != "2011-06-15":
        return EksTokenCheck(None, "unexpected Version")
    if params.get("x-amz-algorithm") != "AWS4-HMAC-SHA256":
        return EksTokenCheck(None, "unexpected X-Amz-Algorithm")
    signed_headers = params.get("x-amz-signedheaders", "").split(";")
    if CLUSTER_ID_HEADER not in signed_headers:
        return EksTokenCheck(None, f"{CLUSTER_ID_HEADER} is not signed")
    if set(signed_headers) != {"host", CLUSTER_ID_HEADER}:
        return EksTokenCheck(None, f"unexpected signed headers {signed_headers}")
    try:
        expires = int(params.get("x-amz-expires", ""))
        signed_at = datetime.strptime(params.get("x-amz-date", ""), "%Y%m%dT%H%M%SZ")
    except ValueError:
        return EksTokenCheck(None, "bad X-Amz-Expires or X-Amz-Date")
    if not 0 < expires <= MAX_TOKEN_LIFETIME:
        return EksTokenCheck(None, f"X-Amz-Expires {expires} is out of range")
    issued = signed_at.replace(tzinfo=UTC).timestamp()
    if now > issued + expires:
        return EksTokenCheck(None, "token expired")
    if issued > now + CLOCK_SKEW:
        return EksTokenCheck(None, "token is dated in the future")

    credential = params.get("x-amz-credential", "").split("/")
    if len(credential) != 5 or credential[3] != "sts" or credential[4] != "aws4_request":
        return EksTokenCheck(None, "bad X-Amz-Credential")
    access_key_id, day, region = credential[0], credential[1], credential[2]
    if day != params["x-amz-date"][:8]:
        return EksTokenCheck(None, "credential scope date does not match X-Amz-Date")
    known = lookup(access_key_id)
    if known is None:
        return EksTokenCheck(None, "unknown access key")
    if (
        known.session_token is not None
        and params.get("x-amz-security-token") != known.session_token
    ):
        return EksTokenCheck(None, "security token does not match the access key")

    canonical_query = "&".join(
        f"{k}={v}" for k, v in sorted((k, v) for k, v in raw_pairs if k != "X-Amz-Signature")
    )
    canonical_request = "\n".join(
        [
            "GET",
            "/",
            canonical_query,
            f"host:{parts.netloc}\n{CLUSTER_ID_HEADER}:{' '.join(cluster_name.split())}\n",
            "host;x-k8s-aws-id",
            _EMPTY_SHA256,
        ]
    )
    scope = f"{day}/{region}/sts/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["x-amz-date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    signing_key = f"AWS4{known.secret_access_key}".encode()
    for part in (day, region, "sts", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, params.get("x-amz-signature", "")):
        return EksTokenCheck(None, "signature does not match (another cluster, or a bad secret)")
    return EksTokenCheck(known.arn)


def verify_eks_token(
    token: str,
    *,
    cluster_name: str,
    now: float,
    extra_sts_hosts: Collection[str] = (),
    lookup: SecretLookup = moto_key_lookup,
) -> str | None:
    """The caller's ARN when ``token`` is a valid EKS token for ``cluster_name``, else None."""
    return check_eks_token(
        token, cluster_name=cluster_name, now=now, extra_sts_hosts=extra_sts_hosts, lookup=lookup
    ).username


# -- faults in front of moto --------------------------------------------------------------------


def _service_of(environ: dict[str, Any]) -> str:
    """The AWS service a request is signed for (``eks``, ``route53``, ``sts``, ...)."""
    match = _CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        return str(match.group(1))
    for key, value in parse_qsl(environ.get("QUERY_STRING", "")):
        if key == "X-Amz-Credential":
            pieces = value.split("/")
            if len(pieces) == 5:
                return str(pieces[3])
    return ""


def throttling_response(service: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status line, headers and body of AWS's throttling error for ``service``'s protocol."""
    request_id = str(uuid.uuid4())
    if service in _XML_NAMESPACES:
        body = (
            f'<?xml version="1.0"?>\n<ErrorResponse xmlns="{_XML_NAMESPACES[service]}">'
            "<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>"
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        content_type = "text/xml"
        headers = [("x-amzn-RequestId", request_id)]
    else:  # rest-json / json services (EKS and the rest)
        body = json.dumps({"message": "Rate exceeded"}).encode()
        content_type = "application/json"
        headers = [("x-amzn-RequestId", request_id), ("x-amzn-ErrorType", "ThrottlingException")]
    headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    return "400 Bad Request", headers, body


class _FaultedApp:
    """WSGI middleware: outage, latency and throttling in front of moto's app."""

    def __init__(self, app: Callable[..., Iterable[bytes]], sandbox: AwsSandbox) -> None:
        self._app = app
        self._sandbox = sandbox

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        sandbox = self._sandbox
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path.startswith("/moto-api") or environ.get(_SETUP_ENVIRON) == "1":
            return self._app(environ, start_response)
        faults = sandbox.faults
        if faults.outage:
            sandbox.requests.add(method, path, 0, injected=True)
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            raise ConnectionResetError("the sandbox AWS endpoint is in an outage")
        if faults.latency_seconds > 0:
            time.sleep(faults.latency_seconds)
        if faults.inject_error():
            status, headers, body = throttling_response(_service_of(environ))
            sandbox.requests.add(method, path, 400, injected=True)
            start_response(status, headers)
            return [body]
        seen: list[int] = []

        def recording_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, exc_info)

        result = self._app(environ, recording_start_response)
        sandbox.requests.add(method, path, seen[0] if seen else 0)
        return result


# -- the sandbox ---------------------------------------------------------------------------------


class AwsSandbox:
    """moto on 127.0.0.1 holding EKS clusters and a Route 53 zone; see the module docstring."""

    def __init__(
        self,
        clusters: Iterable[CloudCluster],
        *,
        faults: ProviderFaults | None = None,
        management_account: str = AWS_MANAGEMENT_ACCOUNT,
        hosted_zone: str = HOSTED_ZONE,
        app_hostname: str = APP_HOSTNAME,
        dns_regions: Iterable[str] | None = None,
        port: int = 0,
    ) -> None:
        self.faults = faults if faults is not None else ProviderFaults()
        self.requests = RequestLog()
        self.management_account = _account_id(management_account)
        self.hosted_zone = hosted_zone if hosted_zone.endswith(".") else f"{hosted_zone}."
        self.app_hostname = app_hostname if app_hostname.endswith(".") else f"{app_hostname}."
        self._clusters: dict[str, CloudCluster] = {}
        for cluster in clusters:
            self._check(cluster)
            self._clusters[cluster.id] = cluster
        self._dns_regions = list(dns_regions) if dns_regions is not None else None
        self._port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._server_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._app: _FaultedApp | None = None
        self._credentials: AwsCredentials | None = None
        self._role_credentials: dict[str, AwsCredentials] = {}
        self.hosted_zone_id = ""
        self._session = boto3.session.Session()
        self._setup_clients: dict[tuple[str, str, str | None], Any] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` for every service (``endpoint_url=`` / ``AWS_ENDPOINT_URL``)."""
        if not self._port:
            raise RuntimeError("the AWS sandbox has not been started yet")
        return f"http://{HOST}:{self._port}"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the Host header of requests to the sandbox."""
        return f"{HOST}:{self._port}"

    def start(self) -> None:
        """Reset moto, listen on 127.0.0.1 and seed accounts, clusters and DNS."""
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        with _active_lock:
            if _active:
                raise RuntimeError("moto keeps global state: one AwsSandbox per process at a time")
            _active.append(self)
        try:
            self._reset_moto()
            self._app = _FaultedApp(DomainDispatcherApplication(create_backend_app), self)
            self._listen()
            self._seed()
            if self.faults.outage:
                self._close_listener()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop listening, drop connections and reset moto's state."""
        self._close_listener()
        self._setup_clients.clear()
        self._role_credentials.clear()
        self._credentials = None
        self._app = None
        self._reset_moto()
        with _active_lock:
            if self in _active:
                _active.remove(self)

    def __enter__(self) -> AwsSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def apply_faults(self, **changes: Any) -> dict[str, Any]:
        """Change fault switches (any thread); an outage closes the listener and connections."""
        result = self.faults.update(**changes)
        if self._app is not None:
            if self.faults.outage:
                self._close_listener()
            else:
                self._listen()
        return result

    def _listen(self) -> None:
        with self._server_lock:
            if self._server is not None:
                return
            assert self._app is not None
            sandbox = self

            from moto.moto_server.werkzeug_app import MotoRequestHandler

            class TrackedHandler(MotoRequestHandler):
                def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                    log.debug("%s %s", self.requestline, code)

                def setup(self) -> None:
                    super().setup()
                    # headers and body go out in separate writes; without this, Nagle and
                    # the client's delayed ACK add ~40 ms to every answer with a body
                    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    with sandbox._connections_lock:
                        sandbox._connections.add(self.connection)

                def finish(self) -> None:
                    with sandbox._connections_lock:
                        sandbox._connections.discard(self.connection)
                    super().finish()

            server = make_server(
                HOST, self._port, self._app, threaded=True, request_handler=TrackedHandler
            )
            self._port = server.server_address[1]
            thread = threading.Thread(target=server.serve_forever, name="aws-sandbox", daemon=True)
            thread.start()
            self._server, self._thread = server, thread

    def _close_listener(self) -> None:
        with self._server_lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is not None:
                server.shutdown()
                server.server_close()
            if thread is not None:
                thread.join(5)
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _reset_moto() -> None:
        from moto.core.base_backend import BackendDict

        BackendDict.reset()

    # -- credentials ----------------------------------------------------------------------------

    @property
    def credentials(self) -> AwsCredentials:
        """The ``fleetops`` IAM user's key in the management account (valid after start)."""
        if self._credentials is None:
            raise RuntimeError("the AWS sandbox has not been started yet")
        return self._credentials

    @property
    def accounts(self) -> list[str]:
        """Every account holding EKS clusters, sorted."""
        return sorted({cluster.account for cluster in self._clusters.values()})

    @property
    def regions(self) -> list[str]:
        return sorted({cluster.location for cluster in self._clusters.values()})

    @staticmethod
    def role_arn(account: str) -> str:
        """The role a discovery client assumes in ``account``."""
        return f"arn:aws:iam::{account}:role/{ROLE_NAME}"

    def client(
        self, service: str, *, region: str = "us-east-1", account: str | None = None, **config: Any
    ) -> Any:
        """A boto3 client for the sandbox: management account, or ``account`` via its role."""
        creds = self.credentials if account is None else self.assume_role(account)
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.endpoint_url,
            config=Config(**config) if config else None,
            **creds.boto3_kwargs(),
        )

    def assume_role(self, account: str) -> AwsCredentials:
        """Credentials of ``fleetops-discovery`` in ``account`` (STS AssumeRole through moto)."""
        sts = boto3.client(
            "sts",
            region_name="us-east-1",
            endpoint_url=self.endpoint_url,
            **self.credentials.boto3_kwargs(),
        )
        answer = sts.assume_role(RoleArn=self.role_arn(account), RoleSessionName="fleetops-sandbox")
        creds = answer["Credentials"]
        return AwsCredentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])

    def environment(self) -> dict[str, str]:
        """Settings for ``sandbox.env`` (standard AWS variables; no FLEETOPS_ names invented)."""
        creds = self.credentials
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": creds.access_key_id,
            "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    # -- EKS tokens -----------------------------------------------------------------------------

    def check_eks_token(
        self, token: str, *, cluster_name: str, now: float | None = None
    ) -> EksTokenCheck:
        """:func:`check_eks_token`, also accepting URLs presigned against the moto endpoint."""
        return check_eks_token(
            token,
            cluster_name=cluster_name,
            now=time.time() if now is None else now,
            extra_sts_hosts=(self.host,),
        )

    def verify_eks_token(
        self, token: str, *, cluster_name: str, now: float | None = None
    ) -> str | None:
        return self.check_eks_token(token, cluster_name=cluster_name, now=now).username

    # -- clusters -------------------------------------------------------------------------------

    @property
    def clusters(self) -> list[CloudCluster]:
        return list(self._clusters.values())

    def add_cluster(self, cluster: CloudCluster) -> None:
        """Create (or replace) an EKS cluster for ``cluster`` in its account and region."""
        self._check(cluster)
        if cluster.id in self._clusters and self._credentials is not None:
            self.remove_cluster(cluster.id)
        self._clusters[cluster.id] = cluster
        if self._credentials is not None:
            self._ensure_role(cluster.account)
            self._create_cluster(cluster)

    def remove_cluster(self, cluster_id: str) -> None:
        """Delete the EKS cluster with this id (KeyError if unknown)."""
        cluster = self._clusters.pop(cluster_id)
        if self._credentials is not None:
            eks = self._bypass_client("eks", cluster.location, cluster.account)
            eks.delete_cluster(name=cluster.name)

    @staticmethod
    def _check(cluster: CloudCluster) -> None:
        if cluster.provider != "eks":
            raise ValueError(f"{cluster.id} is not an EKS cluster")
        _account_id(cluster.account)

    # -- seeding --------------------------------------------------------------------------------

    def _seed(self) -> None:
        iam = self._session.client(
            "iam",
            region_name="us-east-1",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            config=Config(retries={"mode": "standard", "max_attempts": 1}),
        )
        # moto's x-moto-account-id header picks the account for this one bootstrap call; from
        # then on the user's own key identifies the management account, as on AWS.
        iam_mgmt = _add_headers(
            iam, {SETUP_HEADER: "1", "x-moto-account-id": self.management_account}
        )
        iam_mgmt.create_user(UserName=USER_NAME, Tags=[{"Key": "purpose", "Value": "fleetops"}])
        key = iam_mgmt.create_access_key(UserName=USER_NAME)["AccessKey"]
        self._credentials = AwsCredentials(key["AccessKeyId"], key["SecretAccessKey"])
        for account in self.accounts:
            self._ensure_role(account)
        for cluster in self._clusters.values():
            self._create_cluster(cluster)
        self._create_dns()

    def _ensure_role(self, account: str) -> None:
        if account in self._role_credentials:
            return
        iam = self._session.client(
            "iam",
            region_name="us-east-1",
            endpoint_url=self.endpoint_url,
            config=Config(retries={"mode": "standard", "max_attempts": 1}),
            **self.credentials.boto3_kwargs(),
        )
        _add_headers(iam, {SETUP_HEADER: "1", "x-moto-account-id": account})
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {
                        "AWS": f"arn:aws:iam::{self.management_account}:user/{USER_NAME}"
                    },
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(
            RoleName=ROLE_NAME,
            PolicyName="eks-discovery",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": ["eks:ListClusters", "eks:DescribeCluster"],
                            "Resource": "*",
                        }
                    ],
                }
            ),
        )
        self._role_credentials[account] = self._assume_bypassing(account)

    def _assume_bypassing(self, account: str) -> AwsCredentials:
        sts = self._bypass_client("sts", "us-east-1", None)
        answer = sts.assume_role(
            RoleArn=self.role_arn(account), RoleSessionName="fleetops-sandbox-seed"
        )
        creds = answer["Credentials"]
        return AwsCredentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])

    def _bypass_client(self, service: str, region: str, account: str | None) -> Any:
        """A client for the sandbox's own set-up (cached; never retried)."""
        key = (service, region, account)
        client = self._setup_clients.get(key)
        if client is None:
            creds = self.credentials if account is None else self._role_credentials[account]
            client = self._session.client(
                service,
                region_name=region,
                endpoint_url=self.endpoint_url,
                config=Config(retries={"mode": "standard", "max_attempts": 1}),
                **creds.boto3_kwargs(),
            )
            _add_headers(client, {SETUP_HEADER: "1"})
            self._setup_clients[key] = client
        return client

    def _create_cluster(self, cluster: CloudCluster) -> None:
        """Put the cluster into moto's EKS store for its account and region.

        Written to moto's model directly rather than through ``CreateCluster``: moto validates the
        role ARN by building a botocore session on every call (~60 ms), which a thousand-cluster
        sandbox cannot afford. What the API then answers is moto's own rendering of the model.
        """
        from moto.eks.models import Cluster, eks_backends

        backend = eks_backends[cluster.account][cluster.location]
        if cluster.name in backend.clusters:
            raise ValueError(
                f"EKS cluster {cluster.name!r} already exists in {cluster.account}/{cluster.location}"
            )
        stored = Cluster(
            name=cluster.name,
            role_arn=f"arn:aws:iam::{cluster.account}:role/eks-cluster-role",
            resources_vpc_config={
                "subnetIds": [],
                "securityGroupIds": [],
                "endpointPublicAccess": True,
                "endpointPrivateAccess": False,
                "publicAccessCidrs": ["0.0.0.0/0"],
            },
            account_id=cluster.account,
            region_name=cluster.location,
            aws_partition="aws",
            version=cluster.minor_version,
            tags=dict(cluster.labels),
        )
        stored.endpoint = cluster.endpoint
        stored.certificate_authority = {"data": cluster.ca_base64}
        stored.status = EKS_STATUS[cluster.status]
        backend.clusters[cluster.name] = stored
        backend.cluster_count += 1

    def _create_dns(self) -> None:
        route53 = self._bypass_client("route53", "us-east-1", None)
        zone = route53.create_hosted_zone(
            Name=self.hosted_zone,
            CallerReference=f"fleetops-sandbox-{uuid.uuid4()}",
            HostedZoneConfig={"Comment": "fleetops sandbox", "PrivateZone": False},
        )
        self.hosted_zone_id = zone["HostedZone"]["Id"].split("/")[-1]
        regions = self._dns_regions if self._dns_regions is not None else self.regions
        changes = [
            {
                "Action": "UPSERT",
                "ResourceRecordSet": {
                    "Name": self.app_hostname,
                    "Type": "A",
                    "SetIdentifier": region,
                    "Weight": 100,
                    "TTL": 60,
                    "ResourceRecords": [{"Value": HOST}],
                },
            }
            for region in regions
        ]
        if changes:
            route53.change_resource_record_sets(
                HostedZoneId=self.hosted_zone_id,
                ChangeBatch={
                    "Comment": "demo app, one weighted record per region",
                    "Changes": changes,
                },
            )


def eks_authenticator(
    aws: AwsSandbox,
    *,
    cluster_name: str,
    fallback: Callable[[str | None], Any],
    groups: tuple[str, ...] = ("system:masters", "system:authenticated"),
) -> Callable[[str | None], Any]:
    """A sandbox-cluster authenticator that also accepts EKS tokens for ``cluster_name``.

    ``k8s-aws-v1.`` tokens are checked with :meth:`AwsSandbox.check_eks_token` (401 when they
    fail, authenticated as the caller's ARN when they pass); any other token goes to
    ``fallback`` (the fleet's own token check). Real EKS maps the ARN to Kubernetes groups with
    access entries or the aws-auth ConfigMap; the sandbox grants ``groups`` to every valid ARN.
    """
    from sandbox.kube.cluster import AuthResult

    def authenticate(token: str | None) -> Any:
        if token and token.startswith(TOKEN_PREFIX):
            arn = aws.verify_eks_token(token, cluster_name=cluster_name)
            if arn is None:
                return AuthResult(ok=False, status=401)
            return AuthResult(ok=True, status=200, username=arn, groups=groups)
        return fallback(token)

    return authenticate


def _add_headers(client: Any, headers: dict[str, str]) -> Any:
    """Add headers to every request of a set-up client (``x-moto-account-id`` picks moto's
    account for an IAM call; the set-up header lets the request pass the fault switches)."""

    def add(request: Any, **kwargs: Any) -> None:
        for name, value in headers.items():
            request.headers[name] = value

    client.meta.events.register("before-sign.*.*", add)
    return client


def _account_id(account: str) -> str:
    if not re.fullmatch(r"\d{12}", account):
        raise ValueError(f"an AWS account id is 12 digits, got {account!r}")
    return account
