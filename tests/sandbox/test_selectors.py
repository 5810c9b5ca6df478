"""Label and field selectors: syntax, matching and the apiserver's exact error messages."""

from __future__ import annotations

import pytest

from sandbox.kube.errors import StatusError
from sandbox.kube.selectors import FieldSelector, LabelSelector, label_selector_string

QNAME_RULE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)

LABELS = {"app": "web", "tier": "frontend", "track": "stable", "replicas": "3"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("app in (web,db)", True),
        ("app in (db)", False),
        ("app notin (db,cache)", True),
        ("app notin (web)", False),
        ("missing notin (x)", True),
        ("missing in (x)", False),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app=web,tier=frontend", True),
        ("app=web,tier=backend", False),
        ("  app = web ,  tier in ( frontend , backend )  ", True),
        ("replicas>2", True),
        ("replicas<3", False),
        ("app>1", False),
        ("missing=", False),
        ("track in (stable,,canary)", True),
    ],
)
def test_label_selector_matches(selector: str, expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(LABELS) is expected


def test_empty_value_matches_empty_label_and_in_with_empty_element() -> None:
    assert LabelSelector.parse("a=").matches({"a": ""})
    assert LabelSelector.parse("a in (x,,y)").matches({"a": ""})
    assert LabelSelector.parse("a in ()").matches({"a": ""})
    assert not LabelSelector.parse("a in ()").matches({"a": "x"})


def test_prefixed_keys_and_in_as_value() -> None:
    selector = LabelSelector.parse("app.kubernetes.io/name=web,x in (in,notin)")
    assert selector.matches({"app.kubernetes.io/name": "web", "x": "notin"})
    assert not selector.matches({"app.kubernetes.io/name": "web", "x": "other"})


def test_canonical_string_sorts_requirements_and_values() -> None:
    selector = LabelSelector.parse("z notin (b,a),app=web,!gone,y in (q,p),exists,n>4")
    assert str(selector) == "app=web,exists,!gone,n>4,y in (p,q),z notin (a,b)"
    assert not selector.empty
    assert LabelSelector.parse("").empty


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (
            "app:monolith",
            'unable to parse requirement: <nil>: Invalid value: "app:monolith": name part '
            + QNAME_RULE,
        ),
        (
            "app.kubernetes_io/name=x",
            'unable to parse requirement: <nil>: Invalid value: "app.kubernetes_io/name": prefix '
            "part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
            "'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ),
        (
            "a/b/c ?=? def",
            'unable to parse requirement: <nil>: Invalid value: "a/b/c": a qualified name '
            + QNAME_RULE
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
        ),
        (
            "a=" + "z" * 64,
            'unable to parse requirement: values[0][a]: Invalid value: "' + "z" * 64 + '": must '
            "be no more than 63 characters",
        ),
        ("a=b!", "found '!', expected: ',' or 'end of string'"),
        (
            "a=-b",
            'unable to parse requirement: values[0][a]: Invalid value: "-b": '
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. "
            "'MyValue',  or 'my_value',  or '12345', regex used for validation is "
            "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        ),
        ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"),
        ("a=b c", "found 'c', expected: ',' or 'end of string'"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        ("a=b,", "found '', expected: identifier after ','"),
        (",a", "found ',', expected: !, identifier, or 'end of string'"),
        ("a in b", "unable to parse requirement: found 'b' expected: '('"),
        ("a in (b", "unable to parse requirement: found '', expected: ',' or ')'"),
        (
            "n>x",
            "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' "
            "operators, the value must be an integer",
        ),
    ],
)
def test_label_selector_errors_are_the_apiservers(selector: str, message: str) -> None:
    with pytest.raises(StatusError) as info:
        LabelSelector.parse(selector)
    assert info.value.code == 400
    assert info.value.reason == "BadRequest"
    assert info.value.message == message
    assert info.value.to_status()["message"] == message


def test_operator_characters_end_a_value() -> None:
    # "!" is an operator character, so "a=!b" has no value before it.
    with pytest.raises(StatusError) as info:
        LabelSelector.parse("a=!b")
    assert info.value.message == "unable to parse requirement: found '!', expected: identifier"


def test_from_match_labels_and_expressions() -> None:
    selector = LabelSelector.from_match_labels(
        {"app": "web"},
        [
            {"key": "env", "operator": "In", "values": ["prod", "canary"]},
            {"key": "legacy", "operator": "DoesNotExist"},
            {"key": "team", "operator": "Exists"},
            {"key": "zone", "operator": "NotIn", "values": ["b"]},
        ],
    )
    assert selector.matches({"app": "web", "env": "prod", "team": "x", "zone": "a"})
    assert not selector.matches({"app": "web", "env": "dev", "team": "x"})
    assert not selector.matches({"app": "web", "env": "prod", "team": "x", "legacy": "1"})
    assert not selector.matches({"app": "web", "env": "prod", "team": "x", "zone": "b"})
    assert LabelSelector.from_match_labels({}, []).matches({"anything": "x"})


def test_label_selector_string_like_a_scale_subresource() -> None:
    assert label_selector_string({"app": "web"}, None) == "app=web"
    assert label_selector_string({"tier": "fe", "app": "web"}, []) == "app=web,tier=fe"
    assert (
        label_selector_string(
            {"app": "web"},
            [
                {"key": "env", "operator": "In", "values": ["prod", "canary"]},
                {"key": "old", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["b", "a"]},
                {"key": "team", "operator": "Exists"},
            ],
        )
        == "app=web,env in (canary,prod),!old,team,zone notin (a,b)"
    )
    assert label_selector_string({}, []) == ""


def test_invalid_match_expression_operator() -> None:
    with pytest.raises(StatusError) as info:
        LabelSelector.from_match_labels({}, [{"key": "a", "operator": "Foo", "values": ["x"]}])
    assert info.value.code == 400
    assert info.value.message == '"Foo" is not a valid label selector operator'


def test_in_without_values_is_invalid_in_a_label_selector_object() -> None:
    with pytest.raises(StatusError) as info:
        LabelSelector.from_match_labels({}, [{"key": "a", "operator": "In", "values": []}])
    assert info.value.message == (
        "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty"
    )


POD = {
    "metadata": {"name": "web-1", "namespace": "prod"},
    "spec": {"nodeName": "node-a", "restartPolicy": "Always", "hostNetwork": True},
    "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.7"}]},
}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("metadata.name=web-1", True),
        ("metadata.name==web-1", True),
        ("metadata.name!=web-1", False),
        ("metadata.namespace=prod,metadata.name=web-1", True),
        ("metadata.namespace=prod,metadata.name=web-2", False),
        ("spec.nodeName=node-a", True),
        ("spec.nodeName=", False),
        ("status.phase!=Pending", True),
        ("spec.hostNetwork=true", True),
        ("status.podIP=10.0.0.7", True),
        ("spec.schedulerName=", True),
    ],
)
def test_pod_field_selectors(selector: str, expected: bool) -> None:
    assert FieldSelector.parse(selector, kind="Pod").matches(POD) is expected


