"""Process-wide tuning for the processes that run fleet-scale work (flow runs, the CLI).

A flow-run process imports large SDKs (botocore's service models, the Azure and Kubernetes model
classes, Prefect): a hundred thousand and more objects that live as long as the process.
CPython's cyclic garbage collector walks all of them on every full collection (50-100 ms each
here, every thread stopped), and with its default thresholds a run that parses many API answers
triggers a full collection about once per run and a young one every 700 allocations.
:func:`settle_heap` (called by the discovery and rollout flows as they start) takes what is
alive at start-up out of the collector's reach (:func:`gc.freeze`: reference counting still
frees those objects, only cycles among them are never collected) and collects the youngest
generation every 10,000 allocations instead of 700 (young cycles wait a little longer; the
memory they hold meanwhile is small). Measured in docs/performance.md (discovery, rollout).

It acts once per process; later calls do nothing, so a long-lived process (the CLI, a test
session) never freezes its working objects run after run.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["YOUNG_THRESHOLD", "settle_heap"]

#: allocations (minus deallocations) of container objects between two young collections
YOUNG_THRESHOLD = 10_000

_settled = False
_lock = threading.Lock()


def settle_heap() -> bool:
    """Freeze the objects alive now and space young collections out; once per process.

    Call it when the process has imported what it will use. Returns whether this call did it.
    """
    global _settled
    with _lock:
        if _settled:
            return False
        _settled = True
    gc.collect()  # what is garbage already is not frozen
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return True
