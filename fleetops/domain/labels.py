"""Kubernetes label syntax, shared by the inventory, selectors and wave planning.

Rules are the apiserver's (``k8s.io/apimachinery/pkg/util/validation``): a key is an optional DNS
subdomain prefix (at most 253 characters) and a slash, then a name of at most 63 characters of
alphanumerics, ``-``, ``_`` and ``.``, beginning and ending alphanumeric; a value is empty or
such a name.
"""

from __future__ import annotations

import re

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