def test_field_selector_escapes() -> None:
    obj = {"metadata": {"name": "a,b=c\\d", "namespace": "x"}}
    selector = FieldSelector.parse("metadata.name=a\\,b\\=c\\\\d")
    assert selector.matches(obj)
    assert not selector.matches({"metadata": {"name": "a"}})


@pytest.mark.parametrize(
    ("selector", "kwargs", "message"),
    [
        ("spec.foo=x", {"kind": "Pod"}, "field label not supported: spec.foo"),
        (
            "metadata.namespace=x",
            {"kind": "Namespace"},
            "field label not supported: metadata.namespace",
        ),
        (
            "spec.replicas=1",
            {"kind": "Deployment", "group": "apps"},
            '"spec.replicas" is not a known field selector: only "metadata.name", '
            '"metadata.namespace"',
        ),
        (
            "data.x=1",
            {},
            '"data.x" is not a known field selector: only "metadata.name", "metadata.namespace"',
        ),
        (
            "spec.size=1",
            {"kind": "Widget", "group": "example.com", "custom": True},
            "field label not supported: spec.size",
        ),
        (
            "metadata.namespace=a",
            {"kind": "Cluster", "group": "example.com", "custom": True, "namespaced": False},
            "field label not supported: metadata.namespace",
        ),
        (
            "status.phase=Running",
            {"kind": "StatefulSet", "group": "apps"},
            "field label not supported for appsv1.StatefulSet: status.phase",
        ),
        ("foo", {}, "invalid selector: 'foo'; can't understand 'foo'"),
        (
            "metadata.name=a,bar",
            {},
            "invalid selector: 'metadata.name=a,bar'; can't understand 'bar'",
        ),
        ("metadata.name=a=b", {}, "invalid field selector: unescaped character in value: 61"),
        ("metadata.name=a\\x", {}, "invalid field selector: invalid escape sequence: \\x"),
    ],
)
def test_field_selector_errors(selector: str, kwargs: dict, message: str) -> None:
    with pytest.raises(StatusError) as info:
        FieldSelector.parse(selector, **kwargs)
    assert (info.value.code, info.value.reason, info.value.message) == (400, "BadRequest", message)


def test_custom_resource_field_selector() -> None:
    selector = FieldSelector.parse(
        "metadata.name=w,metadata.namespace=ns", kind="Widget", group="example.com", custom=True
    )
    assert selector.matches({"metadata": {"name": "w", "namespace": "ns"}})
    assert not selector.matches({"metadata": {"name": "w", "namespace": "other"}})
    assert str(selector) == "metadata.name=w,metadata.namespace=ns"
