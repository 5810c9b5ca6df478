"""What a rollout is asked to do: the parameter models the Prefect UI renders as the form.

:class:`RolloutParameters` is the one parameter model of the rollout flow; :class:`WaveSpec` is
one stage of it. ``deployments/rollout-default.yaml`` holds the default plan (the same as
:func:`default_waves`) and is validated by these models. Validation errors name the field and
the value, so a bad form or plan file is fixed without guessing.

Sizes and failure budgets, in one place:

- A wave takes its **pool**: the targets not planned by an earlier wave that match its
  ``selector`` (all of them without one). ``count`` takes that many from the pool (all of it if
  the pool is smaller); ``percent`` takes ``ceil(percent * pool / 100)``, at least 1 while the
  pool is not empty. Neither takes the whole pool. Arithmetic is exact (10 % of 30 is 3).
- ``max_failures`` is a count (``2``) or a percentage of the wave's planned size (``"10%"``),
  rounded down: 10 % of a 5-cluster wave is 0, i.e. stop on the first failure.

Versions that were rolled back are refused by :func:`check_version_allowed` until an operator
clears them from the blocklist.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from fractions import Fraction
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from fleetops.domain.selectors import SelectorText
from fleetops.errors import VersionBlocked


class FailurePolicy(StrEnum):
    """What happens to the clusters already changed when a wave fails."""

    ROLLBACK = "rollback"
    HALT = "halt"


class UnreachablePolicy(StrEnum):
    """What an unreachable target cluster does to the rollout."""

    FAIL = "fail"
    SKIP = "skip"


# DNS label (RFC 1123): app directory names, wave names (also Prefect artifact key parts).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# OCI distribution spec tag grammar.
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ROLLOUT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


def version_problem(version: str) -> str | None:
    """Why ``version`` is not a valid container image tag, or None when it is."""
    if _IMAGE_TAG.match(version):
        return None
    return (
        f"version {version!r} is not a valid image tag: 1 to 128 characters of letters, digits, "
        "'_', '.' and '-', not starting with '.' or '-'"
    )


def _check_version(value: str) -> str:
    problem = version_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _check_dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} must be a DNS label: at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _int_or_percent(value: Any) -> int | str:
    """``max_failures`` as Kubernetes writes ``maxUnavailable``: ``2`` or ``"10%"``."""
    if isinstance(value, bool):
        raise ValueError(f"max_failures {value!r}: give a whole number (2) or a percentage ('10%')")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"max_failures {value}: must be 0 or more")
        return value
    if isinstance(value, str):
        match = _PERCENT.match(value.strip())
        if match is None:
            raise ValueError(
                f"max_failures {value!r}: give a whole number (2) or a percentage ('10%')"
            )
        if Fraction(match.group(1)) > 100:
            raise ValueError(f"max_failures {value!r}: a percentage must be between 0% and 100%")
        return value.strip()
    raise ValueError(f"max_failures {value!r}: give a whole number (2) or a percentage ('10%')")


IntOrPercent = Annotated[int | str, BeforeValidator(_int_or_percent)]
"""A count (``2``) or a percentage string (``"10%"``), as Kubernetes' IntOrString."""


def percent_of(percent: float | str, total: int) -> Fraction:
    """``percent`` % of ``total``, exactly (no binary floating-point error: 10 % of 30 is 3)."""
    return Fraction(str(percent)) * total / 100


