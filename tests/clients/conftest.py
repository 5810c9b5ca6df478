"""Fixtures for the client tests: a loop thread for the aiohttp cloud stand-ins.

The clients under test are synchronous SDKs (boto3, google-cloud-container,
azure-mgmt-containerservice, kubernetes), so the GKE and AKS stand-ins run on their own event
loop in a daemon thread; tests start, stop and switch faults on them through ``loop.call``.
The Kubernetes fleet is the session ``fleet`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread; ``call(coro)`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="clients-loop", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.close()
