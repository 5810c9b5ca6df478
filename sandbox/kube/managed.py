"""managedFields and server-side apply, following the apiserver's field manager.

The real apiserver tracks, per object, which *manager* owns which fields (``metadata.
managedFields``) using sigs.k8s.io/structured-merge-diff. This module reproduces the parts a
client can observe:

- **FieldsV1 encoding**: ``{"f:spec": {"f:replicas": {}}}``; associative list items are
  ``k:{"name":"web"}``, set members ``v:"value"``, and ``"."`` marks a node that is itself
  owned and also has owned children. Keys are written in the server's order with ``"."`` last.
- **Updates** (create, replace, patch): the fields this write added or changed become owned by
  the manager with operation ``Update`` (and are taken away from everyone else); removed
  fields leave every owner. A write that changes nothing leaves the entries (and their times)
  alone. Consecutive updates by the same manager at the same API version share one entry.
  An update of an object without managedFields keeps it without (the apiserver only starts
  tracking again at the next apply), and ``managedFields: []`` in a write clears them.
- **Apply**: the applied configuration is merged into the live object (maps recursively,
  keyed lists by key with the applier's order, atomic lists and atomic maps replaced); the
  applier owns exactly the fields of its configuration; fields it applied last time and no
  longer applies are removed unless another manager owns them (pruned the way
  structured-merge-diff does: a field owned as a whole stays while any manager, the applier
  included, owns something under it -- so re-applying after kubectl's client-side-apply
  ownership upgrade keeps ``spec.template.metadata.labels`` -- and maps left empty go,
  defaults coming back through the store's defaulting); a changed value in a field
  another manager owns is a ``409 Conflict`` (``ApplyConflict``) unless ``force`` moves the
  ownership. Manager ``kubectl`` may take over fields recorded in the client-side
  ``last-applied-configuration`` annotation without conflict, and keeps that annotation in
  sync, like the real server.
- Entries are ordered like the server's: Apply before Update, then by time, manager,
  apiVersion, subresource; at most 10 Update managers, older ones folded into
  ``ancient-changes``. ``metadata.managedFields``, ``resourceVersion``, ``uid``,
  ``creationTimestamp``, ``generation``, ``name``, ``namespace``, ``apiVersion`` and ``kind``
  are never owned.
"""

from __future__ import annotations

import functools
import json
import marshal
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sandbox.kube.errors import StatusError
from sandbox.kube.patch import (
    ANY,
    ATOMIC,
    Atomic,
    KeyedList,
    Node,
    SetList,
    Struct,
    apply_schema_for,
    json_copy,
    skeleton_for,
    to_json,
)
from sandbox.kube.selectors import go_quote

__all__ = [
    "LAST_APPLIED_ANNOTATION",
    "ApplyConflict",
    "field_paths",
    "record_update",
    "server_side_apply",
]

LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
_MAX_UPDATE_MANAGERS = 10
_ANCIENT_CHANGES = "ancient-changes"
_BEFORE_FIRST_APPLY = "before-first-apply"
_SERVER_OWNED_META = ("resourceVersion", "uid", "generation", "creationTimestamp")
_CACHE_SIZE = 4096  # decoded/encoded field sets kept (a fleet writes the same shapes again)

_copy = json_copy


def _exact(value: Any) -> bytes:
    """Bytes that differ whenever two values differ as JSON (``marshal`` keeps exact types)."""
    return marshal.dumps(value, 2)


def _same_json(a: Any, b: Any) -> bool:
    """Whether two containers are the same JSON: equal, with the same types at every leaf.

    Python's ``==`` (fast, in C) treats ``True`` and ``1`` alike, so an equal pair is
    confirmed by its marshalled bytes; ``False`` only means "compare field by field".
    """
    if a is b:
        return True
    if a != b:
        return False
    try:
        return _exact(a) == _exact(b)
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Paths and sets
# ---------------------------------------------------------------------------------------------

# A scalar is tagged so that True and 1 (equal in Python) stay different, as in JSON.
Scalar = tuple[str, Any]  # ("n", 1) | ("s", "x") | ("b", True) | ("z", None) | ("j", "<json>")
PathElement = tuple[
    Any, ...
]  # ("f", name) | ("k", ((name, Scalar), ...)) | ("v", Scalar) | ("i", n)
Path = tuple[PathElement, ...]


def _scalar(value: Any) -> Scalar:
    if value is None:
        return ("z", None)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("n", value)
    if isinstance(value, float):
        return ("n", int(value) if value.is_integer() else value)
    if isinstance(value, str):
        return ("s", value)
    return ("j", to_json(value))


def _scalar_json(s: Scalar) -> str:
    tag, value = s
    if tag == "z":
        return "null"
    if tag == "b":
        return "true" if value else "false"
    if tag == "n":
        return json.dumps(value)
    if tag == "s":
        return to_json(value)
    return str(value)


def _scalar_string(s: Scalar) -> str:
    """``value.ToString``: strings quoted like Go's %q, everything else as JSON-ish text."""
    tag, value = s
    if tag == "s":
        return go_quote(value)
    return _scalar_json(s)


_TYPE_RANK = {"n": 0, "s": 1, "b": 2, "j": 3, "z": 5}


def _scalar_sort(s: Scalar) -> tuple[int, Any]:
    tag, value = s
    return (_TYPE_RANK[tag], value if tag != "z" else 0)


def _pe_sort(pe: PathElement) -> tuple[Any, ...]:
    kind = pe[0]
    if kind == "f":
        return (0, pe[1])
    if kind == "k":
        return (1, tuple((name, _scalar_sort(v)) for name, v in pe[1]))
    if kind == "v":
        return (2, _scalar_sort(pe[1]))
    return (3, pe[1])


