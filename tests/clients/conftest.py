"""Fixtures for the client tests: a loop thread for the aiohttp cloud stand-ins.

The clients under test are synchronous SDKs (boto3, google-cloud-container,
azure-mgmt-containerservice, kubernetes), so the GKE and AKS stand-ins run on their own event
loop in a daemon thread; tests start, stop and switch faults on them through ``loop.call``.
The Kubernetes fleet is the session ``fleet`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.hosting import LoopHost


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopHost]:
    with LoopHost(name="clients-loop") as running:
        yield running
