"""fleetops settings, read from the environment (prefix ``FLEETOPS_``) and ``.env`` files.

Settings are grouped by the system they configure, each group a small ``BaseSettings`` with its
own prefix, so ``FLEETOPS_SLACK_TOKEN`` configures ``Settings().slack.token``. Secrets are
``SecretStr``: they print as ``**********`` and are unwrapped only where a client is built.
Nothing here opens a connection; clients get their settings passed in explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fleetops.domain.sources import (
    AwsRegion,
    AzureSubscriptionId,
    EksAccount,
    GcpProjectId,
    StaticSourceName,
)


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )


def _split_list(value: Any) -> Any:
    """A list setting from the environment: a JSON list, or items separated by commas/blanks."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item for item in text.replace(",", " ").split() if item]
    return value


# List settings read from ``a,b,c`` or ``["a", "b"]`` (pydantic-settings' JSON-only default would
# make ``FLEETOPS_EKS_REGIONS=us-east-1,eu-west-1`` an error).
_FromList = BeforeValidator(_split_list)
EksAccounts = Annotated[tuple[EksAccount, ...], NoDecode, _FromList]
AwsRegions = Annotated[tuple[AwsRegion, ...], NoDecode, _FromList]
GcpProjects = Annotated[tuple[GcpProjectId, ...], NoDecode, _FromList]
AzureSubscriptions = Annotated[tuple[AzureSubscriptionId, ...], NoDecode, _FromList]


class KubeSettings(BaseSettings):
    """How fleetops reaches clusters that are known only through a kubeconfig."""

    model_config = _config("FLEETOPS_")

    kubeconfig: Path | None = Field(
        default=None,
        description="Path of a kubeconfig whose contexts are static clusters (FLEETOPS_KUBECONFIG).",
    )
    request_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Timeout of one Kubernetes API request."
    )


class InventorySettings(BaseSettings):
    """Where the inventory lives."""

    model_config = _config("FLEETOPS_INVENTORY_")

    url: str = Field(
        default="sqlite:///.fleetops/inventory.db",
        description="SQLAlchemy URL: a SQLite file by default, postgresql+psycopg://... in production.",
    )


class SlackSettings(BaseSettings):
    """Slack notifications. With no token, notifications are logged and skipped."""

    model_config = _config("FLEETOPS_SLACK_")

    token: SecretStr | None = Field(default=None, description="Bot token (xoxb-...).")
    channel: str = Field(default="#fleetops", description="Channel for run threads.")
    base_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("https://slack.com/api/"), description="Slack Web API base URL."
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Timeout of one Slack Web API call."
    )
    rate_limit_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="How often a call answered 429 is retried after its Retry-After (bounded, "
        "so a rate-limited Slack cannot hold a flow for long).",
    )
    max_retry_after_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A 429 asking to wait longer than this is not retried (the message is dropped).",
    )


class VaultSettings(BaseSettings):
    """HashiCorp Vault (or OpenBao), the source of truth for rotated secrets."""

    model_config = _config("FLEETOPS_VAULT_")

    addr: AnyHttpUrl | None = Field(default=None, description="Vault address.")
    token: SecretStr | None = Field(default=None, description="Vault token, if not using AppRole.")
    role_id: str | None = Field(default=None, description="AppRole role id.")
    secret_id: SecretStr | None = Field(default=None, description="AppRole secret id.")
    ca_cert: Path | None = Field(default=None, description="CA bundle for Vault's TLS certificate.")


