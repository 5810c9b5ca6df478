"""Pure domain logic: models, planning and evaluation. Standard library and pydantic only."""

from fleetops.domain.cluster import AuthMethod, Cluster, ClusterState, ProbeResult, Provider

__all__ = ["AuthMethod", "Cluster", "ClusterState", "ProbeResult", "Provider"]
