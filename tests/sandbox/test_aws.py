"""The AWS stand-in (moto server + fault middleware + EKS tokens), driven by boto3."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import kubernetes
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from sandbox.clouds.aws import (
    AwsCredentials,
    AwsSandbox,
    check_eks_token,
    eks_authenticator,
    verify_eks_token,
)
from sandbox.clouds.common import CloudCluster
from sandbox.fleet import Fleet
from sandbox.kube.cluster import ClusterSpec, SandboxCluster
from tests.support.clouds import (
    ACCOUNT_A,
    ACCOUNT_B,
    CA_PEM,
    cloud_cluster,
    fail_then_pass_seed,
    fleet_member,
)


def _cluster(account: str, region: str, name: str, port: int, **kw: Any) -> CloudCluster:
    return cloud_cluster("eks", account, region, name, port, kubernetes_version="v1.31.4", **kw)


CLUSTERS = [
    _cluster(ACCOUNT_A, "us-east-1", "prod-use1", 9001, labels={"env": "prod", "team": "web"}),
    _cluster(ACCOUNT_A, "us-west-2", "prod-usw2", 9002, labels={"env": "prod", "team": "web"}),
    _cluster(ACCOUNT_B, "eu-west-1", "prod-euw1", 9003, labels={"env": "prod", "team": "data"}),
    _cluster(
        ACCOUNT_B, "us-east-1", "dev-use1", 9004, labels={"env": "dev"}, status="PROVISIONING"
    ),
]


@pytest.fixture(scope="module")
def aws_module() -> Iterator[AwsSandbox]:
    with AwsSandbox(CLUSTERS) as sandbox:
        yield sandbox


@pytest.fixture
def aws(aws_module: AwsSandbox) -> Iterator[AwsSandbox]:
    aws_module.requests.clear()
    yield aws_module
    aws_module.apply_faults(latency_seconds=0.0, error_rate=0.0, outage=False)


def _client(
    aws: AwsSandbox, service: str, creds: AwsCredentials, region: str = "us-east-1", **retries: Any
) -> Any:
    config = Config(retries=retries or {"mode": "standard", "max_attempts": 1})
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=aws.endpoint_url,
        config=config,
        **creds.boto3_kwargs(),
    )


def _assume(aws: AwsSandbox, account: str) -> AwsCredentials:
    """What a discovery client does: STS AssumeRole with the management user's key."""
    sts = _client(aws, "sts", aws.credentials)
    answer = sts.assume_role(RoleArn=aws.role_arn(account), RoleSessionName="discovery")
    creds = answer["Credentials"]
    return AwsCredentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


def eks_token(
    creds: AwsCredentials,
    cluster_name: str,
    *,
    region: str = "us-east-1",
    expires: int = 60,
    endpoint_url: str | None = None,
    operation: str = "get_caller_identity",
    sign_cluster_header: bool = True,
) -> str:
    """An EKS bearer token made the way ``aws eks get-token`` makes it (botocore presign)."""
    session = boto3.session.Session(region_name=region, **creds.boto3_kwargs())
    sts = session.client("sts", region_name=region, endpoint_url=endpoint_url)

    def add_cluster_id(request: Any, **kwargs: Any) -> None:
        request.headers["x-k8s-aws-id"] = cluster_name

    if sign_cluster_header:
        sts.meta.events.register("before-sign.sts.*", add_cluster_id)
    url = sts.generate_presigned_url(operation, Params={}, ExpiresIn=expires, HttpMethod="GET")
    return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


# -- EKS and accounts ------------------------------------------------------------------------


def test_clusters_by_account_and_region_lead_to_the_sandbox_clusters(aws: AwsSandbox) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for account in (ACCOUNT_A, ACCOUNT_B):
        creds = _assume(aws, account)
        for region in ("us-east-1", "us-west-2", "eu-west-1"):
            eks = _client(aws, "eks", creds, region)
            for name in eks.list_clusters()["clusters"]:
                seen[f"{account}/{region}/{name}"] = eks.describe_cluster(name=name)["cluster"]

    assert sorted(seen) == [
        f"{ACCOUNT_A}/us-east-1/prod-use1",
        f"{ACCOUNT_A}/us-west-2/prod-usw2",
        f"{ACCOUNT_B}/eu-west-1/prod-euw1",
        f"{ACCOUNT_B}/us-east-1/dev-use1",
    ]
    prod = seen[f"{ACCOUNT_A}/us-east-1/prod-use1"]
    assert prod["endpoint"] == "https://127.0.0.1:9001"
    assert base64.b64decode(prod["certificateAuthority"]["data"]).decode() == CA_PEM
    assert prod["version"] == "1.31"
    assert prod["status"] == "ACTIVE"
    assert prod["tags"] == {"env": "prod", "team": "web"}
    assert prod["arn"] == f"arn:aws:eks:us-east-1:{ACCOUNT_A}:cluster/prod-use1"
    assert seen[f"{ACCOUNT_B}/us-east-1/dev-use1"]["status"] == "CREATING"