def _pe_key(pe: PathElement) -> str:
    """The FieldsV1 key of a path element."""
    kind = pe[0]
    if kind == "f":
        return "f:" + pe[1]
    if kind == "k":
        return "k:{" + ",".join(f"{to_json(n)}:{_scalar_json(v)}" for n, v in pe[1]) + "}"
    if kind == "v":
        return "v:" + _scalar_json(pe[1])
    return f"i:{pe[1]}"


def _pe_string(pe: PathElement) -> str:
    """``PathElement.String()``: ``.name``, ``[name="web"]``, ``[="v"]``, ``[0]``."""
    kind = pe[0]
    if kind == "f":
        return "." + pe[1]
    if kind == "k":
        return "[" + ",".join(f"{n}={_scalar_string(v)}" for n, v in pe[1]) + "]"
    if kind == "v":
        return f"[={_scalar_string(pe[1])}]"
    return f"[{pe[1]}]"


def _path_string(path: Path) -> str:
    return "".join(_pe_string(pe) for pe in path)


def _parse_pe(key: str) -> PathElement | None:
    prefix, _, rest = key.partition(":")
    if prefix == "f":
        return ("f", rest)
    if prefix == "k":
        fields = json.loads(rest)
        if not isinstance(fields, dict):
            raise ValueError(key)
        return ("k", tuple(sorted((n, _scalar(v)) for n, v in fields.items())))
    if prefix == "v":
        return ("v", _scalar(json.loads(rest)))
    if prefix == "i":
        return ("i", int(rest))
    return None


class _Tree:
    __slots__ = ("children", "members")

    def __init__(self) -> None:
        self.members: set[PathElement] = set()
        self.children: dict[PathElement, _Tree] = {}


def _tree(paths: Iterable[Path]) -> _Tree:
    root = _Tree()
    for path in paths:
        if not path:
            continue
        node = root
        for pe in path[:-1]:
            node = node.children.setdefault(pe, _Tree())
        node.members.add(path[-1])
    return root


