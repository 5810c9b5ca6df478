"""Optional: register inventory clusters into Argo CD as declarative cluster Secrets.

Argo CD learns about a cluster from a Secret labelled ``argocd.argoproj.io/secret-type: cluster``
in its namespace of the management cluster, holding ``name``, ``server`` and a JSON ``config``.
fleetops writes one per registered cluster with server-side apply (field manager ``fleetops``),
so re-running changes nothing and fields other managers own are left alone.

The Secret never holds a long-lived credential, only how to get a short-lived one:

- EKS: ``awsAuthConfig`` (cluster name and, when the account is reached through a role, the
  role ARN); Argo CD mints the IAM token with its own AWS identity.
- GKE, AKS and static: ``execProviderConfig`` running ``fleetops token CLUSTER_ID`` (the same
  exec plugin as ``fleetops kubeconfig``), so fleetops must be installed in Argo CD's image with
  the same settings.

The cluster's labels are copied onto the Secret (Argo CD ApplicationSets select clusters by
them) and its id is kept as the annotation ``fleetops.io/cluster-id``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client as k8s

from fleetops.clients.credentials import EXEC_API_VERSION, ClusterToken
from fleetops.clients.kube import KubeClient
from fleetops.domain.cluster import Cluster, Provider

SECRET_TYPE_LABEL = "argocd.argoproj.io/secret-type"
CLUSTER_ID_ANNOTATION = "fleetops.io/cluster-id"
FIELD_MANAGER = "fleetops"

_NAME_CHARS = re.compile(r"[^a-z0-9-]+")


def secret_name(cluster: Cluster) -> str:
    """A stable, valid Secret name for ``cluster``: readable part plus a hash of its id."""
    readable = _NAME_CHARS.sub("-", f"{cluster.provider.value}-{cluster.name}".lower()).strip("-")
    digest = hashlib.sha256(cluster.id.encode()).hexdigest()[:10]
    return f"cluster-{readable[:40].strip('-')}-{digest}"


def cluster_config(
    cluster: Cluster, *, role_arn: str | None = None, command: str = "fleetops"
) -> dict[str, Any]:
    """Argo CD's cluster ``config``: TLS with the provider's CA and a short-lived credential."""
    tls: dict[str, Any] = {"insecure": False}
    if cluster.ca_data:
        tls["caData"] = base64.b64encode(cluster.ca_data.encode("ascii")).decode("ascii")
    config: dict[str, Any] = {"tlsClientConfig": tls}
    if cluster.provider is Provider.EKS:
        aws: dict[str, str] = {"clusterName": cluster.name}
        if role_arn:
            aws["roleARN"] = role_arn
        config["awsAuthConfig"] = aws
    else:
        config["execProviderConfig"] = {
            "command": command,
            "args": ["token", cluster.id],
            "apiVersion": EXEC_API_VERSION,
            "installHint": "install fleetops (pip install fleetops) and set its FLEETOPS_* settings",
        }
    return config


def cluster_secret(
    cluster: Cluster,
    *,
    namespace: str,
    role_arn: str | None = None,
    command: str = "fleetops",
) -> dict[str, Any]:
    """The Secret manifest for ``cluster`` (values base64 in ``data``, as the API stores them)."""
    values = {
        "name": cluster.id,
        "server": cluster.endpoint,
        "config": json.dumps(
            cluster_config(cluster, role_arn=role_arn, command=command), sort_keys=True
        ),
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(cluster),
            "namespace": namespace,
            "labels": {**cluster.labels, SECRET_TYPE_LABEL: "cluster"},
            "annotations": {CLUSTER_ID_ANNOTATION: cluster.id},
        },
        "data": {
            key: base64.b64encode(value.encode("utf-8")).decode("ascii")
            for key, value in values.items()
        },
    }


def register_clusters(
    clusters: Iterable[Cluster],
    *,
    management: Cluster,
    token: ClusterToken,
    namespace: str = "argocd",
    role_arns: Mapping[str, str] | None = None,
    command: str = "fleetops",
    timeout_seconds: float = 10.0,
) -> list[str]:
    """Server-side apply one cluster Secret per cluster into ``management``; returns their names.

    ``role_arns`` maps AWS account ids to the role Argo CD should assume for EKS clusters.
    Raises the :class:`~fleetops.errors.ClientError` of the first Secret that cannot be applied.
    """
    role_arns = role_arns or {}
    names = []
    with KubeClient.for_cluster(management, token, timeout_seconds=timeout_seconds) as kube:
        core = k8s.CoreV1Api(kube.api_client)
        for cluster in clusters:
            manifest = cluster_secret(
                cluster,
                namespace=namespace,
                role_arn=role_arns.get(cluster.account),
                command=command,
            )
            name = manifest["metadata"]["name"]

            def apply(manifest: dict[str, Any] = manifest, name: str = name) -> Any:
                return core.patch_namespaced_secret(
                    name,
                    namespace,
                    manifest,
                    field_manager=FIELD_MANAGER,
                    force=True,
                    _content_type="application/apply-patch+yaml",
                    _request_timeout=kube.request_timeout,
                )

            kube.call(apply)
            names.append(name)
    return names
