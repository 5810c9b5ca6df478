"""fleetops settings, read from the environment (prefix ``FLEETOPS_``) and ``.env`` files.

Settings are grouped by the system they configure, each group a small ``BaseSettings`` with its
own prefix, so ``FLEETOPS_SLACK_TOKEN`` configures ``Settings().slack.token``. Secrets are
``SecretStr``: they print as ``**********`` and are unwrapped only where a client is built.
Nothing here opens a connection; clients get their settings passed in explicitly.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AnyHttpUrl, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )


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


class VaultSettings(BaseSettings):
    """HashiCorp Vault (or OpenBao), the source of truth for rotated secrets."""

    model_config = _config("FLEETOPS_VAULT_")

    addr: AnyHttpUrl | None = Field(default=None, description="Vault address.")
    token: SecretStr | None = Field(default=None, description="Vault token, if not using AppRole.")
    role_id: str | None = Field(default=None, description="AppRole role id.")
    secret_id: SecretStr | None = Field(default=None, description="AppRole secret id.")
    ca_cert: Path | None = Field(default=None, description="CA bundle for Vault's TLS certificate.")


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