def encode_fields(paths: Iterable[Path]) -> dict[str, Any]:
    """A set of paths as the FieldsV1 JSON object the apiserver writes."""

    def emit(node: _Tree, include_self: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pe in sorted(node.members | node.children.keys(), key=_pe_sort):
            child = node.children.get(pe)
            out[_pe_key(pe)] = {} if child is None else emit(child, pe in node.members)
        if include_self and out:
            out["."] = {}
        return out

    return emit(_tree(paths), False)


def decode_fields(fields_v1: Mapping[str, Any]) -> set[Path]:
    """The set of paths a FieldsV1 object describes (unknown key kinds are skipped)."""
    out: set[Path] = set()

    def walk(node: Mapping[str, Any], prefix: Path) -> None:
        for key, child in node.items():
            if key == ".":
                continue
            pe = _parse_pe(key)
            if pe is None:
                continue
            path = (*prefix, pe)
            if not isinstance(child, Mapping) or not child or "." in child:
                out.add(path)
            if isinstance(child, Mapping):
                walk(child, path)

    walk(fields_v1, ())
    return out


class _FieldSetCache:
    """Decoded and encoded FieldsV1, remembered: a fleet writes the same shapes again and again.

    ``decode`` answers one shared frozenset per distinct entry (never change it), and when an
    entry was already in the apiserver's canonical encoding, ``encode`` of that very set gives
    it back without encoding or even hashing the set again -- the common case of a manager
    whose fields a write left alone.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._sets: dict[bytes, frozenset[Path]] = {}  # entry content -> set
        self._data: dict[frozenset[Path], bytes] = {}  # set -> canonical entry content
        self._canonical: dict[int, tuple[frozenset[Path], bytes]] = {}  # id(set) -> (set, content)

    def _room(self) -> None:
        if len(self._sets) >= self.size or len(self._data) >= self.size:
            self._sets.clear()
            self._data.clear()
            self._canonical.clear()

    def _encoded(self, paths: frozenset[Path]) -> bytes:
        data = self._data.get(paths)
        if data is None:
            self._room()
            data = self._data[paths] = _exact(encode_fields(paths))
        return data

    def decode(self, fields_v1: Mapping[str, Any]) -> frozenset[Path]:
        try:
            key = _exact(fields_v1)
        except (TypeError, ValueError):
            return frozenset(decode_fields(fields_v1))
        found = self._sets.get(key)
        if found is None:
            found = frozenset(decode_fields(fields_v1))
            canonical = self._encoded(found)
            self._room()
            self._sets[key] = found
            if canonical == key:
                self._canonical[id(found)] = (found, key)
        return found

    def encode(self, paths: Iterable[Path]) -> dict[str, Any]:
        """A fresh FieldsV1 object for ``paths``."""
        known = self._canonical.get(id(paths))
        if known is not None and known[0] is paths:
            return marshal.loads(known[1])
        return marshal.loads(
            self._encoded(paths if isinstance(paths, frozenset) else frozenset(paths))
        )


_field_sets = _FieldSetCache(_CACHE_SIZE)


def _iterate(paths: Iterable[Path]) -> Iterator[Path]:
    """Paths in ``Set.Iterate`` order: a node's members, then its children's subtrees."""

    def walk(node: _Tree, prefix: Path) -> Iterator[Path]:
        for pe in sorted(node.members, key=_pe_sort):
            yield (*prefix, pe)
        for pe in sorted(node.children, key=_pe_sort):
            yield from walk(node.children[pe], (*prefix, pe))

    yield from walk(_tree(paths), ())


def field_paths(fields_v1: Mapping[str, Any]) -> list[str]:
    """Human-readable paths of a FieldsV1 object (``.spec.replicas``), in server order."""
    return [_path_string(p) for p in _iterate(decode_fields(fields_v1))]


_STRIP: frozenset[Path] = frozenset(
    {
        (("f", "apiVersion"),),
        (("f", "kind"),),
        (("f", "metadata"),),
        *(
            (("f", "metadata"), ("f", name))
            for name in (
                "name",
                "namespace",
                "creationTimestamp",
                "selfLink",
                "uid",
                "clusterName",
                "generation",
                "managedFields",
                "resourceVersion",
            )
        ),
    }
)
_MANAGED_FIELDS_PREFIX: Path = (("f", "metadata"), ("f", "managedFields"))


_META_PE, _MANAGED_FIELDS_PE = _MANAGED_FIELDS_PREFIX


def _strip(paths: Iterable[Path]) -> set[Path]:
    return {
        p
        for p in paths
        if p
        and p not in _STRIP
        and not (len(p) > 1 and p[1] == _MANAGED_FIELDS_PE and p[0] == _META_PE)
    }


# ---------------------------------------------------------------------------------------------
# Typed walks over plain dicts (structured-merge-diff semantics)
# ---------------------------------------------------------------------------------------------

_MISSING: Any = object()


def _ssa(node: Node) -> Node:
    if node.__class__ is KeyedList and node.atomic_for_apply:  # type: ignore[union-attr]
        return ATOMIC
    return node


def _child(node: Node, name: str) -> Node:
    """The schema of field ``name`` of a struct node (untyped ``ANY`` for anything else)."""
    if node.__class__ is not Struct:
        return ANY
    child = node.fields.get(name, ANY)  # type: ignore[union-attr]
    if child.__class__ is KeyedList and child.atomic_for_apply:
        return ATOMIC
    return child


def _item_node(node: Node) -> Node:
    return _ssa(node.item) if node.__class__ is KeyedList else ATOMIC  # type: ignore[union-attr]


def _item_pe(node: Node, item: Any) -> PathElement | None:
    if isinstance(node, KeyedList):
        if not isinstance(item, dict):
            return None
        fields = []
        for key in node.keys:
            if key in item:
                value = item[key]
            elif key in node.key_defaults:
                value = node.key_defaults[key]
            else:
                return None
            if isinstance(value, (dict, list)):
                return None
            fields.append((key, _scalar(value)))
        return ("k", tuple(sorted(fields)))
    if isinstance(item, (dict, list)):
        return None
    return ("v", _scalar(item))


def _index_items(node: Node, value: Any) -> list[tuple[PathElement, Any]] | None:
    """``(path element, item)`` for every item, or ``None`` if the list cannot be keyed."""
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        pe = _item_pe(node, item)
        if pe is None:
            return None
        out.append((pe, item))
    return out


def _field_set(value: Any, node: Node, path: Path, out: set[Path]) -> None:
    """``TypedValue.ToFieldSet``: leaves, atomic nodes and list items of a value."""
    node = _ssa(node)
    if isinstance(node, Atomic):
        out.add(path)
        return
    if isinstance(node, Struct):
        if isinstance(value, dict):
            for key, child in value.items():
                _field_set(child, _child(node, key), (*path, ("f", key)), out)
        elif value is not None or not node.fields:
            out.add(path)
        return
    if value is None:
        return
    items = _index_items(node, value) if isinstance(value, list) else None
    if items is None:
        out.add(path)
        return
    for pe, item in items:
        item_path = (*path, pe)
        if isinstance(node, KeyedList):
            _field_set(item, _item_node(node), item_path, out)
        out.add(item_path)


def to_field_set(value: Any, node: Node) -> set[Path]:
    out: set[Path] = set()
    _field_set(value, node, (), out)
    out.discard(())
    return out


def _empty(value: Any) -> bool:
    return value is _MISSING or value is None or (isinstance(value, (dict, list)) and not value)


@dataclass
class _Comparison:
    added: set[Path] = field(default_factory=set)
    modified: set[Path] = field(default_factory=set)
    removed: set[Path] = field(default_factory=set)


def _shape(lhs: Any, rhs: Any, node: Node) -> str:
    if isinstance(node, Atomic):
        return "leaf"
    if _empty(lhs) and _empty(rhs):
        return "leaf"
    if isinstance(node, Struct):
        if (lhs is _MISSING or lhs is None or isinstance(lhs, dict)) and (
            rhs is _MISSING or rhs is None or isinstance(rhs, dict)
        ):
            return "map"
        return "leaf"
    if not (lhs is _MISSING or lhs is None or isinstance(lhs, list)) or not (
        rhs is _MISSING or rhs is None or isinstance(rhs, list)
    ):
        return "leaf"
    if _index_items(node, lhs) is None or _index_items(node, rhs) is None:
        return "leaf"
    return "list"


def _all_paths(value: Any, node: Node, path: Path, out: set[Path]) -> None:
    """What ``_compare`` reports for a value facing nothing: every node of it, with itself."""
    if node is ANY:
        _all_untyped(value, path, out)
        return
    node = _ssa(node)
    if value and node.__class__ is Struct and isinstance(value, dict):
        for key, child in value.items():
            _all_paths(child, _child(node, key), (*path, ("f", key)), out)
    elif value and node.__class__ is not Struct and not isinstance(node, Atomic):
        items = _index_items(node, value) if isinstance(value, list) else None
        if items is not None:
            item_node = _item_node(node)
            for pe, item in _first_by_pe(items).items():
                _all_paths(item, item_node, (*path, pe), out)
    out.add(path)


def _all_untyped(value: Any, path: Path, out: set[Path]) -> None:
    """``_all_paths`` under an untyped node (``ANY``, whose fields are all ``ANY``)."""
    if value and isinstance(value, dict):
        for key, child in value.items():
            if child and isinstance(child, dict):
                _all_untyped(child, (*path, ("f", key)), out)
            else:
                out.add((*path, ("f", key)))
    out.add(path)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _unchanged(lhs: Any, rhs: Any) -> bool:
    """A cheap sufficient test that ``_compare`` would report nothing for this pair."""
    if lhs is rhs:
        return lhs is not _MISSING
    kind = type(lhs)
    if kind is not type(rhs):
        return False
    if kind in _SCALARS:
        return lhs == rhs
    return (kind is dict or kind is list) and _same_json(lhs, rhs)


def _compare(lhs: Any, rhs: Any, node: Node, path: Path, out: _Comparison) -> None:
    """Add to ``out`` what differs between two present values (``_unchanged`` was false)."""
    node = _ssa(node)
    shape = _shape(lhs, rhs, node)
    if shape == "leaf":
        if not _equal(lhs, rhs):
            out.modified.add(path)
        return
    if shape == "map":
        left = lhs if isinstance(lhs, dict) else {}
        right = rhs if isinstance(rhs, dict) else {}
        pairs = [(k, v, right.get(k, _MISSING)) for k, v in left.items()]
        pairs += [(k, _MISSING, v) for k, v in right.items() if k not in left]
        for key, lv, rv in pairs:
            # the _unchanged test, inlined: this loop runs for every field of every object
            if lv is rv:
                continue
            kind = type(lv)
            if kind is type(rv) and (
                (kind in _SCALARS and lv == rv)
                or ((kind is dict or kind is list) and _same_json(lv, rv))
            ):
                continue
            if lv is _MISSING:
                _all_paths(rv, _child(node, key), (*path, ("f", key)), out.added)
            elif rv is _MISSING:
                _all_paths(lv, _child(node, key), (*path, ("f", key)), out.removed)
            else:
                _compare(lv, rv, _child(node, key), (*path, ("f", key)), out)
    else:
        left_items = _first_by_pe(_index_items(node, lhs) or [])
        right_items = _first_by_pe(_index_items(node, rhs) or [])
        item_node = _item_node(node)
        for pe in [*left_items, *(p for p in right_items if p not in left_items)]:
            lv = left_items.get(pe, _MISSING)
            rv = right_items.get(pe, _MISSING)
            if lv is _MISSING:
                _all_paths(rv, item_node, (*path, pe), out.added)
            elif rv is _MISSING:
                _all_paths(lv, item_node, (*path, pe), out.removed)
            elif not _unchanged(lv, rv):
                _compare(lv, rv, item_node, (*path, pe), out)


def compare(lhs: Any, rhs: Any, node: Node) -> _Comparison:
    out = _Comparison()
    if lhs is _MISSING:
        _all_paths(rhs, node, (), out.added)
    elif rhs is _MISSING:
        _all_paths(lhs, node, (), out.removed)
    elif not _unchanged(lhs, rhs):
        _compare(lhs, rhs, node, (), out)
    for s in (out.added, out.modified, out.removed):
        s.discard(())
    return out


def _first_by_pe(items: list[tuple[PathElement, Any]]) -> dict[PathElement, Any]:
    out: dict[PathElement, Any] = {}
    for pe, item in items:
        out.setdefault(pe, item)
    return out


def _equal(a: Any, b: Any) -> bool:
    """Equal as JSON values: like ``==``, except that ``true`` is not ``1``."""
    if type(a) is type(b) and type(a) in (dict, list):
        if a is b:
            return True
        if a != b:
            return False  # (== never misses a difference _equal sees)
        try:
            if _exact(a) == _exact(b):
                return True
        except (TypeError, ValueError):
            pass
        # equal to Python, not in bytes (True vs 1, 1 vs 1.0, key order): field by field
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _clean(value: Any) -> Any:
    """A deep copy without null map values (a typed decode drops them)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _merge(lhs: Any, rhs: Any, node: Node) -> Any:
    """``TypedValue.Merge``: the applied value (rhs) merged into the live one (lhs)."""
    node = _ssa(node)
    if isinstance(node, Atomic):
        return _clean(rhs)
    if isinstance(node, Struct):
        if not isinstance(rhs, dict) or not (
            lhs is _MISSING or lhs is None or isinstance(lhs, dict)
        ):
            return _clean(rhs)
        out = dict(lhs) if isinstance(lhs, dict) else {}
        for key, value in rhs.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merge(out.get(key, _MISSING), value, _child(node, key))
        return out
    if not isinstance(rhs, list) or not (lhs is _MISSING or lhs is None or isinstance(lhs, list)):
        return _clean(rhs)
    left = _index_items(node, lhs)
    right = _index_items(node, rhs)
    if left is None or right is None:
        return _clean(rhs)
    return _merge_list(left, right, _item_node(node))


def _merge_list(
    left: list[tuple[PathElement, Any]], right: list[tuple[PathElement, Any]], item_node: Node
) -> list[Any]:
    """Merge keyed items: the applier's order, live-only items kept where they were."""
    left_all: dict[PathElement, list[Any]] = {}
    left_order: list[PathElement] = []
    for pe, item in left:
        if pe not in left_all:
            left_order.append(pe)
        left_all.setdefault(pe, []).append(item)
    right_map: dict[PathElement, Any] = {}
    right_order: list[PathElement] = []
    for pe, item in right:
        if pe not in right_map:
            right_order.append(pe)
            right_map[pe] = item

    def merged(pe: PathElement) -> Any:
        lives = left_all.get(pe, [])
        base = lives[0] if len(lives) == 1 else _MISSING
        return _merge(base, right_map[pe], item_node)

    shared = [pe for pe in right_order if pe in left_all]
    next_shared = 0
    out: list[Any] = []
    li = ri = 0
    while li < len(left_order) or ri < len(right_order):
        if li < len(left_order) and ri < len(right_order):
            lpe = left_order[li]
            if lpe == right_order[ri]:
                out.append(merged(lpe))
                li += 1
                ri += 1
                if next_shared < len(shared) and shared[next_shared] == lpe:
                    next_shared += 1
                continue
            if lpe in right_map and next_shared < len(shared) and shared[next_shared] != lpe:
                li += 1
                continue
        if li < len(left_order) and left_order[li] not in right_map:
            out.extend(_copy(left_all[left_order[li]]))
            li += 1
            continue
        if ri < len(right_order):
            rpe = right_order[ri]
            out.append(merged(rpe))
            ri += 1
            if next_shared < len(shared) and shared[next_shared] == rpe:
                next_shared += 1
            continue
        li += 1  # a shared live item whose applied twin was already merged
    return out


def _with_named_parents(paths: Iterable[Path]) -> set[Path]:
    """``Set.EnsureNamedFieldsAreMembers``: the paths plus every field that has owned children.

    The real schema tells struct fields (named) from map keys; our merge schema does not, so
    every field with children counts as named. Map keys with children only occur in maps of
    objects (rare in the built-in types, where maps hold strings and quantities).
    """
    out = set(paths)
    for path in list(out):
        for i in range(1, len(path)):
            if path[i - 1][0] == "f":
                out.add(path[:i])
    return out


def _remove_items(value: Any, node: Node, tree: _Tree) -> Any:
    """``TypedValue.RemoveItems``: drop the members of ``tree`` (and what is under them).

    A map or list walked into that is left with nothing becomes null in structured-merge-diff,
    which the typed decode drops: ``_MISSING`` here, and the parent leaves the key out (the
    parent itself still counts as holding that null, so it stays, if only as ``{}``).
    """
    node = _ssa(node)
    if isinstance(node, Struct):
        if not isinstance(value, dict):
            return value
        out = {}
        kept = False
        for key, child in value.items():
            pe = ("f", key)
            if pe in tree.members:
                continue
            kept = True
            sub = tree.children.get(pe)
            if sub is not None:
                child = _remove_items(child, _child(node, key), sub)
                if child is _MISSING:
                    continue
            out[key] = child
        return out if kept else _MISSING
    if isinstance(node, (KeyedList, SetList)) and isinstance(value, list):
        items = _index_items(node, value)
        if items is None:
            return value
        kept = []
        for pe, item in items:
            if pe in tree.members:
                continue
            sub = tree.children.get(pe)
            if sub is not None and isinstance(node, KeyedList):
                item = _remove_items(item, _item_node(node), sub)
                if item is _MISSING:
                    item = {}
            kept.append(item)
        return kept if kept else _MISSING
    return value


def _remove(value: dict[str, Any], schema: Node, paths: set[Path]) -> dict[str, Any]:
    if not paths:
        return value
    out = _remove_items(value, schema, _tree(paths))
    return {} if out is _MISSING else out


def _prune(
    merged: dict[str, Any], schema: Node, last: set[Path], managed: set[Path]
) -> dict[str, Any]:
    """``Updater.prune``: drop what the applier applied last time and no longer applies.

    ``last`` is the applier's previous set, ``managed`` the union of every manager's set with
    the applier's new one. Named fields count as owned when something under them is (so a
    parent the applier used to own as a whole stays while it still owns a child); removed
    items come back when another manager owns them, or when the applier never owned them.
    """
    last_named = _with_named_parents(last)
    pruned = _remove(merged, schema, last_named)
    merged_set = _with_named_parents(to_field_set(merged, schema))
    pruned_set = _with_named_parents(to_field_set(pruned, schema))
    # addBackOwnedItems
    pruned = _remove(merged, schema, merged_set - (pruned_set | _with_named_parents(managed)))
    # addBackDanglingItems
    pruned_set = _with_named_parents(to_field_set(pruned, schema))
    return _remove(merged, schema, (merged_set - pruned_set) & last_named)


def _config_walk(
    value: Any, node: Node, path: Path, out: set[Path] | None, errors: list[str]
) -> None:
    """One walk over an applied configuration: ``to_field_set`` into ``out`` (when given) and
    the checks structured-merge-diff makes on its keyed lists into ``errors``."""
    node = _ssa(node)
    cls = node.__class__
    if cls is Struct:
        if isinstance(value, dict):
            for key, child in value.items():
                _config_walk(child, _child(node, key), (*path, ("f", key)), out, errors)
        elif out is not None and (value is not None or not node.fields):  # type: ignore[union-attr]
            out.add(path)
        return
    if cls is not KeyedList:  # atomic, or a set of scalars: nothing to check
        if out is not None:
            _field_set(value, node, path, out)
        return
    if not isinstance(value, list):
        if out is not None and value is not None:
            out.add(path)
        return
    assert isinstance(node, KeyedList)
    item_node = _item_node(node)
    seen: set[PathElement] = set()
    items: set[Path] | None = set() if out is not None else None  # the items' fields
    keyed = True  # whether every item has its keys (else the list counts as one field)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            errors.append(f"{_path_string(path)}: element {i}: expected map, got {item!r}")
            keyed = False
            continue
        missing = [k for k in node.keys if k not in item and k not in node.key_defaults]
        if missing:
            errors.append(
                f"{_path_string(path)}: element {i}: associative list with keys has an "
                f'element that omits key field "{missing[0]}" (and doesn\'t have default value)'
            )
            keyed = False
            continue
        pe = _item_pe(node, item)
        if pe is None:
            keyed = False
            continue
        item_path = (*path, pe)
        if pe in seen:
            errors.append(f"{_path_string(path)}: duplicate entries for key {_pe_string(pe)}")
            if items is not None:
                _field_set(item, item_node, item_path, items)
        else:
            seen.add(pe)
            _config_walk(item, item_node, item_path, items, errors)
        if items is not None:
            items.add(item_path)
    if out is not None and items is not None:
        if keyed:
            out |= items
        else:
            out.add(path)


# ---------------------------------------------------------------------------------------------
# Managers
# ---------------------------------------------------------------------------------------------


@dataclass
class _Manager:
    manager: str
    operation: str
    api_version: str
    subresource: str
    time: str | None
    fields: frozenset[Path] | set[Path]  # replaced, never changed in place (may be cached)

    @property
    def ident(self) -> tuple[str, str, str, str]:
        version = self.api_version if self.operation != "Apply" else ""
        return (self.manager, self.operation, version, self.subresource)

    def ident_json(self) -> str:
        entry: dict[str, str] = {"manager": self.manager, "operation": self.operation}
        if self.operation != "Apply" and self.api_version:
            entry["apiVersion"] = self.api_version
        if self.subresource:
            entry["subresource"] = self.subresource
        return json.dumps(entry, separators=(",", ":"), ensure_ascii=False)

    def display(self) -> str:
        """``printManager``: how a conflict message names this manager."""
        text = go_quote(self.manager)
        if self.subresource:
            text += f" with subresource {go_quote(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
            if self.time:
                text += f" at {self.time}"
        return text

    def to_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
        }
        if self.time is not None:
            entry["time"] = self.time
        entry["fieldsType"] = "FieldsV1"
        entry["fieldsV1"] = _field_sets.encode(self.fields)
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


