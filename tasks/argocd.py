"""Argo CD registration task (optional; ``FLEETOPS_ARGOCD_ENABLED``)."""

from __future__ import annotations

from collections.abc import Sequence

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fleetops.clients.argocd import register_clusters
from fleetops.clients.credentials import ClusterCredentials
from fleetops.discovery import load_settings
from fleetops.domain.inventory import InventoryRecord
from fleetops.errors import ConfigError


@task(name="register-argocd", cache_policy=NO_CACHE, persist_result=False)
def register_argocd_task(
    clusters: Sequence[InventoryRecord], management: InventoryRecord | None
) -> int:
    """Apply one Argo CD cluster Secret per registered cluster into the management cluster.

    The management cluster is reached with a short-lived token like any other; the Secrets
    hold no token (awsAuthConfig for EKS, the ``fleetops token`` exec plugin otherwise).
    """
    settings = load_settings()
    if management is None:
        raise ConfigError(
            "FLEETOPS_ARGOCD_ENABLED is set but FLEETOPS_ARGOCD_MANAGEMENT_CLUSTER does not name "
            "a cluster of the inventory"
        )
    token = ClusterCredentials.from_settings(settings).token_for(management)
    role_arns = {a.account_id: a.role_arn for a in settings.eks.accounts if a.role_arn}
    names = register_clusters(
        clusters,
        management=management,
        token=token,
        namespace=settings.argocd.namespace,
        role_arns=role_arns,
        command=settings.argocd.fleetops_command,
        timeout_seconds=settings.discovery.probe_timeout_seconds,
    )
    get_run_logger().info(
        "registered %d clusters in Argo CD on %s (namespace %s)",
        len(names),
        management.id,
        settings.argocd.namespace,
    )
    return len(names)
