"""Label and field selectors, parsed and matched the way the real apiserver does it.

The grammar, the validation of keys and values and the error messages follow
``k8s.io/apimachinery/pkg/labels`` and ``k8s.io/apimachinery/pkg/fields`` as served by a
v1.31 apiserver, so a client that sends a bad ``labelSelector`` or ``fieldSelector`` gets the
same ``400 BadRequest`` text it would get from a real cluster.

Label selectors::

    <selector>    ::= <requirement> | <requirement> "," <selector>
    <requirement> ::= [!] KEY [ ("in" | "notin") "(" VALUES ")" | ("=" | "==" | "!=" | ">" | "<") VALUE ]

Field selectors are ``field=value``, ``field==value`` and ``field!=value`` terms joined by
commas; which fields a kind supports (and the message for one it does not) depends on the
kind, exactly as the per-kind field label conversion functions decide in the apiserver.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.kube.errors import StatusError

__all__ = [
    "FieldSelector",
    "LabelSelector",
    "Requirement",
    "label_selector_string",
]

# ---------------------------------------------------------------------------------------------
# Validation messages (k8s.io/apimachinery/pkg/util/validation, v1.31 wording)
# ---------------------------------------------------------------------------------------------

_QNAME_CHAR = "[A-Za-z0-9]"
_QNAME_EXT_CHAR = "[-A-Za-z0-9_.]"
_QNAME_FMT = f"({_QNAME_CHAR}{_QNAME_EXT_CHAR}*)?{_QNAME_CHAR}"
_QNAME_RE = re.compile(f"^{_QNAME_FMT}$")
_QNAME_ERR = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character"
)
_LABEL_VALUE_FMT = f"({_QNAME_FMT})?"
_LABEL_VALUE_RE = re.compile(f"^{_LABEL_VALUE_FMT}$")
_LABEL_VALUE_ERR = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character"
)
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN_RE = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}$")
_DNS1123_SUBDOMAIN_ERR = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character"
)


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    text = msg + " (e.g. "
    for i, example in enumerate(examples):
        if i:
            text += " or "
        text += f"'{example}', "
    return text + f"regex used for validation is '{fmt}')"


def _max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def _qualified_name_errors(value: str) -> list[str]:
    """``IsQualifiedName``: the rules for a label key."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            if len(prefix) > 253:
                errs.append("prefix part " + _max_len_error(253))
            if not _DNS1123_SUBDOMAIN_RE.match(prefix):
                errs.append(
                    "prefix part "
                    + _regex_error(_DNS1123_SUBDOMAIN_ERR, _DNS1123_SUBDOMAIN_FMT, "example.com")
                )
    else:
        return [
            "a qualified name "
            + _regex_error(_QNAME_ERR, _QNAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + _max_len_error(63))
    if not _QNAME_RE.match(name):
        errs.append(
            "name part " + _regex_error(_QNAME_ERR, _QNAME_FMT, "MyName", "my.name", "123-abc")
        )
    return errs


def _label_value_errors(value: str) -> list[str]:
    errs: list[str] = []
    if len(value) > 63:
        errs.append(_max_len_error(63))
    if not _LABEL_VALUE_RE.match(value):
        errs.append(
            _regex_error(_LABEL_VALUE_ERR, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345")
        )
    return errs


def go_quote(value: str) -> str:
    """Go's ``%q`` for a string (``strconv.Quote``)."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\v":
            out.append("\\v")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable():
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _field_invalid(path: str, value: str, detail: str) -> str:
    """``field.Invalid(path, value, detail).Error()``."""
    return f"{path}: Invalid value: {go_quote(value)}: {detail}"


def _aggregate(messages: Sequence[str]) -> str:
    """``utilerrors.NewAggregate(...).Error()``: one message bare, several in brackets."""
    unique: list[str] = []
    for message in messages:
        if message not in unique:
            unique.append(message)
    if len(unique) == 1:
        return unique[0]
    return "[" + ", ".join(unique) + "]"


class _ParseError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Label selectors
# ---------------------------------------------------------------------------------------------

_EXISTS = "exists"
_DOES_NOT_EXIST = "!"
_EQUALS = "="
_DOUBLE_EQUALS = "=="
_NOT_EQUALS = "!="
_IN = "in"
_NOT_IN = "notin"
_GREATER = "gt"
_LESS = "lt"

_BINARY_OPERATORS = ("in", "notin", "=", "==", "!=", "gt", "lt")

_TOKENS = {
    ")": "CLOSE",
    ",": "COMMA",
    "!": "NOT",
    "==": "DEQ",
    "=": "EQ",
    ">": "GT",
    "in": "IN",
    "<": "LT",
    "!=": "NEQ",
    "notin": "NOTIN",
    "(": "OPEN",
}
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")


def _lex(text: str) -> list[tuple[str, str]]:
    """Tokens as the apimachinery lexer produces them: (token, literal)."""
    items: list[tuple[str, str]] = []
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= n:
            items.append(("EOS", ""))
            return items
        if text[pos] in _SPECIAL:
            buffer = ""
            last: tuple[str, str] | None = None
            while pos < n and text[pos] in _SPECIAL:
                candidate = buffer + text[pos]
                if candidate in _TOKENS:
                    buffer = candidate
                    last = (_TOKENS[candidate], candidate)
                    pos += 1
                elif last is not None:
                    break
                else:
                    buffer = candidate
                    pos += 1
            if last is None:
                items.append(("ERROR", f"error expected: keyword found '{buffer}'"))
            else:
                items.append(last)
            continue
        start = pos
        while pos < n and text[pos] not in _SPECIAL and text[pos] not in _WHITESPACE:
            pos += 1
        word = text[start:pos]
        items.append((_TOKENS[word], word) if word in ("in", "notin") else ("ID", word))


@dataclass(frozen=True)
class Requirement:
    """One ``key op values`` term of a label selector."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op in (_IN, _EQUALS, _DOUBLE_EQUALS):
            return self.key in labels and labels[self.key] in self.values
        if op in (_NOT_IN, _NOT_EQUALS):
            return self.key not in labels or labels[self.key] not in self.values
        if op == _EXISTS:
            return self.key in labels
        if op == _DOES_NOT_EXIST:
            return self.key not in labels
        if op in (_GREATER, _LESS):
            if self.key not in labels or len(self.values) != 1:
                return False
            try:
                have = _parse_int64(labels[self.key])
                want = _parse_int64(self.values[0])
            except ValueError:
                return False
            return have > want if op == _GREATER else have < want
        return False

    def __str__(self) -> str:
        op = self.operator
        if op == _DOES_NOT_EXIST:
            return "!" + self.key
        if op == _EXISTS:
            return self.key
        values = self.values if len(self.values) == 1 else tuple(sorted(self.values))
        joined = ",".join(values)
        if op in (_IN, _NOT_IN):
            return f"{self.key} {op} ({joined})"
        symbol = {_GREATER: ">", _LESS: "<"}.get(op, op)
        return f"{self.key}{symbol}{joined}"


def _parse_int64(text: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(text)
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(text)
    return value


def _new_requirement(key: str, op: str, values: Sequence[str], path: str = "") -> Requirement:
    """``labels.NewRequirement``: validates and raises _ParseError with the aggregate message."""
    errs: list[str] = []
    key_path = f"{path}.key" if path else "key"
    values_path = f"{path}.values" if path else "values"
    key_errs = _qualified_name_errors(key)
    if key_errs:
        errs.append(_field_invalid(key_path, key, "; ".join(key_errs)))
    if op in (_IN, _NOT_IN):
        if not values:
            errs.append(
                f"{values_path}: Invalid value: []string{{}}: for 'in', 'notin' operators, "
                "values set can't be empty"
            )
    elif op in (_EQUALS, _DOUBLE_EQUALS, _NOT_EQUALS):
        if len(values) != 1:
            errs.append(
                f"{values_path}: Invalid value: {_go_string_slice(values)}: exact-match "
                "compatibility requires one single value"
            )
    elif op in (_EXISTS, _DOES_NOT_EXIST):
        if values:
            errs.append(
                f"{values_path}: Invalid value: {_go_string_slice(values)}: values set must be "
                "empty for exists and does not exist"
            )
    elif op in (_GREATER, _LESS):
        if len(values) != 1:
            errs.append(
                f"{values_path}: Invalid value: {_go_string_slice(values)}: for 'Gt', 'Lt' "
                "operators, exactly one value is required"
            )
        for i, value in enumerate(values):
            try:
                _parse_int64(value)
            except ValueError:
                errs.append(
                    _field_invalid(
                        f"{values_path}[{i}]",
                        value,
                        "for 'Gt', 'Lt' operators, the value must be an integer",
                    )
                )
    else:
        supported = ", ".join(go_quote(o) for o in (*_BINARY_OPERATORS, "exists", "!"))
        errs.append(
            f"{path + '.' if path else ''}operator: Unsupported value: {go_quote(op)}: "
            f"supported values: {supported}"
        )
    for i, value in enumerate(values):
        value_errs = _label_value_errors(value)
        if value_errs:
            errs.append(_field_invalid(f"{values_path}[{i}][{key}]", value, "; ".join(value_errs)))
    if errs:
        raise _ParseError(_aggregate(errs))
    return Requirement(key, op, tuple(values))


def _go_string_slice(values: Sequence[str]) -> str:
    return "[]string{" + ", ".join(go_quote(v) for v in values) + "}"


class _Parser:
    def __init__(self, text: str) -> None:
        self.items = _lex(text)
        self.pos = 0

    def _look(self, values: bool) -> tuple[str, str]:
        tok, lit = self.items[self.pos]
        if values and tok in ("IN", "NOTIN"):
            tok = "ID"
        return tok, lit

    def _take(self, values: bool) -> tuple[str, str]:
        tok, lit = self._look(values)
        self.pos += 1
        return tok, lit

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while True:
            tok, lit = self._look(True)
            if tok in ("ID", "NOT"):
                try:
                    requirements.append(self._requirement())
                except _ParseError as exc:
                    raise _ParseError(f"unable to parse requirement: {exc}") from None
                tok2, lit2 = self._take(True)
                if tok2 == "EOS":
                    return requirements
                if tok2 == "COMMA":
                    tok3, lit3 = self._look(True)
                    if tok3 not in ("ID", "NOT"):
                        raise _ParseError(f"found '{lit3}', expected: identifier after ','")
                    continue
                raise _ParseError(f"found '{lit2}', expected: ',' or 'end of string'")
            if tok == "EOS":
                return requirements
            raise _ParseError(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def _requirement(self) -> Requirement:
        operator = ""
        tok, lit = self._take(True)
        if tok == "NOT":
            operator = _DOES_NOT_EXIST
            tok, lit = self._take(True)
        if tok != "ID":
            raise _ParseError(f"found '{lit}', expected: identifier")
        key_errs = _qualified_name_errors(lit)
        if key_errs:
            raise _ParseError(_field_invalid("<nil>", lit, "; ".join(key_errs)))
        key = lit
        nxt, _ = self._look(True)
        if nxt in ("EOS", "COMMA") and operator != _DOES_NOT_EXIST:
            operator = _EXISTS
        if operator in (_EXISTS, _DOES_NOT_EXIST):
            return _new_requirement(key, operator, [])
        tok, lit = self._take(False)
        operator = {
            "IN": _IN,
            "EQ": _EQUALS,
            "DEQ": _DOUBLE_EQUALS,
            "GT": _GREATER,
            "LT": _LESS,
            "NOTIN": _NOT_IN,
            "NEQ": _NOT_EQUALS,
        }.get(tok, "")
        if not operator:
            raise _ParseError(f"found '{lit}', expected: in, notin, =, ==, !=, gt, lt")
        values = self._value_set() if operator in (_IN, _NOT_IN) else self._exact_value()
        return _new_requirement(key, operator, sorted(values))

    def _value_set(self) -> set[str]:
        tok, lit = self._take(True)
        if tok != "OPEN":
            raise _ParseError(f"found '{lit}' expected: '('")
        tok, lit = self._look(True)
        if tok in ("ID", "COMMA"):
            values = self._identifiers()
            tok2, _ = self._take(True)
            if tok2 != "CLOSE":
                raise _ParseError(f"found '{lit}', expected: ')'")
            return values
        if tok == "CLOSE":
            self._take(True)
            return {""}
        raise _ParseError(f"found '{lit}', expected: ',', ')' or identifier")

    def _identifiers(self) -> set[str]:
        values: set[str] = set()
        while True:
            tok, lit = self._take(True)
            if tok == "ID":
                values.add(lit)
                tok2, lit2 = self._look(True)
                if tok2 == "COMMA":
                    continue
                if tok2 == "CLOSE":
                    return values
                raise _ParseError(f"found '{lit2}', expected: ',' or ')'")
            if tok == "COMMA":
                if not values:
                    values.add("")
                tok2, _ = self._look(True)
                if tok2 == "CLOSE":
                    values.add("")
                    return values
                if tok2 == "COMMA":
                    values.add("")
                continue
            raise _ParseError(f"found '{lit}', expected: ',', or identifier")

    def _exact_value(self) -> set[str]:
        tok, _ = self._look(True)
        if tok in ("EOS", "COMMA"):
            return {""}
        tok, lit = self._take(True)
        if tok == "ID":
            return {lit}
        raise _ParseError(f"found '{lit}', expected: identifier")


class LabelSelector:
    """An AND of label requirements, sorted by key like the apiserver keeps them."""

    def __init__(self, requirements: Iterable[Requirement] = ()) -> None:
        self.requirements: tuple[Requirement, ...] = tuple(
            sorted(requirements, key=lambda r: r.key)
        )

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse a ``labelSelector`` query parameter; ``StatusError`` 400 on bad syntax."""
        try:
            return cls(_Parser(text).parse())
        except _ParseError as exc:
            raise StatusError(400, "BadRequest", str(exc)) from None

    @classmethod
    def from_match_labels(
        cls,
        match_labels: Mapping[str, str] | None,
        match_expressions: Sequence[Mapping[str, Any]] | None = None,
    ) -> LabelSelector:
        """A ``metav1.LabelSelector`` (``matchLabels`` + ``matchExpressions``) as a selector.

        An empty selector matches everything (``LabelSelectorAsSelector``); an invalid one
        raises ``StatusError`` 400 with the conversion error.
        """
        requirements: list[Requirement] = []
        try:
            for key, value in (match_labels or {}).items():
                requirements.append(_new_requirement(key, _EQUALS, [value]))
            for expression in match_expressions or ():
                op = expression.get("operator", "")
                key = expression.get("key", "")
                values = list(expression.get("values") or [])
                mapped = {
                    "In": _IN,
                    "NotIn": _NOT_IN,
                    "Exists": _EXISTS,
                    "DoesNotExist": _DOES_NOT_EXIST,
                }.get(op)
                if mapped is None:
                    raise _ParseError(f"{go_quote(str(op))} is not a valid label selector operator")
                requirements.append(_new_requirement(key, mapped, values))
        except _ParseError as exc:
            raise StatusError(400, "BadRequest", str(exc)) from None
        return cls(requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def __repr__(self) -> str:
        return f"LabelSelector({str(self)!r})"


def label_selector_string(
    match_labels: Mapping[str, str] | None,
    match_expressions: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The selector string a Deployment's scale subresource shows in ``status.selector``.

    ``metav1.LabelSelectorAsSelector(spec.selector).String()``: requirements sorted by key,
    ``k=v`` for matchLabels, ``k in (a,b)`` / ``k notin (a,b)`` / ``k`` / ``!k`` for
    expressions, values of a set sorted.
    """
    return str(LabelSelector.from_match_labels(match_labels, match_expressions))


# ---------------------------------------------------------------------------------------------
# Field selectors
# ---------------------------------------------------------------------------------------------

Getter = Callable[[Mapping[str, Any]], str]


def _get(path: str) -> Getter:
    parts = path.split(".")

    def getter(obj: Mapping[str, Any]) -> str:
        cur: Any = obj
        for part in parts:
            if not isinstance(cur, Mapping):
                return ""
            cur = cur.get(part)
        if cur is None:
            return ""
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return str(cur)

    return getter


def _get_bool(path: str) -> Getter:
    inner = _get(path)

    def getter(obj: Mapping[str, Any]) -> str:
        return inner(obj) or "false"

    return getter


def _pod_ip(obj: Mapping[str, Any]) -> str:
    status = obj.get("status") or {}
    ips = status.get("podIPs") or []
    if ips and isinstance(ips[0], Mapping):
        return str(ips[0].get("ip", ""))
    return str(status.get("podIP") or "")


_META: dict[str, Getter] = {
    "metadata.name": _get("metadata.name"),
    "metadata.namespace": _get("metadata.namespace"),
}

# (group, kind) -> (selectable fields, message template for an unsupported one)
_UNSUPPORTED = "field label not supported: {}"
_FIELD_TABLE: dict[tuple[str, str], tuple[dict[str, Getter], str]] = {
    ("", "Pod"): (
        {
            **_META,
            "spec.nodeName": _get("spec.nodeName"),
            "spec.restartPolicy": _get("spec.restartPolicy"),
            "spec.schedulerName": _get("spec.schedulerName"),
            "spec.serviceAccountName": _get("spec.serviceAccountName"),
            "spec.hostNetwork": _get_bool("spec.hostNetwork"),
            "status.phase": _get("status.phase"),
            "status.podIP": _pod_ip,
            "status.nominatedNodeName": _get("status.nominatedNodeName"),
            "spec.host": _get("spec.nodeName"),
        },
        _UNSUPPORTED,
    ),
    ("", "Node"): (
        {
            "metadata.name": _get("metadata.name"),
            "spec.unschedulable": _get_bool("spec.unschedulable"),
        },
        _UNSUPPORTED,
    ),
    ("", "ReplicationController"): (
        {**_META, "status.replicas": _get("status.replicas")},
        _UNSUPPORTED,
    ),
    ("", "Event"): (
        {
            **_META,
            **{
                f"involvedObject.{f}": _get(f"involvedObject.{f}")
                for f in (
                    "kind",
                    "namespace",
                    "name",
                    "uid",
                    "apiVersion",
                    "resourceVersion",
                    "fieldPath",
                )
            },
            "reason": _get("reason"),
            "reportingComponent": _get("reportingComponent"),
            "source": _get("source.component"),
            "type": _get("type"),
        },
        _UNSUPPORTED,
    ),
    ("", "Namespace"): (
        {"metadata.name": _get("metadata.name"), "status.phase": _get("status.phase")},
        _UNSUPPORTED,
    ),
    ("", "Secret"): ({**_META, "type": _get("type")}, _UNSUPPORTED),
    ("", "Service"): (
        {**_META, "spec.clusterIP": _get("spec.clusterIP"), "spec.type": _get("spec.type")},
        _UNSUPPORTED,
    ),
    ("apps", "StatefulSet"): (
        {**_META, "status.successful": _get("status.successful")},
        "field label not supported for appsv1.StatefulSet: {}",
    ),
}


@dataclass(frozen=True)
class _Term:
    field: str
    value: str
    negate: bool

    def matches(self, obj: Mapping[str, Any], getters: Mapping[str, Getter]) -> bool:
        have = getters[self.field](obj)
        return (have != self.value) if self.negate else (have == self.value)

    def __str__(self) -> str:
        return f"{self.field}{'!=' if self.negate else '='}{self.value}"


def _split_terms(text: str) -> list[str]:
    if not text:
        return []
    terms: list[str] = []
    start = 0
    escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    for i in range(len(term)):
        rest = term[i:]
        for op in ("!=", "==", "="):
            if rest.startswith(op):
                return term[:i], op, term[i + len(op) :]
    return None


def _unescape(value: str) -> str:
    if not any(c in value for c in "\\,="):
        return value
    out: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            if ch in "\\,=":
                out.append(ch)
            else:
                raise _ParseError(f"invalid field selector: invalid escape sequence: \\{ch}")
            escaped = False
            continue
        if ch == "\\":
            escaped = True
        elif ch in ",=":
            raise _ParseError(f"invalid field selector: unescaped character in value: {ord(ch)}")
        else:
            out.append(ch)
    if escaped:
        raise _ParseError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


class FieldSelector:
    """An AND of ``field=value`` / ``field!=value`` terms over the fields a kind exposes."""

    def __init__(self, terms: Iterable[_Term], getters: Mapping[str, Getter]) -> None:
        self.terms: tuple[_Term, ...] = tuple(terms)
        self._getters = dict(getters)

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        kind: str | None = None,
        group: str = "",
        custom: bool = False,
        namespaced: bool = True,
    ) -> FieldSelector:
        """Parse a ``fieldSelector`` for ``kind`` (in API ``group``); ``StatusError`` 400 if bad.

        Built-in kinds with their own field label conversion (Pod, Node, Namespace, Secret,
        Service, Event, ReplicationController, apps StatefulSet) accept their extra fields
        and answer ``field label not supported: X`` otherwise. Custom resources accept
        ``metadata.name`` (and ``metadata.namespace`` when namespaced) with the same message.
        Every other kind (and ``kind=None``) uses the generic conversion:
        ``"X" is not a known field selector: only "metadata.name", "metadata.namespace"``.
        """
        getters: dict[str, Getter]
        if custom:
            getters = {"metadata.name": _get("metadata.name")}
            if namespaced:
                getters["metadata.namespace"] = _get("metadata.namespace")
            template = _UNSUPPORTED
        elif kind is not None and (group, kind) in _FIELD_TABLE:
            getters, template = _FIELD_TABLE[(group, kind)]
        else:
            getters = dict(_META)
            template = ""
        try:
            terms: list[_Term] = []
            for part in sorted(_split_terms(text)):
                if not part:
                    continue
                split = _split_term(part)
                if split is None:
                    raise _ParseError(f"invalid selector: '{text}'; can't understand '{part}'")
                lhs, op, rhs = split
                terms.append(_Term(lhs, _unescape(rhs), op == "!="))
            for term in terms:
                if term.field not in getters:
                    if template:
                        raise _ParseError(template.format(term.field))
                    raise _ParseError(
                        f"{go_quote(term.field)} is not a known field selector: only "
                        '"metadata.name", "metadata.namespace"'
                    )
        except _ParseError as exc:
            raise StatusError(400, "BadRequest", str(exc)) from None
        return cls(terms, getters)

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(term.matches(obj, self._getters) for term in self.terms)

    def __str__(self) -> str:
        return ",".join(str(t) for t in self.terms)

    def __repr__(self) -> str:
        return f"FieldSelector({str(self)!r})"
