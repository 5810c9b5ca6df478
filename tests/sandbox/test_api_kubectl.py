"""The sandbox API server driven by the real kubectl binary (``--kubeconfig`` in ``tmp_path``).

Each test asserts on what kubectl printed and on what the server's store ends up holding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.sandbox._single import KUBECTL, SingleCluster

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(not Path(KUBECTL).exists(), reason="kubectl is not installed"),
]


@pytest.fixture
def kube(tmp_path: Path):
    with SingleCluster(tmp_path, controllers=False) as c:
        yield c


def manifest(*docs: dict) -> str:
    return yaml.safe_dump_all(docs)


def configmap(name: str, data: dict[str, str], labels: dict[str, str] | None = None,
              namespace: str = "default") -> dict:  # fmt: skip
    meta: dict = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def deployment(name: str, replicas: int = 2, image: str = "nginx:1.25") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def test_get_with_label_selectors_field_selectors_and_tables(kube: SingleCluster):
    docs = [
        configmap(f"cm-{i}", {"k": str(i)}, {"tier": tier})
        for i, tier in enumerate(["web", "web", "db", "cache"])
    ]
    out = kube.kubectl("apply", "-f", "-", stdin=manifest(*docs)).stdout
    assert out.splitlines() == [f"configmap/cm-{i} created" for i in range(4)]

    def names(*args: str) -> list[str]:
        return kube.kubectl("get", "configmaps", "-o", "name", *args).stdout.split()

    assert names("-l", "tier=web") == ["configmap/cm-0", "configmap/cm-1"]
    assert names("-l", "tier!=web,tier") == ["configmap/cm-2", "configmap/cm-3"]
    assert names("-l", "tier in (db,cache)") == ["configmap/cm-2", "configmap/cm-3"]
    assert names("-l", "tier notin (web)") == [
        "configmap/cm-2",
        "configmap/cm-3",
        "configmap/kube-root-ca.crt",
    ]
    assert names("--field-selector", "metadata.name=cm-2") == ["configmap/cm-2"]
    assert names("--field-selector", "metadata.name!=cm-2", "-l", "tier") == [
        "configmap/cm-0", "configmap/cm-1", "configmap/cm-3",
    ]  # fmt: skip

    table = kube.kubectl("get", "cm", "-l", "tier=db").stdout.splitlines()
    assert table[0].split() == ["NAME", "DATA", "AGE"]
    assert table[1].split()[:2] == ["cm-2", "1"]
    wide = kube.kubectl("get", "cm", "-A", "-l", "tier=cache").stdout.splitlines()
    assert wide[0].split() == ["NAMESPACE", "NAME", "DATA", "AGE"]
    assert wide[1].split()[:3] == ["default", "cm-3", "1"]
    ns = kube.kubectl("get", "namespaces").stdout.splitlines()
    assert ns[0].split() == ["NAME", "STATUS", "AGE"]
    assert [line.split()[:2] for line in ns[1:]] == [
        ["default", "Active"], ["kube-node-lease", "Active"], ["kube-public", "Active"],
        ["kube-system", "Active"],
    ]  # fmt: skip
    bad = kube.kubectl("get", "cm", "--field-selector", "data.k=1", check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error from server (BadRequest)")
    assert '"data.k" is not a known field selector' in bad.stderr


def test_get_deployments_and_services_print_the_real_columns(kube: SingleCluster):
    kube.kubectl("apply", "-f", "-", stdin=manifest(deployment("web", replicas=3)))
    lines = kube.kubectl("get", "deployments", "-o", "wide").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS",
                                "IMAGES", "SELECTOR"]  # fmt: skip
    cells = lines[1].split()
    assert cells[:4] == ["web", "0/3", "0", "0"]
    assert cells[5:] == ["app", "nginx:1.25", "app=web"]
    svc = kube.kubectl("get", "svc", "kubernetes").stdout.splitlines()
    assert svc[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert svc[1].split()[:5] == ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"]


def test_get_json_output_is_what_the_server_holds(kube: SingleCluster):
    kube.kubectl("create", "deployment", "web", "--image=nginx:1.25", "--replicas=2")
    printed = json.loads(kube.kubectl("get", "deployment", "web", "-o", "json").stdout)
    held = kube.get("deployments", "default", "web", group="apps")
    assert printed["metadata"]["uid"] == held["metadata"]["uid"]
    assert printed["metadata"]["resourceVersion"] == held["metadata"]["resourceVersion"]
    assert printed["spec"]["replicas"] == 2
    assert printed["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert "managedFields" not in printed["metadata"]  # kubectl hides them by default
    assert held["metadata"]["managedFields"][0]["manager"] == "kubectl-create"
    assert printed["metadata"]["generation"] == 1


def test_apply_server_side_create_update_conflict_and_force(kube: SingleCluster):
    out = kube.kubectl("apply", "--server-side", "-f", "-", stdin=manifest(deployment("web")))
    assert out.stdout.strip() == "deployment.apps/web serverside-applied"
    assert kube.get("deployments", "default", "web", group="apps")["spec"]["replicas"] == 2

    out = kube.kubectl("apply", "--server-side", "-f", "-", stdin=manifest(deployment("web", 4)))
    assert out.stdout.strip() == "deployment.apps/web serverside-applied"
    held = kube.get("deployments", "default", "web", group="apps")
    assert held["spec"]["replicas"] == 4
    assert held["metadata"]["generation"] == 2
    assert [(e["manager"], e["operation"]) for e in held["metadata"]["managedFields"]] == [
        ("kubectl", "Apply")
    ]

    conflict = kube.kubectl(
        "apply", "--server-side", "--field-manager=rollout-bot", "-f", "-",
        stdin=manifest(deployment("web", 6)), check=False,
    )  # fmt: skip
    assert conflict.returncode == 1
    assert 'Apply failed with 1 conflict: conflict with "kubectl"' in conflict.stderr
    assert ".spec.replicas" in conflict.stderr
    assert "--force-conflicts" in conflict.stderr
    assert kube.get("deployments", "default", "web", group="apps")["spec"]["replicas"] == 4

    forced = kube.kubectl(
        "apply", "--server-side", "--field-manager=rollout-bot", "--force-conflicts", "-f", "-",
        stdin=manifest(deployment("web", 6)),
    )  # fmt: skip
    assert forced.stdout.strip() == "deployment.apps/web serverside-applied"
    held = kube.get("deployments", "default", "web", group="apps")
    assert held["spec"]["replicas"] == 6
    assert {e["manager"] for e in held["metadata"]["managedFields"]} == {"kubectl", "rollout-bot"}


def test_server_side_apply_after_client_side_apply_migrates_ownership_silently(
    kube: SingleCluster, tmp_path: Path
):
    # kubectl's migration: apply, an apply of the last-applied annotation by
    # "kubectl-last-applied", a JSON patch folding the kubectl-client-side-apply entry into the
    # "kubectl" Apply entry (csaupgrade), then the apply again, which prunes what only the
    # client-side entry owned (defaults, re-defaulted at once). A real cluster answers all four.
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(manifest(deployment("web")))
    created = kube.kubectl("apply", "-f", str(deploy))
    assert (created.stdout.strip(), created.stderr) == ("deployment.apps/web created", "")
    before = kube.get("deployments", "default", "web", group="apps")
    assert [(e["manager"], e["operation"]) for e in before["metadata"]["managedFields"]] == [
        ("kubectl-client-side-apply", "Update")
    ]

    migrated = kube.kubectl("apply", "--server-side", "-f", str(deploy))
    assert migrated.stdout.strip() == "deployment.apps/web serverside-applied"
    assert migrated.stderr == ""  # no "failed to re-apply configuration" warning
    held = kube.get("deployments", "default", "web", group="apps")
    assert held["spec"] == before["spec"]  # labels kept, pruned defaults re-defaulted
    assert held["spec"]["template"]["metadata"]["labels"] == {"app": "web"}
    annotation = held["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    assert json.loads(annotation) == deployment("web")

    shown = json.loads(
        kube.kubectl("get", "deployment", "web", "-o", "json", "--show-managed-fields").stdout
    )
    entries = shown["metadata"]["managedFields"]
    assert entries == held["metadata"]["managedFields"]
    assert [(e["manager"], e["operation"], "time" in e) for e in entries] == [
        ("kubectl-last-applied", "Apply", False),
        ("kubectl", "Apply", True),
    ]
    assert entries[0]["fieldsV1"] == {
        "f:metadata": {"f:annotations": {"f:kubectl.kubernetes.io/last-applied-configuration": {}}}
    }
    assert entries[1]["fieldsV1"] == {
        "f:spec": {
            "f:replicas": {},
            "f:selector": {},
            "f:template": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:containers": {'k:{"name":"app"}': {"f:image": {}, "f:name": {}, ".": {}}}
                },
            },
        }
    }

    # Nothing is left to migrate: the next server-side apply is a plain no-op.
    again = kube.kubectl("apply", "--server-side", "-f", str(deploy))
    assert (again.stdout.strip(), again.stderr) == ("deployment.apps/web serverside-applied", "")
    after = kube.get("deployments", "default", "web", group="apps")
    assert after["metadata"]["resourceVersion"] == held["metadata"]["resourceVersion"]


def test_diff_exits_1_with_a_diff_and_0_without(kube: SingleCluster):
    kube.kubectl("apply", "--server-side", "-f", "-", stdin=manifest(configmap("cfg", {"a": "1"})))
    same = kube.kubectl("diff", "--server-side", "-f", "-",
                        stdin=manifest(configmap("cfg", {"a": "1"})), check=False)  # fmt: skip
    assert (same.returncode, same.stdout) == (0, "")
    changed = kube.kubectl("diff", "--server-side", "-f", "-",
                           stdin=manifest(configmap("cfg", {"a": "2"})), check=False)  # fmt: skip
    assert changed.returncode == 1, changed.stderr
    assert '-  a: "1"' in changed.stdout
    assert '+  a: "2"' in changed.stdout
    client_side = kube.kubectl("diff", "-f", "-", stdin=manifest(configmap("cfg", {"a": "3"})),
                               check=False)  # fmt: skip
    assert client_side.returncode == 1, client_side.stderr
    assert '+  a: "3"' in client_side.stdout
    # diffing sends dry-run requests only
    assert kube.get("configmaps", "default", "cfg")["data"] == {"a": "1"}


def test_replace_with_a_stale_object_is_a_conflict(kube: SingleCluster, tmp_path: Path):
    kube.kubectl("create", "configmap", "cfg", "--from-literal=a=1")
    stale = tmp_path / "stale.yaml"
    stale.write_text(kube.kubectl("get", "configmap", "cfg", "-o", "yaml").stdout)
    kube.kubectl("patch", "configmap", "cfg", "--type=merge", "-p", '{"data":{"a":"2"}}')
    result = kube.kubectl("replace", "-f", str(stale), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f'Error from server (Conflict): error when replacing "{stale}": Operation cannot be '
        'fulfilled on configmaps "cfg": the object has been modified; please apply your changes '
        "to the latest version and try again"
    )
    assert kube.get("configmaps", "default", "cfg")["data"] == {"a": "2"}


def test_delete_and_namespace_cascade(kube: SingleCluster):
    kube.kubectl("create", "namespace", "team-a")
    kube.kubectl("create", "configmap", "cfg", "-n", "team-a", "--from-literal=a=1")
    kube.kubectl("create", "secret", "generic", "pw", "-n", "team-a", "--from-literal=p=x")
    assert kube.exists("configmaps", "team-a", "cfg")
    out = kube.kubectl("delete", "configmap", "cfg", "-n", "team-a")
    assert out.stdout.strip() == 'configmap "cfg" deleted'
    assert not kube.exists("configmaps", "team-a", "cfg")
    out = kube.kubectl("delete", "namespace", "team-a")
    assert out.stdout.strip() == 'namespace "team-a" deleted'
    assert not kube.exists("namespaces", None, "team-a")
    assert not kube.exists("secrets", "team-a", "pw")
    missing = kube.kubectl("get", "namespace", "team-a", check=False)
    assert missing.stderr.strip() == 'Error from server (NotFound): namespaces "team-a" not found'


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color, priority: 1}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              color: {type: string}
"""


