"""The sandbox API server driven by the official ``kubernetes`` client (typed and dynamic).

Each test starts one cluster on a loopback HTTPS port (``_single.SingleCluster``) and asserts
on what the client received and what the server's store ends up holding.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, dynamic, watch
from kubernetes.client.exceptions import ApiException

from sandbox.kube.cluster import AuthResult
from sandbox.kube.errors import StatusError
from tests.sandbox._single import SingleCluster


@pytest.fixture
def kube(tmp_path: Path):
    with SingleCluster(tmp_path, controllers=False) as c:
        yield c


def body_of(exc: ApiException) -> dict[str, Any]:
    return json.loads(exc.body)


def dyn_client(kube: SingleCluster) -> dynamic.DynamicClient:
    """The dynamic client sends bodies as given (the typed one validates them client-side)."""
    return dynamic.DynamicClient(kube.api_client(), cache_file=str(kube.tmp_path / "dyn.json"))


def deployment(name: str, *, labels: dict[str, str] | None = None, replicas: int = 2,
               image: str = "nginx:1.25") -> dict[str, Any]:  # fmt: skip
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def raw(kube: SingleCluster, method: str, path: str, *, body: bytes | None = None,
        content_type: str = "application/json", token: str | None = "default",
        accept: str = "application/json") -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One HTTPS request with urllib (for the cases the typed client cannot express)."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(kube.ca_path))
    req = urllib.request.Request(kube.url + path, data=body, method=method)
    if token == "default":
        token = kube.spec.token
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", content_type)
    req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# ------------------------------------------------------------------------------------------------
# discovery, version, health


def test_version_and_discovery_with_typed_and_dynamic_clients(kube: SingleCluster, tmp_path: Path):
    api = kube.api_client()
    info = client.VersionApi(api).get_code()
    assert info.git_version == "v1.31.4"
    assert (info.major, info.minor) == ("1", "31")
    assert info.platform == "linux/amd64"
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "apiextensions.k8s.io", "authentication.k8s.io", "events.k8s.io"} <= set(groups)
    assert groups["apps"].preferred_version.group_version == "apps/v1"
    resources = client.AppsV1Api(api).get_api_resources()
    names = {r.name: r for r in resources.resources}
    assert names["deployments"].short_names == ["deploy"]
    assert names["deployments"].categories == ["all"]
    assert names["deployments/scale"].kind == "Scale"
    assert names["deployments/scale"].group == "autoscaling"
    assert set(names["deployments/status"].verbs) == {"get", "patch", "update"}

    cache = tmp_path / "discovery.json"
    dyn = dynamic.DynamicClient(api, cache_file=str(cache))
    deploy = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    assert deploy.namespaced
    assert deploy.name == "deployments"
    ns = dyn.resources.get(api_version="v1", kind="Namespace")
    assert not ns.namespaced
    assert cache.exists()


def test_health_endpoints_answer_without_a_token(kube: SingleCluster):
    for path in ("/livez", "/readyz", "/healthz", "/readyz/ping"):
        status, _headers, body = raw(kube, "GET", path, token=None)
        assert (status, body) == (200, b"ok"), path
    status, _, body = raw(kube, "GET", "/readyz?verbose", token=None)
    assert status == 200
    assert body.decode().endswith("readyz check passed\n")
    status, _, body = raw(kube, "GET", "/version", token=None)
    assert status == 401
    assert json.loads(body)["reason"] == "Unauthorized"


def test_aggregated_discovery_is_served_when_asked_for(kube: SingleCluster):
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    status, headers, body = raw(kube, "GET", "/apis", accept=accept)
    assert status == 200
    assert headers["Content-Type"] == (
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
    doc = json.loads(body)
    assert doc["kind"] == "APIGroupDiscoveryList"
    apps = next(i for i in doc["items"] if i["metadata"]["name"] == "apps")
    deploy = next(r for r in apps["versions"][0]["resources"] if r["resource"] == "deployments")
    assert deploy["scope"] == "Namespaced"
    assert {s["subresource"] for s in deploy["subresources"]} == {"scale", "status"}
    status, headers, body = raw(kube, "GET", "/apis")
    assert json.loads(body)["kind"] == "APIGroupList"


# ------------------------------------------------------------------------------------------------
# authentication


def test_missing_or_wrong_token_is_401_and_foreign_token_is_403(tmp_path: Path):
    def authenticate(token: str | None) -> AuthResult:
        if token == "token-sandbox-1":
            return AuthResult(True, 200, "admin", ("system:masters",))
        if token == "token-of-another-cluster":
            return AuthResult(False, 403, "sandbox-2-admin")
        return AuthResult(False, 401)

    with SingleCluster(tmp_path, authenticator=authenticate, controllers=False) as kube:
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(kube.api_client("wrong")).list_namespace()
        assert err.value.status == 401
        assert body_of(err.value)["message"] == "Unauthorized"
        status, _, body = raw(kube, "GET", "/api/v1/namespaces", token=None)
        assert status == 401
        assert json.loads(body)["reason"] == "Unauthorized"
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(
                kube.api_client("token-of-another-cluster")
            ).list_namespaced_config_map("default")
        assert err.value.status == 403
        assert body_of(err.value)["message"] == (
            'configmaps is forbidden: User "sandbox-2-admin" cannot list resource "configmaps" '
            'in API group "" in the namespace "default"'
        )
        review = client.AuthenticationV1Api(kube.api_client()).create_token_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
             "spec": {"token": "token-sandbox-1"}}
        )  # fmt: skip
        assert review.status.authenticated is True
        assert review.status.user.username == "admin"
        review = client.AuthenticationV1Api(kube.api_client()).create_token_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
             "spec": {"token": "nope"}}
        )  # fmt: skip
        assert not review.status.authenticated


# ------------------------------------------------------------------------------------------------
# CRUD, resourceVersion, generation


def test_configmap_crud_resource_versions_and_stale_replace(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    created = core.create_namespaced_config_map(
        "default", {"metadata": {"name": "cfg", "labels": {"app": "x"}}, "data": {"a": "1"}}
    )
    assert created.metadata.uid
    assert created.metadata.creation_timestamp
    rv1 = int(created.metadata.resource_version)
    assert created.metadata.generation is None  # the apiserver keeps no generation for ConfigMaps
    assert created.metadata.managed_fields[0].manager == "OpenAPI-Generator"

    stale = core.read_namespaced_config_map("cfg", "default")
    stale.data = {"a": "stale"}
    fresh = core.patch_namespaced_config_map(
        "cfg", "default", {"data": {"b": "2"}}, _content_type="application/merge-patch+json"
    )
    assert int(fresh.metadata.resource_version) > rv1
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("cfg", "default", stale)
    assert err.value.status == 409
    status = body_of(err.value)
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        'Operation cannot be fulfilled on configmaps "cfg": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    assert kube.get("configmaps", "default", "cfg")["data"] == {"a": "1", "b": "2"}

    # a write that changes nothing is not a write
    same = core.replace_namespaced_config_map("cfg", "default", fresh)
    assert same.metadata.resource_version == fresh.metadata.resource_version

    deleted = core.delete_namespaced_config_map("cfg", "default")
    assert deleted["status"] == "Success"
    assert deleted["details"]["name"] == "cfg"
    assert deleted["details"]["kind"] == "configmaps"
    assert not kube.exists("configmaps", "default", "cfg")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("cfg", "default")
    assert err.value.status == 404
    assert body_of(err.value)["message"] == 'configmaps "cfg" not found'
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("missing-ns", {"metadata": {"name": "x"}})
    assert body_of(err.value)["message"] == 'namespaces "missing-ns" not found'


def test_create_twice_is_already_exists(kube: SingleCluster):
    apps = client.AppsV1Api(kube.api_client())
    apps.create_namespaced_deployment("default", deployment("web"))
    with pytest.raises(ApiException) as err:
        apps.create_namespaced_deployment("default", deployment("web"))
    assert err.value.status == 409
    assert body_of(err.value)["reason"] == "AlreadyExists"
    assert body_of(err.value)["message"] == 'deployments.apps "web" already exists'


def test_generation_moves_with_spec_and_not_with_status(kube: SingleCluster):
    apps = client.AppsV1Api(kube.api_client())
    d = apps.create_namespaced_deployment("default", deployment("web"))
    assert d.metadata.generation == 1
    assert d.spec.strategy.type == "RollingUpdate"  # defaulted like the real apiserver
    assert d.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"
    assert d.status is None or d.status.replicas is None

    d.status = client.V1DeploymentStatus(replicas=2, ready_replicas=2, observed_generation=1)
    after_status = apps.replace_namespaced_deployment_status("web", "default", d)
    assert after_status.metadata.generation == 1
    assert after_status.status.ready_replicas == 2
    assert int(after_status.metadata.resource_version) > int(d.metadata.resource_version)

    # the main resource ignores status changes
    after_status.status.ready_replicas = 99
    after_status.metadata.labels = {"team": "a"}
    relabelled = apps.replace_namespaced_deployment("web", "default", after_status)
    assert relabelled.status.ready_replicas == 2
    assert relabelled.metadata.generation == 1

    scaled = apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 5}},
                                              _content_type="application/merge-patch+json")  # fmt: skip
    assert scaled.metadata.generation == 2
    held = kube.get("deployments", "default", "web", group="apps")
    assert held["spec"]["replicas"] == 5
    assert held["metadata"]["generation"] == 2
    managers = {(e["manager"], e.get("subresource")) for e in held["metadata"]["managedFields"]}
    assert ("OpenAPI-Generator", "status") in managers
    assert ("OpenAPI-Generator", None) in managers


def test_scale_subresource(kube: SingleCluster):
    apps = client.AppsV1Api(kube.api_client())
    apps.create_namespaced_deployment("default", deployment("web", replicas=3))
    scale = apps.read_namespaced_deployment_scale("web", "default")
    assert scale.spec.replicas == 3
    assert scale.status.selector == "app=web"
    patched = apps.patch_namespaced_deployment_scale(
        "web", "default", {"spec": {"replicas": 7}}, _content_type="application/merge-patch+json"
    )
    assert patched.spec.replicas == 7
    held = kube.get("deployments", "default", "web", group="apps")
    assert held["spec"]["replicas"] == 7
    assert held["metadata"]["generation"] == 2


# ------------------------------------------------------------------------------------------------
# validation


def test_validation_errors_are_422_with_real_messages(kube: SingleCluster):
    dyn = dyn_client(kube)
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    deploys = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    pods = dyn.resources.get(api_version="v1", kind="Pod")

    def error(resource: Any, body: dict[str, Any]) -> dict[str, Any]:
        with pytest.raises(ApiException) as err:
            dyn.create(resource, body=body, namespace="default")
        assert err.value.status == 422, err.value.body
        return body_of(err.value)

    status = error(cms, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})
    assert status["reason"] == "Invalid"
    assert status["message"] == (
        'ConfigMap "" is invalid: metadata.name: Required value: name or generateName is required'
    )
    status = error(cms, {"metadata": {"name": "Bad_Name"}})
    assert status["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase '
        "RFC 1123 subdomain must consist of"
    )
    assert status["details"]["causes"][0]["field"] == "metadata.name"
    status = error(cms, {"metadata": {"name": "ok", "labels": {"app": "has space"}}})
    assert status["message"].startswith(
        'ConfigMap "ok" is invalid: metadata.labels: Invalid value: "has space": a valid label '
        "must be an empty string or consist of alphanumeric characters"
    )
    mismatched = deployment("web")
    mismatched["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    status = error(deploys, mismatched)
    assert status["message"] == (
        'Deployment.apps "web" is invalid: spec.template.metadata.labels: Invalid value: '
        '{"app":"web"}: `selector` does not match template `labels`'
    )
    no_selector = deployment("web")
    del no_selector["spec"]["selector"]
    status = error(deploys, no_selector)
    assert status["message"] == (
        'Deployment.apps "web" is invalid: [spec.selector: Required value, '
        'spec.template.metadata.labels: Invalid value: {"app":"web"}: `selector` does not match '
        "template `labels`]"
    )
    no_image = deployment("web")
    del no_image["spec"]["template"]["spec"]["containers"][0]["image"]
    status = error(deploys, no_image)
    assert status["message"] == (
        'Deployment.apps "web" is invalid: spec.template.spec.containers[0].image: Required value'
    )
    status = error(pods, {"metadata": {"name": "p"}, "spec": {"containers": [{"image": "x"}]}})
    assert status["message"] == 'Pod "p" is invalid: spec.containers[0].name: Required value'
    assert not kube.exists("deployments", "default", "web", group="apps")
    assert not kube.exists("pods", "default", "p")


def test_field_validation_strict_warn_and_ignore(kube: SingleCluster):
    dyn = dyn_client(kube)
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    body = {"metadata": {"name": "cfg"}, "data": {"a": "1"}, "datta": {"typo": "x"}}
    with pytest.raises(ApiException) as err:
        dyn.create(cms, body=body, namespace="default",
                   query_params=[("fieldValidation", "Strict")])  # fmt: skip
    assert err.value.status == 400
    assert body_of(err.value)["message"] == (
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: '
        'unknown field "datta"'
    )
    assert not kube.exists("configmaps", "default", "cfg")
    dyn.create(cms, body={**body, "metadata": {"name": "quiet"}}, namespace="default",
               query_params=[("fieldValidation", "Ignore")])  # fmt: skip
    assert kube.get("configmaps", "default", "quiet")["data"] == {"a": "1"}
    status, headers, _ = raw(
        kube, "POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Warn",
        body=json.dumps(body).encode(),
    )  # fmt: skip
    assert status == 201
    assert headers["Warning"] == '299 - "unknown field \\"datta\\""'
    assert "datta" not in kube.get("configmaps", "default", "cfg")


def test_unsupported_media_type_and_method_not_allowed(kube: SingleCluster):
    client.CoreV1Api(kube.api_client()).create_namespaced_config_map(
        "default", {"metadata": {"name": "cfg"}}
    )
    status, _, body = raw(kube, "PATCH", "/api/v1/namespaces/default/configmaps/cfg",
                          body=b"{}", content_type="text/plain")  # fmt: skip
    assert status == 415
    assert json.loads(body)["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, "
        "application/strategic-merge-patch+json, application/apply-patch+yaml"
    )
    status, _, body = raw(kube, "POST", "/api/v1/namespaces/default/configmaps/cfg", body=b"{}")
    assert status == 405
    assert json.loads(body)["reason"] == "MethodNotAllowed"
    status, _, body = raw(kube, "GET", "/api/v1/widgets")
    assert status == 404


# ------------------------------------------------------------------------------------------------
# lists, selectors, pagination


def test_list_with_label_and_field_selectors_and_pagination(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    for i, tier in enumerate(["web", "web", "db", "cache", "db"]):
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": f"cm-{i}", "labels": {"tier": tier, "n": str(i)}}}
        )
    names = lambda items: [i.metadata.name for i in items]  # noqa: E731
    assert names(core.list_namespaced_config_map("default", label_selector="tier=db").items) == [
        "cm-2",
        "cm-4",
    ]
    assert names(
        core.list_namespaced_config_map("default", label_selector="tier in (web,cache),n!=0").items
    ) == ["cm-1", "cm-3"]
    assert names(
        core.list_namespaced_config_map("default", field_selector="metadata.name=cm-3").items
    ) == ["cm-3"]
    across = core.list_config_map_for_all_namespaces(label_selector="tier")
    assert len(across.items) == 5

    page1 = core.list_namespaced_config_map("default", label_selector="tier", limit=2)
    assert names(page1.items) == ["cm-0", "cm-1"]
    assert page1.metadata.remaining_item_count == 3
    page2 = core.list_namespaced_config_map(
        "default", label_selector="tier", limit=2, _continue=page1.metadata._continue
    )
    assert names(page2.items) == ["cm-2", "cm-3"]
    page3 = core.list_namespaced_config_map(
        "default", label_selector="tier", limit=2, _continue=page2.metadata._continue
    )
    assert names(page3.items) == ["cm-4"]
    assert page3.metadata._continue is None

    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map("default", field_selector="spec.foo=bar")
    assert err.value.status == 400


# ------------------------------------------------------------------------------------------------
# dry run


def test_dry_run_all_validates_answers_and_persists_nothing(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    apps = client.AppsV1Api(kube.api_client())
    rv_before = kube.run(lambda: kube.cluster.store.resource_version)
    answered = apps.create_namespaced_deployment("default", deployment("web"), dry_run="All")
    assert answered.metadata.uid
    assert answered.metadata.resource_version is None
    assert answered.spec.revision_history_limit == 10
    assert not kube.exists("deployments", "default", "web", group="apps")
    dyn = dyn_client(kube)
    with pytest.raises(ApiException) as err:
        dyn.create(dyn.resources.get(api_version="apps/v1", kind="Deployment"),
                   body={**deployment("x"), "spec": {}}, namespace="default", dry_run="All")  # fmt: skip
    assert err.value.status == 422

    core.create_namespaced_config_map("default", {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    rv_before = kube.run(lambda: kube.cluster.store.resource_version)
    patched = core.patch_namespaced_config_map(
        "cfg", "default", {"data": {"a": "2"}}, dry_run="All",
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    assert patched.data == {"a": "2"}
    core.delete_namespaced_config_map("cfg", "default", dry_run="All")
    assert kube.get("configmaps", "default", "cfg")["data"] == {"a": "1"}
    assert kube.run(lambda: kube.cluster.store.resource_version) == rv_before


# ------------------------------------------------------------------------------------------------
# server-side apply


def test_server_side_apply_with_dynamic_client_and_typed_content_type(kube: SingleCluster):
    dyn = dyn_client(kube)
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"owned-by-a": "1"}}  # fmt: skip
    first = dyn.server_side_apply(cms, body=body, namespace="default", field_manager="team-a")
    assert first.data["owned-by-a"] == "1"
    held = kube.get("configmaps", "default", "cfg")
    assert [(e["manager"], e["operation"]) for e in held["metadata"]["managedFields"]] == [
        ("team-a", "Apply")
    ]
    again = dyn.server_side_apply(cms, body=body, namespace="default", field_manager="team-a")
    assert again.metadata.resourceVersion == first.metadata.resourceVersion  # no-op apply

    conflicting = {**body, "data": {"owned-by-a": "2"}}
    with pytest.raises(dynamic.exceptions.ConflictError) as err:
        dyn.server_side_apply(cms, body=conflicting, namespace="default", field_manager="team-b")
    status = json.loads(err.value.body)
    assert status["reason"] == "Conflict"
    assert 'conflict with "team-a"' in status["message"]
    assert kube.get("configmaps", "default", "cfg")["data"] == {"owned-by-a": "1"}
    forced = dyn.server_side_apply(cms, body=conflicting, namespace="default",
                                   field_manager="team-b", force_conflicts=True)  # fmt: skip
    assert forced.data["owned-by-a"] == "2"

    # typed API with the apply content type; apply creates what does not exist yet
    core = client.CoreV1Api(kube.api_client())
    created = core.patch_namespaced_config_map(
        "other", "default",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"},
         "data": {"k": "v"}},
        field_manager="fleetops", _content_type="application/apply-patch+yaml",
    )  # fmt: skip
    assert created.data == {"k": "v"}
    assert (
        kube.get("configmaps", "default", "other")["metadata"]["managedFields"][0]["manager"]
        == "fleetops"
    )
    with pytest.raises(ApiException) as err2:
        core.patch_namespaced_config_map(
            "other", "default", {"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "other"}},
            _content_type="application/apply-patch+yaml",
        )  # fmt: skip
    assert err2.value.status == 422
    assert "fieldManager: Required value" in body_of(err2.value)["message"]


# ------------------------------------------------------------------------------------------------
# watch


def test_watch_replays_changes_after_a_resource_version(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    start = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", {"metadata": {"name": "w"}, "data": {"a": "1"}})
    core.patch_namespaced_config_map("w", "default", {"data": {"a": "2"}})
    core.delete_namespaced_config_map("w", "default")
    events = [
        (e["type"], e["object"].metadata.name, (e["object"].data or {}).get("a"))
        for e in watch.Watch().stream(
            core.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=1
        )
    ]
    assert events == [("ADDED", "w", "1"), ("MODIFIED", "w", "2"), ("DELETED", "w", "2")]


def test_watch_sees_live_changes_with_a_label_selector(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    seen: list[tuple[str, str]] = []
    w = watch.Watch()
    start = core.list_namespaced_config_map("default").metadata.resource_version

    def consume() -> None:
        # from a resourceVersion: nothing is missed however late the watch connects
        for e in w.stream(core.list_namespaced_config_map, "default", label_selector="app=x",
                          resource_version=start, timeout_seconds=5):  # fmt: skip
            seen.append((e["type"], e["object"].metadata.name))
            if len(seen) == 3:
                w.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.2)
    core.create_namespaced_config_map("default", {"metadata": {"name": "other"}})
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "a", "labels": {"app": "x"}}}
    )
    core.patch_namespaced_config_map("a", "default", {"data": {"k": "v"}})
    # leaving the selector is a DELETED event for this watch
    core.patch_namespaced_config_map("a", "default", {"metadata": {"labels": {"app": "y"}}})
    thread.join(10)
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


def test_watch_replay_and_subscribers_never_share_the_stored_objects(kube: SingleCluster):
    """History entries of objects still live are kept unpacked; replay and subscribers get
    their own copies, so changing what they were handed changes nothing the server holds."""
    store = kube.cluster.store
    core = client.CoreV1Api(kube.api_client())
    start = core.list_namespaced_config_map("default").metadata.resource_version

    async def writes() -> list[str]:
        q = store.subscribe()
        rt = store.registry.by_kind("v1", "ConfigMap")
        for name in ("a", "b"):
            store.create(rt, "default", {"metadata": {"name": name, "labels": {"app": "x"}},
                                         "data": {"k": name}}, manager="m")  # fmt: skip
        store.update(rt, "default", "a", {"metadata": {"name": "a", "labels": {"app": "y"}},
                                          "data": {"k": "a2"}}, manager="m")  # fmt: skip
        seen = []
        while not q.empty():
            event = q.get_nowait()
            seen.append(event.type)
            for obj in (event.object, event.old):
                if obj is not None:  # a careless subscriber
                    obj["data"]["k"] = "changed"
                    obj["metadata"]["labels"]["app"] = "changed"
        store.unsubscribe(q)
        return seen

    assert kube.call(writes()) == ["ADDED", "ADDED", "MODIFIED"]
    events = [
        (e["type"], e["object"].metadata.name, e["object"].data["k"], e["object"].metadata.labels)
        for e in watch.Watch().stream(core.list_namespaced_config_map, "default",
                                      label_selector="app=x", resource_version=start,
                                      timeout_seconds=1)
    ]  # fmt: skip
    assert events == [
        ("ADDED", "a", "a", {"app": "x"}),
        ("ADDED", "b", "b", {"app": "x"}),  # (b is still live: its entry was never packed)
        ("DELETED", "a", "a2", {"app": "y"}),  # left the selector, reported as it is now
    ]
    assert kube.get("configmaps", "default", "b")["data"] == {"k": "b"}
    assert kube.get("configmaps", "default", "a")["metadata"]["labels"] == {"app": "y"}


def test_watch_from_an_expired_resource_version_is_410(tmp_path: Path):
    with SingleCluster(tmp_path, controllers=False, history=5) as kube:
        core = client.CoreV1Api(kube.api_client())
        start = core.list_namespaced_config_map("default").metadata.resource_version
        for i in range(10):
            core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        with pytest.raises(ApiException) as err:
            list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                      resource_version=start, timeout_seconds=2))  # fmt: skip
        assert err.value.status == 410
        assert err.value.reason.startswith(f"Expired: too old resource version: {start} (")
        # a recent version still works
        recent = core.list_namespaced_config_map("default").metadata.resource_version
        assert list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                         resource_version=recent, timeout_seconds=1)) == []  # fmt: skip


@pytest.mark.parametrize(
    ("query", "causes"),
    [
        (
            "sendInitialEvents=true",
            ["Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"],
        ),
        (
            "resourceVersionMatch=NotOlderThan",
            [
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents "
                "is provided"
            ],
        ),
        (
            "sendInitialEvents=true&resourceVersionMatch=Exact",
            [
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                'Unsupported value: "Exact": supported values: "NotOlderThan"',
            ],
        ),
    ],
)
def test_watch_options_the_api_server_refuses_are_422(
    kube: SingleCluster, query: str, causes: list[str]
):
    status, _, body = raw(kube, "GET", f"/api/v1/namespaces/default/configmaps?watch=true&{query}")
    assert status == 422
    answer = json.loads(body)
    assert answer["reason"] == "Invalid"
    assert answer["details"]["kind"] == "ListOptions"
    assert answer["details"]["group"] == "meta.k8s.io"
    assert [c["message"] for c in answer["details"]["causes"]] == causes
    assert {c["field"] for c in answer["details"]["causes"]} == {"resourceVersionMatch"}
    assert answer["message"].startswith('ListOptions.meta.k8s.io "" is invalid: ')


def test_watch_timeout_is_whole_seconds_and_zero_means_the_servers_own(kube: SingleCluster):
    status, _, body = raw(
        kube, "GET", "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1.5"
    )
    assert status == 400
    assert "timeoutSeconds" in json.loads(body)["message"]

    core = client.CoreV1Api(kube.api_client())
    start = core.list_namespaced_config_map("default").metadata.resource_version
    later = threading.Timer(
        0.3, lambda: core.create_namespaced_config_map("default", {"metadata": {"name": "late"}})
    )
    later.start()
    # timeoutSeconds=0 is not an immediate end: the event written 0.3 s later arrives
    stream = core.list_namespaced_config_map(
        "default",
        watch=True,
        resource_version=start,
        timeout_seconds=0,
        _preload_content=False,
        _request_timeout=10,
    )
    try:
        first = json.loads(next(stream.stream(amt=None)).splitlines()[0])
    finally:
        stream.release_conn()
        later.join()
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "late")


def test_watch_with_initial_events_ends_them_with_a_bookmark(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    core.create_namespaced_config_map("default", {"metadata": {"name": "there"}})
    status, _, body = raw(
        kube,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true"
        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1",
    )
    assert status == 200
    events = [json.loads(line) for line in body.splitlines()]
    assert ("ADDED", "there") in [(e["type"], e["object"]["metadata"].get("name")) for e in events]
    bookmark = next(e for e in events if e["type"] == "BOOKMARK")
    assert bookmark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


# ------------------------------------------------------------------------------------------------
# namespaces, CRDs


def test_namespace_lifecycle_default_objects_and_cascade(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    ns = core.create_namespace({"metadata": {"name": "team-a"}})
    assert ns.status.phase == "Active"
    assert ns.metadata.labels == {"kubernetes.io/metadata.name": "team-a"}
    assert core.read_namespaced_service_account("default", "team-a").metadata.name == "default"
    assert "ca.crt" in core.read_namespaced_config_map("kube-root-ca.crt", "team-a").data
    core.create_namespaced_secret("team-a", {"metadata": {"name": "s"},
                                             "stringData": {"password": "hunter2"}})  # fmt: skip
    assert kube.get("secrets", "team-a", "s")["data"] == {"password": "aHVudGVyMg=="}
    answer = core.delete_namespace("team-a")  # the namespace itself, as it is being terminated
    assert answer["status"]["phase"] == "Terminating"
    assert answer["metadata"]["deletionTimestamp"]
    assert not kube.exists("namespaces", None, "team-a")
    assert not kube.exists("secrets", "team-a", "s")
    assert not kube.exists("serviceaccounts", "team-a", "default")
    with pytest.raises(ApiException) as err:
        core.delete_namespace("kube-system")
    assert err.value.status == 403
    assert body_of(err.value)["message"] == (
        'namespaces "kube-system" is forbidden: this namespace may not be deleted'
    )


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                  "shortNames": ["wd"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object",
                                     "properties": {"size": {"type": "integer"},
                                                    "color": {"type": "string"}}},
                            "status": {"type": "object",
                                       "properties": {"ready": {"type": "boolean"}}},
                        },
                    }
                },
            }
        ],
    },
}  # fmt: skip


def test_crd_serves_custom_resources_until_deleted(kube: SingleCluster, tmp_path: Path):
    api = kube.api_client()
    ext = client.ApiextensionsV1Api(api)
    crd = ext.create_custom_resource_definition(CRD)
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    custom = client.CustomObjectsApi(api)
    widget = custom.create_namespaced_custom_object(
        "example.com", "v1", "default", "widgets",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"},
         "spec": {"size": 3, "unknown": "pruned"}, "status": {"ready": True}},
    )  # fmt: skip
    assert widget["metadata"]["generation"] == 1
    assert widget["spec"] == {"size": 3}  # unknown fields are pruned by the structural schema
    assert "status" not in widget  # status subresource: the main resource ignores .status
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            "example.com", "v1", "default", "widgets",
            {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w2"},
             "spec": {"size": "big"}},
        )  # fmt: skip
    assert err.value.status == 422
    patched = custom.patch_namespaced_custom_object(  # a merge patch
        "example.com", "v1", "default", "widgets", "w1", {"spec": {"size": 4}}
    )
    assert patched["spec"] == {"size": 4}
    assert patched["metadata"]["generation"] == 2
    status, _, body = raw(
        kube, "PATCH", "/apis/example.com/v1/namespaces/default/widgets/w1",
        body=b'{"spec": {"size": 5}}', content_type="application/strategic-merge-patch+json",
    )  # fmt: skip
    assert status == 415  # no strategic merge patch for custom resources
    assert json.loads(body)["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    )

    dyn = dynamic.DynamicClient(api, cache_file=str(tmp_path / "cache.json"))
    widgets = dyn.resources.get(api_version="example.com/v1", kind="Widget")
    assert widgets.short_names == ["wd"]
    listed = widgets.get(namespace="default")
    assert [i.metadata.name for i in listed.items] == ["w1"]

    ext.delete_custom_resource_definition("widgets.example.com")
    assert not kube.exists("widgets", "default", "w1", group="example.com")
    status, _, _ = raw(kube, "GET", "/apis/example.com/v1/namespaces/default/widgets")
    assert status == 404


def test_openapi_v3_advertises_field_validation_on_patch(kube: SingleCluster):
    status, _, body = raw(kube, "GET", "/openapi/v3")
    assert status == 200
    index = json.loads(body)["paths"]
    url = index["apis/apps/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/apps/v1?hash=")
    status, _, body = raw(kube, "GET", url)
    doc = json.loads(body)
    op = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert op["x-kubernetes-group-version-kind"] == {"group": "apps", "version": "v1",
                                                     "kind": "Deployment"}  # fmt: skip
    assert "fieldValidation" in {p["name"] for p in op["parameters"]}
    containers = doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"][
        "containers"
    ]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    status, _, body = raw(kube, "GET", "/openapi/v2")
    assert "io.k8s.api.apps.v1.Deployment" in json.loads(body)["definitions"]


def test_store_api_used_by_controllers(kube: SingleCluster):
    """The store interface the controllers use: subscribe sees every committed change."""
    store = kube.cluster.store

    async def scenario() -> list[tuple[str, str]]:
        q = store.subscribe()
        rt = store.registry.by_kind("v1", "ConfigMap")
        store.create(rt, "default", {"metadata": {"name": "c"}}, manager="kube-controller-manager")
        store.update(rt, "default", "c", {"metadata": {"name": "c"}, "data": {"x": "y"}},
                     manager="kube-controller-manager")  # fmt: skip
        store.delete(rt, "default", "c")
        with pytest.raises(StatusError) as err:
            store.get(rt, "default", "c")
        assert err.value.code == 404
        out = []
        while not q.empty():
            e = q.get_nowait()
            out.append((e.type, e.object["metadata"]["name"]))
        store.unsubscribe(q)
        return out

    assert kube.call(scenario()) == [("ADDED", "c"), ("MODIFIED", "c"), ("DELETED", "c")]


# ------------------------------------------------------------------------------------------------
# deletion: owner references, finalizers, collections


def test_garbage_collection_follows_owner_references(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())

    def owned_by(owner: Any, name: str) -> None:
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name,
               "uid": owner.metadata.uid, "controller": True}  # fmt: skip
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": name, "ownerReferences": [ref]}}
        )

    owner = core.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    owned_by(owner, "child")
    child = core.read_namespaced_config_map("child", "default")
    owned_by(child, "grandchild")
    core.delete_namespaced_config_map("owner", "default")  # background propagation
    assert not kube.exists("configmaps", "default", "child")
    assert not kube.exists("configmaps", "default", "grandchild")

    owner = core.create_namespaced_config_map("default", {"metadata": {"name": "owner2"}})
    owned_by(owner, "orphan")
    core.delete_namespaced_config_map("owner2", "default", propagation_policy="Orphan")
    assert "ownerReferences" not in kube.get("configmaps", "default", "orphan")["metadata"]


def test_finalizers_hold_a_deleted_object_until_removed(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "held", "finalizers": ["example.com/cleanup"]}}
    )
    answer = core.delete_namespaced_config_map("held", "default")
    assert answer["metadata"]["deletionTimestamp"]
    assert kube.get("configmaps", "default", "held")["metadata"]["deletionTimestamp"]
    core.patch_namespaced_config_map(
        "held", "default", {"metadata": {"finalizers": None}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    assert not kube.exists("configmaps", "default", "held")


def test_delete_collection_with_a_label_selector(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    for name, tier in (("a", "web"), ("b", "web"), ("c", "db")):
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": name, "labels": {"tier": tier}}}
        )
    core.delete_collection_namespaced_config_map("default", label_selector="tier=web")
    assert not kube.exists("configmaps", "default", "a")
    assert not kube.exists("configmaps", "default", "b")
    assert kube.exists("configmaps", "default", "c")


def test_an_expired_continue_token_is_410(tmp_path: Path):
    with SingleCluster(tmp_path, controllers=False, history=5) as kube:
        core = client.CoreV1Api(kube.api_client())
        for i in range(3):
            core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        page = core.list_namespaced_config_map("default", limit=1)
        for i in range(10):
            core.create_namespaced_config_map("default", {"metadata": {"name": f"later-{i}"}})
        with pytest.raises(ApiException) as err:
            core.list_namespaced_config_map("default", limit=1, _continue=page.metadata._continue)
        assert err.value.status == 410
        status = body_of(err.value)
        assert status["reason"] == "Expired"
        assert status["message"].startswith("The provided continue parameter is too old")


# ------------------------------------------------------------------------------------------------
# events in two API groups, tables


def test_events_k8s_io_and_core_events_are_one_store(kube: SingleCluster):
    api = kube.api_client()
    client.EventsV1Api(api).create_namespaced_event(
        "default",
        {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"},
         "eventTime": "2024-01-01T00:00:00.000000Z", "reportingController": "fleetops",
         "reportingInstance": "fleetops-1", "action": "Rollout", "reason": "Started",
         "note": "rollout started", "type": "Normal",
         "regarding": {"kind": "Deployment", "name": "web", "namespace": "default"}},
    )  # fmt: skip
    core = client.CoreV1Api(api).read_namespaced_event("e1", "default")
    assert core.message == "rollout started"
    assert core.involved_object.name == "web"
    assert core.reporting_component == "fleetops"
    held = kube.get("events", "default", "e1")
    assert held["apiVersion"] == "v1"
    assert held["message"] == "rollout started"


def test_table_responses_for_kubectl_style_accept_headers(kube: SingleCluster):
    apps = client.AppsV1Api(kube.api_client())
    apps.create_namespaced_deployment("default", deployment("web", replicas=3))
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    status, _, body = raw(kube, "GET", "/apis/apps/v1/namespaces/default/deployments",
                          accept=accept)  # fmt: skip
    assert status == 200
    table = json.loads(body)
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name", "Ready", "Up-to-date", "Available", "Age", "Containers", "Images", "Selector",
    ]  # fmt: skip
    row = table["rows"][0]
    assert row["cells"][:4] == ["web", "0/3", 0, 0]
    assert row["cells"][5:] == ["app", "nginx:1.25", "app=web"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "web"
    status, _, body = raw(
        kube, "GET", "/apis/apps/v1/namespaces/default/deployments/web?includeObject=Object",
        accept=accept,
    )  # fmt: skip
    assert json.loads(body)["rows"][0]["object"]["spec"]["replicas"] == 3


def test_generate_name_and_resource_version_on_create(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    made = core.create_namespaced_config_map("default", {"metadata": {"generateName": "job-"}})
    assert made.metadata.name.startswith("job-")
    assert len(made.metadata.name) == len("job-") + 5
    assert kube.exists("configmaps", "default", made.metadata.name)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": "copied", "resourceVersion": "42"}}
        )
    assert err.value.status == 500
    assert body_of(err.value)["message"] == (
        "Internal error occurred: resourceVersion should not be set on objects to be created"
    )
    assert not kube.exists("configmaps", "default", "copied")


def test_an_outage_cuts_open_watch_streams(kube: SingleCluster):
    core = client.CoreV1Api(kube.api_client())
    outcome: dict[str, Any] = {}

    def consume() -> None:
        started = time.monotonic()
        try:
            for _ in watch.Watch().stream(core.list_namespaced_config_map, "default",
                                          timeout_seconds=20):  # fmt: skip
                pass
            outcome["ended"] = "cleanly"
        except Exception as e:  # the connection is cut mid-stream
            outcome["ended"] = type(e).__name__
        outcome["after"] = time.monotonic() - started

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.3)
    kube.run(lambda: kube.cluster.faults.update(outage=True))
    thread.join(10)
    assert not thread.is_alive()
    assert outcome["after"] < 5  # not the 20 s timeout
    assert outcome["ended"] != "cleanly"
