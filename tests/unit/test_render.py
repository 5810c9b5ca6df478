"""Rendering an application's manifests: placeholders, validation, errors with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetops.errors import ConfigError
from fleetops.render import object_key, render_app

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "apps" / "hello"
LABELS = {"env": "prod", "fleetops.io/region": "eu-west-1"}

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  template:
    spec:
      containers:
        - name: web
          image: registry.example.com/web:${version}
"""


def app(tmp_path: Path, files: dict[str, str]) -> Path:
    directory = tmp_path / "app"
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def error(directory: Path, labels: dict[str, str] | None = None, version: str = "1.0.0") -> str:
    with pytest.raises(ConfigError) as caught:
        render_app(directory, version=version, cluster_labels=LABELS if labels is None else labels)
    return str(caught.value)


# --- the example app ------------------------------------------------------------------------


def test_hello_renders_for_a_cluster() -> None:
    objects = render_app(HELLO, version="1.2.3", cluster_labels=LABELS)
    assert [object_key(o) for o in objects] == [
        ("v1", "ConfigMap", "hello", "hello-config"),
        ("apps/v1", "Deployment", "hello", "hello"),
        ("v1", "Namespace", "", "hello"),
        ("v1", "Service", "hello", "hello"),
    ]
    config, deployment, _, _ = objects
    assert config["data"] == {"GREETING": "hello from prod", "VERSION": "1.2.3"}
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "1.2.3"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/fleetops/hello:1.2.3"
    assert container["env"] == [{"name": "CLUSTER_ENV", "value": "prod"}]
    assert deployment["spec"]["replicas"] == 2


def test_hello_is_rendered_per_cluster() -> None:
    dev = render_app(HELLO, version="1.2.3", cluster_labels={"env": "dev"})
    assert dev[0]["data"]["GREETING"] == "hello from dev"


def test_hello_without_the_env_label_names_file_line_and_placeholder() -> None:
    message = error(HELLO, labels={"tier": "web"})
    assert message == (
        f"{HELLO / 'configmap.yaml'}:9: placeholder ${{cluster.env}}: the cluster has no "
        "label 'env' (its labels: tier)"
    )


def test_rendering_returns_fresh_objects_every_time() -> None:
    first = render_app(HELLO, version="1.2.3", cluster_labels=LABELS)
    first[0]["data"]["VERSION"] = "changed"
    assert (
        render_app(HELLO, version="1.2.3", cluster_labels=LABELS)[0]["data"]["VERSION"] == "1.2.3"
    )


# --- placeholders ---------------------------------------------------------------------------


def test_placeholders_fill_strings_never_numbers(tmp_path: Path) -> None:
    directory = app(
        tmp_path,
        {
            "a.yaml": DEPLOYMENT
            + "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n"
            "  plain: ${version}\n  mixed: v${version}-${cluster.env}\n  flag: ${cluster.flag}\n",
        },
    )
    objects = render_app(directory, version="1.10", cluster_labels={"env": "prod", "flag": "true"})
    assert objects[1]["data"] == {"plain": "1.10", "mixed": "v1.10-prod", "flag": "true"}


def test_prefixed_label_keys_and_keys_are_filled(tmp_path: Path) -> None:
    directory = app(
        tmp_path,
        {
            "a.yaml": DEPLOYMENT.replace(
                "  namespace: shop\n",
                "  namespace: shop\n  annotations:\n"
                "    region: ${cluster.fleetops.io/region}\n"
                "    example.com/${cluster.env}: x\n",
            )
        },
    )
    (obj,) = render_app(directory, version="2.0", cluster_labels=LABELS)
    assert obj["metadata"]["annotations"] == {"region": "eu-west-1", "example.com/prod": "x"}


