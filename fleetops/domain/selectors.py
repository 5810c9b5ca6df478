"""Kubernetes label selectors over cluster labels.

The syntax is kubectl's (``k8s.io/apimachinery/pkg/labels``), so an operator who knows
``kubectl get -l`` already knows how to select clusters::

    env=prod            env==prod           env!=prod
    tier in (web,api)   tier notin (batch)  gpu        !gpu
    env=prod,tier in (web,api),!canary      (a comma means AND)

Meaning, as in Kubernetes: ``=``, ``==`` and ``in`` need the label to be present with one of the
values; ``!=`` and ``notin`` also match clusters that do not carry the label at all; ``key`` needs
the label present, ``!key`` absent. The empty selector matches every cluster. Keys and values
must be valid label keys and values; ``<`` and ``>`` (numeric comparison, which kubectl accepts
for some resources) are refused, as is anything else the grammar does not know, with a
:class:`~fleetops.errors.SelectorError` naming the position and the offending token.

``str(Selector.parse(text))`` is canonical: requirements sorted by key, ``==`` written ``=``,
values of ``in``/``notin`` sorted, duplicates removed, no blanks. Two selectors that mean the
same requirements print the same, so the canonical text can be stored and compared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from fleetops.domain.labels import label_key_problem, label_value_problem
from fleetops.errors import SelectorError


class Operator(StrEnum):
    """One requirement's operator; the value is its canonical spelling."""

    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


# Sort order of operators on the same key in the canonical form.
_OPERATOR_ORDER = {op: index for index, op in enumerate(Operator)}


class Requirement(BaseModel):
    """One comma-separated term of a selector."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(description="Label key the requirement is about.")
    operator: Operator = Field(description="How the label's value is tested.")
    values: tuple[str, ...] = Field(
        default=(),
        description="Sorted values: one for = and !=, one or more for in and notin, none otherwise.",
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this requirement (Kubernetes semantics)."""
        present = self.key in labels
        match self.operator:
            case Operator.EXISTS:
                return present
            case Operator.DOES_NOT_EXIST:
                return not present
            case Operator.EQUALS | Operator.IN:
                return present and labels[self.key] in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                return not present or labels[self.key] not in self.values

    def __str__(self) -> str:
        match self.operator:
            case Operator.EXISTS:
                return self.key
            case Operator.DOES_NOT_EXIST:
                return f"!{self.key}"
            case Operator.EQUALS | Operator.NOT_EQUALS:
                return f"{self.key}{self.operator.value}{self.values[0]}"
            case Operator.IN | Operator.NOT_IN:
                return f"{self.key} {self.operator.value} ({','.join(self.values)})"

    def _sort_key(self) -> tuple[str, int, tuple[str, ...]]:
        return (self.key, _OPERATOR_ORDER[self.operator], self.values)