def test_accounts_are_separate(aws: AwsSandbox) -> None:
    mgmt = _client(aws, "sts", aws.credentials).get_caller_identity()
    assert mgmt["Arn"] == f"arn:aws:iam::{aws.management_account}:user/fleetops"
    creds_b = _assume(aws, ACCOUNT_B)
    identity = _client(aws, "sts", creds_b).get_caller_identity()
    assert identity["Account"] == ACCOUNT_B
    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT_B}:assumed-role/fleetops-discovery/discovery"
    # The management account itself holds no clusters; account B does not see A's.
    assert _client(aws, "eks", aws.credentials).list_clusters()["clusters"] == []
    assert _client(aws, "eks", creds_b, "us-west-2").list_clusters()["clusters"] == []
    tags = _client(aws, "eks", creds_b, "eu-west-1").list_tags_for_resource(
        resourceArn=f"arn:aws:eks:eu-west-1:{ACCOUNT_B}:cluster/prod-euw1"
    )["tags"]
    assert tags == {"env": "prod", "team": "data"}


def test_clusters_can_come_and_go(aws: AwsSandbox) -> None:
    extra = _cluster(ACCOUNT_A, "eu-west-1", "extra", 9010)
    aws.add_cluster(extra)
    eks = _client(aws, "eks", _assume(aws, ACCOUNT_A), "eu-west-1")
    assert eks.list_clusters()["clusters"] == ["extra"]
    aws.remove_cluster(extra.id)
    assert eks.list_clusters()["clusters"] == []


# -- Route 53 --------------------------------------------------------------------------------


def test_weighted_records_for_the_demo_app(aws: AwsSandbox) -> None:
    route53 = _client(aws, "route53", aws.credentials)
    zones = route53.list_hosted_zones_by_name(DNSName="sandbox.fleetops.test.")["HostedZones"]
    assert zones[0]["Name"] == "sandbox.fleetops.test."
    zone_id = zones[0]["Id"]
    assert zone_id.endswith(aws.hosted_zone_id)

    def weights() -> dict[str, int]:
        records = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
        return {
            r["SetIdentifier"]: r["Weight"]
            for r in records
            if r["Name"] == "hello.sandbox.fleetops.test." and r["Type"] == "A"
        }

    assert weights() == {"eu-west-1": 100, "us-east-1": 100, "us-west-2": 100}
    # What a region failover does: drain one region, read it back, restore it.
    change = {
        "Action": "UPSERT",
        "ResourceRecordSet": {
            "Name": "hello.sandbox.fleetops.test.",
            "Type": "A",
            "SetIdentifier": "us-west-2",
            "Weight": 0,
            "TTL": 60,
            "ResourceRecords": [{"Value": "127.0.0.1"}],
        },
    }
    answer = route53.change_resource_record_sets(
        HostedZoneId=zone_id, ChangeBatch={"Changes": [change]}
    )
    assert answer["ChangeInfo"]["Status"] == "INSYNC"
    assert weights()["us-west-2"] == 0
    change["ResourceRecordSet"]["Weight"] = 100
    route53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [change]})
    assert weights()["us-west-2"] == 100


# -- EKS bearer tokens -----------------------------------------------------------------------


def test_token_is_accepted_for_its_cluster_only(aws: AwsSandbox) -> None:
    creds = _assume(aws, ACCOUNT_A)
    token = eks_token(creds, "prod-use1")
    now = time.time()

    assert verify_eks_token(token, cluster_name="prod-use1", now=now) == (
        f"arn:aws:sts::{ACCOUNT_A}:assumed-role/fleetops-discovery/discovery"
    )
    assert verify_eks_token(token, cluster_name="prod-usw2", now=now) is None
    other = check_eks_token(token, cluster_name="prod-usw2", now=now)
    assert other.reason.startswith("signature does not match")
    # IAM user keys work too (the management user's ARN).
    user_token = eks_token(aws.credentials, "prod-euw1", region="eu-west-1")
    assert verify_eks_token(user_token, cluster_name="prod-euw1", now=now) == (
        f"arn:aws:iam::{aws.management_account}:user/fleetops"
    )


