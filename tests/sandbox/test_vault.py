"""The sandbox Vault (the real OpenBao server) driven by hvac, and service-account tokens.

One bao dev server serves the whole module (start-up is about a quarter of a second); tests
that switch a fault put it back in a ``finally``. The Kubernetes auth method talks to a sandbox
cluster served over HTTPS with its own CA, exactly as it would talk to a real apiserver.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import jwt
import pytest
import requests
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.kube.certs import ClusterCerts, issue_cluster_certs
from sandbox.kube.cluster import ADMIN, UNAUTHORIZED, AuthResult, ClusterSpec, SandboxCluster
from sandbox.kube.satokens import DEFAULT_ISSUER, LEEWAY_SECONDS, ServiceAccountIssuer
from sandbox.vault import (
    KubernetesAuthTarget,
    VaultFaultsError,
    VaultSeed,
    VaultServer,
    default_faults,
)
from tests.support.hosting import host_app

NOW = 1_800_000_000.0
NAMESPACE, ACCOUNT = "fleetops", "fleetops"

# -- service-account tokens ---------------------------------------------------------------


def _claims(token: str) -> tuple[dict, dict]:
    head, body, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(head))), json.loads(
        base64.urlsafe_b64decode(pad(body))
    )


@pytest.fixture(scope="module")
def issuer() -> ServiceAccountIssuer:
    return ServiceAccountIssuer("eks-prod-use1")


def test_a_minted_token_is_a_bound_service_account_token(issuer: ServiceAccountIssuer) -> None:
    token = issuer.mint(NAMESPACE, ACCOUNT, now=NOW, expiration_seconds=3600)
    # an independent JWT library checks the RS256 signature, issuer, audience and times
    claims = jwt.decode(
        token,
        issuer.public_key_pem(),
        algorithms=["RS256"],
        audience=DEFAULT_ISSUER,
        issuer=DEFAULT_ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    header, _ = _claims(token)
    assert header == {"alg": "RS256", "kid": issuer.key_id}
    uid = issuer.service_account_uid(NAMESPACE, ACCOUNT)
    assert claims["sub"] == "system:serviceaccount:fleetops:fleetops"
    assert claims["aud"] == [DEFAULT_ISSUER]
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (NOW, NOW, NOW + 3600)
    assert claims["kubernetes.io"] == {
        "namespace": NAMESPACE,
        "serviceaccount": {"name": ACCOUNT, "uid": uid},
    }
    assert claims["jti"]
    assert not any(k.startswith("kubernetes.io/") for k in claims)  # bound tokens have none
    legacy = _claims(issuer.mint(NAMESPACE, ACCOUNT, now=NOW, legacy_claims=True))[1]
    assert legacy["kubernetes.io/serviceaccount/namespace"] == NAMESPACE
    assert legacy["kubernetes.io/serviceaccount/service-account.name"] == ACCOUNT
    assert legacy["kubernetes.io/serviceaccount/service-account.uid"] == uid


def test_verify_names_the_service_account_and_its_groups(issuer: ServiceAccountIssuer) -> None:
    token = issuer.mint("apps", "hello", now=NOW)
    assert issuer.verify(token, now=NOW + 10) == (
        "system:serviceaccount:apps:hello",
        ("system:serviceaccounts", "system:serviceaccounts:apps", "system:authenticated"),
    )
    user = issuer.authenticate(token, now=NOW)
    assert user is not None
    assert user.uid == issuer.service_account_uid("apps", "hello")
    # uids are stable per cluster and differ between clusters
    assert user.uid == ServiceAccountIssuer("eks-prod-use1").service_account_uid("apps", "hello")
    assert user.uid != ServiceAccountIssuer("gke-b").service_account_uid("apps", "hello")


def test_verify_refuses_what_an_apiserver_refuses(issuer: ServiceAccountIssuer) -> None:
    token = issuer.mint(NAMESPACE, ACCOUNT, now=NOW, expiration_seconds=600)
    head, body, sig = token.split(".")
    _, claims = _claims(token)
    forged = dict(claims, sub="system:serviceaccount:kube-system:admin")
    forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    other_cluster = ServiceAccountIssuer("gke-europe-b").mint(NAMESPACE, ACCOUNT, now=NOW)
    same_issuer_url_other_key = ServiceAccountIssuer("eks-prod-use1").mint(
        NAMESPACE, ACCOUNT, now=NOW
    )
    refused = {
        "none": None,
        "empty": "",
        "garbage": "not-a-jwt",
        "tampered": f"{head}.{forged_body}.{sig}",
        "unsigned": f"{head}.{body}.",
        "other cluster": other_cluster,
        "same issuer, other key": same_issuer_url_other_key,
        "other audience": issuer.mint(NAMESPACE, ACCOUNT, now=NOW, audiences=["vault"]),
    }
    for label, bad in refused.items():
        assert issuer.verify(bad, now=NOW) is None, label
    # expiry with the apiserver's one-minute leeway
    assert issuer.verify(token, now=NOW + 600 + LEEWAY_SECONDS) is not None
    assert issuer.verify(token, now=NOW + 600 + LEEWAY_SECONDS + 1) is None
    assert issuer.verify(token, now=NOW - LEEWAY_SECONDS - 1) is None  # not yet valid


def test_an_ec_key_gives_es256_tokens_and_a_jwks(issuer: ServiceAccountIssuer) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    es = ServiceAccountIssuer("aks-west", key=key, issuer="https://oidc.sandbox/aks-west")
    token = es.mint("apps", "hello", now=NOW)
    assert es.algorithm == "ES256"
    assert es.verify(token, now=NOW) is not None
    for source in (es, issuer):
        minted = source.mint("apps", "hello", now=NOW)
        [jwk] = source.jwks()["keys"]
        decoded = jwt.decode(
            minted,
            jwt.PyJWK(jwk).key,
            algorithms=[jwk["alg"]],
            audience=source.issuer,
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
        assert decoded["sub"] == "system:serviceaccount:apps:hello"
        assert jwk["kid"] == _claims(minted)[0]["kid"]


def test_mint_keeps_the_token_request_minimum_lifetime(issuer: ServiceAccountIssuer) -> None:
    with pytest.raises(ValueError, match="600"):
        issuer.mint(NAMESPACE, ACCOUNT, expiration_seconds=60)
    with pytest.raises(ValueError, match="RSA or an EC P-256"):
        ServiceAccountIssuer(
            "x",
            key=ec.generate_private_key(ec.SECP384R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ).mint("a", "b")


# -- a sandbox cluster answering TokenReview ------------------------------------------------


@dataclass(frozen=True)
class HostedCluster:
    url: str
    spec: ClusterSpec
    certs: ClusterCerts
    issuer: ServiceAccountIssuer


def _authenticator(spec: ClusterSpec, issuer: ServiceAccountIssuer):
    """The cluster admin's token, or any service-account token this cluster issued."""

    def authenticate(token: str | None) -> AuthResult:
        if token is not None and token == spec.token:
            return ADMIN
        user = issuer.authenticate(token)
        if user is None:
            return UNAUTHORIZED
        return AuthResult(True, 200, user.username, user.groups, uid=user.uid)

    return authenticate


