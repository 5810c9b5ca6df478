"""Inventory domain: label normalisation, the discovery state machine and its diff, probes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from fleetops.domain import (
    Cluster,
    ClusterState,
    InventoryRecord,
    LabelOverride,
    ProbeResult,
    Reconciliation,
    SourceResult,
    apply_probe,
    apply_probes,
    derived_labels,
    kubernetes_minor,
    normalise_labels,
    probe_due,
    reconcile,
)
from fleetops.domain.labels import validate_labels

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(run: int) -> datetime:
    """The clock of the n-th discovery run, every 15 minutes."""
    return T0 + timedelta(minutes=15 * run)


# --- normalisation ----------------------------------------------------------------------------


def test_aws_tags_with_spaces_colons_and_upper_case() -> None:
    tags = {
        "Name": "Prod A",
        "Cost Center": "Platform Eng",
        "aws:cloudformation:stack-name": "eks-prod-stack",
        "kubernetes.io/cluster/prod-a": "owned",
        "k8s.io/cluster-autoscaler/enabled": "true",
        "Owner": "jane.doe@example.com",
        "team/owner": "SRE",
        "Équipe": "Réseau",
    }
    assert normalise_labels(tags) == {
        "aws-cloudformation-stack-name": "eks-prod-stack",
        "cost-center": "Platform-Eng",
        "equipe": "Reseau",
        "k8s.io/cluster-autoscaler-enabled": "true",
        "kubernetes.io/cluster-prod-a": "owned",
        "name": "Prod-A",
        "owner": "jane.doe-example.com",
        "team-owner": "SRE",
    }


def test_gke_labels_are_already_valid_and_kept() -> None:
    labels = {"env": "prod", "team": "data-eng", "goog-managed-by": "gke", "cost_center": "cc-42"}
    assert normalise_labels(labels) == dict(sorted(labels.items()))


def test_aks_tags() -> None:
    tags = {
        "CreatedBy": "terraform",
        "Business Unit": "Payments & Risk",
        "cost-center": "CC:1234",
        "hidden-link:/subscriptions/abc/resourceGroups/rg": "Resource",
        "Description": "A cluster for the " + "very " * 20 + "long description",
    }
    labels = normalise_labels(tags)
    assert labels["createdby"] == "terraform"
    assert labels["business-unit"] == "Payments-Risk"
    assert labels["cost-center"] == "CC-1234"
    assert labels["hidden-link-subscriptions-abc-resourcegroups-rg"] == "Resource"
    assert len(labels["description"]) <= 63
    assert labels["description"].startswith("A-cluster-for-the-very-very")
    assert labels["description"][-1].isalnum()
    validate_labels(labels)


def test_edges_trimmed_long_keys_cut_empty_values_kept_empty_keys_dropped() -> None:
    labels = normalise_labels({"--Team--": "__a__", "k" * 80: "v", "***": "x", "note": "!!!"})
    assert labels == {"team": "a", "k" * 63: "v", "note": ""}


def test_fleetops_prefix_is_reserved_for_derived_labels() -> None:
    assert normalise_labels({"fleetops.io/provider": "gke", "FleetOps.io/wave": "1"}) == {}


def test_collisions_merge_equal_values_and_suffix_others_whatever_the_order() -> None:
    tags = {"Environment": "Production", "environment": "production", "ENV": "x", "env": "x"}
    labels = normalise_labels(tags)
    # 'environment' needed no change, so it keeps the key; 'Environment' gets a stable suffix.
    assert labels["environment"] == "production"
    suffixed = [key for key in labels if key.startswith("environment-")]
    assert len(suffixed) == 1
    assert labels[suffixed[0]] == "Production"
    assert len(suffixed[0]) == len("environment-") + 6
    assert labels["env"] == "x"  # ENV and env merged: same value
    assert len(labels) == 3
    assert normalise_labels(dict(reversed(list(tags.items())))) == labels


def test_collision_suffix_fits_in_63() -> None:
    long = "x" * 70
    labels = normalise_labels({long: "a", long.upper(): "b"})
    assert sorted(len(key) for key in labels) == [63, 63]
    validate_labels(labels)


@pytest.mark.parametrize(
    ("version", "minor"),
    [
        ("1.31.2", "1.31"),
        ("v1.31.2-gke.1200000", "1.31"),
        ("1.30.4-eks-a737599", "1.30"),
        ("1.29", "1.29"),
        ("v1.28.3+k3s1", "1.28"),
        ("latest", None),
        ("", None),
        (None, None),
    ],
)
def test_kubernetes_minor(version: str | None, minor: str | None) -> None:
    assert kubernetes_minor(version) == minor


def test_derived_labels_under_fleetops_prefix() -> None:
    assert derived_labels(
        provider="gke",
        account="fleet-prod",
        region="europe-west1",
        zone="europe-west1-b",
        kubernetes_version="v1.31.2-gke.1200",
    ) == {
        "fleetops.io/provider": "gke",
        "fleetops.io/account": "fleet-prod",
        "fleetops.io/region": "europe-west1",
        "fleetops.io/zone": "europe-west1-b",
        "fleetops.io/k8s-minor": "1.31",
    }
    static = derived_labels(provider="static", account="kubeconfig", region=None)
    assert static == {"fleetops.io/provider": "static", "fleetops.io/account": "kubeconfig"}


# --- discovery ------------------------------------------------------------------------------


def cluster(
    name: str, *, provider: str = "eks", account: str = "111111111111", **fields: object
) -> Cluster:
    values: dict[str, object] = {
        "provider": provider,
        "account": account,
        "location": "eu-west-1",
        "name": name,
        "endpoint": f"https://{name}.example:443",
        "auth": {"eks": "eks-iam", "gke": "gcp-access-token", "aks": "aks-user-credential"}.get(
            provider, "static-kubeconfig"
        ),
        "kubernetes_version": "1.30.4",
        "provider_status": "ACTIVE",
        "labels": {"env": "prod", "fleetops.io/provider": provider},
    }
    values.update(fields)
    return Cluster.model_validate(values)


def eks(
    *clusters: Cluster, error: str | None = None, accounts: tuple[str, ...] = ("111111111111",)
) -> SourceResult:
    return SourceResult(
        name="eks", provider="eks", accounts=accounts, clusters=clusters, error=error
    )


def gke(*clusters: Cluster, error: str | None = None) -> SourceResult:
    return SourceResult(
        name="gke", provider="gke", accounts=("proj",), clusters=clusters, error=error
    )


def run(
    records: tuple[InventoryRecord, ...] | Reconciliation,
    *sources: SourceResult,
    when: datetime,
    overrides: tuple[LabelOverride, ...] = (),
) -> Reconciliation:
    if isinstance(records, Reconciliation):
        records = records.records
    return reconcile(records=records, sources=sources, overrides=overrides, now=when)


def by_id(result: Reconciliation) -> dict[str, InventoryRecord]:
    return {record.id: record for record in result.records}


A = cluster("a")
B = cluster("b")
G = cluster("g", provider="gke", account="proj")


def test_new_clusters_are_added_as_discovered() -> None:
    result = run((), eks(A, B), gke(G), when=at(0))
    assert result.diff.added == (A.id, B.id, G.id)
    assert result.diff.has_changes
    record = by_id(result)[A.id]
    assert record.state is ClusterState.DISCOVERED
    assert record.first_seen == record.last_seen == at(0)
    assert record.missed_count == 0
    assert record.labels == A.labels
    assert [r.id for r in result.writes] == [A.id, B.id, G.id]


def test_same_discovery_again_is_unchanged_but_seen() -> None:
    first = run((), eks(A, B), when=at(0))
    second = run(first, eks(B, A), when=at(1))
    assert second.diff.unchanged == (A.id, B.id)
    assert not second.diff.has_changes
    assert by_id(second)[A.id].last_seen == at(1)
    assert by_id(second)[A.id].first_seen == at(0)
    assert len(second.writes) == 2  # last_seen moved on
    assert run(second, eks(A, B), when=at(1)).writes == ()  # same clock: nothing to write


def test_changed_fields_are_named() -> None:
    first = run((), eks(A, B), when=at(0))
    upgraded = cluster("a", kubernetes_version="1.31.1", labels={"env": "prod", "team": "sre"})
    second = run(first, eks(upgraded, B), when=at(1))
    assert [(c.id, c.fields) for c in second.diff.changed] == [
        (A.id, ("kubernetes_version", "labels"))
    ]
    change = second.diff.changed[0]
    assert change.before.kubernetes_version == "1.30.4"
    assert change.after.kubernetes_version == "1.31.1"
    assert second.diff.unchanged == (B.id,)


def test_missing_after_three_successful_runs_without_it_and_back_when_it_returns() -> None:
    result = run((), eks(A, B), when=at(0))
    seen = []
    for n in range(1, 5):
        result = run(result, eks(A), when=at(n))
        seen.append((result.diff.unseen, result.diff.missing, by_id(result)[B.id].missed_count))
    assert seen == [
        ((B.id,), (), 1),
        ((B.id,), (), 2),
        ((), (B.id,), 3),  # reported once, when it becomes missing
        ((B.id,), (), 4),
    ]
    assert by_id(result)[B.id].state is ClusterState.MISSING
    assert by_id(result)[B.id].last_seen == at(0)

    back = run(result, eks(A, B), when=at(5))
    assert back.diff.returned == (B.id,)
    assert [(c.id, c.fields) for c in back.diff.changed] == [(B.id, ("state",))]
    assert by_id(back)[B.id].state is ClusterState.REGISTERED
    assert by_id(back)[B.id].missed_count == 0
    assert back.diff.has_changes


def test_a_failed_source_leaves_its_clusters_untouched() -> None:
    result = run((), eks(A, B), gke(G), when=at(0))
    result = run(result, eks(A), gke(G), when=at(1))  # B missed once
    before = by_id(result)
    failed = run(result, eks(error="AccessDenied: assume role"), gke(G), when=at(2))
    assert by_id(failed)[A.id] == before[A.id]
    assert by_id(failed)[B.id] == before[B.id]  # missed_count not incremented
    assert failed.diff.untouched == (A.id, B.id)
    assert failed.diff.unchanged == (G.id,)
    assert failed.diff.failed_sources == ("eks: AccessDenied: assume role",)
    assert {r.id for r in failed.writes} == {G.id}
    # A failed run does not count: two more successful runs without B are needed.
    result = run(failed, eks(A), gke(G), when=at(3))
    assert by_id(result)[B.id].state is not ClusterState.MISSING
    result = run(result, eks(A), gke(G), when=at(4))
    assert result.diff.missing == (B.id,)


def test_clusters_a_failed_source_did_return_are_not_registered() -> None:
    result = run((), eks(A, error="throttled past retries"), gke(G), when=at(0))
    assert result.diff.added == (G.id,)
    assert A.id not in by_id(result)


def test_records_no_source_of_this_run_covers_are_untouched() -> None:
    result = run((), eks(A), gke(G), when=at(0))
    other_account = eks(accounts=("222222222222",))
    for n in range(1, 5):
        result = run(result, other_account, when=at(n))
    assert result.diff.untouched == (A.id, G.id)
    assert by_id(result)[A.id].missed_count == 0


def test_retired_records_stay_retired_and_are_reported() -> None:
    result = run((), eks(A, B), when=at(0))
    records = tuple(
        r.model_copy(update={"state": ClusterState.RETIRED}) if r.id == A.id else r
        for r in result.records
    )
    upgraded = cluster("a", kubernetes_version="1.31.1")
    for n in range(1, 5):
        result = run(records, eks(upgraded) if n % 2 else eks(), when=at(n))
        assert by_id(result)[A.id] == records[0]
        assert result.diff.retired == (A.id,)
        assert A.id not in result.diff.added + result.diff.unchanged + result.diff.missing
        records = result.records


def test_overrides_by_selector_then_by_id() -> None:
    overrides = (
        LabelOverride(id=A.id, labels={"wave": "1", "tier": "gold"}),
        LabelOverride(selector="fleetops.io/provider=eks", labels={"wave": "2", "tier": "silver"}),
        LabelOverride(selector="env=prod", labels={"tier": "bronze"}),
        # Selectors see the discovered labels only, not labels other overrides set.
        LabelOverride(selector="wave=2", labels={"never": "applied"}),
        LabelOverride(id="eks/999/eu-west-1/gone", labels={"x": "y"}),
    )
    result = run((), eks(A, B), gke(G), when=at(0), overrides=overrides)
    labels = {cid: r.labels for cid, r in by_id(result).items()}
    assert labels[A.id] == {
        "env": "prod",
        "fleetops.io/provider": "eks",
        "tier": "gold",
        "wave": "1",
    }
    assert labels[B.id] == {
        "env": "prod",
        "fleetops.io/provider": "eks",
        "tier": "bronze",
        "wave": "2",
    }
    assert labels[G.id] == {"env": "prod", "fleetops.io/provider": "gke", "tier": "bronze"}
    assert result.diff.unmatched_overrides == ("selector=wave=2", "id=eks/999/eu-west-1/gone")

    # Overrides change any time; the next run applies them, and a removed one's labels go.
    later = run(result, eks(A, B), gke(G), when=at(1), overrides=overrides[2:3])
    assert [(c.id, c.fields) for c in later.diff.changed] == [
        (A.id, ("labels",)),
        (B.id, ("labels",)),
    ]
    assert by_id(later)[A.id].labels == {
        "env": "prod",
        "fleetops.io/provider": "eks",
        "tier": "bronze",
    }


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"labels": {"a": "b"}}, "exactly one of 'id' and 'selector'"),
        ({"id": "x", "selector": "env=prod", "labels": {"a": "b"}}, "exactly one"),
        ({"selector": "env prod", "labels": {"a": "b"}}, "invalid label selector"),
        ({"id": "x", "labels": {}}, "at least 1 item"),
        ({"id": "x", "labels": {"a": "b c"}}, "label value 'b c'"),
        ({"id": "x", "labels": {"fleetops.io/region": "x"}}, "computed by fleetops"),
        ({"id": "x", "labels": {"a": "b"}, "wave": 1}, "Extra inputs"),
    ],
)
def test_bad_overrides_are_refused(fields: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        LabelOverride.model_validate(fields)


def test_selector_overrides_are_kept_canonical() -> None:
    override = LabelOverride(selector="tier in (b, a)", labels={"x": "y"})
    assert override.selector == "tier in (a,b)"


def test_a_source_cannot_report_clusters_outside_its_accounts() -> None:
    with pytest.raises(ValidationError, match="outside them: gke/proj/eu-west-1/g"):
        eks(G)
    with pytest.raises(ValidationError, match="outside them"):
        eks(cluster("c", account="222222222222"))


def test_the_clock_must_be_aware_and_the_threshold_positive() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        reconcile(records=(), sources=(), now=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="at least 1"):
        reconcile(records=(), sources=(), now=T0, missing_after=0)


def test_result_does_not_depend_on_source_order() -> None:
    base = run((), eks(A, B), gke(G), when=at(0))
    one = run(base, gke(G), eks(A), when=at(1))
    other = run(base, eks(A), gke(G), when=at(1))
    assert one == other


def test_record_round_trips_through_json() -> None:
    record = by_id(run((), eks(A), when=at(0)))[A.id]
    assert InventoryRecord.model_validate_json(record.model_dump_json(exclude={"id"})) == record
    assert record.cluster() == A.model_copy(update={"first_seen": at(0), "last_seen": at(0)})


# --- probes ---------------------------------------------------------------------------------


def ok(when: datetime) -> ProbeResult:
    return ProbeResult(ok=True, at=when, version="v1.30.4", latency_ms=12.0)


def down(when: datetime) -> ProbeResult:
    return ProbeResult(ok=False, at=when, error="connection refused")


def test_probes_register_or_mark_unreachable() -> None:
    result = run((), eks(A, B), when=at(0))
    probed = apply_probes(
        result, {A.id: ok(at(0)), B.id: down(at(0)), "eks/1/x/unknown": ok(at(0))}
    )
    assert by_id(probed)[A.id].state is ClusterState.REGISTERED
    assert by_id(probed)[B.id].state is ClusterState.UNREACHABLE
    assert by_id(probed)[B.id].last_probe == down(at(0))
    assert probed.diff.unreachable == (B.id,)
    assert probed.diff.added == (A.id, B.id)

    later = apply_probes(run(probed, eks(A, B), when=at(1)), {A.id: down(at(1)), B.id: ok(at(1))})
    assert later.diff.unreachable == (A.id,)
    assert later.diff.recovered == (B.id,)
    assert by_id(later)[B.id].state is ClusterState.REGISTERED

    still = apply_probes(run(later, eks(A, B), when=at(2)), {A.id: down(at(2))})
    assert still.diff.unreachable == ()  # already unreachable: not news
    assert by_id(still)[A.id].last_probe == down(at(2))


def test_probes_do_not_move_retired_or_missing_records() -> None:
    record = InventoryRecord.of(cluster("r"), missed_count=3).model_copy(
        update={"state": ClusterState.RETIRED}
    )
    assert apply_probe(record, ok(at(0))) == record
    missing = record.model_copy(update={"state": ClusterState.MISSING})
    after = apply_probe(missing, down(at(0)))
    assert after.state is ClusterState.MISSING
    assert after.last_probe == down(at(0))


def test_probe_is_due_for_new_changed_and_stale_clusters() -> None:
    first = apply_probes(
        run((), eks(A, B), gke(G), when=at(0)), {A.id: ok(at(0)), B.id: ok(at(0)), G.id: ok(at(0))}
    )
    assert probe_due(first, now=at(0), max_age=timedelta(hours=1)) == (A.id, B.id, G.id)
    upgraded = cluster("a", kubernetes_version="1.31.1")
    second = run(first, eks(upgraded, B), gke(G), when=at(1))
    assert probe_due(second, now=at(1), max_age=timedelta(hours=1)) == (A.id,)
    assert probe_due(second, now=at(4), max_age=timedelta(hours=1)) == (A.id, B.id, G.id)
    gone = run(second, eks(upgraded), gke(G), when=at(5))
    gone = run(gone, eks(upgraded), gke(G), when=at(6))
    gone = run(gone, eks(upgraded), gke(G), when=at(7))
    assert gone.diff.missing == (B.id,)
    assert B.id not in probe_due(gone, now=at(8), max_age=timedelta(minutes=1))


def test_a_ca_that_comes_with_the_credential_is_recorded_by_the_probe() -> None:
    """AKS: discovery reports no CA; the probe records the one its credential brought, the
    record keeps it while the endpoint stays, a rotated one is a change, a new endpoint drops it."""
    sub = "00000000-0000-0000-0000-000000000001"

    def aks(*clusters: Cluster) -> SourceResult:
        return SourceResult(name="aks", provider="aks", accounts=(sub,), clusters=clusters)

    listed = cluster("k", provider="aks", account=sub)
    assert listed.ca_data is None
    hour = timedelta(hours=1)
    first = run((), aks(listed), when=at(0))
    assert probe_due(first, now=at(0), max_age=hour) == (listed.id,)
    first = apply_probes(first, {listed.id: ok(at(0)).model_copy(update={"ca_data": "CA-1"})})
    record = by_id(first)[listed.id]
    assert (record.ca_data, record.state) == ("CA-1", ClusterState.REGISTERED)
    assert record.last_probe == ok(at(0))  # the CA is the record's, not the probe result's

    second = run(first, aks(listed), when=at(1))
    assert by_id(second)[listed.id].ca_data == "CA-1"  # kept: the listing has none
    assert second.diff.unchanged == (listed.id,)
    assert probe_due(second, now=at(1), max_age=hour) == ()

    rotated = apply_probes(second, {listed.id: ok(at(1)).model_copy(update={"ca_data": "CA-2"})})
    assert by_id(rotated)[listed.id].ca_data == "CA-2"
    assert [(c.id, c.fields) for c in rotated.diff.changed] == [(listed.id, ("ca_data",))]
    assert rotated.diff.has_changes

    moved = listed.model_copy(update={"endpoint": "https://k2.example:443"})
    third = run(rotated, aks(moved), when=at(2))
    assert by_id(third)[listed.id].ca_data is None  # a new API server: the old CA is dropped
    assert [(c.id, c.fields) for c in third.diff.changed] == [(listed.id, ("endpoint", "ca_data"))]
    assert probe_due(third, now=at(2), max_age=hour) == (listed.id,)
    # a probe whose credential failed brings no CA: the record stays without, due again
    failed = apply_probes(third, {listed.id: down(at(2))})
    assert by_id(failed)[listed.id].ca_data is None
    assert probe_due(run(failed, aks(moved), when=at(3)), now=at(3), max_age=hour) == (listed.id,)
    # a source that lists CAs (EKS, GKE, static) is taken at its word, a missing CA included
    eks_first = run((), eks(A.model_copy(update={"ca_data": "E1"})), when=at(0))
    eks_second = run(eks_first, eks(A), when=at(1))
    assert by_id(eks_second)[A.id].ca_data is None
    assert [(c.id, c.fields) for c in eks_second.diff.changed] == [(A.id, ("ca_data",))]
