"""The inventory: the single source of truth for which clusters exist and how to reach them.

:class:`Inventory` stores :class:`fleetops.domain.inventory.InventoryRecord` rows in SQLite (a file
by default) or PostgreSQL, with alembic migrations shipped in ``migrations/``. What a discovery
run changes is decided by the pure functions in :mod:`fleetops.domain.inventory`; this package only
reads and writes. :class:`RolloutHistory` keeps the rollout history (rollback points, outcomes,
passed waves, approvals, blocklist, last known good) in the same database.
"""

from fleetops.inventory.rollouts import (
    BlockedVersion,
    ClusterOutcome,
    ClusterResult,
    LastKnownGood,
    RolloutHistory,
    RolloutRecord,
    RolloutState,
    RolloutStatus,
)
from fleetops.inventory.store import Inventory

__all__ = [
    "BlockedVersion",
    "ClusterOutcome",
    "ClusterResult",
    "Inventory",
    "LastKnownGood",
    "RolloutHistory",
    "RolloutRecord",
    "RolloutState",
    "RolloutStatus",
]
