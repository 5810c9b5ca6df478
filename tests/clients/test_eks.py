"""EKS discovery and IAM tokens: boto3 against the sandbox's moto server, probes against a
sandbox cluster that authenticates EKS tokens the way EKS does."""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from fleetops.clients.eks import (
    AwsSessions,
    EksDiscovery,
    EksTokens,
    botocore_config,
    eks_token,
)
from fleetops.clients.kube import probe
from fleetops.domain.cluster import AuthMethod, Provider
from fleetops.domain.sources import EksAccount, EksSourceConfig
from fleetops.errors import AuthError, ConfigError, RateLimited, Unreachable
from fleetops.settings import AwsSettings, EksSettings
from sandbox.clouds.aws import AwsSandbox, eks_authenticator
from sandbox.clouds.common import AWS_MANAGEMENT_ACCOUNT, CloudCluster
from sandbox.fleet import Fleet
from sandbox.kube.cluster import ClusterSpec, SandboxCluster
from tests.support.clouds import ACCOUNT_A, ACCOUNT_B, CA_PEM, cloud_cluster, fleet_member

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
PAGE = 3


def _cluster(account: str, region: str, name: str, port: int, **kw: Any) -> CloudCluster:
    return cloud_cluster("eks", account, region, name, port, kubernetes_version="v1.30.6", **kw)


# 2 accounts x 3 regions; us-east-1 of account A holds more clusters than one page.
CLUSTERS = [
    *(
        _cluster(ACCOUNT_A, "us-east-1", f"web-{i:02d}", 21000 + i, labels={"env": "prod"})
        for i in range(7)
    ),
    _cluster(
        ACCOUNT_A,
        "us-west-2",
        "data-usw2",
        21010,
        labels={"Cost Center": "Platform Eng", "team/owner": "data", "fleetops.io/region": "x"},
    ),
    _cluster(ACCOUNT_A, "eu-west-1", "data-euw1", 21011, status="DEGRADED"),
    _cluster(ACCOUNT_B, "us-east-1", "dev-use1", 21012, labels={"env": "dev"}),
    _cluster(ACCOUNT_B, "us-west-2", "dev-usw2", 21013),
    _cluster(AWS_MANAGEMENT_ACCOUNT, "us-east-1", "mgmt", 21014),
]


