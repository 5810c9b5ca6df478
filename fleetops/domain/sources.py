"""Where discovery looks: the configuration of each source, validated before anything runs.

Every identifier an operator types is checked here, with an error that names the bad value and
says what a good one looks like, so a typo fails the run before any API is called or anything
is written:

- AWS account ids (12 digits), regions (``us-east-1``, ``us-gov-west-1``, ``cn-north-1``) and
  IAM role ARNs (``arn:aws:iam::111111111111:role/fleetops-discovery``);
- Google Cloud project ids (6-30 characters: lower-case letters, digits and hyphens, starting
  with a letter; the legacy ``example.com:project`` form too);
- Azure subscription ids (GUIDs; kept in lower case, as ARM compares them);
- source kinds (``eks``, ``gke``, ``aks``, ``static``).

The fleet file (``deployments/clusters.yaml``, schema :class:`FleetFile`) lists static clusters
and the operator's label overrides. It is parsed by :mod:`fleetops.clients.static`, which maps
a validation error back to the file's line; this module only says what is valid.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from fleetops.domain.cluster import _SEGMENT
from fleetops.domain.inventory import LabelOverride
from fleetops.domain.labels import FLEETOPS_PREFIX, validate_labels
from fleetops.errors import ConfigError

_FROZEN = ConfigDict(frozen=True, extra="forbid")

_ACCOUNT_ID = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")
_ROLE_ARN = re.compile(
    r"^arn:aws(?:-cn|-us-gov|-iso(?:-[a-z])?)?:iam::(\d{12}):role/[\w+=,.@/-]{1,512}$"
)
_PROJECT_ID = re.compile(r"^(?:[a-z0-9][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class SourceKind(StrEnum):
    """A kind of discovery source; each yields one :class:`~fleetops.domain.SourceResult`."""

    EKS = "eks"
    GKE = "gke"
    AKS = "aks"
    STATIC = "static"  # kubeconfig contexts and the fleet file's static clusters


def parse_source_kinds(names: Iterable[str]) -> tuple[SourceKind, ...]:
    """``names`` as source kinds, in order, without repeats; :class:`ConfigError` naming an unknown one."""
    kinds: list[SourceKind] = []
    for name in names:
        try:
            kind = SourceKind(name.strip().lower())
        except ValueError:
            known = ", ".join(k.value for k in SourceKind)
            raise ConfigError(f"unknown source kind {name!r}; known kinds: {known}") from None
        if kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)


# --- identifiers -----------------------------------------------------------------------------


def aws_account_id(value: str) -> str:
    """``value`` if it is an AWS account id (12 digits), else ``ValueError`` naming it."""
    if not _ACCOUNT_ID.match(value):
        raise ValueError(f"AWS account id {value!r} is not 12 digits")
    return value


def aws_region(value: str) -> str:
    """``value`` if it looks like an AWS region (``us-east-1``), else ``ValueError`` naming it."""
    if not _REGION.match(value):
        raise ValueError(
            f"AWS region {value!r} is not a region name like 'us-east-1' or 'us-gov-west-1'"
        )
    return value


def aws_role_arn(value: str) -> str:
    """``value`` if it is an IAM role ARN, else ``ValueError`` naming it."""
    if not _ROLE_ARN.match(value):
        raise ValueError(
            f"IAM role ARN {value!r} is not like 'arn:aws:iam::111111111111:role/fleetops-discovery'"
        )
    return value


def gcp_project_id(value: str) -> str:
    """``value`` if it is a Google Cloud project id, else ``ValueError`` naming it."""
    if not _PROJECT_ID.match(value):
        raise ValueError(
            f"Google Cloud project id {value!r} must be 6 to 30 lower-case letters, digits or "
            "hyphens, start with a letter and not end with a hyphen"
        )
    return value


def azure_subscription_id(value: str) -> str:
    """``value`` in lower case if it is a subscription GUID, else ``ValueError`` naming it."""
    if not _GUID.match(value):
        raise ValueError(
            f"Azure subscription id {value!r} is not a GUID like "
            "'00000000-0000-0000-0000-000000000000'"
        )
    return value.lower()


def _segment(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not _SEGMENT.match(value):
            raise ValueError(
                f"{what} {value!r} must be letters, digits and . _ : @ -, starting with a letter "
                "or digit (it becomes part of cluster ids)"
            )
        return value

    return AfterValidator(check)


AwsAccountId = Annotated[str, AfterValidator(aws_account_id)]
AwsRegion = Annotated[str, AfterValidator(aws_region)]
AwsRoleArn = Annotated[str, AfterValidator(aws_role_arn)]
GcpProjectId = Annotated[str, AfterValidator(gcp_project_id)]
AzureSubscriptionId = Annotated[str, AfterValidator(azure_subscription_id)]
StaticSourceName = Annotated[str, _segment("static source name")]


def _unique(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} is listed twice")
        seen.add(value)


# --- per-provider configuration --------------------------------------------------------------


class EksAccount(BaseModel):
    """One AWS account to list EKS clusters in, and how to get credentials for it.

    Written as a string in settings: the 12-digit account id alone means "the ambient
    credentials, which must belong to this account"; a role ARN means "assume this role",
    the account being the ARN's.
    """

    model_config = _FROZEN

    account_id: AwsAccountId = Field(description="The 12-digit AWS account id.")
    role_arn: AwsRoleArn | None = Field(
        default=None,
        description="Role to assume in the account; none to use the ambient credentials.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            text = data.strip()
            if text.startswith("arn:"):
                match = _ROLE_ARN.match(text)
                if match is None:
                    aws_role_arn(text)  # raises with the message
                    raise AssertionError  # pragma: no cover
                return {"account_id": match.group(1), "role_arn": text}
            return {"account_id": text}
        return data

    @model_validator(mode="after")
    def _role_in_account(self) -> Self:
        if self.role_arn is not None:
            match = _ROLE_ARN.match(self.role_arn)
            assert match is not None
            if match.group(1) != self.account_id:
                raise ValueError(
                    f"role {self.role_arn!r} is in account {match.group(1)}, not {self.account_id}"
                )
        return self

    def __str__(self) -> str:
        return self.role_arn or self.account_id


class EksSourceConfig(BaseModel):
    """EKS discovery: every region of every account."""

    model_config = _FROZEN

    accounts: tuple[EksAccount, ...] = Field(
        min_length=1, description="Accounts to list, each by id (ambient) or by role ARN."
    )
    regions: tuple[AwsRegion, ...] = Field(min_length=1, description="Regions to list.")

    @model_validator(mode="after")
    def _no_repeats(self) -> Self:
        _unique((a.account_id for a in self.accounts), "AWS account")
        _unique(self.regions, "AWS region")
        return self

    @property
    def account_ids(self) -> tuple[str, ...]:
        return tuple(a.account_id for a in self.accounts)


class GkeSourceConfig(BaseModel):
    """GKE discovery: every location of every project."""

    model_config = _FROZEN

    projects: tuple[GcpProjectId, ...] = Field(min_length=1, description="Project ids to list.")

    @model_validator(mode="after")
    def _no_repeats(self) -> Self:
        _unique(self.projects, "Google Cloud project")
        return self


class AksSourceConfig(BaseModel):
    """AKS discovery: every managed cluster of every subscription."""

    model_config = _FROZEN

    subscriptions: tuple[AzureSubscriptionId, ...] = Field(
        min_length=1, description="Subscription ids to list."
    )

    @model_validator(mode="after")
    def _no_repeats(self) -> Self:
        _unique(self.subscriptions, "Azure subscription")
        return self


# --- the fleet file --------------------------------------------------------------------------

DEFAULT_STATIC_LOCATION = "static"
REGION_LABEL = "topology.kubernetes.io/region"


class StaticCluster(BaseModel):
    """A cluster no cloud API lists: reached through a context of a kubeconfig file.

    Its id is ``static/<source>/<location>/<name>``. Endpoint and CA are read from the context's
    cluster entry at every discovery; the context's user is how a token is obtained.
    """

    model_config = _FROZEN

    name: Annotated[str, _segment("cluster name")] = Field(description="The cluster's name.")
    source: StaticSourceName = Field(
        default="fleet", description="Static source name: the 'account' part of the id."
    )
    location: Annotated[str, _segment("location")] | None = Field(
        default=None,
        description=f"Where it runs; default the '{REGION_LABEL}' label, else '{DEFAULT_STATIC_LOCATION}'.",
    )
    kubeconfig: str = Field(
        min_length=1,
        description="Path of the kubeconfig holding the context (relative to the fleet file).",
    )
    context: str | None = Field(
        default=None, description="Context in that kubeconfig; default the cluster's name."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of the cluster.")

    @model_validator(mode="after")
    def _check_labels(self) -> Self:
        validate_labels(self.labels)
        reserved = sorted(key for key in self.labels if key.startswith(FLEETOPS_PREFIX))
        if reserved:
            raise ValueError(
                f"labels under {FLEETOPS_PREFIX} are computed by fleetops: {', '.join(reserved)}"
            )
        return self

    @property
    def context_name(self) -> str:
        return self.context or self.name

    @property
    def effective_location(self) -> str:
        return self.location or self.labels.get(REGION_LABEL) or DEFAULT_STATIC_LOCATION

    @property
    def id(self) -> str:
        return f"static/{self.source}/{self.effective_location}/{self.name}"


class FleetFile(BaseModel):
    """``deployments/clusters.yaml``: static clusters and label overrides.

    Example::

        version: 1
        static:
          - name: lab-1
            source: on-prem          # default "fleet"
            location: dc1            # default: the topology.kubernetes.io/region label, or "static"
            kubeconfig: lab.kubeconfig
            context: lab-1-admin     # default: the name
            labels: {env: lab}
        overrides:
          - id: eks/111111111111/us-east-1/prod-use1
            labels: {wave: "1"}
          - selector: fleetops.io/provider=gke,env=prod
            labels: {tier: gold}
    """

    model_config = _FROZEN

    version: Literal[1] = Field(default=1, description="Schema version of the file.")
    static: tuple[StaticCluster, ...] = Field(default=(), description="Static clusters.")
    overrides: tuple[LabelOverride, ...] = Field(
        default=(), description="Label overrides by cluster id or selector, applied in order."
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> Self:
        _unique((c.id for c in self.static), "static cluster")
        return self

    @property
    def static_sources(self) -> tuple[str, ...]:
        """The static source names the file's clusters belong to, sorted."""
        return tuple(sorted({c.source for c in self.static}))
