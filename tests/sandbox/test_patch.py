"""JSON patch, merge patch and strategic merge patch as the apiserver applies them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sandbox.kube.errors import StatusError
from sandbox.kube.patch import json_copy, json_patch, merge_patch, strategic_merge_patch

REJECTED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "the server rejected our request due to an error in our request",
    "reason": "Invalid",
    "code": 422,
    "details": {},
}


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "labels": {"app": "web"},
            "finalizers": ["a.example.com/x", "b.example.com/y"],
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "nginx:1.25",
                            "args": ["--a", "--b"],
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "ports": [{"containerPort": 80, "name": "http"}],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        },
                        {"name": "sidecar", "image": "envoy:1"},
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "imagePullSecrets": [{"name": "regcred"}],
                    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                },
            },
        },
        "status": {
            "conditions": [
                {"type": "Available", "status": "False"},
                {"type": "Progressing", "status": "True"},
            ]
        },
    }


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def smp(obj: dict[str, Any], patch: Any) -> dict[str, Any]:
    before_obj, before_patch = copy.deepcopy(obj), copy.deepcopy(patch)
    result = strategic_merge_patch(obj, patch, kind="Deployment", api_version="apps/v1")
    assert obj == before_obj, "the object must not be mutated"
    assert patch == before_patch, "the patch must not be mutated"
    return result


# --------------------------------------------------------------------------------- JSON patch


def test_json_patch_operations() -> None:
    obj = deployment()
    before = copy.deepcopy(obj)
    ops = [
        {"op": "replace", "path": "/spec/replicas", "value": 5},
        {"op": "add", "path": "/metadata/annotations", "value": {"example.com/owner": "team"}},
        {"op": "add", "path": "/metadata/labels/app.kubernetes.io~1name", "value": "web"},
        {"op": "add", "path": "/metadata/labels/tilde~0key", "value": "t"},
        {"op": "remove", "path": "/metadata/labels/app"},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "c.example.com/z"},
        {"op": "add", "path": "/metadata/finalizers/0", "value": "first"},
        {"op": "test", "path": "/spec/replicas", "value": 5},
        {"op": "copy", "from": "/spec/replicas", "path": "/metadata/annotations/copied"},
        {
            "op": "move",
            "from": "/metadata/annotations/copied",
            "path": "/metadata/annotations/moved",
        },
        {"op": "replace", "path": "/spec/template/spec/containers/1/image", "value": "envoy:2"},
        {"op": "remove", "path": "/spec/template/spec/containers/0/env/0"},
    ]
    result = json_patch(obj, ops)
    assert obj == before
    assert result["spec"]["replicas"] == 5
    assert result["metadata"]["labels"] == {"app.kubernetes.io/name": "web", "tilde~key": "t"}
    assert result["metadata"]["finalizers"] == [
        "first",
        "a.example.com/x",
        "b.example.com/y",
        "c.example.com/z",
    ]
    assert result["metadata"]["annotations"] == {"example.com/owner": "team", "moved": 5}
    assert pod_spec(result)["containers"][1]["image"] == "envoy:2"
    assert pod_spec(result)["containers"][0]["env"] == [{"name": "B", "value": "2"}]


def test_json_patch_test_null_passes_for_missing_path() -> None:
    result = json_patch({"a": 1}, [{"op": "test", "path": "/b", "value": None}])
    assert result == {"a": 1}


def test_json_patch_test_distinguishes_booleans_from_numbers() -> None:
    with pytest.raises(StatusError):
        json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": True}])
    assert json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 1.0}]) == {"a": 1}


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "test", "path": "/spec/replicas", "value": 3}],
        [{"op": "remove", "path": "/spec/nothing"}],
        [{"op": "replace", "path": "/spec/nothing", "value": 1}],
        [{"op": "add", "path": "/nothing/deeper", "value": 1}],
        [{"op": "add", "path": "/metadata/finalizers/9", "value": "x"}],
        [{"op": "remove", "path": "/metadata/finalizers/-"}],
        [{"op": "move", "from": "/nope", "path": "/x"}],
        [
            {"op": "copy", "from": "/spec", "path": "/spec/template/copy"},
            {"op": "bogus", "path": "/x"},
        ],
        [{"op": "frobnicate", "path": "/spec"}],
        [{"path": "/spec"}],
        [{"op": "add", "value": 1}],
        [{"op": "add", "path": "spec", "value": 1}],
        [{"op": "move", "from": "/spec", "path": "/spec/inner"}],
        [{"op": "replace", "path": "/spec/replicas/x", "value": 1}],
        [{"op": "replace", "path": "/metadata/finalizers/01x", "value": "y"}],
    ],
)
def test_json_patch_failures_are_422_with_the_generic_message(ops: list[dict[str, Any]]) -> None:
    obj = deployment()
    before = copy.deepcopy(obj)
    with pytest.raises(StatusError) as info:
        json_patch(obj, ops)
    assert info.value.to_status() == REJECTED
    assert obj == before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"op": "add"}, "json: cannot unmarshal object into Go value of type jsonpatch.Patch"),
        ("x", "json: cannot unmarshal string into Go value of type jsonpatch.Patch"),
        (["x"], "json: cannot unmarshal string into Go value of type jsonpatch.Operation"),
    ],
)
def test_json_patch_that_is_not_a_list_of_operations_is_400(body: Any, message: str) -> None:
    with pytest.raises(StatusError) as info:
        json_patch({}, body)
    assert (info.value.code, info.value.reason, info.value.message) == (400, "BadRequest", message)


def test_json_patch_operation_limit() -> None:
    ops = [{"op": "test", "path": "/a", "value": 1}] * 10001
    with pytest.raises(StatusError) as info:
        json_patch({"a": 1}, ops)
    assert info.value.code == 413
    assert info.value.reason == "RequestEntityTooLarge"
    assert info.value.message == (
        "Request entity too large: The allowed maximum operations in a JSON patch is 10000, "
        "got 10001"
    )


def test_json_patch_negative_index_like_evanphx() -> None:
    result = json_patch({"l": [1, 2, 3]}, [{"op": "remove", "path": "/l/-1"}])
    assert result == {"l": [1, 2]}


# -------------------------------------------------------------------------------- merge patch


def test_merge_patch_rfc7386() -> None:
    obj = deployment()
    before = copy.deepcopy(obj)
    result = merge_patch(
        obj,
        {
            "metadata": {
                "labels": {"app": None, "tier": "fe"},
                "annotations": {"a": "1", "gone": None},
            },
            "spec": {"replicas": 4, "template": {"spec": {"containers": [{"name": "only"}]}}},
            "status": None,
        },
    )
    assert obj == before
    assert result["metadata"]["labels"] == {"tier": "fe"}
    assert result["metadata"]["annotations"] == {"a": "1"}
    assert result["spec"]["replicas"] == 4
    assert pod_spec(result)["containers"] == [{"name": "only"}]
    assert pod_spec(result)["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert "status" not in result


def test_merge_patch_replaces_scalars_with_objects() -> None:
    assert merge_patch({"a": "x"}, {"a": {"b": 1, "c": None}}) == {"a": {"b": 1}}


@pytest.mark.parametrize("body", [None, [1], "x"])
def test_merge_patch_body_must_be_an_object(body: Any) -> None:
    with pytest.raises(StatusError) as info:
        merge_patch({}, body)
    assert (info.value.code, info.value.message) == (400, "Invalid JSON Patch")


# ---------------------------------------------------------------------- strategic merge patch


def test_containers_merge_by_name_and_env_by_name() -> None:
    result = smp(
        deployment(),
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": "nginx:1.26",
                                "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}],
                            }
                        ]
                    }
                }
            }
        },
    )
    containers = pod_spec(result)["containers"]
    assert [c["name"] for c in containers] == ["web", "sidecar"]
    assert containers[0]["image"] == "nginx:1.26"
    assert containers[0]["args"] == ["--a", "--b"]
    # Items named in the patch come first, in patch order; live-only items keep their place
    # relative to them by live order (C is new, so it is placed with the patch items).
    assert containers[0]["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "20"},
        {"name": "C", "value": "3"},
    ]
    assert containers[1] == {"name": "sidecar", "image": "envoy:1"}


def test_new_list_item_goes_first_like_the_real_server() -> None:
    result = smp(
        deployment(),
        {"spec": {"template": {"spec": {"containers": [{"name": "debug", "image": "busybox"}]}}}},
    )
    assert [c["name"] for c in pod_spec(result)["containers"]] == ["debug", "web", "sidecar"]


def test_ports_volumes_mounts_and_pull_secrets_merge_by_their_keys() -> None:
    result = smp(
        deployment(),
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "ports": [
                                    {"containerPort": 80, "name": "web"},
                                    {"containerPort": 9090, "name": "metrics"},
                                ],
                                "volumeMounts": [{"mountPath": "/data", "readOnly": True}],
                            }
                        ],
                        "volumes": [{"name": "cache", "emptyDir": {"medium": "Memory"}}],
                        "imagePullSecrets": [{"name": "other"}],
                    }
                }
            }
        },
    )
    web = pod_spec(result)["containers"][0]
    assert web["ports"] == [
        {"containerPort": 80, "name": "web"},
        {"containerPort": 9090, "name": "metrics"},
    ]
    assert web["volumeMounts"] == [{"name": "data", "mountPath": "/data", "readOnly": True}]
    assert pod_spec(result)["volumes"] == [
        {"name": "cache", "emptyDir": {"medium": "Memory"}},
        {"name": "data", "emptyDir": {}},
    ]
    assert pod_spec(result)["imagePullSecrets"] == [{"name": "other"}, {"name": "regcred"}]


def test_service_ports_merge_by_port() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}],
        },
    }
    result = strategic_merge_patch(
        service,
        {"spec": {"ports": [{"port": 443, "targetPort": 9443}], "selector": {"tier": "fe"}}},
        kind="Service",
        api_version="v1",
    )
    assert result["spec"]["ports"] == [
        {"port": 80, "targetPort": 8080},
        {"port": 443, "targetPort": 9443},
    ]
    assert result["spec"]["selector"] == {"app": "web", "tier": "fe"}


def test_conditions_merge_by_type() -> None:
    result = smp(
        deployment(),
        {"status": {"conditions": [{"type": "Available", "status": "True", "reason": "Ok"}]}},
    )
    assert result["status"]["conditions"] == [
        {"type": "Available", "status": "True", "reason": "Ok"},
        {"type": "Progressing", "status": "True"},
    ]


def test_lists_without_merge_key_are_replaced() -> None:
    result = smp(
        deployment(),
        {
            "spec": {
                "template": {
                    "spec": {
                        "tolerations": [{"key": "gpu", "operator": "Exists"}],
                        "containers": [{"name": "web", "args": ["--c"], "command": ["/bin/x"]}],
                    }
                }
            }
        },
    )
    assert pod_spec(result)["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert pod_spec(result)["containers"][0]["args"] == ["--c"]
    assert pod_spec(result)["containers"][0]["command"] == ["/bin/x"]


def test_null_deletes_keys_and_new_values_lose_nulls() -> None:
    result = smp(
        deployment(),
        {
            "metadata": {"labels": {"app": None}, "annotations": {"a": "1", "b": None}},
            "spec": {"replicas": None},
        },
    )
    assert result["metadata"]["labels"] == {}
    assert result["metadata"]["annotations"] == {"a": "1"}
    assert "replicas" not in result["spec"]


def test_patch_delete_directive_removes_list_item() -> None:
    result = smp(
        deployment(),
        {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}},
    )
    assert [c["name"] for c in pod_spec(result)["containers"]] == ["web"]


def test_patch_replace_directive_in_a_list_replaces_it() -> None:
    result = smp(
        deployment(),
        {
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "solo", "image": "x"}, {"$patch": "replace"}]}
                }
            }
        },
    )
    assert pod_spec(result)["containers"] == [{"name": "solo", "image": "x"}]


def test_patch_replace_and_delete_directives_on_maps() -> None:
    result = smp(
        deployment(),
        {
            "metadata": {"labels": {"$patch": "replace", "only": "this"}},
            "spec": {"selector": {"$patch": "delete"}},
        },
    )
    assert result["metadata"]["labels"] == {"only": "this"}
    assert result["spec"]["selector"] == {}


def test_retain_keys_drops_other_fields() -> None:
    obj = deployment()
    obj["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}
    result = smp(obj, {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}})
    assert result["spec"]["strategy"] == {"type": "Recreate"}
    volumes = smp(
        deployment(),
        {
            "spec": {
                "template": {
                    "spec": {
                        "volumes": [
                            {
                                "name": "data",
                                "$retainKeys": ["name", "configMap"],
                                "configMap": {"name": "cm"},
                            }
                        ]
                    }
                }
            }
        },
    )
    assert pod_spec(volumes)["volumes"] == [{"name": "data", "configMap": {"name": "cm"}}]


@pytest.mark.parametrize(
    "strategy",
    [
        {"$retainKeys": "type", "type": "Recreate"},
        {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": {"maxSurge": 2}},
    ],
)
def test_bad_retain_keys_is_400(strategy: dict[str, Any]) -> None:
    obj = deployment()
    obj["spec"]["strategy"] = {"type": "RollingUpdate"}
    with pytest.raises(StatusError) as info:
        smp(obj, {"spec": {"strategy": strategy}})
    assert (info.value.code, info.value.reason, info.value.message) == (
        400,
        "BadRequest",
        "invalid patch format of retainKeys",
    )


def test_directives_in_a_new_value_are_dropped() -> None:
    # With no live value to merge into, the apiserver takes the patch value as it is and the
    # typed decode drops the directive keys.
    result = smp(deployment(), {"spec": {"strategy": {"$retainKeys": "type", "type": "Recreate"}}})
    assert result["spec"]["strategy"] == {"type": "Recreate"}


def test_set_element_order_reorders_and_merges() -> None:
    result = smp(
        deployment(),
        {
            "spec": {
                "template": {
                    "spec": {
                        "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}],
                        "containers": [{"name": "web", "image": "nginx:2"}],
                    }
                }
            },
            "metadata": {
                "$setElementOrder/finalizers": ["b.example.com/y", "a.example.com/x"],
            },
        },
    )
    assert [c["name"] for c in pod_spec(result)["containers"]] == ["sidecar", "web"]
    assert pod_spec(result)["containers"][1]["image"] == "nginx:2"
    assert result["metadata"]["finalizers"] == ["b.example.com/y", "a.example.com/x"]


def test_delete_from_primitive_list_and_primitive_merge() -> None:
    result = smp(
        deployment(),
        {
            "metadata": {
                "$deleteFromPrimitiveList/finalizers": ["a.example.com/x"],
                "finalizers": ["c"],
            }
        },
    )
    assert result["metadata"]["finalizers"] == ["c", "b.example.com/y"]
    union = smp(deployment(), {"metadata": {"finalizers": ["a.example.com/x", "z"]}})
    assert union["metadata"]["finalizers"] == ["a.example.com/x", "z", "b.example.com/y"]


def test_unknown_patch_directive_is_an_internal_error() -> None:
    with pytest.raises(StatusError) as info:
        smp(deployment(), {"metadata": {"labels": {"$patch": "explode", "a": "b"}}})
    assert info.value.code == 500
    assert info.value.message == "unknown patch type: explode in map: map[$patch:explode a:b]"


def test_missing_merge_key_is_an_internal_error() -> None:
    with pytest.raises(StatusError) as info:
        smp(
            deployment(),
            {"spec": {"template": {"spec": {"containers": [{"image": "x", "tty": True}]}}}},
        )
    assert info.value.code == 500
    assert (
        info.value.message == "map: map[image:x tty:true] does not contain declared merge key: name"
    )


def test_custom_resources_do_not_accept_strategic_merge_patch() -> None:
    widget = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {},
    }
    for kwargs in ({}, {"custom": True}):
        with pytest.raises(StatusError) as info:
            strategic_merge_patch(
                widget, {"spec": {"a": 1}}, kind="Widget", api_version="example.com/v1", **kwargs
            )
        assert info.value.to_status() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "the body of the request was in an unknown format - accepted media types "
            "include: application/json-patch+json, application/merge-patch+json, "
            "application/apply-patch+yaml",
            "reason": "UnsupportedMediaType",
            "code": 415,
        }


def test_builtin_kind_in_core_group_accepts_strategic_merge_patch() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    result = strategic_merge_patch(
        cm, {"data": {"b": "2", "a": None}}, kind="ConfigMap", api_version="v1"
    )
    assert result["data"] == {"b": "2"}


def test_strategic_merge_patch_body_must_be_an_object() -> None:
    with pytest.raises(StatusError) as info:
        smp(deployment(), [{"op": "add"}])
    assert info.value.code == 400
    assert info.value.message == (
        "json: cannot unmarshal array into Go value of type map[string]interface {}"
    )


def test_json_copy_is_deep_and_keeps_exact_types() -> None:
    class Label(str):
        pass

    value: dict[str, Any] = {
        "a": [1, 1.0, True, None, "x", {"b": [False, 0]}],
        "c": {"d": {"e": "é"}},
    }
    copied = json_copy(value)
    assert copied == value
    assert [type(v) for v in copied["a"][:5]] == [int, float, bool, type(None), str]
    copied["a"][5]["b"].append(1)
    copied["c"]["d"]["e"] = "f"
    assert value == {"a": [1, 1.0, True, None, "x", {"b": [False, 0]}], "c": {"d": {"e": "é"}}}
    # what marshal cannot carry is copied by hand (containers new, the rest shared)
    odd = {"l": Label("v"), "n": [Label("w")]}
    odd_copy = json_copy(odd)
    assert odd_copy == odd
    assert odd_copy["n"] is not odd["n"]
