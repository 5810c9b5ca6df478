"""Pure domain logic: models, planning and evaluation. Standard library and pydantic only."""

from fleetops.domain.cluster import AuthMethod, Cluster, ClusterState, ProbeResult, Provider
from fleetops.domain.inventory import (
    ClusterChange,
    InventoryDiff,
    InventoryRecord,
    LabelOverride,
    Reconciliation,
    SourceResult,
    apply_probe,
    apply_probes,
    probe_due,
    reconcile,
)
from fleetops.domain.labels import derived_labels, kubernetes_minor, normalise_labels
from fleetops.domain.selectors import Operator, Requirement, Selector, SelectorText

__all__ = [
    "AuthMethod",
    "Cluster",
    "ClusterChange",
    "ClusterState",
    "InventoryDiff",
    "InventoryRecord",
    "LabelOverride",
    "Operator",
    "ProbeResult",
    "Provider",
    "Reconciliation",
    "Requirement",
    "Selector",
    "SelectorText",
    "SourceResult",
    "apply_probe",
    "apply_probes",
    "derived_labels",
    "kubernetes_minor",
    "normalise_labels",
    "probe_due",
    "reconcile",
]
