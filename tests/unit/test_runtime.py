"""fleetops.runtime: the heap of a flow-run process is settled once."""

from __future__ import annotations

import gc

from fleetops.runtime import YOUNG_THRESHOLD, settle_heap


def test_settle_heap_freezes_once_and_spaces_young_collections() -> None:
    settle_heap()  # the first call in this process, or a no-op after a flow test made it
    frozen = gc.get_freeze_count()
    assert frozen > 0  # the modules imported so far are out of the collector's walks
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert settle_heap() is False  # once per process: working objects are never frozen later
    assert gc.get_freeze_count() == frozen