class AwsSettings(BaseSettings):
    """How boto3 reaches AWS. Credentials come from the standard AWS chain (environment,
    shared config, SSO, instance/pod role); nothing secret is configured here."""

    model_config = _config("FLEETOPS_AWS_")

    endpoint_url: str | None = Field(
        default=None,
        description="One endpoint for every AWS service (the sandbox's moto); default AWS's own "
        "(boto3 also honours AWS_ENDPOINT_URL).",
    )
    retry_mode: Literal["standard", "adaptive"] = Field(
        default="adaptive",
        description="botocore retry mode for throttling and transient errors; 'adaptive' also "
        "rate-limits the client when AWS throttles it.",
    )
    max_attempts: int = Field(
        default=8, ge=1, le=30, description="botocore attempts per call, the first included."
    )
    connect_timeout_seconds: float = Field(default=10.0, gt=0, description="TCP connect timeout.")
    read_timeout_seconds: float = Field(default=30.0, gt=0, description="Read timeout per call.")


class EksSettings(BaseSettings):
    """EKS discovery: accounts x regions."""

    model_config = _config("FLEETOPS_EKS_")

    accounts: EksAccounts = Field(
        default=(),
        description="Accounts, comma-separated: a 12-digit id uses the ambient credentials "
        "(which must belong to it), a role ARN is assumed (arn:aws:iam::ID:role/NAME).",
    )
    regions: AwsRegions = Field(
        default=(), description="Regions to list in every account, comma-separated."
    )
    page_size: int = Field(
        default=100, ge=1, le=100, description="list_clusters maxResults (EKS allows 1-100)."
    )
    max_workers: int = Field(
        default=8, ge=1, le=64, description="Concurrent describe_cluster calls per discovery."
    )
    role_session_name: str = Field(
        default="fleetops-discovery",
        pattern=r"^[\w+=,.@-]{2,64}$",
        description="RoleSessionName of assumed roles (shows in CloudTrail).",
    )


class GkeSettings(BaseSettings):
    """GKE discovery: every location of every project."""

    model_config = _config("FLEETOPS_GKE_")

    projects: GcpProjects = Field(default=(), description="Project ids, comma-separated.")
    endpoint: str | None = Field(
        default=None,
        description="API endpoint of the GKE API (e.g. http://127.0.0.1:PORT for the sandbox); "
        "default container.googleapis.com.",
    )
    access_token: SecretStr | None = Field(
        default=None,
        description="A Google OAuth access token to use instead of Application Default "
        "Credentials (the sandbox, or a token minted elsewhere; it is not refreshed).",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of one API call.")
    retry_deadline_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long google-api-core keeps retrying throttling (429) and 5xx answers.",
    )


class AksSettings(BaseSettings):
    """AKS discovery: every managed cluster of every subscription."""

    model_config = _config("FLEETOPS_AKS_")

    subscriptions: AzureSubscriptions = Field(
        default=(), description="Subscription ids (GUIDs), comma-separated."
    )
    base_url: str | None = Field(
        default=None,
        description="Azure Resource Manager URL; default https://management.azure.com.",
    )
    ca_bundle: Path | None = Field(
        default=None,
        description="CA bundle that signs the ARM endpoint's certificate (the sandbox's); "
        "default the system trust store.",
    )
    access_token: SecretStr | None = Field(
        default=None,
        description="A static ARM bearer token to use instead of DefaultAzureCredential "
        "(the sandbox; it is not refreshed).",
    )
    retry_total: int = Field(
        default=6, ge=0, le=20, description="azure-core retries (it honours Retry-After)."
    )
    max_workers: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Concurrent listClusterUserCredential calls (for the CA) per discovery.",
    )


class StaticSettings(BaseSettings):
    """Static clusters: contexts of a kubeconfig (``FLEETOPS_KUBECONFIG``) and the fleet file."""

    model_config = _config("FLEETOPS_STATIC_")

    fleet_file: Path | None = Field(
        default=Path("deployments/clusters.yaml"),
        description="The fleet file: static clusters and label overrides (skipped if absent).",
    )
    kubeconfig_source: StaticSourceName = Field(
        default="kubeconfig",
        description="Source name (the 'account' part of ids) of FLEETOPS_KUBECONFIG's contexts.",
    )