def test_create_crd_then_custom_resources(kube: SingleCluster):
    out = kube.kubectl("create", "-f", "-", stdin=CRD)
    assert (
        out.stdout.strip()
        == "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"
    )
    crds = kube.kubectl("get", "crd").stdout.splitlines()
    assert crds[0].split() == ["NAME", "CREATED", "AT"]
    assert crds[1].split()[0] == "widgets.example.com"
    widget = {"apiVersion": "example.com/v1", "kind": "Widget",
              "metadata": {"name": "w1", "namespace": "default"},
              "spec": {"size": 3, "color": "blue"}}  # fmt: skip
    out = kube.kubectl("apply", "-f", "-", stdin=manifest(widget))
    assert out.stdout.strip() == "widget.example.com/w1 created"
    lines = kube.kubectl("get", "widgets").stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "AGE"]
    assert lines[1].split()[:2] == ["w1", "3"]
    wide = kube.kubectl("get", "wd", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "SIZE", "COLOR", "AGE"]
    assert wide[1].split()[:3] == ["w1", "3", "blue"]
    assert kube.kubectl("get", "widget", "w1", "-o", "jsonpath={.spec.size}").stdout == "3"
    out = kube.kubectl("apply", "-f", "-", stdin=manifest({**widget, "spec": {"size": 5}}))
    assert out.stdout.strip() == "widget.example.com/w1 configured"
    assert kube.get("widgets", "default", "w1", group="example.com")["spec"] == {"size": 5}


