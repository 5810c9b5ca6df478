"""Settings come from FLEETOPS_* variables; the CLI shows them without secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleetops.errors import (
    AuthError,
    Conflict,
    NotFound,
    RateLimited,
    Rejected,
    TransientError,
    error_for_status,
    is_transient,
)
from fleetops.settings import Settings, SlackSettings

FLEETOPS = str(Path(sys.executable).with_name("fleetops"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETOPS_")}
    env.update(extra)
    return env


def test_settings_read_grouped_prefixed_variables(tmp_path: Path) -> None:
    env = _env(
        FLEETOPS_SLACK_TOKEN="xoxb-1-2-secretvalue",
        FLEETOPS_SLACK_CHANNEL="#ops",
        FLEETOPS_KUBECONFIG=str(tmp_path / "kubeconfig"),
        FLEETOPS_INVENTORY_URL="sqlite:///x.db",
    )
    out = subprocess.run(
        [FLEETOPS, "settings"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    shown = json.loads(out)
    assert shown["slack"]["channel"] == "#ops"
    assert shown["slack"]["token"] == "**********"
    assert shown["kube"]["kubeconfig"] == str(tmp_path / "kubeconfig")
    assert shown["inventory"]["url"] == "sqlite:///x.db"
    assert "secretvalue" not in out


def test_invalid_setting_is_named(tmp_path: Path) -> None:
    result = subprocess.run(
        [FLEETOPS, "settings"],
        env=_env(FLEETOPS_SLACK_BASE_URL="not a url"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "base_url" in result.stderr
    with pytest.raises(ValidationError, match="base_url"):
        SlackSettings(base_url="not a url")  # type: ignore[arg-type]


def test_secret_settings_do_not_print() -> None:
    settings = Settings(slack=SlackSettings(token="xoxb-1-2-hidden"))  # type: ignore[arg-type]
    assert "hidden" not in repr(settings)
    assert "hidden" not in str(settings.model_dump())


def test_help_lists_commands() -> None:
    out = subprocess.run([FLEETOPS, "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage: fleetops" in out
    assert "settings" in out
    assert "version" in out


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [
        (429, RateLimited, True),
        (500, TransientError, True),
        (503, TransientError, True),
        (401, AuthError, False),
        (403, AuthError, False),
        (404, NotFound, False),
        (409, Conflict, False),
        (422, Rejected, False),
        (400, Rejected, False),
    ],
)
def test_status_codes_map_onto_the_error_tree(status: int, kind: type, transient: bool) -> None:
    error = error_for_status(status, "boom", system="kube:sbx-01")
    assert type(error) is kind
    assert is_transient(error) is transient
    assert str(error) == "kube:sbx-01: boom"
    assert error.status == status
