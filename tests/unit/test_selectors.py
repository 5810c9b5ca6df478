"""Label selectors: kubectl's syntax and meaning, a canonical text form, clear errors."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from fleetops.domain import Operator, Selector, SelectorText
from fleetops.errors import ConfigError, SelectorError

PROD_WEB = {"env": "prod", "tier": "web", "fleetops.io/provider": "eks"}
DEV_BATCH = {"env": "dev", "tier": "batch", "gpu": "true"}
BARE: dict[str, str] = {}


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("", [PROD_WEB, DEV_BATCH, BARE]),
        ("env=prod", [PROD_WEB]),
        ("env==prod", [PROD_WEB]),
        ("env!=prod", [DEV_BATCH, BARE]),  # != also selects clusters without the label
        ("tier in (web,api)", [PROD_WEB]),
        ("tier notin (web)", [DEV_BATCH, BARE]),
        ("gpu", [DEV_BATCH]),
        ("!gpu", [PROD_WEB, BARE]),
        ("env=prod,tier in (web)", [PROD_WEB]),
        ("env=prod,!tier", []),
        ("fleetops.io/provider=eks", [PROD_WEB]),
        ("  env = prod ,  tier  in  ( web , api )  ", [PROD_WEB]),
    ],
)
def test_selects_as_kubectl_does(text: str, selected: list[dict[str, str]]) -> None:
    selector = Selector.parse(text)
    assert [
        labels for labels in (PROD_WEB, DEV_BATCH, BARE) if selector.matches(labels)
    ] == selected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("env==prod", "env=prod"),
        ("tier in (web, api, web)", "tier in (api,web)"),
        ("!gpu,env!=dev,az notin (b,a)", "az notin (a,b),env!=dev,!gpu"),
        ("b,a,b", "a,b"),
        ("env=", "env="),
        ("env=,tier=web", "env=,tier=web"),
        ("example.com/team=sre", "example.com/team=sre"),
        ("env in (prod),env=prod", "env=prod,env in (prod)"),
    ],
)
def test_text_is_canonical_and_round_trips(text: str, canonical: str) -> None:
    selector = Selector.parse(text)
    assert str(selector) == canonical
    assert Selector.parse(canonical) == selector
    assert str(Selector.parse(canonical)) == canonical


def test_requirements_are_structured() -> None:
    selector = Selector.parse("tier in (web,api),!gpu")
    assert [(r.key, r.operator, r.values) for r in selector.requirements] == [
        ("gpu", Operator.DOES_NOT_EXIST, ()),
        ("tier", Operator.IN, ("api", "web")),
    ]
    assert Selector.everything().matches({"anything": "goes"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "env=prod tier=web",
            "expected ',' between requirements or the end at position 10, found 'tier'",
        ),
        ("env=prod,", "expected a label key at position 10, found end of input"),
        (",env=prod", "expected a label key at position 1, found ','"),
        ("tier in web", "expected '(' to open the list of values at position 9, found 'web'"),
        (
            "tier in (web",
            "expected ',' or ')' in the list of values at position 13, found end of input",
        ),
        ("tier in ()", "expected a label value at position 10, found ')'"),
        ("tier in (web,)", "expected a label value at position 14, found ')'"),
        ("replicas>3", "numeric comparisons are not supported"),
        ("replicas < 3", "at position 10, found '<'"),
        ("env=(prod)", "expected a label value at position 5, found '('"),
        (
            "env prod",
            "expected an operator (=, ==, !=, in, notin), ',' or the end at position 5, found 'prod'",
        ),
        ("!", "expected a label key at position 2, found end of input"),
        ("!env=prod", "expected ',' between requirements or the end at position 5, found '='"),
        ("Env=prod!", "at position 9, found '!'"),
        ("env=prod/x", "at position 5: label value 'prod/x'"),
        (
            "Example.com/team=sre",
            "at position 1: label key 'Example.com/team': prefix must be a lowercase DNS subdomain",
        ),
        ("-env=prod", "name part must consist of alphanumeric characters"),
        ("env=" + "x" * 64, "must be no more than 63 characters"),
    ],
)
def test_bad_syntax_names_the_position_and_token(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        Selector.parse(text)
    assert message in str(caught.value)
    assert f"invalid label selector {text!r}" in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # a bad input, never retried


def test_selector_text_field_validates_and_canonicalises() -> None:
    class Target(BaseModel):
        selector: SelectorText

    assert Target(selector="tier in (web,api), env==prod").selector == "env=prod,tier in (api,web)"
    with pytest.raises(ValidationError, match="invalid label selector 'env prod'"):
        Target(selector="env prod")
