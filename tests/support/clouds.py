"""Set-up shared by the tests of the cloud stand-ins (``tests/sandbox``) and of the discovery
clients that talk to them (``tests/clients``): account ids, cluster records, an azure-core
credential, and the start/reset steps of the stand-in fixtures.

Each test module keeps its own cluster list and tokens; only the building blocks live here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import trustme
from azure.core.credentials import AccessToken

from sandbox.clouds.aks import AksSandbox
from sandbox.clouds.common import CloudCluster, Provider
from sandbox.clouds.gke import GkeSandbox
from sandbox.fleet import Fleet
from tests.support.hosting import LoopHost

#: a made-up CA that the published (unreachable) cluster records carry
CA_PEM = trustme.CA().cert_pem.bytes().decode()

#: AKS subscriptions; ``SUB_LOCKED`` is the one the stand-ins are told to refuse
SUB_A = "00000000-0000-4000-8000-00000000000a"
SUB_B = "00000000-0000-4000-8000-00000000000b"
SUB_LOCKED = "00000000-0000-4000-8000-00000000000c"

#: AWS member accounts
ACCOUNT_A = "111111111111"
ACCOUNT_B = "222222222222"


def cloud_cluster(
    provider: Provider,
    account: str,
    location: str,
    name: str,
    port: int,
    *,
    kubernetes_version: str,
    **kw: Any,
) -> CloudCluster:
    """A published cluster on ``https://127.0.0.1:PORT`` (nothing listens) with :data:`CA_PEM`."""
    return CloudCluster(
        provider=provider,
        account=account,
        location=location,
        name=name,
        endpoint=f"https://127.0.0.1:{port}",
        ca_pem=CA_PEM,
        kubernetes_version=kubernetes_version,
        **kw,
    )


def aks_cluster(
    sub: str, group: str, location: str, name: str, port: int, **kw: Any
) -> CloudCluster:
    return cloud_cluster(
        "aks", sub, location, name, port, kubernetes_version="v1.29.7", resource_group=group, **kw
    )


def gke_cluster(project: str, location: str, name: str, port: int, **kw: Any) -> CloudCluster:
    return cloud_cluster("gke", project, location, name, port, kubernetes_version="v1.30.5", **kw)


def fleet_member(
    fleet: Fleet, name: str, provider: Provider, account: str, location: str, **kw: Any
) -> CloudCluster:
    """A cluster record that leads to the sandbox fleet's cluster ``name`` (endpoint, CA, version)."""
    return CloudCluster(
        provider=provider,
        account=account,
        location=location,
        name=name,
        endpoint=fleet.server(name),
        ca_pem=fleet.ca_pem(name).decode(),
        kubernetes_version=fleet.cluster(name).spec.kubernetes_version,
        **kw,
    )


class StaticCredential:
    """What azure-identity credentials are to azure-core: ``get_token`` -> ``AccessToken``.

    Hands out one fixed token and records the scopes asked for.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


def fail_then_pass_seed(rate: float) -> int:
    """A seed whose first draw injects an error and whose second does not."""
    for seed in range(1000):
        rng = random.Random(seed)
        if rng.random() < rate <= rng.random():
            return seed
    raise AssertionError("no seed found")


#: the stand-ins that run on a test loop (AWS runs a moto server of its own)
S = TypeVar("S", GkeSandbox, AksSandbox)


def started(sandbox: S, host: LoopHost) -> Iterator[S]:
    """For a module fixture: ``yield from started(sandbox, host)`` runs it for the module."""
    host.call(sandbox.start())
    yield sandbox
    host.call(sandbox.stop())


def fresh(sandbox: S, host: LoopHost) -> Iterator[S]:
    """For a test fixture: no recorded requests before the test, no faults after it."""
    sandbox.requests.clear()
    yield sandbox
    host.call(sandbox.apply_faults(latency_seconds=0.0, error_rate=0.0, outage=False))