class ApprovalSpec(BaseModel):
    """Whether a wave waits for people before it starts, and for how many."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    required: bool = Field(
        default=False,
        title="Approval required",
        description="Pause before the wave until it is approved in the Prefect UI or with "
        "`fleetops approve`.",
    )
    approvers: int = Field(
        default=1,
        ge=1,
        le=10,
        title="Distinct approvers",
        description="How many different people must approve; one person counts once.",
    )
    timeout_seconds: float = Field(
        default=3600,
        gt=0,
        title="Approval timeout (s)",
        description="How long to wait for the approvals; a timeout fails the wave "
        "(handled by on_failure).",
    )

    @model_validator(mode="after")
    def _approvers_need_approval(self) -> Self:
        if not self.required and self.approvers != 1:
            raise ValueError(
                f"approvers={self.approvers} is set but required is false: set required: true "
                "or drop approvers"
            )
        return self


class WaveSpec(BaseModel):
    """One stage of a rollout: which clusters, how fast, how many failures it tolerates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        title="Name",
        description="Unique name of the wave (a DNS label: canary, ten-percent, rest...).",
    )
    selector: SelectorText | None = Field(
        default=None,
        title="Label selector",
        description="kubectl label selector over cluster labels; the wave only takes targets "
        "that match. Blank: any target.",
    )
    count: int | None = Field(
        default=None,
        ge=1,
        title="Cluster count",
        description="Take this many of the targets not planned yet (that match the selector). "
        "Leave blank with percent blank to take all of them.",
    )
    percent: float | None = Field(
        default=None,
        gt=0,
        le=100,
        title="Percent of remaining",
        description="Take this percentage of the targets not planned yet (that match the "
        "selector), rounded up, at least 1. Not together with count.",
    )
    max_parallel: int = Field(
        default=10,
        ge=1,
        le=1000,
        title="Max parallel clusters",
        description="How many clusters of the wave are changed at the same time.",
    )
    max_failures: IntOrPercent = Field(
        default=0,
        title="Max failures",
        description="Failed clusters the wave tolerates: a count (2) or a percentage of the "
        "wave's size ('10%', rounded down). 0 stops on the first failure.",
    )
    progress_deadline_seconds: float = Field(
        default=600,
        gt=0,
        title="Progress deadline (s)",
        description="How long a cluster may take to report every workload at the new revision "
        "before it counts as failed.",
    )
    bake_seconds: float = Field(
        default=0,
        ge=0,
        title="Bake time (s)",
        description="After the wave succeeded, wait this long and re-check health of the whole "
        "wave from live state before going on.",
    )
    approval: ApprovalSpec = Field(
        default_factory=ApprovalSpec,
        title="Approval",
        description="Whether the wave waits for approval before it starts.",
    )
    pace_seconds: float = Field(
        default=0,
        ge=0,
        title="Pace (s)",
        description="Minimum gap between starting two clusters of this wave.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return _check_dns_label(value.strip())
        except ValueError as exc:
            raise ValueError(f"wave name {exc}") from None

    @field_validator("selector")
    @classmethod
    def _blank_selector(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _count_or_percent(self) -> Self:
        if self.count is not None and self.percent is not None:
            raise ValueError(
                f"wave {self.name!r}: give count or percent, not both "
                f"(count={self.count}, percent={self.percent:g})"
            )
        return self

    @property
    def takes_rest(self) -> bool:
        """A catch-all: no selector, count or percent, so it takes every target left."""
        return self.selector is None and self.count is None and self.percent is None

    @property
    def max_failures_percent(self) -> float | None:
        """The percentage of ``max_failures`` when it is one, else None."""
        if isinstance(self.max_failures, str):
            return float(self.max_failures.removesuffix("%"))
        return None

    def size(self, pool: int) -> int:
        """How many clusters the wave takes from a pool of ``pool`` candidates."""
        if pool <= 0:
            return 0
        if self.count is not None:
            return min(self.count, pool)
        if self.percent is not None:
            return min(pool, max(1, math.ceil(percent_of(self.percent, pool))))
        return pool

    def failure_budget(self, size: int) -> int:
        """Failures tolerated in a wave of ``size`` clusters (a percentage rounds down)."""
        if isinstance(self.max_failures, int):
            return self.max_failures
        return math.floor(percent_of(self.max_failures.removesuffix("%"), size))

    def describe(self) -> str:
        """One line for the plan artifact and Slack: ``canary: 1 cluster, max 1 at a time``."""
        parts = []
        if self.selector is not None:
            parts.append(f"selector {self.selector}")
        if self.count is not None:
            parts.append(f"{self.count} cluster{'s' if self.count != 1 else ''}")
        elif self.percent is not None:
            parts.append(f"{self.percent:g}% of the rest")
        elif self.selector is None:
            parts.append("all the rest")
        parts.append(f"{self.max_parallel} at a time")
        parts.append(f"max failures {self.max_failures}")
        if self.bake_seconds:
            parts.append(f"bake {self.bake_seconds:g}s")
        if self.approval.required:
            parts.append(f"{self.approval.approvers} approval(s)")
        return f"{self.name}: " + ", ".join(parts)


def _check_waves(waves: list[WaveSpec]) -> list[WaveSpec]:
    seen: dict[str, int] = {}
    for index, wave in enumerate(waves, start=1):
        if wave.name in seen:
            raise ValueError(
                f"wave name {wave.name!r} is used twice (waves {seen[wave.name]} and {index}); "
                "wave names must be unique"
            )
        seen[wave.name] = index
    for index, wave in enumerate(waves[:-1], start=1):
        if wave.takes_rest:
            raise ValueError(
                f"wave {index} {wave.name!r} takes every remaining cluster (no selector, count or "
                f"percent), so the {len(waves) - index} wave(s) after it would be empty; make it "
                "the last wave"
            )
    return waves


def default_waves() -> list[WaveSpec]:
    """The default plan: a canary cluster, then 10 %, 50 % and the rest, approval after canary.

    ``deployments/rollout-default.yaml`` holds the same plan (a test keeps them equal).
    """
    return [
        WaveSpec(name="canary", count=1, max_parallel=1, bake_seconds=300),
        WaveSpec(
            name="ten-percent",
            percent=10,
            max_parallel=5,
            bake_seconds=120,
            approval=ApprovalSpec(required=True),
        ),
        WaveSpec(name="half", percent=50, max_parallel=20, bake_seconds=60),
        WaveSpec(name="rest", max_parallel=50),
    ]


Waves = Annotated[list[WaveSpec], Field(min_length=1)]


class RolloutPlan(BaseModel):
    """A wave plan file (``deployments/rollout-*.yaml``, ``fleetops rollout --plan FILE``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    waves: Waves = Field(
        title="Waves", description="The stages, in order; the last one usually takes the rest."
    )
    on_failure: FailurePolicy = Field(
        default=FailurePolicy.ROLLBACK,
        title="On failure",
        description="rollback: restore every changed cluster; halt: stop and leave as is.",
    )
    unreachable: UnreachablePolicy = Field(
        default=UnreachablePolicy.FAIL,
        title="Unreachable clusters",
        description="fail: an unreachable target fails the rollout; skip: leave it out, reported.",
    )

    @field_validator("waves")
    @classmethod
    def _waves(cls, value: list[WaveSpec]) -> list[WaveSpec]:
        return _check_waves(value)


class RolloutParameters(BaseModel):
    """Roll an application out to the fleet in staged waves, with gates and rollback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app: str = Field(
        title="Application",
        description="Name of the application: its manifests are in apps/<app>/.",
    )
    version: str | None = Field(
        default=None,
        title="Version",
        description="Version to roll out: fills ${version} (the image tag). Leave blank only "
        "with rollback_to_last_known_good.",
    )
    target: SelectorText = Field(
        default="",
        title="Target clusters",
        description="kubectl label selector over the inventory (env=prod,tier in (web,api)). "
        "Blank: every registered cluster.",
    )
    waves: Waves = Field(
        default_factory=default_waves,
        title="Waves",
        description="The stages, in order. Default: canary 1 cluster, 10 %, 50 %, rest.",
    )
    on_failure: FailurePolicy = Field(
        default=FailurePolicy.ROLLBACK,
        title="On failure",
        description="rollback: restore every cluster this rollout changed, newest first, and "
        "block the version; halt: stop and leave everything as it is.",
    )
    unreachable: UnreachablePolicy = Field(
        default=UnreachablePolicy.FAIL,
        title="Unreachable clusters",
        description="fail: an unreachable target fails the rollout; skip: leave it out, reported.",
    )
    dry_run: bool = Field(
        default=False,
        title="Dry run",
        description="Server-side dry run on every target and a diff summary; nothing changes.",
    )
    rollout_id: str | None = Field(
        default=None,
        title="Rollout id",
        description="Give the id of an earlier run to resume it from live state; blank for a "
        "new rollout.",
    )
    rollback_to_last_known_good: bool = Field(
        default=False,
        title="Roll back to last known good",
        description="Instead of a new version, put every target back on the version it last "
        "ran successfully.",
    )

    @field_validator("app")
    @classmethod
    def _app(cls, value: str) -> str:
        try:
            return _check_dns_label(value)
        except ValueError as exc:
            raise ValueError(f"app {exc}") from None

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        return None if value is None else _check_version(value)

    @field_validator("rollout_id")
    @classmethod
    def _rollout_id(cls, value: str | None) -> str | None:
        if value is not None and not _ROLLOUT_ID.match(value):
            raise ValueError(
                f"rollout_id {value!r}: 1 to 63 letters, digits, '.', '_' and '-', starting with "
                "a letter or digit"
            )
        return value

    @field_validator("waves")
    @classmethod
    def _waves(cls, value: list[WaveSpec]) -> list[WaveSpec]:
        return _check_waves(value)

    @model_validator(mode="after")
    def _version_or_last_known_good(self) -> Self:
        if self.rollback_to_last_known_good and self.version is not None:
            raise ValueError(
                f"give a version ({self.version!r}) or rollback_to_last_known_good, not both"
            )
        if not self.rollback_to_last_known_good and self.version is None:
            raise ValueError("version is required (or set rollback_to_last_known_good)")
        return self

    @classmethod
    def with_plan(cls, plan: RolloutPlan, **parameters: Any) -> Self:
        """Parameters whose waves and policies come from a plan file; ``parameters`` win."""
        values: dict[str, Any] = {
            "waves": plan.waves,
            "on_failure": plan.on_failure,
            "unreachable": plan.unreachable,
        }
        values.update(parameters)
        return cls.model_validate(values)


# --- blocklist ------------------------------------------------------------------------------


class BlockedVersion(BaseModel):
    """A version of an app that may not be rolled out (it was rolled back) until cleared."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app: str = Field(description="Application name.")
    version: str = Field(description="The blocked version.")
    reason: str = Field(default="", description="Why: the failure that caused the rollback.")
    rollout_id: str | None = Field(default=None, description="The rollout that blocked it.")
    blocked_at: datetime | None = Field(default=None, description="When it was blocked (UTC).")


def clear_block_command(app: str, version: str) -> str:
    """The command an operator runs to allow a blocked ``version`` of ``app`` again."""
    return f"fleetops blocklist clear {app} {version} --operator NAME"


def check_version_allowed(app: str, version: str, blocklist: Iterable[BlockedVersion]) -> None:
    """Raise :class:`VersionBlocked` if ``version`` of ``app`` is on the blocklist.

    The comparison is exact (tags are case-sensitive); entries of other apps are ignored.
    """
    for entry in blocklist:
        if entry.app == app and entry.version == version:
            details = []
            if entry.rollout_id:
                details.append(f"rolled back by rollout {entry.rollout_id}")
            if entry.blocked_at:
                details.append(f"at {entry.blocked_at.isoformat()}")
            if entry.reason:
                details.append(f"reason: {entry.reason}")
            because = f" ({'; '.join(details)})" if details else ""
            raise VersionBlocked(
                f"version {version!r} of app {app!r} is blocked{because}; an operator must "
                "clear it from the blocklist before it can be rolled out again "
                f"({clear_block_command(app, version)})"
            )