def test_server_dry_run_leaves_nothing_behind(kube: SingleCluster):
    rv = kube.run(lambda: kube.cluster.store.resource_version)
    out = kube.kubectl("create", "deployment", "web", "--image=nginx", "--dry-run=server",
                       "-o", "name")  # fmt: skip
    assert out.stdout.strip() == "deployment.apps/web"
    out = kube.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                       stdin=manifest(configmap("cfg", {"a": "1"})))  # fmt: skip
    assert out.stdout.strip() == "configmap/cfg serverside-applied (server dry run)"
    assert not kube.exists("deployments", "default", "web", group="apps")
    assert not kube.exists("configmaps", "default", "cfg")
    assert kube.run(lambda: kube.cluster.store.resource_version) == rv


def test_wrong_token_is_unauthorized(kube: SingleCluster):
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"][0]["user"]["token"] = "not-the-token"
    kube.kubeconfig.write_text(yaml.safe_dump(config))
    result = kube.kubectl("get", "pods", check=False)
    assert result.returncode == 1
    # what kubectl prints for a 401 Status from a real apiserver
    assert result.stderr.splitlines()[-1] == (
        "error: You must be logged in to the server (the server has asked for the client to "
        "provide credentials)"
    )


def test_auth_can_i_whoami_and_a_foreign_token(tmp_path: Path):
    from sandbox.kube.cluster import AuthResult

    def authenticate(token: str | None) -> AuthResult:
        if token == "token-sandbox-1":
            return AuthResult(True, 200, "admin", ("system:masters", "system:authenticated"))
        if token == "token-of-sandbox-2":
            return AuthResult(False, 403, "sandbox-2-admin", ("system:authenticated",))
        return AuthResult(False, 401)

    with SingleCluster(tmp_path, authenticator=authenticate, controllers=False) as kube:
        assert kube.kubectl("auth", "can-i", "create", "deployments").stdout.strip() == "yes"
        whoami = kube.kubectl("auth", "whoami").stdout.splitlines()
        assert whoami[1].split() == ["Username", "admin"]
        config = yaml.safe_load(kube.kubeconfig.read_text())
        config["users"][0]["user"]["token"] = "token-of-sandbox-2"
        kube.kubeconfig.write_text(yaml.safe_dump(config))
        denied = kube.kubectl("get", "pods", check=False)
        assert denied.returncode == 1
        assert denied.stderr.strip() == (
            'Error from server (Forbidden): pods is forbidden: User "sandbox-2-admin" cannot '
            'list resource "pods" in API group "" in the namespace "default"'
        )
        no = kube.kubectl("auth", "can-i", "create", "deployments", check=False)
        assert no.stdout.strip() == "no"


