"""Kubernetes label syntax, shared by the inventory, selectors and wave planning.

Rules are the apiserver's (``k8s.io/apimachinery/pkg/util/validation``): a key is an optional DNS
subdomain prefix (at most 253 characters) and a slash, then a name of at most 63 characters of
alphanumerics, ``-``, ``_`` and ``.``, beginning and ending alphanumeric; a value is empty or
such a name.

Provider tags are not labels: :func:`normalise_labels` turns EKS/AKS tags and GKE labels into
valid ones, and :func:`derived_labels` adds the ``fleetops.io/`` labels every cluster carries.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping

_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

FLEETOPS_PREFIX = "fleetops.io/"


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key, or None when it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return f"label key {key!r}: prefix part must be non-empty"
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return (
            f"label key {key!r}: prefix must be a lowercase DNS subdomain of at most 253 characters"
        )
    if not name:
        return f"label key {key!r}: name part must be non-empty"
    if len(name) > 63:
        return f"label key {key!r}: name part must be no more than 63 characters"
    if not _NAME.match(name):
        return (
            f"label key {key!r}: name part must consist of alphanumeric characters, '-', '_' "
            "or '.', and must start and end with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None when it is."""
    if value == "":
        return None
    if len(value) > 63:
        return f"label value {value!r}: must be no more than 63 characters"
    if not _NAME.match(value):
        return (
            f"label value {value!r}: must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return None


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    """Return ``labels`` unchanged, or raise ``ValueError`` listing every invalid key and value."""
    problems = [
        problem
        for key, value in labels.items()
        for problem in (label_key_problem(key), label_value_problem(value))
        if problem
    ]
    if problems:
        raise ValueError("; ".join(problems))
    return labels


# --- normalisation of provider tags and labels ----------------------------------------------

_INVALID_RUN = re.compile(r"[^A-Za-z0-9_.-]+")
_EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")
_MINOR = re.compile(r"^v?(\d+)\.(\d+)(?:\D|$)")
_NAME_MAX = 63
_SUFFIX_LENGTH = 6  # hex digits of a collision suffix


def _ascii(text: str) -> str:
    """Accents dropped (``Équipe`` -> ``Equipe``); other non-ASCII characters left for replacing."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def _name_part(text: str, *, limit: int = _NAME_MAX) -> str:
    """``text`` made a valid label name or value (maybe empty): see :func:`normalise_labels`."""
    text = _INVALID_RUN.sub("-", _ascii(text))
    text = _EDGE.sub("", text)
    return _EDGE.sub("", text[:limit])


def _prefix_and_name(key: str) -> tuple[str, str]:
    """Split a provider key into a DNS prefix (maybe ``""``) and the rest, both unnormalised."""
    head, slash, rest = key.partition("/")
    prefix = head.strip().lower()
    if slash and "." in prefix and len(prefix) <= 253 and _DNS_SUBDOMAIN.match(prefix):
        return prefix, rest
    return "", key


def _normalise_key(key: str) -> str | None:
    prefix, name = _prefix_and_name(key)
    name = _name_part(name.lower())
    if not name:
        return None
    return f"{prefix}/{name}" if prefix else name


def _with_suffix(key: str, raw_key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    digest = hashlib.sha256(raw_key.encode()).hexdigest()[:_SUFFIX_LENGTH]
    name = _EDGE.sub("", name[: _NAME_MAX - _SUFFIX_LENGTH - 1])
    return f"{prefix}{slash}{name}-{digest}"


def normalise_labels(raw: Mapping[str, str]) -> dict[str, str]:
    """Provider tags or labels (EKS/AKS tags, GKE resource labels) as valid Kubernetes labels.

    Cloud tags allow what labels do not: spaces, colons, ``@``, upper case, 128 to 512 characters.
    The rules, applied to every pair:

    - **Prefix.** If the key has a ``/`` and the part before the first ``/`` is, lower-cased, a
      DNS subdomain with a dot (``kubernetes.io/cluster/prod``, ``k8s.io/...``), it stays the
      prefix and the rest is the name. Otherwise the whole key is the name (``team/owner`` ->
      ``team-owner``). Keys under ``fleetops.io/`` are dropped: that prefix belongs to the labels
      fleetops derives itself (:func:`derived_labels`) and no provider tag may pose as one.
    - **Name** (key): lower-cased, so ``Environment`` and ``environment`` select alike on every
      provider. **Value**: case kept. In both, accents are dropped (``é`` -> ``e``); every run of
      characters outside ``[A-Za-z0-9._-]`` becomes one ``-``; leading and trailing characters
      that are not alphanumeric are trimmed; the result is cut to 63 characters and trimmed
      again. ``Cost Center: Platform Eng`` -> ``cost-center: Platform-Eng``;
      ``aws:cloudformation:stack-name`` -> ``aws-cloudformation-stack-name``.
    - **Empty.** A key with nothing left is dropped; a value with nothing left becomes ``""``
      (a valid label value).
    - **Collisions.** When several tags normalise to the same key, and their values normalise
      alike, they merge. Otherwise the tag whose key needed no change wins the key, or else the
      one whose original key sorts first; every other one gets the key with ``-`` and 6 hex digits
      of the SHA-256 of its original key appended (the name cut to fit 63), so it stays stable
      from run to run whatever else is tagged.

    The result depends only on the pairs, not on their order, and is sorted by key.
    """
    candidates: dict[str, list[tuple[str, str]]] = {}
    for raw_key, raw_value in raw.items():
        key = _normalise_key(raw_key)
        if key is None or key.startswith(FLEETOPS_PREFIX):
            continue
        candidates.setdefault(key, []).append((raw_key, _name_part(raw_value)))

    labels: dict[str, str] = {}
    for key, pairs in candidates.items():
        pairs.sort(key=lambda pair: (pair[0] != key, pair[0]))
        winner_value = pairs[0][1]
        labels[key] = winner_value
        for raw_key, value in pairs[1:]:
            if value != winner_value:
                labels[_with_suffix(key, raw_key)] = value
    return dict(sorted(labels.items()))


def kubernetes_minor(version: str | None) -> str | None:
    """``1.31`` from ``1.31.2``, ``v1.31.2-gke.1200``, ``1.31.2-eks-7f9249a`` or ``1.31``."""
    if not version:
        return None
    match = _MINOR.match(version.strip())
    return f"{int(match.group(1))}.{int(match.group(2))}" if match else None


def derived_labels(
    *,
    provider: str,
    account: str,
    region: str | None,
    zone: str | None = None,
    kubernetes_version: str | None = None,
) -> dict[str, str]:
    """Labels fleetops computes for every cluster, under ``fleetops.io/``.

    ``fleetops.io/provider``, ``/account``, ``/region``, ``/zone`` and ``/k8s-minor`` (``1.31``).
    A label is left out when its input is unknown (a regional cluster has no zone, a static one
    may have neither). Values are normalised like tag values, so any input yields valid labels.
    Combine with :func:`normalise_labels` as ``{**normalise_labels(tags), **derived_labels(...)}``
    (normalisation drops ``fleetops.io/`` tags, so nothing is overwritten either way).
    """
    values = {
        "provider": provider,
        "account": account,
        "region": region,
        "zone": zone,
        "k8s-minor": kubernetes_minor(kubernetes_version),
    }
    labels = {
        f"{FLEETOPS_PREFIX}{name}": _name_part(value)
        for name, value in values.items()
        if value is not None
    }
    return {key: value for key, value in labels.items() if value}