def test_token_expiry(aws: AwsSandbox) -> None:
    token = eks_token(_assume(aws, ACCOUNT_A), "prod-use1")
    now = time.time()
    assert verify_eks_token(token, cluster_name="prod-use1", now=now + 55) is not None
    expired = check_eks_token(token, cluster_name="prod-use1", now=now + 61)
    assert (expired.ok, expired.reason) == (False, "token expired")
    early = check_eks_token(token, cluster_name="prod-use1", now=now - 3600)
    assert early.reason == "token is dated in the future"
    too_long = eks_token(_assume(aws, ACCOUNT_A), "prod-use1", expires=3600)
    assert check_eks_token(too_long, cluster_name="prod-use1", now=now).reason == (
        "X-Amz-Expires 3600 is out of range"
    )


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: t.replace("k8s-aws-v1.", "k8s-aws-v2."), "not a k8s-aws-v1 token"),
        (lambda t: t[:-6] + ("AAAAAA" if not t.endswith("AAAAAA") else "BBBBBB"), None),
    ],
)
def test_mangled_tokens_are_rejected(aws: AwsSandbox, mangle: Any, reason: str | None) -> None:
    token = mangle(eks_token(_assume(aws, ACCOUNT_A), "prod-use1"))
    result = check_eks_token(token, cluster_name="prod-use1", now=time.time())
    assert not result.ok
    if reason is not None:
        assert result.reason == reason


def test_tokens_that_are_not_eks_tokens_are_rejected(aws: AwsSandbox) -> None:
    creds = _assume(aws, ACCOUNT_A)
    now = time.time()
    unsigned_id = eks_token(creds, "prod-use1", sign_cluster_header=False)
    assert check_eks_token(unsigned_id, cluster_name="prod-use1", now=now).reason == (
        "x-k8s-aws-id is not signed"
    )
    other_action = eks_token(creds, "prod-use1", operation="get_session_token")
    assert check_eks_token(other_action, cluster_name="prod-use1", now=now).reason == (
        "Action is not GetCallerIdentity"
    )
    wrong_secret = AwsCredentials(creds.access_key_id, "x" * 40, creds.session_token)
    forged = eks_token(wrong_secret, "prod-use1")
    assert check_eks_token(forged, cluster_name="prod-use1", now=now).reason.startswith(
        "signature does not match"
    )
    stolen_key = AwsCredentials(creds.access_key_id, creds.secret_access_key, "not-the-session")
    assert check_eks_token(
        eks_token(stolen_key, "prod-use1"), cluster_name="prod-use1", now=now
    ).reason == ("security token does not match the access key")
    unknown = eks_token(AwsCredentials("AKIAUNKNOWNKEY000000", "s" * 40), "prod-use1")
    assert (
        check_eks_token(unknown, cluster_name="prod-use1", now=now).reason == "unknown access key"
    )


def test_token_presigned_against_the_sandbox_endpoint(aws: AwsSandbox) -> None:
    # A client configured with AWS_ENDPOINT_URL presigns against moto, not sts.amazonaws.com:
    # the sandbox accepts its own host; a plain verifier does not.
    token = eks_token(aws.credentials, "prod-use1", endpoint_url=aws.endpoint_url)
    assert aws.verify_eks_token(token, cluster_name="prod-use1") is not None
    assert check_eks_token(token, cluster_name="prod-use1", now=time.time()).reason == (
        "unexpected scheme 'http'"
    )


# -- faults ----------------------------------------------------------------------------------