def test_rollout_status_and_restart_with_controllers(tmp_path: Path):
    with SingleCluster(tmp_path, controllers=True) as kube:
        kube.kubectl("apply", "-f", "-", stdin=manifest(deployment("web", replicas=2)))
        status = kube.kubectl("rollout", "status", "deployment/web", "--timeout=60s")
        assert 'deployment "web" successfully rolled out' in status.stdout
        held = kube.get("deployments", "default", "web", group="apps")
        assert held["status"]["readyReplicas"] == 2
        pods = kube.kubectl("get", "pods", "-l", "app=web").stdout.splitlines()
        assert pods[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        assert [line.split()[1:4] for line in pods[1:]] == [["1/1", "Running", "0"]] * 2
        out = kube.kubectl("rollout", "restart", "deployment/web")
        assert out.stdout.strip() == "deployment.apps/web restarted"
        held = kube.get("deployments", "default", "web", group="apps")
        annotations = held["spec"]["template"]["metadata"]["annotations"]
        assert "kubectl.kubernetes.io/restartedAt" in annotations
        assert held["metadata"]["generation"] == 2
        status = kube.kubectl("rollout", "status", "deployment/web", "--timeout=60s")
        assert 'deployment "web" successfully rolled out' in status.stdout


@pytest.mark.parametrize("version", ["v1.31.4", "v1.32.3"])
def test_kubectl_of_the_servers_minor_version_works(tmp_path: Path, version: str):
    """The installed kubectl picks a client matching the server's minor version."""
    with SingleCluster(tmp_path, kubernetes_version=version, controllers=False) as kube:
        info = json.loads(kube.kubectl("version", "-o", "json").stdout)
        assert info["serverVersion"]["gitVersion"] == version
        assert info["serverVersion"]["minor"] == version.split(".")[1]
        out = kube.kubectl("apply", "--server-side", "-f", "-",
                           stdin=manifest(configmap("cfg", {"a": "1"})))  # fmt: skip
        assert out.stdout.strip() == "configmap/cfg serverside-applied"
        out = kube.kubectl("apply", "-f", "-", stdin=manifest(deployment("web")))
        assert out.stdout.strip() == "deployment.apps/web created"
        out = kube.kubectl("get", "deploy,cm", "-o", "name")
        assert out.stdout.split() == [
            "deployment.apps/web", "configmap/cfg", "configmap/kube-root-ca.crt",
        ]  # fmt: skip
        assert kube.get("configmaps", "default", "cfg")["data"] == {"a": "1"}
