"""Where each sandbox cluster "lives": which discovery source publishes it, in which account and
location, with which labels.

Every sandbox cluster appears in exactly one source, so that discovery over all sources finds
each cluster once:

- ``eks``: an EKS cluster in one of two AWS accounts and three regions (tags ``env``, ``team``);
- ``gke``: a GKE cluster in one of two projects and three locations (``resourceLabels``);
- ``aks``: an AKS cluster in one of two subscriptions and three regions (``tags``);
- ``kubeconfig``: a context of the static kubeconfig (``FLEETOPS_KUBECONFIG``) only;
- ``fleet-file``: a static cluster listed in the fleet file (``clusters.yaml``), reached
  through a context of the fleet's kubeconfig, with a source, a location and labels.

The spread is a plain round-robin, so it is deterministic and balanced: cluster ``i`` goes to
source ``i mod S``; inside a source, its ``k``-th cluster goes to account ``k mod A`` and location
``k mod L`` (2 and 3 are coprime, so six clusters cover every account/location pair and three
already cover every location and both accounts). ``--clusters 12`` gives every source two or
three clusters; ``--clusters 1000`` gives each source 200, over every account and location.

Names say where a cluster is: ``eks-prod-use1-01``, ``gke-staging-euw1b-02``,
``aks-prod-eus-01``, ``static-dc1-01`` (fleet file), ``static-lab-01`` (kubeconfig), numbered
per name stem. Without any cloud provider every cluster is a kubeconfig context named
``<prefix>-NN`` (``sbx-01``, ...), the plain fleet of the Kubernetes-only sandbox.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sandbox.clouds.common import (
    AKS_LOCATIONS,
    AKS_SUBSCRIPTIONS,
    AWS_ACCOUNTS,
    AWS_REGIONS,
    GKE_LOCATIONS,
    GKE_PROJECTS,
)

CLOUD_PROVIDERS: tuple[str, ...] = ("eks", "gke", "aks")
#: every discovery source, in round-robin order
SOURCES: tuple[str, ...] = ("eks", "gke", "aks", "kubeconfig", "fleet-file")

#: the static source name of FLEETOPS_KUBECONFIG's contexts (fleetops' default)
KUBECONFIG_SOURCE = "kubeconfig"
#: the location fleetops gives kubeconfig contexts
KUBECONFIG_LOCATION = "static"
#: the static source name of the fleet file's clusters, and their locations
FLEET_FILE_SOURCE = "on-prem"
FLEET_FILE_LOCATIONS: tuple[str, ...] = ("dc1", "dc2")

ENVS: tuple[str, ...] = ("prod", "staging")
TEAMS: tuple[str, ...] = ("payments", "search", "platform")

#: short location codes used in names
SHORT_LOCATION = {
    "us-east-1": "use1",
    "us-west-2": "usw2",
    "eu-west-1": "euw1",
    "us-central1": "usc1",
    "europe-west1-b": "euw1b",
    "asia-east1": "ase1",
    "eastus": "eus",
    "westeurope": "weu",
    "southeastasia": "sea",
}


@dataclass(frozen=True)
class Placement:
    """One cluster's source, account, location and labels."""

    name: str
    source: str
    """``eks``, ``gke``, ``aks``, ``kubeconfig`` or ``fleet-file``."""
    account: str
    """AWS account id, GCP project id, Azure subscription id, or the static source name."""
    location: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        """``eks``, ``gke``, ``aks`` or ``static``."""
        return self.source if self.source in CLOUD_PROVIDERS else "static"

    @property
    def id(self) -> str:
        """``provider/account/location/name``: the inventory's id for the cluster."""
        return f"{self.provider}/{self.account}/{self.location}/{self.name}"

    @property
    def resource_group(self) -> str:
        """AKS only: the resource group (``rg-<env>-<location>``)."""
        if self.source != "aks":
            return ""
        return f"rg-{self.labels.get('env', 'default')}-{self.location}"


def _short(location: str) -> str:
    return SHORT_LOCATION.get(location, location.replace("-", ""))


def _cloud(source: str, k: int) -> tuple[str, str, dict[str, str], str]:
    """(account, location, labels, name stem) of the k-th cluster of a cloud source."""
    accounts, locations = {
        "eks": (AWS_ACCOUNTS, AWS_REGIONS),
        "gke": (GKE_PROJECTS, GKE_LOCATIONS),
        "aks": (AKS_SUBSCRIPTIONS, AKS_LOCATIONS),
    }[source]
    index = k % len(accounts)
    env = ENVS[index % len(ENVS)]
    location = locations[k % len(locations)]
    team = TEAMS[(k // 2) % len(TEAMS)]
    return (
        accounts[index],
        location,
        {"env": env, "team": team},
        f"{source}-{env}-{_short(location)}",
    )


def place(
    count: int, *, providers: tuple[str, ...] | list[str] = CLOUD_PROVIDERS, prefix: str = "sbx"
) -> list[Placement]:
    """Placements for ``count`` clusters over ``providers`` (cloud providers) and static.

    Without any cloud provider, every cluster is a kubeconfig context named ``<prefix>-NN``.
    """
    if count < 1:
        raise ValueError(f"a fleet needs at least one cluster, got {count}")
    unknown = sorted(set(providers) - set(CLOUD_PROVIDERS))
    if unknown:
        raise ValueError(f"unknown cloud provider(s) {unknown}; known: {list(CLOUD_PROVIDERS)}")
    if not providers:
        width = max(2, len(str(count)))
        return [
            Placement(
                f"{prefix}-{i:0{width}d}", "kubeconfig", KUBECONFIG_SOURCE, KUBECONFIG_LOCATION
            )
            for i in range(1, count + 1)
        ]
    sources = [s for s in SOURCES if s not in CLOUD_PROVIDERS or s in providers]
    seen: Counter[str] = Counter()
    drafts: list[tuple[str, str, str, dict[str, str], str]] = []
    for i in range(count):
        source = sources[i % len(sources)]
        k = seen[source]
        seen[source] += 1
        if source in CLOUD_PROVIDERS:
            account, location, labels, stem = _cloud(source, k)
        elif source == "kubeconfig":
            account, location, labels, stem = (
                KUBECONFIG_SOURCE,
                KUBECONFIG_LOCATION,
                {},
                "static-lab",
            )
        else:
            location = FLEET_FILE_LOCATIONS[k % len(FLEET_FILE_LOCATIONS)]
            labels = {"env": ENVS[k % len(ENVS)], "team": TEAMS[(k // 2) % len(TEAMS)]}
            account, stem = FLEET_FILE_SOURCE, f"static-{location}"
        drafts.append((source, account, location, labels, stem))
    sizes = Counter(stem for *_, stem in drafts)
    width = max(2, len(str(max(sizes.values()))))
    numbered: Counter[str] = Counter()
    placements = []
    for source, account, location, labels, stem in drafts:
        numbered[stem] += 1
        name = f"{stem}-{numbered[stem]:0{width}d}"
        placements.append(Placement(name, source, account, location, labels))
    return placements