def test_throttling_is_classified_and_retried_by_botocore(aws: AwsSandbox) -> None:
    creds = _assume(aws, ACCOUNT_A)
    eks = _client(aws, "eks", creds, mode="standard", max_attempts=2)
    route53 = _client(aws, "route53", aws.credentials, mode="standard", max_attempts=1)
    aws.requests.clear()
    aws.apply_faults(error_rate=1.0)

    with pytest.raises(ClientError) as caught:
        eks.list_clusters()
    error = caught.value.response
    assert error["Error"]["Code"] == "ThrottlingException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["ResponseMetadata"]["RetryAttempts"] == 2
    assert aws.requests.injected() == 3

    with pytest.raises(ClientError) as caught_dns:
        route53.list_hosted_zones()
    assert caught_dns.value.response["Error"]["Code"] == "Throttling"
    assert caught_dns.value.response["ResponseMetadata"]["RetryAttempts"] == 1


def test_throttling_then_success(aws: AwsSandbox) -> None:
    eks = _client(aws, "eks", _assume(aws, ACCOUNT_A), mode="standard", max_attempts=2)
    aws.faults.rng.seed(fail_then_pass_seed(0.5))
    aws.requests.clear()
    aws.apply_faults(error_rate=0.5)
    answer = eks.list_clusters()
    assert answer["clusters"] == ["prod-use1"]
    assert answer["ResponseMetadata"]["RetryAttempts"] == 1
    assert [(r.status, r.injected) for r in aws.requests.records()] == [(400, True), (200, False)]


def test_other_errors_are_not_retried(aws: AwsSandbox) -> None:
    eks = _client(aws, "eks", _assume(aws, ACCOUNT_A), mode="standard", max_attempts=3)
    with pytest.raises(ClientError) as caught:
        eks.describe_cluster(name="nope")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert caught.value.response["ResponseMetadata"]["RetryAttempts"] == 0


def test_latency(aws: AwsSandbox) -> None:
    eks = _client(aws, "eks", _assume(aws, ACCOUNT_A))
    aws.apply_faults(latency_seconds=0.3)
    started = time.monotonic()
    eks.list_clusters()
    assert time.monotonic() - started >= 0.3


def test_outage_refuses_connections(aws: AwsSandbox) -> None:
    eks = _client(aws, "eks", _assume(aws, ACCOUNT_A))
    url = aws.endpoint_url
    aws.apply_faults(outage=True)
    with pytest.raises(EndpointConnectionError):
        eks.list_clusters()
    aws.apply_faults(outage=False)
    assert aws.endpoint_url == url
    assert eks.list_clusters()["clusters"] == ["prod-use1"]


# -- discovery leads to a real sandbox cluster -----------------------------------------------


def test_discovery_leads_to_a_sandbox_cluster_that_accepts_eks_tokens(
    aws: AwsSandbox, tmp_path: Path
) -> None:
    def eks_cluster(spec: ClusterSpec, *, faults: Any, authenticator: Any) -> SandboxCluster:
        auth = eks_authenticator(aws, cluster_name=spec.name, fallback=authenticator)
        return SandboxCluster(spec, faults=faults, authenticator=auth)

    with Fleet(
        2,
        directory=tmp_path / "fleet",
        rollout_seconds=0.3,
        prefix="eks",
        cluster_factory=eks_cluster,
    ) as fleet:
        published = [
            fleet_member(fleet, name, "eks", ACCOUNT_B, region)
            for name, region in zip(fleet.names, ("ap-southeast-2", "ca-central-1"), strict=True)
        ]
        for cluster in published:
            aws.add_cluster(cluster)
        try:
            creds = _assume(aws, ACCOUNT_B)
            eks = _client(aws, "eks", creds, "ap-southeast-2")
            [name] = eks.list_clusters()["clusters"]
            found = eks.describe_cluster(name=name)["cluster"]
            ca_file = tmp_path / "ca.pem"
            ca_file.write_bytes(base64.b64decode(found["certificateAuthority"]["data"]))

            def version(token: str) -> Any:
                config = kubernetes.client.Configuration()
                config.host = found["endpoint"]
                config.ssl_ca_cert = str(ca_file)
                config.api_key = {"BearerToken": token}
                config.api_key_prefix = {"BearerToken": "Bearer"}
                with kubernetes.client.ApiClient(config) as api:
                    return kubernetes.client.VersionApi(api).get_code()

            token = eks_token(creds, name, region="ap-southeast-2")
            assert version(token).git_version == published[0].kubernetes_version
            with pytest.raises(kubernetes.client.ApiException) as caught:
                version(eks_token(creds, fleet.names[1], region="ap-southeast-2"))
            assert caught.value.status == 401
        finally:
            for cluster in published:
                aws.remove_cluster(cluster.id)
