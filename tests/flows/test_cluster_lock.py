"""Cluster locks (tasks.rollout.ClusterLock) against the Prefect test server: what the server's
global concurrency limits hold while locks are taken, waited for, chained and released."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from fleetops.settings import RolloutSettings
from tasks.rollout import ClusterLock, cluster_limit_name

#: a failed test must not leave a request waiting for a slot (the server would wait for it)
OPTIONS = RolloutSettings(lock_timeout_seconds=20)


def _active(cluster_id: str) -> int:
    """Slots held on the cluster's limit (0 when the limit does not exist yet)."""
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(cluster_limit_name(cluster_id))
        except ObjectNotFound:
            return 0
    return limit.active_slots


def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


@pytest.fixture
def clusters() -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"static/lock-test/{run}/c{i}" for i in range(3)]


def test_a_lock_waits_for_a_held_cluster_and_a_chain_keeps_its_order(clusters: list[str]) -> None:
    a, b, c = clusters
    holder = ClusterLock([b], options=OPTIONS)
    first = second = None
    try:
        holder.wait()
        assert _active(b) == 1
        first = ClusterLock([a, b], options=OPTIONS)  # needs b: waits for the holder
        second = ClusterLock([c], options=OPTIONS, after=first)  # free, but comes after first
        time.sleep(1.5)
        assert (_active(a), _active(c)) == (0, 0)  # all of first's slots at once, or none

        holder.release()
        first.wait()
        second.wait()
        assert [_active(x) for x in clusters] == [1, 1, 1]
    finally:
        for lock in (holder, first, second):
            if lock is not None:
                lock.release()
    assert [_active(x) for x in clusters] == [0, 0, 0]


def test_a_lock_released_before_it_was_taken_leaves_no_slot(clusters: list[str]) -> None:
    a = clusters[0]
    holder = ClusterLock([a], options=OPTIONS)
    holder.wait()
    waiting = ClusterLock([a], options=OPTIONS)
    time.sleep(0.5)
    waiting.release()  # gives up while its request still waits for the slot
    holder.release()
    # the waiting request is granted once the holder is gone (after the server's Retry-After,
    # up to 30 s), and must give the slot back at once
    _until(waiting.done, timeout=45)
    assert _active(a) == 0
    again = ClusterLock([a], options=OPTIONS)
    again.wait()
    assert _active(a) == 1
    again.release()
    assert again.done()
    assert _active(a) == 0


def test_a_lock_that_cannot_be_taken_in_time_says_why(clusters: list[str]) -> None:
    a = clusters[0]
    holder = ClusterLock([a], options=OPTIONS)
    holder.wait()
    try:
        impatient = ClusterLock([a], options=RolloutSettings(lock_timeout_seconds=1))
        with pytest.raises(Exception, match="timed out"):
            impatient.wait()
    finally:
        holder.release()
    assert _active(a) == 0