def test_double_dollar_escapes_a_placeholder(tmp_path: Path) -> None:
    directory = app(
        tmp_path,
        {
            "a.yaml": DEPLOYMENT,
            "b.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: script\ndata:\n"
            "  run.sh: |\n    echo $${HOME} ${version}\n    echo $$ $PATH $${version}\n",
        },
    )
    objects = render_app(directory, version="3.1", cluster_labels={})
    assert objects[1]["data"]["run.sh"] == "echo ${HOME} 3.1\necho $$ $PATH ${version}\n"


def test_unknown_placeholder_names_file_line_and_placeholder(tmp_path: Path) -> None:
    directory = app(
        tmp_path,
        {
            "a.yaml": DEPLOYMENT,
            "b.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: script\ndata:\n"
            "  run.sh: |\n    cd /tmp\n    echo ${HOME}\n",
        },
    )
    assert error(directory) == (
        f"{directory / 'b.yaml'}:8: unknown placeholder ${{HOME}}: use ${{version}} or "
        "${cluster.<label>}, or write $${...} for a literal ${...}"
    )


def test_unterminated_placeholder(tmp_path: Path) -> None:
    directory = app(tmp_path, {"a.yaml": DEPLOYMENT.replace("web:${version}", "web:${version")})
    assert error(directory) == (
        f"{directory / 'a.yaml'}:11: unterminated placeholder '${{version' "
        "(write $${ to keep a literal ${)"
    )


def test_placeholders_in_comments_are_ignored(tmp_path: Path) -> None:
    directory = app(tmp_path, {"a.yaml": "# uses ${whatever}\n" + DEPLOYMENT})
    assert render_app(directory, version="1", cluster_labels={})[0]["kind"] == "Deployment"


def test_an_app_without_the_version_placeholder_is_refused(tmp_path: Path) -> None:
    directory = app(tmp_path, {"a.yaml": DEPLOYMENT.replace("${version}", "1.0.0")})
    message = error(directory)
    assert message.startswith(f"{directory}: no ${{version}} placeholder in any manifest")
    assert "image: registry/app:${version}" in message


def test_the_version_must_be_an_image_tag(tmp_path: Path) -> None:
    directory = app(tmp_path, {"a.yaml": DEPLOYMENT})
    assert "version '1.0 beta' is not a valid image tag" in error(directory, version="1.0 beta")


# --- files and documents --------------------------------------------------------------------


def test_files_load_in_sorted_order_with_every_document(tmp_path: Path) -> None:
    configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
    directory = app(
        tmp_path,
        {
            "b.yml": configmap.format(name="b1") + "---\n" + configmap.format(name="b2"),
            "a.yaml": "---\n" + DEPLOYMENT + "---\n# nothing\n---\n",
            "c.json": "{}",
            "README.md": "not a manifest",
        },
    )
    (directory / "nested").mkdir()
    (directory / "nested" / "z.yaml").write_text(configmap.format(name="nested"))
    objects = render_app(directory, version="1", cluster_labels={})
    assert [o["metadata"]["name"] for o in objects] == ["web", "b1", "b2"]


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    directory = app(
        tmp_path,
        {
            "a.yaml": DEPLOYMENT,
            "b.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [x\n",
        },
    )
    message = error(directory)
    assert message.startswith(f"{directory / 'b.yaml'}:5:1: invalid YAML:")


def test_tab_indentation_is_invalid_yaml(tmp_path: Path) -> None:
    directory = app(tmp_path, {"a.yaml": DEPLOYMENT + "\tbad: tab\n"})
    assert f"{directory / 'a.yaml'}:12:" in error(directory)


