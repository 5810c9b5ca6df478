"""The Cluster record: what the inventory knows about one Kubernetes cluster.

A cluster's id is ``provider/account/location/name`` and never changes while the cluster exists at
its provider. The record holds how to reach the cluster (endpoint, CA, auth method) but never a
credential: credentials are obtained fresh and short-lived for every connection.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from fleetops.domain.labels import validate_labels


class Provider(StrEnum):
    EKS = "eks"
    GKE = "gke"
    AKS = "aks"
    STATIC = "static"


class ClusterState(StrEnum):
    """Lifecycle of an inventory record.

    ``discovered`` -> ``registered`` (probe ok) | ``unreachable`` (probe failed);
    ``missing`` after N consecutive successful discoveries without it; back to ``registered`` when
    it returns; ``retired`` only by an operator. Records are never deleted automatically.
    """

    DISCOVERED = "discovered"
    REGISTERED = "registered"
    UNREACHABLE = "unreachable"
    MISSING = "missing"
    RETIRED = "retired"


class AuthMethod(StrEnum):
    """How to obtain a short-lived credential for the cluster's API."""

    EKS_IAM = "eks-iam"  # presigned STS GetCallerIdentity token (k8s-aws-v1.)
    GCP_ACCESS_TOKEN = "gcp-access-token"  # Google OAuth access token from the credential chain
    AKS_USER_CREDENTIAL = "aks-user-credential"  # listClusterUserCredential / Entra token
    STATIC_KUBECONFIG = "static-kubeconfig"  # the context's own user entry in a kubeconfig file

    @property
    def brings_ca(self) -> bool:
        """Whether the API server's CA comes with the credential rather than with the listing.

        An AKS ``ManagedCluster`` has no CA; the user kubeconfig does. Discovery of such clusters
        reports no CA, and the probe (which fetches the credential anyway) records it.
        """
        return self is AuthMethod.AKS_USER_CREDENTIAL


# One path segment of a cluster id: no slashes, no whitespace, printable.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")


class ProbeResult(BaseModel):
    """The outcome of the last connection attempt to a cluster's API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool = Field(description="Whether /version and /readyz answered successfully.")
    at: datetime = Field(description="When the probe ran (UTC).")
    version: str | None = Field(default=None, description="gitVersion reported by /version.")
    latency_ms: float | None = Field(default=None, ge=0, description="Round trip of /version.")
    error: str | None = Field(default=None, description="Why the probe failed (redacted).")
    ca_data: str | None = Field(
        default=None,
        exclude=True,
        description="The API server's CA as the probe's credential gave it (AKS), for the "
        "inventory to record on the cluster; not kept with the probe result.",
    )


class Cluster(BaseModel):
    """One Kubernetes cluster as the inventory records it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Provider = Field(description="Where the cluster runs: eks, gke, aks or static.")
    account: str = Field(
        description="AWS account id, GCP project, Azure subscription, or the static source name."
    )
    location: str = Field(description="Region or zone (static: a free-form location label).")
    name: str = Field(description="The cluster's name at its provider.")
    endpoint: str = Field(description="HTTPS URL of the Kubernetes API server.")
    ca_data: str | None = Field(
        default=None, description="PEM CA bundle that signs the API server's certificate."
    )
    kubernetes_version: str | None = Field(
        default=None, description="Version the provider reports."
    )
    provider_status: str | None = Field(
        default=None,
        description="Status as the provider reports it (ACTIVE, RUNNING, Succeeded...).",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Normalised provider labels plus operator overrides."
    )
    auth: AuthMethod = Field(description="How a short-lived credential is obtained.")
    state: ClusterState = Field(default=ClusterState.DISCOVERED, description="Lifecycle state.")
    first_seen: datetime | None = Field(default=None, description="First discovery (UTC).")
    last_seen: datetime | None = Field(default=None, description="Latest discovery (UTC).")
    last_probe: ProbeResult | None = Field(default=None, description="Latest probe result.")

    @model_validator(mode="before")
    @classmethod
    def _computed_id(cls, data: Any) -> Any:
        """Accept a dumped record back: its ``id`` must agree with the fields it is made of."""
        if isinstance(data, dict) and "id" in data:
            data = dict(data)
            given = data.pop("id")
            parts = [
                data.get("provider"),
                data.get("account"),
                data.get("location"),
                data.get("name"),
            ]
            expected = "/".join(str(getattr(p, "value", p)) for p in parts)
            if given != expected:
                raise ValueError(
                    f"id {given!r} does not match provider/account/location/name {expected!r}"
                )
        return data

    @field_validator("account", "location", "name")
    @classmethod
    def _segment(cls, value: str) -> str:
        if not _SEGMENT.match(value):
            raise ValueError(
                f"{value!r} is not a valid cluster id segment: use letters, digits and . _ : @ -, "
                "starting with a letter or digit"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"endpoint {value!r} must be an https:// URL (TLS is always verified)")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return validate_labels(value)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def id(self) -> str:
        """Stable id ``provider/account/location/name``."""
        return f"{self.provider.value}/{self.account}/{self.location}/{self.name}"