@pytest.fixture(scope="module")
def cluster() -> Iterator[HostedCluster]:
    spec = ClusterSpec(name="eks-prod-use1", token="sandbox-admin-eks-prod-use1")
    issuer = ServiceAccountIssuer(spec.name)
    certs = issue_cluster_certs(spec.name)
    sandbox = SandboxCluster(spec, authenticator=_authenticator(spec, issuer))
    url, stop = host_app(sandbox.app(), ssl_context=certs.server_context())
    yield HostedCluster(url=url, spec=spec, certs=certs, issuer=issuer)
    stop()


@pytest.fixture(scope="module")
def vault(
    tmp_path_factory: pytest.TempPathFactory, cluster: HostedCluster
) -> Iterator[VaultServer]:
    server = VaultServer(tmp_path_factory.mktemp("vault"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def seed(vault: VaultServer, cluster: HostedCluster) -> VaultSeed:
    return vault.seed(
        custom_metadata={"rotation": "every-30d"},
        kubernetes=KubernetesAuthTarget(
            host=cluster.url,
            ca_pem=cluster.certs.ca_pem.decode(),
            namespace=NAMESPACE,
            service_account=ACCOUNT,
            token_reviewer_jwt=cluster.spec.token,
        ),
    )


def _anonymous(vault: VaultServer) -> hvac.Client:
    session = requests.Session()
    session.trust_env = False
    client = hvac.Client(url=vault.addr, session=session)
    client.token = None  # not VAULT_TOKEN nor ~/.vault-token of whoever runs the tests
    return client


def _approle(vault: VaultServer, seed: VaultSeed) -> hvac.Client:
    client = _anonymous(vault)
    client.auth.approle.login(role_id=seed.role_id, secret_id=seed.secret_id)
    return client


def _read(client: hvac.Client, path: str, **kw) -> dict:
    return client.secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True, **kw
    )["data"]


# -- the server process ---------------------------------------------------------------------


def test_bao_runs_on_loopback_with_its_own_home_and_a_clean_environment(
    vault: VaultServer,
) -> None:
    assert vault.started_in is not None
    assert vault.started_in < 10
    assert vault.addr.startswith("http://127.0.0.1:")
    assert vault.backend_addr is not None
    assert vault.backend_addr.startswith("http://127.0.0.1:")
    environ = Path(f"/proc/{vault.pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert not {n for n in names if n.startswith(("VAULT_", "BAO_"))}
    assert f"HOME={vault.workdir}".encode() in environ
    assert not (vault.workdir / ".vault-token").exists()
    assert vault.client().auth.token.lookup_self()["data"]["policies"] == ["root"]


def test_seed_reports_what_it_made_without_printing_the_secret_id(
    vault: VaultServer, seed: VaultSeed
) -> None:
    assert seed.addr == vault.addr
    assert seed.paths == ("fleetops/hello", "fleetops/hello-db")
    assert seed.secret_id
    assert seed.secret_id not in repr(seed)
    assert seed.role_id in repr(seed)
    assert seed.env()["FLEETOPS_VAULT_SECRET_ID"] == seed.secret_id
    assert (seed.kubernetes_mount, seed.kubernetes_role) == ("kubernetes", "fleetops")
    metadata = vault.client().secrets.kv.v2.read_secret_metadata(
        path="fleetops/hello", mount_point="secret"
    )["data"]
    assert metadata["max_versions"] == 20
    assert metadata["custom_metadata"] == {
        "owner": "platform",
        "managed-by": "fleetops-sandbox",
        "rotation": "every-30d",
    }
    mount_config = vault.client().secrets.kv.v2.read_configuration(mount_point="secret")["data"]
    assert mount_config["max_versions"] == 20


# -- KV v2 through AppRole ------------------------------------------------------------------


def test_kv_v2_check_and_set_and_versions(vault: VaultServer, seed: VaultSeed) -> None:
    app = _approle(vault, seed)
    kv = app.secrets.kv.v2
    path = "fleetops/cas-demo"
    kv.create_or_update_secret(path=path, secret={"password": "v1"}, cas=0, mount_point="secret")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set"):
        kv.create_or_update_secret(path=path, secret={"password": "x"}, cas=0, mount_point="secret")
    kv.create_or_update_secret(path=path, secret={"password": "v2"}, cas=1, mount_point="secret")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set"):
        kv.create_or_update_secret(
            path=path, secret={"password": "stale"}, cas=1, mount_point="secret"
        )

    current = _read(app, path)
    assert current["data"] == {"password": "v2"}
    assert current["metadata"]["version"] == 2
    assert _read(app, path, version=1)["data"] == {"password": "v1"}
    metadata = kv.read_secret_metadata(path=path, mount_point="secret")["data"]
    assert metadata["current_version"] == 2
    assert set(metadata["versions"]) == {"1", "2"}
    assert metadata["max_versions"] == 0  # a key made later takes the mount's 20 (0 = inherit)
    kv.update_metadata(path=path, custom_metadata={"rotated-by": "fleetops"}, mount_point="secret")
    assert kv.read_secret_metadata(path=path, mount_point="secret")["data"]["custom_metadata"] == {
        "rotated-by": "fleetops"
    }


def test_approle_policy_reaches_the_seeded_paths_and_nothing_else(
    vault: VaultServer, seed: VaultSeed
) -> None:
    app = _approle(vault, seed)
    looked_up = app.auth.token.lookup_self()["data"]
    assert looked_up["policies"] == ["default", "fleetops"]
    assert looked_up["meta"] == {"role_name": "fleetops"}
    seeded = _read(app, "fleetops/hello")["data"]
    assert set(seeded) == {"username", "password", "api-key"}
    listed = app.secrets.kv.v2.list_secrets(path="fleetops", mount_point="secret")["data"]["keys"]
    assert {"hello", "hello-db"} <= set(listed)

    vault.client().secrets.kv.v2.create_or_update_secret(
        path="payments/db", secret={"password": "not yours"}, mount_point="secret"
    )
    with pytest.raises(hvac.exceptions.Forbidden):
        _read(app, "payments/db")
    with pytest.raises(hvac.exceptions.Forbidden):
        app.secrets.kv.v2.create_or_update_secret(
            path="payments/db", secret={"x": "y"}, mount_point="secret"
        )
    with pytest.raises(hvac.exceptions.Forbidden):  # no permanent deletion of history
        app.secrets.kv.v2.delete_metadata_and_all_versions(
            path="fleetops/hello", mount_point="secret"
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        app.sys.list_mounted_secrets_engines()
    assert _read(vault.client(), "payments/db")["data"] == {"password": "not yours"}


def test_approle_login_with_a_wrong_secret_id_fails(vault: VaultServer, seed: VaultSeed) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid"):
        _anonymous(vault).auth.approle.login(role_id=seed.role_id, secret_id="not-the-secret-id")


# -- Kubernetes auth ------------------------------------------------------------------------


def test_kubernetes_login_through_the_sandbox_clusters_token_review(
    vault: VaultServer, seed: VaultSeed, cluster: HostedCluster
) -> None:
    client = _anonymous(vault)
    token = cluster.issuer.mint(NAMESPACE, ACCOUNT)
    login = client.auth.kubernetes.login(role="fleetops", jwt=token)
    assert login["auth"]["policies"] == ["default", "fleetops"]
    assert login["auth"]["metadata"]["service_account_uid"] == cluster.issuer.service_account_uid(
        NAMESPACE, ACCOUNT
    )
    assert set(_read(client, "fleetops/hello")["data"]) == {"username", "password", "api-key"}


def test_kubernetes_login_refuses_another_clusters_token_and_unbound_accounts(
    vault: VaultServer, seed: VaultSeed, cluster: HostedCluster
) -> None:
    client = _anonymous(vault)
    foreign = ServiceAccountIssuer("gke-europe-b").mint(NAMESPACE, ACCOUNT)
    # bound names match, so bao asks the cluster's TokenReview, which does not know the token
    with pytest.raises(hvac.exceptions.Forbidden, match="permission denied"):
        client.auth.kubernetes.login(role="fleetops", jwt=foreign)
    unbound = cluster.issuer.mint("kube-system", "default")
    with pytest.raises(hvac.exceptions.Forbidden, match="service account name not authorized"):
        client.auth.kubernetes.login(role="fleetops", jwt=unbound)
    assert client.token is None


def _reference_token_review(issuer: ServiceAccountIssuer, reviewer: str) -> web.Application:
    """TokenReview as kube-apiserver answers it (status.user with uid), nothing more."""

    async def review(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {reviewer}":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        spec = (await request.json())["spec"]
        user = issuer.authenticate(spec.get("token"))
        status: dict = {"user": {}, "error": "invalid bearer token"}
        if user is not None:
            status = {
                "authenticated": True,
                "user": {"username": user.username, "uid": user.uid, "groups": list(user.groups)},
                "audiences": list(user.audiences),
            }
        body = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": spec}
        return web.json_response({**body, "status": status}, status=201)

    app = web.Application()
    app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", review)
    return app


def test_kubernetes_login_end_to_end_against_a_uid_reporting_token_review(
    vault: VaultServer, seed: VaultSeed
) -> None:
    issuer = ServiceAccountIssuer("aks-westeurope")
    certs = issue_cluster_certs("aks-westeurope")
    url, stop = host_app(
        _reference_token_review(issuer, "reviewer-token"), ssl_context=certs.server_context()
    )
    root = vault.client()
    try:
        root.sys.enable_auth_method("kubernetes", path="kubernetes-aks")
        root.auth.kubernetes.configure(
            kubernetes_host=url,
            kubernetes_ca_cert=certs.ca_pem.decode(),
            token_reviewer_jwt="reviewer-token",
            disable_local_ca_jwt=True,
            mount_point="kubernetes-aks",
        )
        root.auth.kubernetes.create_role(
            name="fleetops",
            bound_service_account_names=[ACCOUNT],
            bound_service_account_namespaces=[NAMESPACE],
            policies=[seed.policy],
            mount_point="kubernetes-aks",
        )
        client = _anonymous(vault)
        login = client.auth.kubernetes.login(
            role="fleetops", jwt=issuer.mint(NAMESPACE, ACCOUNT), mount_point="kubernetes-aks"
        )
        assert login["auth"]["policies"] == ["default", "fleetops"]
        assert login["auth"]["metadata"]["service_account_namespace"] == NAMESPACE
        assert _read(client, "fleetops/hello-db")["data"]["username"] == "hello"
        with pytest.raises(hvac.exceptions.Forbidden):
            _read(client, "payments/db")
        with pytest.raises(hvac.exceptions.Forbidden):
            _anonymous(vault).auth.kubernetes.login(
                role="fleetops",
                jwt=ServiceAccountIssuer("eks-prod-use1").mint(NAMESPACE, ACCOUNT),
                mount_point="kubernetes-aks",
            )
    finally:
        root.sys.disable_auth_method(path="kubernetes-aks")
        stop()


# -- faults -----------------------------------------------------------------------------------


def test_outage_refuses_connections_and_lifting_it_keeps_every_secret(
    vault: VaultServer, seed: VaultSeed
) -> None:
    app = _approle(vault, seed)
    before = _read(app, "fleetops/hello")
    try:
        vault.set_outage(True)
        assert vault.faults() == default_faults() | {"outage": True}
        with pytest.raises(requests.exceptions.ConnectionError, match="Connection refused"):
            _read(app, "fleetops/hello")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(vault.addr.rsplit(":", 1)[1])), timeout=2)
    finally:
        vault.set_outage(False)
    assert _read(app, "fleetops/hello") == before  # same token, same data, same version


def test_sealed_vault_answers_503_and_unseal_recovers(vault: VaultServer, seed: VaultSeed) -> None:
    app = _approle(vault, seed)
    try:
        vault.update_faults(sealed=True)
        assert vault.sealed
        assert vault.faults()["sealed"] is True
        with pytest.raises(hvac.exceptions.VaultDown):
            _read(app, "fleetops/hello")
        assert app.sys.read_seal_status()["sealed"] is True
    finally:
        vault.update_faults(sealed=False)
    assert not vault.sealed
    assert _read(app, "fleetops/hello")["metadata"]["version"] >= 1


def test_fault_switches_are_validated(vault: VaultServer) -> None:
    with pytest.raises(ValueError, match="unknown"):
        vault.update_faults(stopped=True)
    with pytest.raises(ValueError, match="true or false"):
        vault.update_faults(outage="yes")
    for changes, field in [
        ({"latency_seconds": -1}, "latency_seconds"),
        ({"latency_seconds": float("nan")}, "latency_seconds"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_rate": True}, "error_rate"),
        ({"error_code": 504}, "error_code"),
        ({"retry_after_seconds": 1.5}, "retry_after_seconds"),
        # a bad field anywhere applies nothing, not even the good ones before it
        ({"error_rate": 1.0, "error_code": 418}, "error_code"),
    ]:
        with pytest.raises(VaultFaultsError) as caught:
            vault.update_faults(**changes)
        assert caught.value.field == field
    assert vault.faults() == default_faults()


def test_latency_is_added_to_every_request_on_a_kept_alive_connection(
    vault: VaultServer, seed: VaultSeed
) -> None:
    app = _approle(vault, seed)
    _read(app, "fleetops/hello")  # the connection is open and kept alive from here on
    began = time.monotonic()
    _read(app, "fleetops/hello")
    baseline = time.monotonic() - began
    try:
        assert vault.update_faults(latency_seconds=0.4)["latency_seconds"] == 0.4
        began = time.monotonic()
        for _ in range(2):
            _read(app, "fleetops/hello")
        assert time.monotonic() - began >= 0.8
    finally:
        vault.reset_faults()
    began = time.monotonic()
    _read(app, "fleetops/hello")
    assert time.monotonic() - began < baseline + 0.3


@pytest.mark.parametrize(
    ("code", "exception", "message"),
    [
        (503, hvac.exceptions.VaultDown, "Vault is in standby mode"),
        (500, hvac.exceptions.InternalServerError, "internal error"),
        (
            429,
            hvac.exceptions.RateLimitExceeded,
            'request path "secret/data/fleetops/hello": rate limit quota exceeded',
        ),
    ],
)
def test_error_rate_answers_in_vaults_own_error_shape(
    vault: VaultServer,
    seed: VaultSeed,
    code: int,
    exception: type[hvac.exceptions.VaultError],
    message: str,
) -> None:
    app = _approle(vault, seed)
    before = _read(app, "fleetops/hello")
    try:
        vault.update_faults(error_rate=1.0, error_code=code, retry_after_seconds=2)
        for _ in range(3):  # every request, on the same kept-alive connection
            with pytest.raises(exception) as caught:
                _read(app, "fleetops/hello")
            assert caught.value.errors == [message]
        raw = app.adapter.get(
            "/v1/secret/data/fleetops/hello", raise_exception=False
        )  # the wire answer itself
        assert raw.status_code == code
        assert raw.headers["Content-Type"] == "application/json"
        assert raw.json() == {"errors": [message]}
        assert raw.headers.get("Retry-After") == ("2" if code == 429 else None)
    finally:
        vault.reset_faults()
    assert vault.faults() == default_faults()
    assert _read(app, "fleetops/hello") == before  # the same token works again


def test_error_rate_draws_from_the_injected_random_source(tmp_path: Path) -> None:
    draws = random.Random(7)
    expected = [draws.random() >= 0.5 for _ in range(12)]  # True: served by bao
    assert True in expected
    assert False in expected
    with VaultServer(tmp_path / "vault", rng=random.Random(7)) as server:
        server.update_faults(error_rate=0.5, error_code=503)
        client = server.client()
        answers = []
        for _ in range(12):
            try:
                client.sys.read_seal_status()
                answers.append(True)
            except hvac.exceptions.VaultDown:
                answers.append(False)
    assert answers == expected


def test_stop_leaves_nothing_behind_and_start_gives_a_fresh_server(tmp_path: Path) -> None:
    server = VaultServer(tmp_path / "vault", root_token="sandbox-root-restart")
    try:
        server.start()
        addr, pid, backend = server.addr, server.pid, server.backend_addr
        assert pid is not None
        assert backend is not None
        server.client().secrets.kv.v2.create_or_update_secret(
            path="fleetops/x", secret={"a": "1"}, mount_point="secret"
        )
        began = time.monotonic()
        server.stop()
        stopped_in = time.monotonic() - began
        assert not Path(f"/proc/{pid}").exists()
        backend_port = int(backend.rsplit(":", 1)[1])
        for port in (backend_port, backend_port + 1):  # API and cluster ports are free again
            with socket.socket() as probe:
                # SO_REUSEADDR, as servers bind: TIME_WAIT is fine, a live listener is not
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))
        with pytest.raises(requests.exceptions.ConnectionError):
            server.client().sys.read_health_status(method="GET")

        server.start()
        assert server.addr == addr
        assert server.pid != pid
        with pytest.raises(hvac.exceptions.InvalidPath):  # dev mode: a restart starts empty
            _read(server.client(), "fleetops/x")
        assert server.client().auth.token.lookup_self()["data"]["id"] == "sandbox-root-restart"
    finally:
        server.close()
    assert not server.running
    assert stopped_in < 10


def test_the_sandbox_cluster_serves_token_review_to_its_admin(
    cluster: HostedCluster, tmp_path: Path
) -> None:
    """The cluster side of the login: what bao asks and what the sandbox answers."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(cluster.certs.ca_pem)
    token = cluster.issuer.mint(NAMESPACE, ACCOUNT)
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }
    response = requests.post(
        f"{cluster.url}/apis/authentication.k8s.io/v1/tokenreviews",
        json=body,
        headers={"Authorization": f"Bearer {cluster.spec.token}"},
        verify=str(ca_file),
        timeout=10,
    )
    assert response.status_code == 201
    status = response.json()["status"]
    assert status["authenticated"] is True
    assert status["user"]["username"] == "system:serviceaccount:fleetops:fleetops"