class Selector(BaseModel):
    """A parsed label selector: every requirement must hold (AND)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requirements: tuple[Requirement, ...] = Field(
        default=(), description="Requirements in canonical order; none selects everything."
    )

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse kubectl selector syntax; raise :class:`SelectorError` saying where it fails."""
        requirements = _Parser(text).parse()
        unique = {(r.key, r.operator, r.values): r for r in requirements}
        return cls(requirements=tuple(sorted(unique.values(), key=Requirement._sort_key)))

    @classmethod
    def everything(cls) -> Self:
        """The empty selector, which matches every cluster."""
        return cls()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a cluster with ``labels`` is selected."""
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


def canonical_selector(text: str) -> str:
    """``text`` in canonical form, or ``ValueError`` (for pydantic fields) if it does not parse."""
    try:
        return str(Selector.parse(text))
    except SelectorError as exc:
        raise ValueError(str(exc)) from exc


SelectorText = Annotated[str, AfterValidator(canonical_selector)]
"""A pydantic field type: a selector kept as its canonical text, validated on input."""


# --- lexer and parser -----------------------------------------------------------------------

# Kubernetes' lexer: these characters end an identifier; everything else (but blanks) is part of it.
_SPECIAL = "!=,()<>"
_BLANK = re.compile(r"\s+")
_IDENTIFIER = re.compile(r"[^\s!=,()<>]+")


class _Kind(StrEnum):
    IDENTIFIER = "identifier"
    IN = "in"
    NOTIN = "notin"
    EQUALS = "="
    DOUBLE_EQUALS = "=="
    NOT_EQUALS = "!="
    BANG = "!"
    COMMA = ","
    OPEN = "("
    CLOSE = ")"
    GREATER = ">"
    LESS = "<"
    END = "end of input"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str
    position: int  # 1-based column of the token's first character

    def describe(self) -> str:
        return "end of input" if self.kind is _Kind.END else repr(self.text)


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(text):
        blank = _BLANK.match(text, index)
        if blank:
            index = blank.end()
            continue
        two = text[index : index + 2]
        if two in ("==", "!="):
            tokens.append(_Token(_Kind(two), two, index + 1))
            index += 2
            continue
        char = text[index]
        if char in _SPECIAL:
            tokens.append(_Token(_Kind(char), char, index + 1))
            index += 1
            continue
        word = _IDENTIFIER.match(text, index)
        assert word is not None  # any other character starts an identifier
        kind = {"in": _Kind.IN, "notin": _Kind.NOTIN}.get(word.group(), _Kind.IDENTIFIER)
        tokens.append(_Token(kind, word.group(), index + 1))
        index = word.end()
    tokens.append(_Token(_Kind.END, "", len(text) + 1))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0

    def parse(self) -> list[Requirement]:
        if self.peek().kind is _Kind.END:
            return []
        requirements = [self.requirement()]
        while True:
            token = self.next()
            if token.kind is _Kind.END:
                return requirements
            if token.kind is not _Kind.COMMA:
                raise self.error(token, "expected ',' between requirements or the end")
            requirements.append(self.requirement())

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def next(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind is not _Kind.END:
            self.index += 1
        return token

    def error(self, token: _Token, expectation: str) -> SelectorError:
        return SelectorError(
            f"invalid label selector {self.text!r}: {expectation} at position {token.position}, "
            f"found {token.describe()}"
        )

    def requirement(self) -> Requirement:
        token = self.next()
        if token.kind is _Kind.BANG:
            key = self.key(self.next())
            return Requirement(key=key, operator=Operator.DOES_NOT_EXIST)
        key = self.key(token)
        operator_token = self.peek()
        match operator_token.kind:
            case _Kind.COMMA | _Kind.END:
                return Requirement(key=key, operator=Operator.EXISTS)
            case _Kind.EQUALS | _Kind.DOUBLE_EQUALS | _Kind.NOT_EQUALS:
                self.next()
                value = self.value(self.peek(), allow_empty=True)
                operator = (
                    Operator.NOT_EQUALS
                    if operator_token.kind is _Kind.NOT_EQUALS
                    else Operator.EQUALS
                )
                return Requirement(key=key, operator=operator, values=(value,))
            case _Kind.IN | _Kind.NOTIN:
                self.next()
                operator = Operator.IN if operator_token.kind is _Kind.IN else Operator.NOT_IN
                return Requirement(key=key, operator=operator, values=self.value_set())
            case _Kind.GREATER | _Kind.LESS:
                raise self.error(
                    operator_token,
                    "numeric comparisons are not supported; use =, ==, !=, in, notin, "
                    "'key' or '!key'",
                )
            case _:
                raise self.error(
                    operator_token, "expected an operator (=, ==, !=, in, notin), ',' or the end"
                )

    def key(self, token: _Token) -> str:
        if token.kind not in (_Kind.IDENTIFIER, _Kind.IN, _Kind.NOTIN):
            raise self.error(token, "expected a label key")
        problem = label_key_problem(token.text)
        if problem:
            raise SelectorError(
                f"invalid label selector {self.text!r}: at position {token.position}: {problem}"
            )
        return token.text

    def value(self, token: _Token, *, allow_empty: bool) -> str:
        """A value at ``token``; an empty value is allowed right before ',' / ')' / the end."""
        if token.kind in (_Kind.COMMA, _Kind.CLOSE, _Kind.END) and allow_empty:
            return ""
        if token.kind not in (_Kind.IDENTIFIER, _Kind.IN, _Kind.NOTIN):
            raise self.error(token, "expected a label value")
        self.next()
        problem = label_value_problem(token.text)
        if problem:
            raise SelectorError(
                f"invalid label selector {self.text!r}: at position {token.position}: {problem}"
            )
        return token.text

    def value_set(self) -> tuple[str, ...]:
        opening = self.next()
        if opening.kind is not _Kind.OPEN:
            raise self.error(opening, "expected '(' to open the list of values")
        values = {self.value(self.peek(), allow_empty=False)}
        while True:
            token = self.next()
            if token.kind is _Kind.CLOSE:
                return tuple(sorted(values))
            if token.kind is not _Kind.COMMA:
                raise self.error(token, "expected ',' or ')' in the list of values")
            values.add(self.value(self.peek(), allow_empty=False))
