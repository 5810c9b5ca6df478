"""10,000 inventory upserts on SQLite: a fresh file, then a second pass with changes.

    .venv/bin/python bench/inventory_upserts.py [--clusters 10000] [--changed 0.2]

Pass 1 inserts every record into a fresh, migrated SQLite file. Pass 2 upserts the same ids again,
a fraction of them changed (version, status, labels, last_seen, a probe result), the rest
identical, as a discovery run of an unchanged fleet would. Pass 3 repeats pass 2 exactly (nothing
to write: every row is compared and left alone). Each figure is the wall time of one
``Inventory.upsert_many`` call (one transaction), records built beforehand. Goal (issue 4): each
pass under 2 s.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetops.domain import InventoryRecord, ProbeResult
from fleetops.inventory import Inventory

PROVIDERS = (
    ("eks", "123456789012", "eu-west-1", "eks-iam"),
    ("gke", "fleet-prod", "europe-west1-b", "gcp-access-token"),
    ("aks", "00000000-0000-0000-0000-000000000001", "westeurope", "aks-user-credential"),
    ("static", "kubeconfig", "dc1", "static-kubeconfig"),
)
CA = "-----BEGIN CERTIFICATE-----\n" + "A" * 1000 + "\n-----END CERTIFICATE-----\n"


def records(count: int, *, now: datetime) -> list[InventoryRecord]:
    result = []
    for index in range(count):
        provider, account, location, auth = PROVIDERS[index % len(PROVIDERS)]
        result.append(
            InventoryRecord(
                provider=provider,
                account=account,
                location=location,
                name=f"cluster-{index:05d}",
                endpoint=f"https://10.{index // 65536}.{index // 256 % 256}.{index % 256}:6443",
                ca_data=CA,
                kubernetes_version="1.30.4",
                provider_status="ACTIVE",
                labels={
                    "env": ("prod", "staging", "dev")[index % 3],
                    "team": f"team-{index % 17}",
                    "fleetops.io/provider": provider,
                    "fleetops.io/account": account,
                    "fleetops.io/k8s-minor": "1.30",
                },
                auth=auth,
                state="registered",
                first_seen=now,
                last_seen=now,
            )
        )
    return result


def changed(
    base: list[InventoryRecord], fraction: float, *, now: datetime
) -> list[InventoryRecord]:
    step = max(1, round(1 / fraction)) if fraction > 0 else len(base) + 1
    probe = ProbeResult(ok=True, at=now, version="v1.31.1", latency_ms=12.5)
    return [
        record.model_copy(
            update={
                "kubernetes_version": "1.31.1",
                "provider_status": "UPDATING",
                "labels": {**record.labels, "fleetops.io/k8s-minor": "1.31", "wave": "2"},
                "last_seen": now,
                "last_probe": probe,
            }
        )
        if index % step == 0
        else record
        for index, record in enumerate(base)
    ]


def timed(inventory: Inventory, batch: list[InventoryRecord]) -> float:
    started = time.perf_counter()
    inventory.upsert_many(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--changed", type=float, default=0.2, help="fraction changed in pass 2")
    args = parser.parse_args()

    now = datetime(2025, 1, 1, tzinfo=UTC)
    first = records(args.clusters, now=now)
    second = changed(first, args.changed, now=now + timedelta(minutes=15))
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Inventory(f"sqlite:///{tmp}/inventory.db")
        inventory.migrate()
        insert_seconds = timed(inventory, first)
        change_seconds = timed(inventory, second)
        same_seconds = timed(inventory, second)
        assert len(inventory.list()) == args.clusters
        inventory.close()

    print(
        f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{platform.machine()}, {args.clusters} records"
    )
    print(f"pass 1, fresh file, every record inserted: {insert_seconds:6.2f} s")
    print(f"pass 2, {args.changed:4.0%} changed, the rest identical:  {change_seconds:6.2f} s")
    print(f"pass 3, same as pass 2, no row written:    {same_seconds:6.2f} s")
    worst = max(insert_seconds, change_seconds, same_seconds)
    print(
        f"goal: every pass under 2 s -> {'met' if worst < 2 else 'NOT met'} (worst {worst:.2f} s)"
    )


if __name__ == "__main__":
    main()