@pytest.fixture(scope="module")
def aws_module() -> Iterator[AwsSandbox]:
    with AwsSandbox(CLUSTERS) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def eks_fleet(aws_module: AwsSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One sandbox cluster that accepts EKS tokens for its own name, published in account B."""

    def eks_cluster(spec: ClusterSpec, *, faults: Any, authenticator: Any) -> SandboxCluster:
        auth = eks_authenticator(aws_module, cluster_name=spec.name, fallback=authenticator)
        return SandboxCluster(spec, faults=faults, authenticator=auth)

    with Fleet(
        1,
        directory=tmp_path_factory.mktemp("eks-fleet"),
        rollout_seconds=0.3,
        prefix="eks",
        cluster_factory=eks_cluster,
    ) as fleet:
        name = fleet.names[0]
        published = fleet_member(fleet, name, "eks", ACCOUNT_B, "eu-west-1")
        aws_module.add_cluster(published)
        yield fleet
        aws_module.remove_cluster(published.id)


@pytest.fixture
def aws(aws_module: AwsSandbox, eks_fleet: Fleet) -> Iterator[AwsSandbox]:
    aws_module.requests.clear()
    yield aws_module
    aws_module.apply_faults(latency_seconds=0.0, error_rate=0.0, outage=False)


def _base_session(aws: AwsSandbox) -> boto3.Session:
    """The ambient credentials: the management account's IAM user."""
    return boto3.Session(**aws.credentials.boto3_kwargs())


def _settings(aws: AwsSandbox, **aws_kw: Any) -> AwsSettings:
    values: dict[str, Any] = {"endpoint_url": aws.endpoint_url, "retry_mode": "standard"}
    values.update(aws_kw)
    return AwsSettings(**values)


def _discovery(
    aws: AwsSandbox, *, accounts: list[str] | None = None, **aws_kw: Any
) -> EksDiscovery:
    roles = accounts or [aws.role_arn(ACCOUNT_A), aws.role_arn(ACCOUNT_B)]
    return EksDiscovery.from_settings(
        _settings(aws, **aws_kw),
        EksSettings(accounts=roles, regions=REGIONS, page_size=PAGE),  # type: ignore[arg-type]
        base_session=_base_session(aws),
    )


def _expected(aws: AwsSandbox, accounts: tuple[str, ...]) -> set[str]:
    return {c.id for c in aws.clusters if c.account in accounts and c.location in REGIONS}


def test_discovers_every_account_and_region_through_every_page(aws: AwsSandbox) -> None:
    result = _discovery(aws).discover()

    assert result.name == "eks"
    assert result.provider is Provider.EKS
    assert result.accounts == (ACCOUNT_A, ACCOUNT_B)
    assert {c.id for c in result.clusters} == _expected(aws, (ACCOUNT_A, ACCOUNT_B))
    assert len(result.clusters) == 12
    # list_clusters paged at maxResults=3: account A us-east-1 holds 7 clusters -> 3 pages
    per_pair = Counter((c.account, c.location) for c in result.clusters)
    pages = sum(
        max(1, math.ceil(per_pair[(account, region)] / PAGE))
        for account in (ACCOUNT_A, ACCOUNT_B)
        for region in REGIONS
    )
    listed = [r for r in aws.requests.records() if r.method == "GET" and r.path == "/clusters"]
    assert len(listed) == pages == 3 + 5
    assert all(r.status == 200 for r in listed)


def test_cluster_fields_labels_and_auth(aws: AwsSandbox) -> None:
    clusters = {c.name: c for c in _discovery(aws).discover().clusters}

    web = clusters["web-03"]
    assert web.id == f"eks/{ACCOUNT_A}/us-east-1/web-03"
    assert web.endpoint == "https://127.0.0.1:21003"
    assert web.ca_data == CA_PEM  # decoded from base64
    assert (web.kubernetes_version, web.provider_status) == ("1.30", "ACTIVE")
    assert web.auth is AuthMethod.EKS_IAM
    assert web.labels == {
        "env": "prod",
        "fleetops.io/provider": "eks",
        "fleetops.io/account": ACCOUNT_A,
        "fleetops.io/region": "us-east-1",
        "fleetops.io/k8s-minor": "1.30",
    }
    tagged = clusters["data-usw2"]
    assert tagged.labels["cost-center"] == "Platform-Eng"
    assert tagged.labels["team-owner"] == "data"
    assert tagged.labels["fleetops.io/region"] == "us-west-2"  # a tag cannot pose as derived
    assert clusters["data-euw1"].provider_status == "UPDATING"


def test_ambient_credentials_must_belong_to_the_account(aws: AwsSandbox) -> None:
    ambient = _discovery(aws, accounts=[AWS_MANAGEMENT_ACCOUNT]).discover()
    assert [c.id for c in ambient.clusters] == [f"eks/{AWS_MANAGEMENT_ACCOUNT}/us-east-1/mgmt"]

    with pytest.raises(AuthError) as caught:
        _discovery(aws, accounts=[ACCOUNT_A]).discover()
    message = str(caught.value)
    assert ACCOUNT_A in message
    assert AWS_MANAGEMENT_ACCOUNT in message
    assert "role ARN" in message


def test_throttling_is_retried_by_botocore(aws: AwsSandbox) -> None:
    clean = {c.id for c in _discovery(aws).discover().clusters}
    aws.faults.rng.seed(7)
    aws.apply_faults(error_rate=0.15)
    aws.requests.clear()

    result = _discovery(aws, max_attempts=10).discover()

    assert {c.id for c in result.clusters} == clean
    assert aws.requests.injected() >= 1  # throttled answers happened and were retried


def test_adaptive_retry_mode_also_rides_out_throttling(aws: AwsSandbox) -> None:
    """The default mode: botocore also slows its own send rate after throttling."""
    discovery = _discovery(aws, accounts=[aws.role_arn(ACCOUNT_B)], retry_mode="adaptive")
    aws.faults.rng.seed(11)
    aws.apply_faults(error_rate=0.3)
    result = discovery.discover()
    assert {c.id for c in result.clusters} == _expected(aws, (ACCOUNT_B,))
    assert aws.requests.injected() >= 1


def test_throttling_past_the_retries_is_rate_limited(aws: AwsSandbox) -> None:
    discovery = _discovery(aws, max_attempts=2)
    for account in discovery.config.accounts:  # assume the roles before EKS starts throttling
        discovery.sessions.session_for(account)
    aws.apply_faults(error_rate=1.0)
    aws.requests.clear()

    with pytest.raises(RateLimited) as caught:
        discovery.discover()

    error = caught.value
    assert error.system == "eks"
    assert "list_clusters: ThrottlingException: Rate exceeded (after 1 retries)" in str(error)
    assert f"account {ACCOUNT_A} region us-east-1" in str(error)
    # each of the 6 account/region listings was tried exactly twice, by botocore
    records = aws.requests.records()
    assert len(records) == 6 * 2
    assert all(r.injected and r.path == "/clusters" for r in records)


def test_outage_is_unreachable(aws: AwsSandbox) -> None:
    discovery = _discovery(aws, max_attempts=1)  # sessions (assumed roles) are made lazily
    aws.apply_faults(outage=True)
    with pytest.raises(Unreachable) as caught:
        discovery.discover()
    assert caught.value.system == "eks"


def test_config_errors_name_the_bad_value() -> None:
    with pytest.raises(ConfigError, match="'us-east1'"):
        EksDiscovery.from_settings(
            AwsSettings(),
            EksSettings.model_construct(
                accounts=(EksAccount(account_id=ACCOUNT_A),), regions=("us-east1",)
            ),
        )
    with pytest.raises(ConfigError, match="at least 1"):
        EksDiscovery.from_settings(AwsSettings(), EksSettings(accounts=(), regions=REGIONS))


# --- tokens ------------------------------------------------------------------------------


def _query(token: str) -> tuple[str, dict[str, list[str]]]:
    encoded = token.removeprefix("k8s-aws-v1.")
    url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    parts = urlsplit(url)
    return parts.netloc, parse_qs(parts.query)


def test_token_structure_and_expiry(aws: AwsSandbox) -> None:
    sessions = AwsSessions(
        base_session=_base_session(aws),
        endpoint_url=aws.endpoint_url,
        config=botocore_config(_settings(aws)),
    )
    session = sessions.session_for(EksAccount.model_validate(aws.role_arn(ACCOUNT_A)))
    before = datetime.now(UTC).replace(microsecond=0)
    token = eks_token("web-01", session=session, region="us-east-1", endpoint_url=aws.endpoint_url)
    value = token.token.get_secret_value()

    assert value.startswith("k8s-aws-v1.")
    assert "=" not in value
    host, query = _query(value)
    assert host == aws.host  # presigned against the configured STS endpoint
    assert query["Action"] == ["GetCallerIdentity"]
    assert query["X-Amz-Expires"] == ["60"]
    assert "x-k8s-aws-id" in query["X-Amz-SignedHeaders"][0].split(";")
    assert token.expires_at is not None
    assert before + timedelta(seconds=45) <= token.expires_at <= before + timedelta(seconds=51)
    assert "k8s-aws-v1" not in repr(token)
    assert value not in str(token)

    check = aws.check_eks_token(value, cluster_name="web-01")
    assert check.ok, check.reason
    assert (
        check.username
        == f"arn:aws:sts::{ACCOUNT_A}:assumed-role/fleetops-discovery/fleetops-discovery"
    )
    assert aws.check_eks_token(value, cluster_name="web-02").reason.startswith("signature")
    assert not aws.check_eks_token(value, cluster_name="web-01", now=time.time() + 61).ok


def test_discovered_cluster_accepts_its_eks_token(aws: AwsSandbox, eks_fleet: Fleet) -> None:
    discovery = _discovery(aws)
    name = eks_fleet.names[0]
    [cluster] = [c for c in discovery.discover().clusters if c.name == name]
    tokens = EksTokens(discovery.sessions, discovery.config.accounts)

    result = probe(cluster, tokens.token_for(cluster))

    assert result.ok, result.error
    assert result.version == eks_fleet.cluster(name).spec.kubernetes_version
    # a token signed for another cluster name is refused by the cluster
    other = cluster.model_copy(update={"name": "web-00"})
    with pytest.raises(AuthError) as caught:
        probe(cluster, tokens.token_for(other))
    assert caught.value.status == 401


def test_token_for_an_unconfigured_account_is_a_config_error(aws: AwsSandbox) -> None:
    discovery = _discovery(aws)
    tokens = EksTokens(
        discovery.sessions, (EksAccount(account_id=ACCOUNT_A, role_arn=aws.role_arn(ACCOUNT_A)),)
    )
    [cluster] = [c for c in discovery.discover().clusters if c.name == "dev-use1"]
    with pytest.raises(ConfigError, match=ACCOUNT_B):
        tokens.token_for(cluster)


def test_source_config_validation() -> None:
    config = EksSourceConfig.model_validate(
        {
            "accounts": [ACCOUNT_A, f"arn:aws:iam::{ACCOUNT_B}:role/discovery"],
            "regions": ["us-gov-west-1"],
        }
    )
    assert config.account_ids == (ACCOUNT_A, ACCOUNT_B)
    assert config.accounts[1].role_arn == f"arn:aws:iam::{ACCOUNT_B}:role/discovery"
    with pytest.raises(ValueError, match="'12345' is not 12 digits"):
        EksSourceConfig.model_validate({"accounts": ["12345"], "regions": ["us-east-1"]})
    with pytest.raises(ValueError, match="listed twice"):
        EksSourceConfig.model_validate(
            {"accounts": [ACCOUNT_A, ACCOUNT_A], "regions": ["us-east-1"]}
        )
    with pytest.raises(ValueError, match="is in account 222222222222, not 111111111111"):
        EksAccount(account_id=ACCOUNT_A, role_arn=f"arn:aws:iam::{ACCOUNT_B}:role/x")