Managers = dict[tuple[str, str, str, str], _Manager]


def _decode_managers(entries: Any) -> Managers:
    """Decode ``metadata.managedFields``; raises ``ValueError`` if it is not well-formed."""
    managers: Managers = {}
    if entries is None:
        return managers
    if not isinstance(entries, list):
        raise ValueError("managedFields must be a list")
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("managedFields entry must be an object")
        operation = entry.get("operation", "")
        if operation not in ("Apply", "Update"):
            raise ValueError(f"unknown operation {operation!r}")
        fields_v1 = entry.get("fieldsV1") or {}
        if not isinstance(fields_v1, dict):
            raise ValueError("fieldsV1 must be an object")
        m = _Manager(
            manager=str(entry.get("manager", "")),
            operation=operation,
            api_version=str(entry.get("apiVersion", "")),
            subresource=str(entry.get("subresource", "") or ""),
            time=entry.get("time"),
            fields=_field_sets.decode(fields_v1),
        )
        existing = managers.get(m.ident)
        if existing is not None:
            existing.fields |= m.fields
        else:
            managers[m.ident] = m
    return managers


def _is_reset(entries: Any) -> bool:
    if isinstance(entries, list):
        return not entries or (len(entries) == 1 and entries[0] in ({}, None))
    return False