@pytest.mark.parametrize(
    ("document", "missing"),
    [
        ("kind: ConfigMap\nmetadata:\n  name: c\n", "apiVersion"),
        ("apiVersion: v1\nmetadata:\n  name: c\n", "kind"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {}\n", "metadata.name"),
        ("apiVersion: v1\nkind: ConfigMap\n", "metadata.name"),
        ("apiVersion: v1\nkind: ''\nmetadata:\n  name: ' '\n", "kind, metadata.name"),
        ("apiVersion: 1\nkind: ConfigMap\nmetadata:\n  name: c\n", "apiVersion"),
    ],
)
def test_objects_need_api_version_kind_and_name(
    tmp_path: Path, document: str, missing: str
) -> None:
    directory = app(tmp_path, {"a.yaml": DEPLOYMENT + "---\n" + document})
    assert error(directory) == f"{directory / 'a.yaml'}:13: document 2: object without {missing}"


def test_a_document_that_is_not_an_object(tmp_path: Path) -> None:
    directory = app(tmp_path, {"a.yaml": DEPLOYMENT + "---\n- a\n- b\n"})
    assert error(directory) == (
        f"{directory / 'a.yaml'}:13: document 2: expected one Kubernetes object (a mapping), "
        "found a list"
    )
    scalar = app(tmp_path / "s", {"a.yaml": DEPLOYMENT + "---\njust text\n"})
    assert "document 2: expected one Kubernetes object (a mapping), found str" in error(scalar)


def test_duplicate_objects_are_refused_with_both_places(tmp_path: Path) -> None:
    directory = app(
        tmp_path,
        {
            "a.yaml": DEPLOYMENT,
            "b.yaml": "# again, older API version\n"
            + DEPLOYMENT.replace("apps/v1", "apps/v1beta2").replace("${version}", "x"),
        },
    )
    assert error(directory) == (
        f"{directory / 'b.yaml'}:2: document 1: duplicate Deployment shop/web "
        f"(first at {directory / 'a.yaml'}:1: document 1)"
    )


def test_same_name_in_other_namespace_or_kind_is_fine(tmp_path: Path) -> None:
    directory = app(
        tmp_path,
        {
            "a.yaml": DEPLOYMENT
            + "---\n"
            + DEPLOYMENT.replace("namespace: shop", "namespace: other")
            + "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n",
        },
    )
    assert len(render_app(directory, version="1", cluster_labels={})) == 3


def test_missing_empty_and_unreadable_directories(tmp_path: Path) -> None:
    assert error(tmp_path / "nope") == f"{tmp_path / 'nope'}: no such application directory"
    empty = app(tmp_path, {"README.md": "x"})
    assert error(empty) == f"{empty}: no *.yaml or *.yml manifests"
    blank = app(tmp_path / "blank", {"a.yaml": "# nothing\n---\n"})
    assert error(blank) == f"{blank}: the manifests hold no objects"
    binary = app(tmp_path / "bin", {})
    (binary / "a.yaml").write_bytes(b"\xff\xfe\x00bad")
    assert error(binary).startswith(f"{binary / 'a.yaml'}: not UTF-8 text")


def test_anchors_and_aliases_still_work(tmp_path: Path) -> None:
    directory = app(
        tmp_path,
        {
            "a.yaml": DEPLOYMENT.replace(
                "  namespace: shop\n",
                "  namespace: shop\n  labels: &labels\n    v: ${version}\n    e: $${x}\n",
            )
            + "  selector:\n    matchLabels: *labels\n",
        },
    )
    (deployment,) = render_app(directory, version="9", cluster_labels={})
    assert deployment["metadata"]["labels"] == {"v": "9", "e": "${x}"}
    assert deployment["spec"]["selector"]["matchLabels"] == {"v": "9", "e": "${x}"}


def test_object_key() -> None:
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x", "namespace": "n"},
    }
    assert object_key(obj) == ("apps/v1", "Deployment", "n", "x")
    assert object_key({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}) == (
        "v1",
        "Namespace",
        "",
        "n",
    )


def test_recursive_aliases_are_refused(tmp_path: Path) -> None:
    directory = app(
        tmp_path,
        {"a.yaml": DEPLOYMENT.replace("  name: web\n", "  name: web\n  x: &loop\n    - *loop\n")},
    )
    assert error(directory) == (
        f"{directory / 'a.yaml'}:5: a YAML alias refers to an object containing it; "
        "Kubernetes objects cannot be recursive"
    )
