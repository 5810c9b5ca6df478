"""The Cluster record validates what the inventory will rely on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleetops.domain import AuthMethod, Cluster, ClusterState, Provider


def _cluster(**overrides: object) -> Cluster:
    fields: dict[str, object] = {
        "provider": "eks",
        "account": "123456789012",
        "location": "eu-west-1",
        "name": "prod-a",
        "endpoint": "https://127.0.0.1:6443",
        "auth": "eks-iam",
        "labels": {"env": "prod", "fleetops.io/provider": "eks"},
    }
    fields.update(overrides)
    return Cluster.model_validate(fields)


def test_id_is_provider_account_location_name_and_serialised() -> None:
    cluster = _cluster()
    assert cluster.id == "eks/123456789012/eu-west-1/prod-a"
    assert cluster.model_dump()["id"] == cluster.id
    assert cluster.state is ClusterState.DISCOVERED
    assert cluster.provider is Provider.EKS
    assert cluster.auth is AuthMethod.EKS_IAM


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"account": "a/b"}, "not a valid cluster id segment"),
        ({"name": ""}, "not a valid cluster id segment"),
        ({"endpoint": "http://127.0.0.1:6443"}, "must be an https:// URL"),
        ({"labels": {"env": "prod!"}}, "label value 'prod!'"),
        ({"labels": {"Example.com/x": "y"}}, "prefix must be a lowercase DNS subdomain"),
        ({"labels": {"k" * 64: "y"}}, "no more than 63 characters"),
        ({"provider": "openshift"}, "provider"),
        ({"token": "abc"}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_records_are_refused_with_a_reason(
    overrides: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        _cluster(**overrides)


def test_records_are_immutable() -> None:
    cluster = _cluster()
    with pytest.raises(ValidationError):
        cluster.name = "other"  # type: ignore[misc]


def test_dumped_record_validates_back_and_a_wrong_id_is_refused() -> None:
    cluster = _cluster()
    assert Cluster.model_validate(cluster.model_dump()) == cluster
    assert Cluster.model_validate_json(cluster.model_dump_json()) == cluster
    dumped = cluster.model_dump() | {"id": "eks/123456789012/eu-west-1/other"}
    with pytest.raises(ValidationError, match="does not match"):
        Cluster.model_validate(dumped)