class DiscoverySettings(BaseSettings):
    """The discover-clusters flow: concurrency, retries, probes and the missing threshold."""

    model_config = _config("FLEETOPS_DISCOVERY_")

    missing_after: int = Field(
        default=3,
        ge=1,
        le=100,
        description="A cluster becomes 'missing' after this many consecutive successful "
        "discoveries of its source without it.",
    )
    probe_max_age_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A cluster not probed for this long is probed again, even if unchanged.",
    )
    probe_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Timeout of each probe request."
    )
    max_workers: int = Field(
        default=16,
        ge=1,
        le=128,
        description="Bound of the flow's task runner: concurrent source discoveries and probes.",
    )
    source_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Task retries of a source after a transient error (the SDK's own retries "
        "come first).",
    )
    probe_retries: int = Field(
        default=1, ge=0, le=10, description="Task retries of a probe after a transient error."
    )
    retry_delay_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Base of the exponential backoff between task retries (with jitter).",
    )


class ArgoCdSettings(BaseSettings):
    """Optional registration of every healthy cluster into Argo CD (off by default)."""

    model_config = _config("FLEETOPS_ARGOCD_")

    enabled: bool = Field(
        default=False, description="Register clusters as Argo CD cluster Secrets."
    )
    management_cluster: str | None = Field(
        default=None,
        description="Inventory id of the cluster Argo CD runs in (its Secrets are written there).",
    )
    namespace: str = Field(
        default="argocd",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Namespace of Argo CD in the management cluster.",
    )
    fleetops_command: str = Field(
        default="fleetops",
        min_length=1,
        description="Command Argo CD runs as the exec credential plugin for non-EKS clusters "
        "(`<command> token CLUSTER_ID`); it must be installed in Argo CD's image.",
    )


class RolloutSettings(BaseSettings):
    """Run-time knobs of the rollout flow (``FLEETOPS_ROLLOUT_*``); the plan is a parameter."""

    model_config = _config("FLEETOPS_ROLLOUT_")

    apps_dir: Path = Field(
        default=Path("apps"), description="Directory holding one sub-directory per application."
    )
    max_workers: int = Field(
        default=64, ge=1, le=512, description="Bound of the flow's task runner (threads)."
    )
    retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a cluster step after a transient error."
    )
    retry_delay_seconds: float = Field(
        default=2.0, ge=0, description="Base of the exponential backoff between retries."
    )
    approval_poll_seconds: float = Field(
        default=1.0, gt=0, le=10, description="How often a paused run checks for a decision."
    )
    readiness_poll_seconds: float = Field(
        default=1.0, gt=0, le=30, description="Longest gap between two readiness reads."
    )
    lock_timeout_seconds: float = Field(
        default=600.0, gt=0, description="How long a cluster step waits for the cluster's lock."
    )
    lock_lease_seconds: float = Field(
        default=120.0,
        ge=60,
        description="Lease of a cluster's lock, renewed while the step runs: after a killed "
        "process, the cluster is free again at most this long later.",
    )


class Settings(BaseSettings):
    """All fleetops settings."""

    model_config = _config("FLEETOPS_")

    log_level: str = Field(default="INFO", description="Log level of fleetops' own loggers.")
    ui_url: AnyHttpUrl | None = Field(
        default=None,
        description="Prefect UI base URL used for links in Slack messages (e.g. http://127.0.0.1:4200).",
    )
    kube: KubeSettings = Field(default_factory=KubeSettings)
    inventory: InventorySettings = Field(default_factory=InventorySettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    vault: VaultSettings = Field(default_factory=VaultSettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    eks: EksSettings = Field(default_factory=EksSettings)
    gke: GkeSettings = Field(default_factory=GkeSettings)
    aks: AksSettings = Field(default_factory=AksSettings)
    static: StaticSettings = Field(default_factory=StaticSettings)
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings)
    argocd: ArgoCdSettings = Field(default_factory=ArgoCdSettings)
