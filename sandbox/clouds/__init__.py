"""Cloud provider APIs for the sandbox: EKS and Route 53 (moto), GKE and AKS (aiohttp).

Each provider publishes a list of :class:`CloudCluster` records, the sandbox Kubernetes clusters
it "owns", through the real wire protocol, so that discovery with the real SDK (boto3,
google-cloud-container, azure-mgmt-containerservice) leads to the sandbox clusters. Each has
its own :class:`ProviderFaults` (latency, error rate in the provider's own error shape, outage).
"""

from sandbox.clouds.aks import AksSandbox
from sandbox.clouds.aws import (
    AwsCredentials,
    AwsSandbox,
    EksTokenCheck,
    check_eks_token,
    eks_authenticator,
    verify_eks_token,
)
from sandbox.clouds.common import CloudCluster, ProviderFaults, ProviderFaultsError
from sandbox.clouds.gke import GkeSandbox

__all__ = [
    "AksSandbox",
    "AwsCredentials",
    "AwsSandbox",
    "CloudCluster",
    "EksTokenCheck",
    "GkeSandbox",
    "ProviderFaults",
    "ProviderFaultsError",
    "check_eks_token",
    "eks_authenticator",
    "verify_eks_token",
]
