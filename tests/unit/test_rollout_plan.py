"""Rollout parameters, the default plan file and wave planning: sizes, order, stability, errors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from fleetops.domain import (
    BlockedVersion,
    Cluster,
    ClusterState,
    ExclusionReason,
    FailurePolicy,
    InventoryRecord,
    PlanningError,
    RolloutParameters,
    RolloutPlan,
    UnreachablePolicy,
    VersionBlocked,
    WavePlan,
    WaveSpec,
    check_version_allowed,
    default_waves,
    plan_rollout,
    plan_waves,
)
from fleetops.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def cluster(
    name: str,
    state: ClusterState = ClusterState.REGISTERED,
    **labels: str,
) -> Cluster:
    return Cluster(
        provider="static",
        account="lab",
        location="here",
        name=name,
        endpoint="https://127.0.0.1:6443",
        auth="static-kubeconfig",
        state=state,
        labels={key.replace("_", "-"): value for key, value in labels.items()},
    )


def fleet(count: int, **labels: str) -> list[Cluster]:
    return [cluster(f"c{index:03d}", **labels) for index in range(count)]


def waves(*specs: dict[str, Any]) -> list[WaveSpec]:
    return [WaveSpec.model_validate(spec) for spec in specs]


def sizes(plan: WavePlan) -> list[int]:
    return [wave.size for wave in plan.waves]


def params(**overrides: Any) -> RolloutParameters:
    values: dict[str, Any] = {"app": "hello", "version": "1.2.3"}
    values.update(overrides)
    return RolloutParameters.model_validate(values)


def error_of(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        params(**overrides)
    return str(caught.value)


# --- parameters -----------------------------------------------------------------------------


def test_defaults_are_the_issue_defaults() -> None:
    p = params()
    assert p.on_failure is FailurePolicy.ROLLBACK
    assert p.unreachable is UnreachablePolicy.FAIL
    assert p.dry_run is False
    assert p.rollout_id is None
    assert p.target == ""
    assert [w.name for w in p.waves] == ["canary", "ten-percent", "half", "rest"]
    wave = WaveSpec(name="w")
    assert wave.max_failures == 0
    assert wave.progress_deadline_seconds == 600
    assert wave.approval.required is False
    assert wave.approval.approvers == 1
    assert wave.takes_rest


def test_every_field_has_a_title_and_description_for_the_form() -> None:
    from fleetops.domain import ApprovalSpec

    for model in (RolloutParameters, WaveSpec, ApprovalSpec, RolloutPlan):
        for name, field in model.model_fields.items():
            assert field.title, f"{model.__name__}.{name} has no title"
            assert field.description, f"{model.__name__}.{name} has no description"
    schema = RolloutParameters.model_json_schema()
    assert schema["properties"]["on_failure"]["default"] == "rollback"
    assert set(schema["$defs"]["FailurePolicy"]["enum"]) == {"rollback", "halt"}


def test_target_selector_is_kept_canonical() -> None:
    assert params(target="tier in (web, api),env==prod").target == "env=prod,tier in (api,web)"
    assert "invalid label selector 'env=prod tier'" in error_of(target="env=prod tier")


def test_duplicate_wave_names_are_refused_with_both_positions() -> None:
    message = error_of(waves=[{"name": "a", "count": 1}, {"name": "b"}, {"name": "a"}])
    assert "wave name 'a' is used twice (waves 1 and 3)" in message


def test_count_and_percent_together_are_refused() -> None:
    message = error_of(waves=[{"name": "canary", "count": 1, "percent": 10}])
    assert "waves.0" in message
    assert "wave 'canary': give count or percent, not both (count=1, percent=10)" in message


@pytest.mark.parametrize("percent", [0, -5, 100.5, 150])
def test_percent_out_of_range_names_field_and_value(percent: float) -> None:
    message = error_of(waves=[{"name": "w", "percent": percent}])
    assert "waves.0.percent" in message
    assert f"input_value={percent}" in message


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("1.2.3", True),
        ("v1.2.3-rc.1", True),
        ("sha-0123abc", True),
        ("_build_7", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        (".hidden", False),
        ("-rc", False),
        ("1.2 3", False),
        ("1.2:3", False),
        ("1/2", False),
    ],
)
def test_version_must_be_an_image_tag(version: str, ok: bool) -> None:
    if ok:
        assert params(version=version).version == version
    else:
        message = error_of(version=version)
        assert f"version {version!r} is not a valid image tag" in message


def test_version_or_last_known_good_exactly_one() -> None:
    assert "version is required" in error_of(version=None)
    assert "give a version ('1.2.3') or rollback_to_last_known_good, not both" in error_of(
        rollback_to_last_known_good=True
    )
    p = params(version=None, rollback_to_last_known_good=True)
    assert p.version is None


def test_app_and_wave_names_are_dns_labels() -> None:
    assert "app 'Hello_World' must be a DNS label" in error_of(app="Hello_World")
    assert "wave name 'Canary' must be a DNS label" in error_of(waves=[{"name": "Canary"}])
    assert WaveSpec(name="  canary ").name == "canary"


def test_rollout_id_is_checked() -> None:
    assert params(rollout_id="hello-1.2.3-20250301").rollout_id == "hello-1.2.3-20250301"
    assert "rollout_id 'a b'" in error_of(rollout_id="a b")


def test_unknown_fields_are_refused() -> None:
    assert "waves.0.parallel" in error_of(waves=[{"name": "w", "parallel": 3}])
    assert "Extra inputs are not permitted" in error_of(colour="blue")


@pytest.mark.parametrize(
    ("value", "budget_of_20"),
    [(0, 0), (3, 3), ("10%", 2), ("12.5%", 2), ("4%", 0), ("100%", 20), (" 50% ", 10)],
)
def test_max_failures_count_or_percent_rounds_down(value: int | str, budget_of_20: int) -> None:
    wave = WaveSpec(name="w", max_failures=value)
    assert wave.failure_budget(20) == budget_of_20


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (-1, "max_failures -1: must be 0 or more"),
        ("3", "max_failures '3': give a whole number (2) or a percentage ('10%')"),
        ("ten%", "max_failures 'ten%'"),
        ("101%", "max_failures '101%': a percentage must be between 0% and 100%"),
        (True, "max_failures True"),
        (1.5, "max_failures 1.5"),
    ],
)
def test_max_failures_errors(value: Any, complaint: str) -> None:
    message = error_of(waves=[{"name": "w", "max_failures": value}])
    assert "waves.0.max_failures" in message
    assert complaint in message


def test_bounds_on_timings_and_parallelism() -> None:
    assert "waves.0.max_parallel" in error_of(waves=[{"name": "w", "max_parallel": 0}])
    assert "waves.0.progress_deadline_seconds" in error_of(
        waves=[{"name": "w", "progress_deadline_seconds": 0}]
    )
    assert "waves.0.bake_seconds" in error_of(waves=[{"name": "w", "bake_seconds": -1}])
    assert "waves.0.pace_seconds" in error_of(waves=[{"name": "w", "pace_seconds": -0.5}])
    assert "waves.0.count" in error_of(waves=[{"name": "w", "count": 0}])


def test_approvers_need_approval_and_are_bounded() -> None:
    message = error_of(waves=[{"name": "w", "approval": {"approvers": 2}}])
    assert "approvers=2 is set but required is false" in message
    assert "waves.0.approval.approvers" in error_of(
        waves=[{"name": "w", "approval": {"required": True, "approvers": 0}}]
    )
    wave = WaveSpec.model_validate({"name": "w", "approval": {"required": True, "approvers": 2}})
    assert wave.approval.approvers == 2


def test_a_catch_all_wave_must_be_last() -> None:
    message = error_of(waves=[{"name": "all"}, {"name": "more", "count": 1}])
    assert "wave 1 'all' takes every remaining cluster" in message
    assert "make it the last wave" in message


def test_no_waves_is_refused() -> None:
    assert "waves" in error_of(waves=[])


# --- the default plan file ------------------------------------------------------------------


def test_default_plan_file_validates_and_equals_the_model_default() -> None:
    data = yaml.safe_load((ROOT / "deployments" / "rollout-default.yaml").read_text())
    plan = RolloutPlan.model_validate(data)
    assert plan.waves == default_waves()
    assert plan.on_failure is FailurePolicy.ROLLBACK
    assert plan.unreachable is UnreachablePolicy.FAIL
    canary, ten, half, rest = plan.waves
    assert (canary.count, ten.percent, half.percent) == (1, 10, 50)
    assert rest.takes_rest
    assert ten.approval.required
    assert not canary.approval.required
    p = RolloutParameters.with_plan(plan, app="hello", version="2.0.0", dry_run=True)
    assert p.waves == plan.waves
    assert p.dry_run is True


def test_default_plan_over_100_clusters() -> None:
    plan = plan_waves(fleet(100), default_waves(), app="hello")
    # canary 1; 10 % of 99 = 9.9 -> 10; 50 % of 89 = 44.5 -> 45; the rest 44
    assert sizes(plan) == [1, 10, 45, 44]
    assert sorted(plan.cluster_ids) == sorted(c.id for c in fleet(100))
    assert plan.wave("canary").max_failures == 0


def test_plan_file_problems_name_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        RolloutPlan.model_validate({"waves": [{"name": "a", "count": 1, "percent": 5}]})
    assert "waves.0" in str(caught.value)
    assert "give count or percent, not both" in str(caught.value)


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "spec", "expected"),
    [
        (30, [{"name": "a", "percent": 10}, {"name": "r"}], [3, 27]),  # exact: not ceil(3.0000001)
        (10, [{"name": "a", "percent": 1}, {"name": "r"}], [1, 9]),  # at least 1
        (3, [{"name": "a", "percent": 50}, {"name": "r"}], [2, 1]),  # ceil(1.5)
        (3, [{"name": "a", "count": 5}, {"name": "r"}], [3, 0]),  # count capped at the pool
        (0, [{"name": "a", "count": 1}, {"name": "r"}], [0, 0]),  # empty fleet: empty waves
        (7, [{"name": "a", "percent": 100}], [7]),
        (
            10,
            [{"name": "a", "percent": 33.3}, {"name": "b", "percent": 33.3}, {"name": "r"}],
            [4, 2, 4],
        ),
    ],
)
def test_wave_sizes(count: int, spec: list[dict[str, Any]], expected: list[int]) -> None:
    assert sizes(plan_waves(fleet(count), waves(*spec), app="hello")) == expected


def test_percent_is_of_the_pool_a_selector_leaves() -> None:
    inventory = [cluster(f"p{i}", env="prod") for i in range(20)] + [
        cluster(f"d{i}", env="dev") for i in range(10)
    ]
    plan = plan_waves(
        inventory,
        waves(
            {"name": "dev", "selector": "env=dev", "percent": 50},
            {"name": "prod", "selector": "env=prod", "percent": 25},
            {"name": "rest"},
        ),
        app="hello",
    )
    assert sizes(plan) == [5, 5, 20]
    assert all("/d" in c for c in plan.wave("dev").clusters)
    assert all("/p" in c for c in plan.wave("prod").clusters)


def test_selector_wave_takes_every_match_without_count() -> None:
    inventory = [cluster("a", canary="true"), cluster("b"), cluster("c", canary="true")]
    plan = plan_waves(
        inventory, waves({"name": "canaries", "selector": "canary=true"}, {"name": "r"}), app="x"
    )
    assert sorted(plan.wave("canaries").clusters) == ["static/lab/here/a", "static/lab/here/c"]
    assert plan.wave("r").clusters == ("static/lab/here/b",)


# --- targets, exclusions and unplanned clusters ---------------------------------------------


def test_only_registered_targets_are_planned_others_reported() -> None:
    inventory = [
        cluster("ok", env="prod"),
        cluster("down", ClusterState.UNREACHABLE, env="prod"),
        cluster("gone", ClusterState.MISSING, env="prod"),
        cluster("old", ClusterState.RETIRED, env="prod"),
        cluster("new", ClusterState.DISCOVERED, env="prod"),
        cluster("dev", env="dev"),
        cluster("dev-down", ClusterState.UNREACHABLE, env="dev"),
    ]
    plan = plan_waves(inventory, [WaveSpec(name="all")], app="hello", target="env=prod")
    assert plan.cluster_ids == ("static/lab/here/ok",)
    assert plan.target == "env=prod"
    assert [(e.id.rsplit("/", 1)[1], e.reason) for e in plan.excluded] == [
        ("down", ExclusionReason.UNREACHABLE),
        ("gone", ExclusionReason.MISSING),
        ("new", ExclusionReason.DISCOVERED),
        ("old", ExclusionReason.RETIRED),
    ]
    assert plan.excluded_for(ExclusionReason.UNREACHABLE) == ("static/lab/here/down",)


def test_unreachable_policy_fail_stops_planning_skip_reports() -> None:
    inventory = [cluster("ok"), cluster("down", ClusterState.UNREACHABLE)]
    with pytest.raises(PlanningError) as caught:
        plan_rollout(params(), inventory)
    assert "1 target cluster(s) are unreachable: static/lab/here/down" in str(caught.value)
    plan = plan_rollout(params(unreachable="skip"), inventory)
    assert plan.cluster_ids == ("static/lab/here/ok",)
    assert plan.excluded_for(ExclusionReason.UNREACHABLE) == ("static/lab/here/down",)


def test_targets_in_no_wave_fail_planning_and_are_named() -> None:
    inventory = [cluster("a", env="prod"), cluster("b", env="dev"), cluster("c", env="dev")]
    with pytest.raises(PlanningError) as caught:
        plan_waves(inventory, waves({"name": "prod", "selector": "env=prod"}), app="hello")
    message = str(caught.value)
    assert "2 target cluster(s) of app 'hello' are in no wave" in message
    assert "static/lab/here/b, static/lab/here/c" in message
    assert "add a last wave without selector, count or percent" in message
    assert isinstance(caught.value, ConfigError)


def test_leftovers_of_counts_fail_planning_too() -> None:
    with pytest.raises(PlanningError, match="3 target cluster"):
        plan_waves(fleet(5), waves({"name": "a", "count": 1}, {"name": "b", "count": 1}), app="x")


def test_a_long_list_of_unplanned_clusters_is_cut() -> None:
    with pytest.raises(PlanningError) as caught:
        plan_waves(fleet(80), waves({"name": "a", "count": 1}), app="x")
    assert "79 target cluster(s)" in str(caught.value)
    assert "and 29 more" in str(caught.value)


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(PlanningError, match="listed more than once: static/lab/here/a"):
        plan_waves([cluster("a"), cluster("a")], [WaveSpec(name="all")], app="x")


def test_inventory_records_plan_like_clusters() -> None:
    records = [InventoryRecord.of(c) for c in fleet(12)]
    assert plan_waves(records, default_waves(), app="hello") == plan_waves(
        fleet(12), default_waves(), app="hello"
    )


# --- determinism and stability --------------------------------------------------------------


def test_plan_ignores_inventory_order() -> None:
    inventory = fleet(40)
    shuffled = inventory[:]
    random.Random(7).shuffle(shuffled)
    assert plan_waves(shuffled, default_waves(), app="hello") == plan_waves(
        inventory, default_waves(), app="hello"
    )


def test_seed_chooses_the_canary() -> None:
    inventory = fleet(50)
    by_app = plan_waves(inventory, default_waves(), app="hello")
    assert plan_waves(inventory, default_waves(), app="hello", seed="hello") == by_app
    canaries = {
        plan_waves(inventory, default_waves(), app="hello", seed=f"r{i}").waves[0].clusters
        for i in range(10)
    }
    assert len(canaries) > 1  # a rollout id as seed spreads canary duty over the fleet
    other_app = plan_waves(inventory, default_waves(), app="world")
    assert other_app.seed == "world"
    assert other_app.cluster_ids != by_app.cluster_ids


def _random_cluster(rng: random.Random, number: int) -> Cluster:
    return cluster(f"k{number}", env=rng.choice(["prod", "dev", "stage"]), tier=rng.choice("ab"))


def _random_waves(rng: random.Random, *, selectors: bool) -> list[WaveSpec]:
    specs: list[WaveSpec] = []
    for index in range(rng.randint(1, 5)):
        selector = rng.choice([None, "env=prod", "env!=dev", "tier=a"]) if selectors else None
        if rng.random() < 0.5:
            specs.append(WaveSpec(name=f"w{index}", selector=selector, count=rng.randint(1, 4)))
        else:
            percent = rng.choice([1, 5, 10, 25, 33.3, 50, 90, 100])
            specs.append(WaveSpec(name=f"w{index}", selector=selector, percent=percent))
    specs.append(WaveSpec(name="rest"))
    return specs


def _positions(plan: WavePlan) -> dict[str, int]:
    return {c: wave.index for wave in plan.waves for c in wave.clusters}


@pytest.mark.parametrize("selectors", [False, True], ids=["sizes-only", "with-selectors"])
def test_adding_a_cluster_barely_moves_the_others(selectors: bool) -> None:
    """Property, over 600 random inventories and plans (fixed seeds).

    Always: every cluster stays planned, and two clusters that share a wave before and after
    keep their order in it (the inventory is listed in reverse the second time, so the order it
    is listed in does not matter either). Plans without selectors: at most one other cluster
    crosses each wave boundary, by one wave, so at most (waves - 1) move.
    """
    for case in range(600):
        rng = random.Random(1000 * selectors + case)
        numbers = rng.sample(range(5000), rng.randint(1, 61))
        inventory = [_random_cluster(rng, number) for number in numbers[1:]]
        added = _random_cluster(rng, numbers[0])
        specs = _random_waves(rng, selectors=selectors)
        before = plan_waves(inventory, specs, app="hello")
        after = plan_waves([*inventory, added][::-1], specs, app="hello")
        context = f"case {case}: {len(inventory)} clusters, waves {[w.describe() for w in specs]}"

        assert sorted(after.cluster_ids) == sorted([*before.cluster_ids, added.id]), context
        for old, new in zip(before.waves, after.waves, strict=True):
            kept = [c for c in new.clusters if c in old.clusters]
            assert kept == [c for c in old.clusters if c in new.clusters], context

        if selectors:
            continue
        was, now = _positions(before), _positions(after)
        moved = {c: (was[c], now[c]) for c in was if was[c] != now[c]}
        assert all(abs(a - b) == 1 for a, b in moved.values()), context
        for boundary in range(1, len(specs)):
            crossing = [c for c, (a, b) in moved.items() if min(a, b) <= boundary < max(a, b)]
            assert len(crossing) <= 1, context
        assert len(moved) <= len(specs) - 1, context


def test_adding_a_cluster_ranked_last_moves_nobody_in_a_count_plan() -> None:
    inventory = fleet(20)
    specs = waves({"name": "canary", "count": 1}, {"name": "more", "count": 5}, {"name": "r"})
    before = plan_waves(inventory, specs, app="hello")
    for number in range(100, 400):
        newcomer = cluster(f"c{number}")
        after = plan_waves([*inventory, newcomer], specs, app="hello")
        if after.wave_of(newcomer.id) == "r" and after.wave("r").clusters[-1] == newcomer.id:
            assert after.waves[0].clusters == before.waves[0].clusters
            assert after.waves[1].clusters == before.waves[1].clusters
            return
    pytest.fail("no newcomer ranked last")


def test_removing_clusters_of_a_later_wave_keeps_the_canary() -> None:
    inventory = fleet(30)
    before = plan_waves(inventory, default_waves(), app="hello")
    rest = set(before.wave("rest").clusters)
    after = plan_waves([c for c in inventory if c.id not in rest], default_waves(), app="hello")
    assert after.wave("canary").clusters == before.wave("canary").clusters


def test_plan_rows_for_the_artifact() -> None:
    plan = plan_waves(fleet(12), default_waves(), app="hello")
    rows = plan.rows()
    assert [row["wave"] for row in rows] == ["canary", "ten-percent", "half", "rest"]
    assert [row["clusters"] for row in rows] == [1, 2, 5, 4]
    assert rows[1]["approval"] == 1
    assert rows[0]["bake_seconds"] == 300
    assert str(rows[3]["first"]).endswith(" ...")
    assert default_waves()[1].describe() == (
        "ten-percent: 10% of the rest, 5 at a time, max failures 0, bake 120s, 1 approval(s)"
    )


# --- blocklist ------------------------------------------------------------------------------


def test_blocked_versions_are_refused_with_the_reason() -> None:
    from datetime import UTC, datetime

    blocklist = [
        BlockedVersion(app="other", version="1.2.3"),
        BlockedVersion(
            app="hello",
            version="1.2.3",
            reason="wave 'half' failed: 2 of 5 clusters failed",
            rollout_id="r-42",
            blocked_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        ),
    ]
    check_version_allowed("hello", "1.2.4", blocklist)
    check_version_allowed("other", "1.2.4", blocklist)
    check_version_allowed("hello", "1.2.3-fix", blocklist)
    with pytest.raises(VersionBlocked) as caught:
        check_version_allowed("hello", "1.2.3", blocklist)
    assert str(caught.value) == (
        "version '1.2.3' of app 'hello' is blocked (rolled back by rollout r-42; "
        "at 2025-03-01T12:00:00+00:00; reason: wave 'half' failed: 2 of 5 clusters failed); "
        "an operator must clear it from the blocklist before it can be rolled out again "
        "(fleetops blocklist clear hello 1.2.3 --operator NAME)"
    )
    assert isinstance(caught.value, ConfigError)
    with pytest.raises(VersionBlocked, match=r"'1.2.3' of app 'other' is blocked; an operator"):
        check_version_allowed("other", "1.2.3", blocklist)
