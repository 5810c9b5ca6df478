"""managedFields for updates and server-side apply, asserted on the resulting objects."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sandbox.kube.errors import StatusError
from sandbox.kube.managed import (
    LAST_APPLIED_ANNOTATION,
    ApplyConflict,
    field_paths,
    record_update,
    server_side_apply,
)

T0 = "2024-05-01T10:00:00Z"
T1 = "2024-05-01T10:00:01Z"
T2 = "2024-05-01T10:00:02Z"
T3 = "2024-05-01T10:00:03Z"


def deployment(replicas: int = 2, image: str = "nginx:1.25") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "web", "image": image, "ports": [{"containerPort": 80}]}
                    ]
                },
            },
        },
    }


def stored(obj: dict[str, Any], rv: str = "1") -> dict[str, Any]:
    """What the store would hold: server-owned metadata filled in."""
    out = copy.deepcopy(obj)
    out["metadata"].update(
        {"uid": "u-1", "resourceVersion": rv, "generation": 1, "creationTimestamp": T0}
    )
    return out


def entries(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["metadata"]["managedFields"]


def summary(obj: dict[str, Any]) -> list[tuple[str, str, str, str | None, list[str]]]:
    return [
        (e["manager"], e["operation"], e["apiVersion"], e.get("time"), field_paths(e["fieldsV1"]))
        for e in entries(obj)
    ]


DEPLOYMENT_CREATE_FIELDS = {
    "f:metadata": {"f:labels": {"f:app": {}, ".": {}}},
    "f:spec": {
        "f:replicas": {},
        "f:selector": {},
        "f:template": {
            "f:metadata": {"f:labels": {"f:app": {}, ".": {}}},
            "f:spec": {
                "f:containers": {
                    'k:{"name":"web"}': {
                        "f:image": {},
                        "f:name": {},
                        "f:ports": {
                            'k:{"containerPort":80,"protocol":"TCP"}': {
                                "f:containerPort": {},
                                ".": {},
                            },
                            ".": {},
                        },
                        ".": {},
                    }
                }
            },
        },
    },
}


# ------------------------------------------------------------------------------------ updates


def test_create_records_an_update_entry_with_the_real_fieldsv1_encoding() -> None:
    new = deployment()
    before = copy.deepcopy(new)
    result = record_update(None, new, manager="kubectl-create", api_version="apps/v1", now=T0)
    assert new == before
    assert entries(result) == [
        {
            "manager": "kubectl-create",
            "operation": "Update",
            "apiVersion": "apps/v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": DEPLOYMENT_CREATE_FIELDS,
        }
    ]
    # Same key order as the apiserver writes: entry fields in struct order, "." last.
    assert list(entries(result)[0]) == [
        "manager",
        "operation",
        "apiVersion",
        "time",
        "fieldsType",
        "fieldsV1",
    ]
    labels = entries(result)[0]["fieldsV1"]["f:metadata"]["f:labels"]
    assert list(labels) == ["f:app", "."]
    result_without = copy.deepcopy(result)
    del result_without["metadata"]["managedFields"]
    assert result_without == new


def test_create_of_configmap_and_custom_resource() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    result = record_update(None, cm, manager="kubectl-create", api_version="v1", now=T0)
    assert entries(result)[0]["fieldsV1"] == {"f:data": {"f:a": {}, ".": {}}}

    widget = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "labels": {"a": "b"}},
        "spec": {"size": 3, "tags": ["x", "y"], "nested": {"k": "v"}},
    }
    result = record_update(None, widget, manager="op", api_version="example.com/v1", now=T0)
    # A custom resource starts from nothing, so "spec" itself is added; its lists are atomic.
    assert entries(result)[0]["fieldsV1"] == {
        "f:metadata": {"f:labels": {"f:a": {}, ".": {}}},
        "f:spec": {
            "f:nested": {"f:k": {}, ".": {}},
            "f:size": {},
            "f:tags": {},
            ".": {},
        },
    }


def test_empty_create_has_no_managed_fields() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}}
    result = record_update(None, cm, manager="kubectl-create", api_version="v1", now=T0)
    assert "managedFields" not in result["metadata"]


def test_update_moves_changed_fields_to_the_updater() -> None:
    live = stored(
        record_update(None, deployment(), manager="kubectl-create", api_version="apps/v1", now=T0)
    )
    new = copy.deepcopy(live)
    new["spec"]["replicas"] = 5
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.26"
    result = record_update(live, new, manager="kubectl-scale", api_version="apps/v1", now=T1)
    creator, scaler = summary(result)
    assert scaler == (
        "kubectl-scale",
        "Update",
        "apps/v1",
        T1,
        [".spec.replicas", '.spec.template.spec.containers[name="web"].image'],
    )
    assert creator[0] == "kubectl-create"
    assert creator[3] == T0
    assert ".spec.replicas" not in creator[4]
    assert '.spec.template.spec.containers[name="web"].image' not in creator[4]
    assert '.spec.template.spec.containers[name="web"].name' in creator[4]


def test_no_op_update_changes_nothing() -> None:
    live = stored(
        record_update(None, deployment(), manager="kubectl-create", api_version="apps/v1", now=T0)
    )
    result = record_update(
        live, copy.deepcopy(live), manager="other", api_version="apps/v1", now=T1
    )
    assert result == live


def test_consecutive_updates_by_one_manager_share_an_entry() -> None:
    live = stored(
        record_update(None, deployment(), manager="kubectl-create", api_version="apps/v1", now=T0)
    )
    first = copy.deepcopy(live)
    first["spec"]["replicas"] = 3
    live = stored(record_update(live, first, manager="ctl", api_version="apps/v1", now=T1), rv="2")
    second = copy.deepcopy(live)
    second["metadata"]["labels"]["tier"] = "fe"
    result = record_update(live, second, manager="ctl", api_version="apps/v1", now=T2)
    ctl = [e for e in entries(result) if e["manager"] == "ctl"]
    assert len(ctl) == 1
    assert ctl[0]["time"] == T2
    assert field_paths(ctl[0]["fieldsV1"]) == [".metadata.labels.tier", ".spec.replicas"]
    # Same manager at another API version is a separate entry.
    third = copy.deepcopy(result)
    third["spec"]["replicas"] = 4
    other_version = record_update(result, third, manager="ctl", api_version="apps/v1beta2", now=T3)
    assert [(e["manager"], e["apiVersion"]) for e in entries(other_version)] == [
        ("kubectl-create", "apps/v1"),
        ("ctl", "apps/v1"),
        ("ctl", "apps/v1beta2"),
    ]


def test_removed_fields_leave_every_owner() -> None:
    live = stored(
        record_update(None, deployment(), manager="kubectl-create", api_version="apps/v1", now=T0)
    )
    new = copy.deepcopy(live)
    del new["metadata"]["labels"]
    result = record_update(live, new, manager="editor", api_version="apps/v1", now=T1)
    assert [e["manager"] for e in entries(result)] == ["kubectl-create"]
    assert not any(p.startswith(".metadata") for p in field_paths(entries(result)[0]["fieldsV1"]))


def test_server_owned_metadata_is_never_managed() -> None:
    live = stored(
        record_update(None, deployment(), manager="kubectl-create", api_version="apps/v1", now=T0)
    )
    new = copy.deepcopy(live)
    new["metadata"].update({"resourceVersion": "99", "generation": 7, "uid": "u-2", "name": "x"})
    new["metadata"]["creationTimestamp"] = T3
    result = record_update(live, new, manager="x", api_version="apps/v1", now=T1)
    assert [e["manager"] for e in entries(result)] == ["kubectl-create"]


def test_status_subresource_entry_and_ignored_request_managed_fields() -> None:
    live = stored(
        record_update(None, deployment(), manager="kubectl-create", api_version="apps/v1", now=T0)
    )
    new = copy.deepcopy(live)
    new["status"] = {"replicas": 2, "conditions": [{"type": "Available", "status": "True"}]}
    new["metadata"]["managedFields"] = [
        {"manager": "forged", "operation": "Update", "fieldsV1": {}}
    ]
    result = record_update(
        live,
        new,
        manager="kube-controller-manager",
        api_version="apps/v1",
        now=T1,
        subresource="status",
    )
    status_entry = entries(result)[1]
    assert status_entry == {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "apps/v1",
        "time": T1,
        "fieldsType": "FieldsV1",
        "fieldsV1": {
            "f:status": {
                "f:conditions": {
                    'k:{"type":"Available"}': {"f:status": {}, "f:type": {}, ".": {}},
                    ".": {},
                },
                "f:replicas": {},
                ".": {},
            }
        },
        "subresource": "status",
    }
    # Set iteration order: a node's own members first, then the subtrees below it.
    assert field_paths(status_entry["fieldsV1"]) == [
        ".status",
        ".status.conditions",
        ".status.replicas",
        '.status.conditions[type="Available"]',
        '.status.conditions[type="Available"].status',
        '.status.conditions[type="Available"].type',
    ]
    assert "forged" not in json.dumps(entries(result))


def test_request_managed_fields_replace_live_and_empty_list_resets() -> None:
    live = stored(
        record_update(None, deployment(), manager="kubectl-create", api_version="apps/v1", now=T0)
    )
    new = copy.deepcopy(live)
    new["metadata"]["managedFields"] = [
        {
            "manager": "imported",
            "operation": "Update",
            "apiVersion": "apps/v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        }
    ]
    replaced = record_update(live, new, manager="kubectl-replace", api_version="apps/v1", now=T1)
    assert summary(replaced) == [("imported", "Update", "apps/v1", T0, [".spec.replicas"])]

    reset = copy.deepcopy(live)
    reset["metadata"]["managedFields"] = []
    cleared = record_update(live, reset, manager="kubectl-patch", api_version="apps/v1", now=T1)
    assert "managedFields" not in cleared["metadata"]
    # An object without managedFields stays untracked on later updates.
    later = copy.deepcopy(cleared)
    later["spec"]["replicas"] = 9
    untracked = record_update(cleared, later, manager="ctl", api_version="apps/v1", now=T2)
    assert "managedFields" not in untracked["metadata"]
    assert untracked["spec"]["replicas"] == 9

    one_empty = copy.deepcopy(live)
    one_empty["metadata"]["managedFields"] = [{}]
    assert (
        "managedFields"
        not in record_update(live, one_empty, manager="x", api_version="apps/v1", now=T1)[
            "metadata"
        ]
    )


def test_update_managers_are_capped_at_ten() -> None:
    obj = stored(
        record_update(
            None,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "c"},
                "data": {"seed": "0"},
            },
            manager="creator",
            api_version="v1",
            now="2024-05-01T10:00:00Z",
        )
    )
    for i in range(1, 12):
        new = copy.deepcopy(obj)
        new["data"][f"k{i}"] = str(i)
        obj = stored(
            record_update(
                obj, new, manager=f"m{i:02d}", api_version="v1", now=f"2024-05-01T10:00:{i:02d}Z"
            ),
            rv=str(i + 1),
        )
    names = [e["manager"] for e in entries(obj)]
    assert len(names) == 10
    assert names[0] == "ancient-changes"
    ancient = entries(obj)[0]
    assert ancient["time"] == "2024-05-01T10:00:02Z"
    # The creator and the two oldest updaters were folded into one bucket.
    assert field_paths(ancient["fieldsV1"]) == [".data", ".data.k1", ".data.k2", ".data.seed"]
    assert names[1:] == [f"m{i:02d}" for i in range(3, 12)]


# --------------------------------------------------------------------------- server-side apply


def test_apply_creates_with_an_apply_entry() -> None:
    applied = deployment()
    before = copy.deepcopy(applied)
    result = server_side_apply(
        None, applied, manager="kubectl", force=False, api_version="apps/v1", now=T0
    )
    assert applied == before
    assert entries(result) == [
        {
            "manager": "kubectl",
            "operation": "Apply",
            "apiVersion": "apps/v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {},
                    "f:template": {
                        "f:metadata": {"f:labels": {"f:app": {}}},
                        "f:spec": {
                            "f:containers": {
                                'k:{"name":"web"}': {
                                    "f:image": {},
                                    "f:name": {},
                                    "f:ports": {
                                        'k:{"containerPort":80,"protocol":"TCP"}': {
                                            "f:containerPort": {},
                                            ".": {},
                                        }
                                    },
                                    ".": {},
                                }
                            }
                        },
                    },
                },
            },
        }
    ]
    without = copy.deepcopy(result)
    del without["metadata"]["managedFields"]
    assert without == applied


def apply(
    live: dict[str, Any] | None, applied: dict[str, Any], manager: str, now: str, **kw: Any
) -> dict[str, Any]:
    kw.setdefault("force", False)
    result = server_side_apply(live, applied, manager=manager, api_version="apps/v1", now=now, **kw)
    return stored(result, rv=now[-3:-1])


def test_conflict_with_an_update_manager() -> None:
    live = stored(
        record_update(
            None, deployment(), manager="kubectl-client-side-apply", api_version="apps/v1", now=T0
        )
    )
    with pytest.raises(ApplyConflict) as info:
        apply(live, deployment(replicas=3), "deployer", T1)
    error = info.value
    assert isinstance(error, StatusError)
    assert error.to_status() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using '
        "apps/v1: .spec.replicas",
        "reason": "Conflict",
        "code": 409,
        "details": {
            "causes": [
                {
                    "type": "FieldManagerConflict",
                    "message": 'conflict with "kubectl-client-side-apply" using apps/v1',
                    "field": ".spec.replicas",
                }
            ]
        },
    }


def test_several_conflicts_grouped_by_manager() -> None:
    live = apply(None, deployment(), "team-a", T0)
    changed = copy.deepcopy(live)
    changed["metadata"]["labels"]["app"] = "other"
    live = stored(record_update(live, changed, manager="editor", api_version="apps/v1", now=T1))
    applied = deployment(replicas=7, image="nginx:2")
    applied["metadata"]["labels"]["app"] = "mine"
    with pytest.raises(ApplyConflict) as info:
        apply(live, applied, "team-b", T2)
    assert info.value.message == (
        'Apply failed with 3 conflicts: conflicts with "editor" using apps/v1:\n'
        "- .metadata.labels.app\n"
        'conflicts with "team-a":\n'
        "- .spec.replicas\n"
        '- .spec.template.spec.containers[name="web"].image'
    )
    assert [(c["message"], c["field"]) for c in info.value.details["causes"]] == [
        ('conflict with "editor" using apps/v1', ".metadata.labels.app"),
        ('conflict with "team-a"', ".spec.replicas"),
        ('conflict with "team-a"', '.spec.template.spec.containers[name="web"].image'),
    ]


def test_same_value_is_shared_and_force_moves_ownership() -> None:
    live = apply(None, deployment(), "team-a", T0)
    shared = apply(live, deployment(), "team-b", T1)
    owners = {e["manager"]: field_paths(e["fieldsV1"]) for e in entries(shared)}
    assert ".spec.replicas" in owners["team-a"]
    assert ".spec.replicas" in owners["team-b"]
    # Nothing changed, so the new applier's entry has no time yet (and sorts first).
    assert [(e["manager"], e.get("time")) for e in entries(shared)] == [
        ("team-b", None),
        ("team-a", T0),
    ]
    assert shared["spec"] == live["spec"]

    forced = apply(shared, deployment(replicas=4), "team-b", T2, force=True)
    owners = {e["manager"]: field_paths(e["fieldsV1"]) for e in entries(forced)}
    assert ".spec.replicas" not in owners["team-a"]
    assert ".spec.replicas" in owners["team-b"]
    assert forced["spec"]["replicas"] == 4
    assert [(e["manager"], e.get("time")) for e in entries(forced)] == [
        ("team-a", T0),
        ("team-b", T2),
    ]


def test_force_removes_a_manager_left_with_nothing() -> None:
    small = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 1},
    }
    live = apply(None, small, "a", T0)
    result = apply(live, {**small, "spec": {"replicas": 2}}, "b", T1, force=True)
    assert [e["manager"] for e in entries(result)] == ["b"]


def test_fields_dropped_from_the_config_are_removed_unless_someone_else_owns_them() -> None:
    first = deployment()
    first["metadata"]["labels"]["tier"] = "fe"
    first["metadata"]["annotations"] = {"note": "x"}
    live = apply(None, first, "deployer", T0)
    other = copy.deepcopy(live)
    other["metadata"]["annotations"]["note"] = "changed"
    live = stored(record_update(live, other, manager="editor", api_version="apps/v1", now=T1))
    result = apply(live, deployment(), "deployer", T2)
    assert result["metadata"]["labels"] == {"app": "web"}
    assert result["metadata"]["annotations"] == {"note": "changed"}
    assert summary(result)[0][4] == [
        ".metadata.labels.app",
        ".spec.replicas",
        ".spec.selector",
        ".spec.template.metadata.labels.app",
        '.spec.template.spec.containers[name="web"]',
        '.spec.template.spec.containers[name="web"].image',
        '.spec.template.spec.containers[name="web"].name',
        '.spec.template.spec.containers[name="web"].ports[containerPort=80,protocol="TCP"]',
        '.spec.template.spec.containers[name="web"].ports[containerPort=80,protocol="TCP"].containerPort',
    ]


def test_dropped_list_item_is_removed() -> None:
    two = deployment()
    two["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "envoy"})
    live = apply(None, two, "deployer", T0)
    result = apply(live, deployment(), "deployer", T1)
    assert [c["name"] for c in result["spec"]["template"]["spec"]["containers"]] == ["web"]


def test_keyed_lists_merge_with_live_items_kept_in_place() -> None:
    live = apply(None, deployment(), "deployer", T0)
    edited = copy.deepcopy(live)
    containers = edited["spec"]["template"]["spec"]["containers"]
    containers.insert(0, {"name": "istio-init", "image": "proxy"})
    containers[1]["env"] = [{"name": "INJECTED", "value": "1"}]
    live = stored(record_update(live, edited, manager="injector", api_version="apps/v1", now=T1))

    applied = deployment(image="nginx:2")
    applied["spec"]["template"]["spec"]["containers"].insert(
        0, {"name": "logger", "image": "fluent"}
    )
    applied["spec"]["template"]["spec"]["containers"][1]["env"] = [
        {"name": "MODE", "value": "prod"}
    ]
    result = apply(live, applied, "deployer", T2)
    containers = result["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["istio-init", "logger", "web"]
    assert containers[2]["image"] == "nginx:2"
    assert containers[2]["env"] == [
        {"name": "INJECTED", "value": "1"},
        {"name": "MODE", "value": "prod"},
    ]


def test_atomic_lists_and_selector_are_replaced_whole() -> None:
    base = deployment()
    base["spec"]["template"]["spec"]["tolerations"] = [{"key": "a", "operator": "Exists"}]
    live = apply(None, base, "deployer", T0)
    changed = deployment()
    changed["spec"]["template"]["spec"]["tolerations"] = [{"key": "b", "operator": "Exists"}]
    changed["spec"]["selector"] = {"matchLabels": {"app": "web", "v": "2"}}
    result = apply(live, changed, "deployer", T1)
    assert result["spec"]["template"]["spec"]["tolerations"] == [{"key": "b", "operator": "Exists"}]
    assert result["spec"]["selector"] == {"matchLabels": {"app": "web", "v": "2"}}
    fields = entries(result)[0]["fieldsV1"]["f:spec"]
    assert fields["f:selector"] == {}
    assert fields["f:template"]["f:spec"]["f:tolerations"] == {}


def test_unchanged_apply_keeps_time_and_object() -> None:
    live = apply(None, deployment(), "deployer", T0)
    again = server_side_apply(
        live, deployment(), manager="deployer", force=False, api_version="apps/v1", now=T3
    )
    assert again == live


def test_apply_keeps_server_owned_metadata_from_live() -> None:
    live = apply(None, deployment(), "deployer", T0)
    applied = deployment(replicas=3)
    applied["metadata"]["resourceVersion"] = "1"
    applied["metadata"]["uid"] = "forged"
    result = server_side_apply(
        live, applied, manager="deployer", force=False, api_version="apps/v1", now=T1
    )
    assert result["metadata"]["uid"] == "u-1"
    assert result["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]
    assert result["metadata"]["creationTimestamp"] == T0
    assert result["metadata"]["generation"] == 1


def test_apply_null_unsets_a_field_but_keeps_ownership() -> None:
    live = apply(None, deployment(), "deployer", T0)
    applied = deployment()
    applied["spec"]["replicas"] = None
    result = apply(live, applied, "deployer", T1)
    assert "replicas" not in result["spec"]
    assert ".spec.replicas" in summary(result)[0][4]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d.update(apiVersion="apps/v1beta1"),
            "Incorrect version specified in apply patch. Specified patch version: apps/v1beta1, "
            "expected: apps/v1",
        ),
        (
            lambda d: d.pop("apiVersion"),
            "Incorrect version specified in apply patch. Specified patch version: , expected: apps/v1",
        ),
        (lambda d: d["metadata"].update(managedFields=[]), "metadata.managedFields must be nil"),
    ],
)
def test_bad_apply_bodies_are_400(mutate: Any, message: str) -> None:
    applied = deployment()
    mutate(applied)
    with pytest.raises(StatusError) as info:
        server_side_apply(None, applied, manager="m", force=False, api_version="apps/v1", now=T0)
    assert (info.value.code, info.value.reason, info.value.message) == (400, "BadRequest", message)


def test_duplicate_or_keyless_list_items_fail_like_structured_merge_diff() -> None:
    dup = deployment()
    dup["spec"]["template"]["spec"]["containers"].append({"name": "web", "image": "x"})
    with pytest.raises(StatusError) as info:
        server_side_apply(None, dup, manager="m", force=False, api_version="apps/v1", now=T0)
    assert info.value.code == 500
    assert info.value.message == (
        "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): "
        '.spec.template.spec.containers: duplicate entries for key [name="web"]'
    )
    keyless = deployment()
    keyless["spec"]["template"]["spec"]["containers"][0]["env"] = [{"value": "1"}]
    with pytest.raises(StatusError) as info:
        server_side_apply(None, keyless, manager="m", force=False, api_version="apps/v1", now=T0)
    assert info.value.message == (
        "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): "
        '.spec.template.spec.containers[name="web"].env: element 0: associative list with keys '
        'has an element that omits key field "name" (and doesn\'t have default value)'
    )


def test_first_apply_to_an_untracked_object_records_before_first_apply() -> None:
    live = stored(deployment())
    result = apply(live, deployment(replicas=2), "deployer", T1)
    managers = [(e["manager"], e["operation"]) for e in entries(result)]
    assert managers == [("deployer", "Apply"), ("before-first-apply", "Update")]
    with pytest.raises(ApplyConflict) as info:
        apply(live, deployment(replicas=5), "deployer", T1)
    assert (
        info.value.details["causes"][0]["message"]
        == 'conflict with "before-first-apply" using apps/v1'
    )


def test_kubectl_takes_over_fields_from_client_side_apply() -> None:
    client_side = deployment()
    client_side["metadata"]["annotations"] = {
        LAST_APPLIED_ANNOTATION: json.dumps(deployment(), sort_keys=True, separators=(",", ":"))
        + "\n"
    }
    live = stored(
        record_update(
            None, client_side, manager="kubectl-client-side-apply", api_version="apps/v1", now=T0
        )
    )
    result = apply(live, deployment(replicas=3), "kubectl", T1)
    assert result["spec"]["replicas"] == 3
    owners = {e["manager"]: field_paths(e["fieldsV1"]) for e in entries(result)}
    assert ".spec.replicas" in owners["kubectl"]
    assert ".spec.replicas" not in owners["kubectl-client-side-apply"]
    annotation = result["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
    assert annotation.endswith("\n")
    assert json.loads(annotation) == deployment(replicas=3)

    # A field someone else changed after the client-side apply is a real conflict, and another
    # manager name gets no such allowance.
    scaled = copy.deepcopy(live)
    scaled["spec"]["replicas"] = 5
    scaled = stored(
        record_update(live, scaled, manager="autoscaler", api_version="apps/v1", now=T1)
    )
    with pytest.raises(ApplyConflict) as info:
        apply(scaled, deployment(replicas=3), "kubectl", T2)
    assert info.value.message == (
        'Apply failed with 1 conflict: conflict with "autoscaler" using apps/v1: .spec.replicas'
    )
    with pytest.raises(ApplyConflict):
        apply(live, deployment(replicas=3), "deployer", T2)


def test_reset_fields_keep_live_status_unowned() -> None:
    live = apply(None, deployment(), "deployer", T0)
    live["status"] = {"replicas": 2}
    applied = deployment()
    applied["status"] = {"replicas": 99}
    result = apply(live, applied, "deployer", T1, reset_fields=[("status",)])
    assert result["status"] == {"replicas": 2}
    assert not any(p.startswith(".status") for p in summary(result)[0][4])


def test_status_subresource_apply_entry() -> None:
    live = apply(None, deployment(), "deployer", T0)
    applied = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "status": {"conditions": [{"type": "Available", "status": "True"}]},
    }
    result = apply(live, applied, "ctrl", T1, subresource="status", reset_fields=[("spec",)])
    assert [(e["manager"], e.get("subresource")) for e in entries(result)] == [
        ("deployer", None),
        ("ctrl", "status"),
    ]
    entry = entries(result)[1]
    assert (entry["operation"], entry["time"]) == ("Apply", T1)
    assert field_paths(entry["fieldsV1"]) == [
        '.status.conditions[type="Available"]',
        '.status.conditions[type="Available"].status',
        '.status.conditions[type="Available"].type',
    ]
    assert result["spec"] == live["spec"]


def test_custom_resource_lists_are_atomic_and_entries_order_apply_first() -> None:
    widget = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "default", "finalizers": ["x"]},
        "spec": {"items": [{"name": "a"}], "size": 1},
    }
    live = stored(
        record_update(None, widget, manager="creator", api_version="example.com/v1", now=T0)
    )
    applied = copy.deepcopy(widget)
    del applied["metadata"]["finalizers"]
    applied["spec"] = {"items": [{"name": "b"}]}
    result = server_side_apply(
        live, applied, manager="applier", force=True, api_version="example.com/v1", now=T1
    )
    assert result["spec"] == {"items": [{"name": "b"}], "size": 1}
    assert result["metadata"]["finalizers"] == ["x"]
    assert [(e["manager"], e["operation"]) for e in entries(result)] == [
        ("applier", "Apply"),
        ("creator", "Update"),
    ]
    assert entries(result)[0]["fieldsV1"] == {"f:spec": {"f:items": {}}}
    assert entries(result)[1]["fieldsV1"] == {
        "f:metadata": {"f:finalizers": {'v:"x"': {}, ".": {}}},
        "f:spec": {"f:size": {}, ".": {}},
    }


def test_reapply_after_ownership_upgrade_prunes_only_what_the_config_dropped() -> None:
    # kubectl's csaupgrade folds the client-side entry (which owns parents such as
    # .spec.template.metadata.labels as a whole) into the "kubectl" Apply entry; the re-apply
    # must keep every parent of a field the config still sets and prune the rest.
    created = deployment()
    created["spec"]["strategy"] = {"type": "RollingUpdate"}
    created["spec"]["progressDeadlineSeconds"] = 600
    live = stored(
        record_update(
            None, created, manager="kubectl-client-side-apply", api_version="apps/v1", now=T0
        )
    )
    live = apply(live, deployment(), "kubectl", T1)
    upgraded = copy.deepcopy(live)
    by_manager = {e["manager"]: e for e in entries(live)}
    merged = copy.deepcopy(by_manager["kubectl-client-side-apply"]["fieldsV1"])
    assert "." in merged["f:spec"]["f:template"]["f:metadata"]["f:labels"]
    upgraded["metadata"]["managedFields"] = [{**by_manager["kubectl"], "fieldsV1": merged}]
    live = stored(record_update(live, upgraded, manager="kubectl", api_version="apps/v1", now=T2))
    assert [(e["manager"], e["operation"]) for e in entries(live)] == [("kubectl", "Apply")]

    result = apply(live, deployment(), "kubectl", T3)
    assert result["metadata"]["labels"] == {"app": "web"}
    assert result["spec"]["template"]["metadata"]["labels"] == {"app": "web"}
    assert "strategy" not in result["spec"]  # only the client-side entry owned them
    assert "progressDeadlineSeconds" not in result["spec"]
    assert summary(result) == [
        ("kubectl", "Apply", "apps/v1", T3, summary(apply(None, deployment(), "x", T0))[0][4])
    ]


def test_dropped_parent_goes_whole_unless_another_manager_owns_something_in_it() -> None:
    first = deployment()
    first["spec"]["template"]["metadata"]["annotations"] = {"a": "1"}
    first["metadata"]["annotations"] = {"b": "2"}
    live = apply(None, first, "deployer", T0)
    edited = copy.deepcopy(live)
    edited["metadata"]["annotations"]["c"] = "3"
    live = stored(record_update(live, edited, manager="editor", api_version="apps/v1", now=T1))
    result = apply(live, deployment(), "deployer", T2)
    # an emptied map is dropped, not left as {}
    assert "annotations" not in result["spec"]["template"]["metadata"]
    assert result["metadata"]["annotations"] == {"c": "3"}


def test_true_and_1_differ_like_json_values() -> None:
    # Python says True == 1; the field manager must not (a change of type is a change)
    first = deployment()
    first["spec"]["template"]["spec"]["containers"][0]["args"] = [1, 2.0]
    first["spec"]["paused"] = 1
    live = stored(record_update(None, first, manager="creator", api_version="apps/v1", now=T0))
    changed = copy.deepcopy(live)
    changed["spec"]["paused"] = True
    changed["spec"]["template"]["spec"]["containers"][0]["args"] = [True, 2]
    result = record_update(live, changed, manager="editor", api_version="apps/v1", now=T1)
    owners = {e["manager"]: field_paths(e["fieldsV1"]) for e in entries(result)}
    assert owners["editor"] == [
        ".spec.paused",
        '.spec.template.spec.containers[name="web"].args',
    ]
    # while 2 and 2.0 are the same JSON number: reordering keys or 2.0 -> 2 is no change
    same = copy.deepcopy(live)
    same["spec"]["template"]["spec"]["containers"][0]["args"] = [1, 2]
    same["spec"] = dict(reversed(list(same["spec"].items())))
    assert record_update(live, same, manager="editor", api_version="apps/v1", now=T1) == {
        **same,
        "metadata": live["metadata"],
    }


def test_inputs_are_never_changed() -> None:
    client_side = deployment()
    client_side["metadata"]["annotations"] = {LAST_APPLIED_ANNOTATION: "{}"}
    client_side["status"] = {"replicas": 1}
    live = stored(
        record_update(
            None, client_side, manager="kubectl-client-side-apply", api_version="apps/v1", now=T0
        )
    )
    applied = deployment(replicas=5, image="nginx:2")
    applied["metadata"]["annotations"] = {"note": "x"}
    before = copy.deepcopy((live, applied))
    result = server_side_apply(
        live, applied, manager="kubectl", force=True, api_version="apps/v1", now=T1,
        reset_fields=[("status",)],
    )  # fmt: skip
    status = server_side_apply(
        live, {**applied, "status": {"replicas": 3}}, manager="ctrl", force=True,
        api_version="apps/v1", now=T1, subresource="status",
        reset_fields=[("spec",), ("metadata", "labels")],
    )  # fmt: skip
    updated = record_update(live, applied, manager="editor", api_version="apps/v1", now=T2)
    assert (live, applied) == before
    assert result["spec"]["replicas"] == 5
    assert status["status"] == {"replicas": 3}
    assert result["metadata"]["annotations"][LAST_APPLIED_ANNOTATION] != "{}"
    updated["spec"]["replicas"] = 9  # the answer of record_update is a copy
    assert applied["spec"]["replicas"] == 5