@functools.lru_cache(maxsize=1024)
def _seconds(time: str | None) -> int:
    if not time or not isinstance(time, str):
        return 0
    try:
        return int(datetime.fromisoformat(time.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _cap_update_managers(managers: Managers) -> None:
    updaters = [ident for ident, m in managers.items() if m.operation != "Apply"]
    if len(updaters) <= _MAX_UPDATE_MANAGERS:
        return
    updaters.sort(key=lambda i: (_seconds(managers[i].time), managers[i].ident_json()))
    first_by_version: dict[str, tuple[str, str, str, str]] = {}
    remaining = len(updaters)
    for ident in updaters:
        if remaining <= _MAX_UPDATE_MANAGERS:
            break
        m = managers[ident]
        bucket = (_ANCIENT_CHANGES, "Update", m.api_version, "")
        if m.api_version in first_by_version:
            if bucket not in managers:
                first = managers.pop(first_by_version[m.api_version])
                managers[bucket] = _Manager(
                    _ANCIENT_CHANGES, "Update", m.api_version, "", first.time, first.fields
                )
            target = managers[bucket]
            target.fields = target.fields | m.fields
            target.time = m.time
            del managers[ident]
            remaining -= 1
        else:
            first_by_version[m.api_version] = ident


def _encode_managers(managers: Managers) -> list[dict[str, Any]]:
    ordered = sorted(
        managers.values(),
        key=lambda m: (m.operation, _seconds(m.time), m.manager, m.api_version, m.subresource),
    )
    return [m.to_entry() for m in ordered if m.fields]


def _set_managed_fields(obj: dict[str, Any], managers: Managers) -> None:
    meta = obj.setdefault("metadata", {})
    entries = _encode_managers(managers)
    if entries:
        meta["managedFields"] = entries
    else:
        meta.pop("managedFields", None)


def _without_managed_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` without managedFields: new top level and metadata, everything else shared."""
    out = dict(obj)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        out["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return out


def _gvk_string(api_version: str, kind: str) -> str:
    group, _, version = api_version.rpartition("/")
    return f"{group}/{version}, Kind={kind}"


# ---------------------------------------------------------------------------------------------
# Updates
# ---------------------------------------------------------------------------------------------


def _update_managers(
    managers: Managers,
    base: Any,
    new: dict[str, Any],
    schema: Node,
    *,
    manager: str,
    api_version: str,
    subresource: str,
    now: str,
) -> None:
    result = compare(base, new, schema)
    changed = result.modified | result.added
    current = _strip(changed - result.removed)
    for m in managers.values():
        m.fields = m.fields - changed - result.removed
    for ident in [i for i, m in managers.items() if not m.fields]:
        del managers[ident]
    if not current:
        return
    m = _Manager(manager, "Update", api_version, subresource, now, current)
    previous = managers.get(m.ident)
    if previous is not None:
        m.fields = m.fields | previous.fields
    managers[m.ident] = m


def record_update(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    *,
    manager: str,
    api_version: str,
    now: str,
    subresource: str | None = None,
    custom: bool | None = None,
    reuse_new: bool = False,
) -> dict[str, Any]:
    """``new`` (a copy) with ``metadata.managedFields`` updated for a non-apply write.

    ``old`` is the live object (``None`` on create). The fields this write added or changed
    become owned by ``manager`` (operation ``Update`` at ``api_version``, ``time`` = ``now``);
    they are taken from every other manager, and removed fields leave all owners. Managed
    fields sent with ``new`` replace the live ones (``[]`` or ``[{}]`` clears them); for a
    subresource write they are ignored. ``custom`` says the type is a CRD (default: by group).
    ``reuse_new``: the caller gives ``new`` up, so it is updated in place instead of copied
    (``old`` is never changed either way).
    """
    result = new if reuse_new else _copy(new)
    meta = result.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
        result["metadata"] = meta
    sent = meta.pop("managedFields", None)
    live_entries = ((old or {}).get("metadata") or {}).get("managedFields")

    managers: Managers
    try:
        live_managers = _decode_managers(live_entries)
    except ValueError:
        live_managers = {}
    if subresource:
        managers = live_managers
    elif _is_reset(sent):
        managers = {}
    elif sent is not None and sent == live_entries:
        managers = live_managers  # sent back as read (the usual read-modify-write)
    else:
        try:
            managers = _decode_managers(sent)
        except ValueError:
            managers = {}
        if not managers:
            managers = live_managers

    if not managers and old is not None:
        # The apiserver does not start tracking on an update of an untracked object.
        return result

    kind = str(result.get("kind") or (old or {}).get("kind") or "")
    schema = apply_schema_for(kind, api_version, custom=custom)
    base = (
        _without_managed_fields(old)
        if old is not None
        else skeleton_for(kind, api_version, custom=custom)
    )
    _update_managers(
        managers,
        base,
        result,
        schema,
        manager=manager,
        api_version=api_version,
        subresource=subresource or "",
        now=now,
    )
    _cap_update_managers(managers)
    _set_managed_fields(result, managers)
    return result


# ---------------------------------------------------------------------------------------------
# Server-side apply
# ---------------------------------------------------------------------------------------------


class ApplyConflict(StatusError):
    """409 Conflict from an apply that would change fields other managers own."""

    def __init__(self, conflicts: Sequence[tuple[str, str, str]]) -> None:
        """``conflicts``: (sort key of the manager, how the manager is printed, field path)."""
        causes = [
            {"type": "FieldManagerConflict", "message": f"conflict with {who}", "field": path}
            for _, who, path in conflicts
        ]
        if len(conflicts) == 1:
            _, who, path = conflicts[0]
            message = f"Apply failed with 1 conflict: conflict with {who}: {path}"
        else:
            lines: list[str] = []
            grouped: dict[str, tuple[str, list[str]]] = {}
            for sort_key, who, path in conflicts:
                grouped.setdefault(sort_key, (who, []))[1].append(path)
            for sort_key in sorted(grouped):
                who, paths = grouped[sort_key]
                lines.append(f"conflicts with {who}:")
                lines.extend(f"- {p}" for p in paths)
            message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
        super().__init__(409, "Conflict", message, details={"causes": causes})
        self.conflicts = list(conflicts)


def _allowed_from_last_applied(
    live: dict[str, Any], schema: Node, api_version: str
) -> set[Path] | None:
    """Fields kubectl's client-side apply recorded and still matches (free to take over)."""
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(LAST_APPLIED_ANNOTATION)
    if not text:
        return None
    try:
        last = json.loads(text)
    except ValueError:
        return None
    if not isinstance(last, dict) or last.get("apiVersion") != api_version:
        return None
    fields = to_field_set(last, schema)
    diff = compare(last, live, schema)
    return fields - diff.modified - diff.added - diff.removed


def _last_applied_value(applied: dict[str, Any]) -> str:
    obj = dict(applied)
    meta = obj.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("annotations"), dict):
        obj["metadata"] = meta = dict(meta)
        meta["annotations"] = {
            k: v for k, v in meta["annotations"].items() if k != LAST_APPLIED_ANNOTATION
        }
    return to_json(obj) + "\n"


def _reset(
    obj: dict[str, Any], live: dict[str, Any] | None, reset_fields: Sequence[Sequence[str]]
) -> None:
    """Put back the live value at each reset path (what the strategy's PrepareForUpdate does)."""
    for reset_path in reset_fields:
        if not reset_path:
            continue
        *parents, last = reset_path
        target: Any = obj
        source: Any = live
        for name in parents:
            if not isinstance(target, dict) or not isinstance(target.get(name), dict):
                target = None
                break
            target[name] = dict(target[name])  # (may be shared with live: copy on write)
            target = target[name]
            source = source.get(name) if isinstance(source, dict) else None
        if not isinstance(target, dict):
            continue
        if isinstance(source, dict) and last in source:
            target[last] = source[last]  # (shared with live, like the rest of the answer)
        else:
            target.pop(last, None)


def server_side_apply(
    live: dict[str, Any] | None,
    applied: dict[str, Any],
    *,
    manager: str,
    force: bool,
    api_version: str,
    now: str,
    subresource: str | None = None,
    custom: bool | None = None,
    reset_fields: Sequence[Sequence[str]] = (),
) -> dict[str, Any]:
    """The object after ``manager`` applies ``applied`` to ``live`` (``None``: create).

    Returns the new full object with ``metadata.managedFields`` updated (an ``Apply`` entry for
    ``manager``). Raises ``ApplyConflict`` (409) when a value owned by another manager would
    change and ``force`` is false, and ``StatusError`` 400 for an apply body the apiserver
    rejects (wrong apiVersion, managedFields set). ``metadata.resourceVersion``, ``uid``,
    ``generation`` and ``creationTimestamp`` keep their live values (the store owns them; an
    applied ``resourceVersion`` is a precondition the caller checks). ``reset_fields`` are
    paths whose values this endpoint may not change (``[("status",)]`` on the main resource
    of a type with a status subresource): they keep the live value and are never owned.
    Neither input is changed; the answer shares the parts the apply left alone with ``live``
    (the store copies it once before keeping it).
    """
    if not isinstance(applied, dict):
        raise StatusError(400, "BadRequest", "error decoding YAML: the apply body is not an object")
    specified = applied.get("apiVersion")
    if specified != api_version:
        raise StatusError(
            400,
            "BadRequest",
            "Incorrect version specified in apply patch. Specified patch version: "
            f"{specified if isinstance(specified, str) else ''}, expected: {api_version}",
        )
    applied_meta = applied.get("metadata")
    if isinstance(applied_meta, dict) and applied_meta.get("managedFields") is not None:
        raise StatusError(400, "BadRequest", "metadata.managedFields must be nil")

    kind = str(applied.get("kind") or (live or {}).get("kind") or "")
    schema = apply_schema_for(kind, api_version, custom=custom)
    errors: list[str] = []
    applied_set: set[Path] = set()
    _config_walk(applied, schema, (), applied_set, errors)
    if errors:
        meta = applied_meta if isinstance(applied_meta, dict) else {}
        detail = errors[0] if len(errors) == 1 else "errors:\n  " + "\n  ".join(errors)
        raise StatusError(
            500,
            "",
            f"failed to create typed patch object ({meta.get('namespace', '')}/"
            f"{meta.get('name', '')}; {_gvk_string(api_version, kind)}): {detail}",
        )

    applied_set.discard(())
    for reset_path in reset_fields:
        prefix = tuple(("f", name) for name in reset_path)
        applied_set = {p for p in applied_set if p[: len(prefix)] != prefix}
    new_set = _strip(applied_set)

    sub = subresource or ""
    if live is not None:
        try:
            managers = _decode_managers((live.get("metadata") or {}).get("managedFields"))
        except ValueError:
            managers = {}
        live_clean = _without_managed_fields(live)
        if not managers:
            # An object nobody tracked yet: everything it has belongs to "before-first-apply".
            _update_managers(
                managers,
                skeleton_for(kind, api_version, custom=custom),
                live_clean,
                schema,
                manager=_BEFORE_FIRST_APPLY,
                api_version=api_version,
                subresource=sub,
                now=now,
            )
    else:
        managers = {}
        live_clean = None

    def attempt(force_now: bool) -> tuple[dict[str, Any], Managers]:
        working = {i: _Manager(**vars(m)) for i, m in managers.items()}
        lhs = live_clean if live_clean is not None else _MISSING
        merged = _merge(lhs, applied, schema)
        assert isinstance(merged, dict)
        # merged shares unchanged parts with live: give it its own metadata before changing it
        meta = merged["metadata"] = dict(merged.get("metadata") or {})
        live_meta = (live_clean or {}).get("metadata") or {}
        for name in _SERVER_OWNED_META:
            if name in live_meta:
                meta[name] = live_meta[name]
            else:
                meta.pop(name, None)
        _reset(merged, live_clean, reset_fields)

        applier = _Manager(manager, "Apply", api_version, sub, None, new_set)
        last = working.get(applier.ident)
        if last is not None and last.fields and not last.fields <= applied_set:
            # (when the new configuration covers the last one, pruning removes nothing)
            managed = set(applied_set)
            for ident, m in working.items():
                if ident != applier.ident:
                    managed |= m.fields
            merged = _prune(merged, schema, last.fields, managed)
        applier.time = last.time if last is not None else None
        working[applier.ident] = applier

        base = (
            live_clean if live_clean is not None else skeleton_for(kind, api_version, custom=custom)
        )
        diff = compare(base, merged, schema)
        changed = diff.modified | diff.added
        conflicts = {
            ident: m.fields & changed
            for ident, m in working.items()
            if ident != applier.ident and m.fields & changed
        }
        if conflicts and not force_now:
            raise _Conflicts(working, conflicts)
        for ident, m in working.items():
            if ident != applier.ident:
                m.fields = m.fields - conflicts.get(ident, set()) - diff.removed
        for ident in [i for i, m in working.items() if not m.fields]:
            del working[ident]
        if live_clean is None or not _equal(live_clean, merged):
            applier.time = now
        return merged, working

    try:
        merged, managers = attempt(force)
    except _Conflicts as found:
        remaining = found.conflicts
        if manager == "kubectl" and live_clean is not None:
            allowed = _allowed_from_last_applied(live_clean, schema, api_version)
            if allowed is not None:
                remaining = {i: s - allowed for i, s in remaining.items() if s - allowed}
        if remaining:
            raise _conflict_error(found.managers, remaining) from None
        merged, managers = attempt(True)

    _cap_update_managers(managers)
    _set_managed_fields(merged, managers)

    annotations = merged["metadata"].get("annotations")
    if (
        manager == "kubectl"
        and isinstance(annotations, dict)
        and LAST_APPLIED_ANNOTATION in annotations
    ):
        annotations = merged["metadata"]["annotations"] = dict(annotations)
        annotations[LAST_APPLIED_ANNOTATION] = _last_applied_value(applied)
    return merged


class _Conflicts(Exception):
    def __init__(
        self, managers: Managers, conflicts: dict[tuple[str, str, str, str], set[Path]]
    ) -> None:
        super().__init__("conflicts")
        self.managers = managers
        self.conflicts = conflicts


def _conflict_error(
    managers: Managers, conflicts: Mapping[tuple[str, str, str, str], set[Path]]
) -> ApplyConflict:
    rows: list[tuple[str, str, str]] = []
    for ident in sorted(conflicts, key=lambda i: managers[i].ident_json()):
        m = managers[ident]
        for path in _iterate(conflicts[ident]):
            rows.append((m.ident_json(), _display_without_time(m), _path_string(path)))
    return ApplyConflict(rows)


def _display_without_time(m: _Manager) -> str:
    # The manager identifier the apiserver prints from never carries a time.
    return _Manager(m.manager, m.operation, m.api_version, m.subresource, None, set()).display()
