"""Measure the sandbox store's write path and its per-cluster start-up.

    .venv/bin/python bench/sandbox_writes.py --rounds 300 --clusters 200

A rollout across many sandbox clusters is a stream of writes through ``Store``: kubectl or the
client creating and updating Deployments, server-side applies, and the controllers' status
writes. Each round does one of each against one Deployment, the way a rollout touches it:

    create -> update (new image) -> apply (kubectl, forced: new image and replicas)
    -> update status
    -> apply (another image, same manager) -> delete

Figures: writes/s over all rounds and the mean time per write kind, then the time to
construct a ``Store`` (its bootstrap: four namespaces, their ServiceAccounts and
``kube-root-ca.crt`` ConfigMaps, the ``kubernetes`` Service) per cluster. Times are CPU
seconds of this process (steadier than wall time on a shared machine; the store does no
I/O), best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.kube.resources import Registry
from sandbox.kube.store import Store

KINDS = ("create", "update", "apply", "status", "reapply", "delete")


def deployment(name: str, *, image: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "ports": [{"containerPort": 8080}],
                            "env": [{"name": "MODE", "value": "prod"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


def _round(store: Store, rt: Any, i: int, spent: dict[str, float]) -> None:
    name = f"web-{i}"

    def timed(kind: str, fn: Callable[[], Any]) -> Any:
        started = time.process_time()
        out = fn()
        spent[kind] += time.process_time() - started
        return out

    obj = timed(
        "create",
        lambda: store.create(
            rt, "default", deployment(name, image="app:1", replicas=2), manager="kubectl-create"
        ),
    )
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = "app:2"
    obj = timed("update", lambda: store.update(rt, "default", name, obj, manager="kubectl-edit"))
    timed(
        "apply",
        lambda: store.apply(
            rt, "default", name, deployment(name, image="app:2.1", replicas=3), manager="kubectl",
            force=True,
        ),
    )  # fmt: skip
    current = store.get(rt, "default", name)
    current["status"] = {"observedGeneration": current["metadata"]["generation"], "replicas": 3}
    timed(
        "status",
        lambda: store.update(
            rt, "default", name, current, manager="kube-controller-manager", subresource="status"
        ),
    )
    timed(
        "reapply",
        lambda: store.apply(
            rt, "default", name, deployment(name, image="app:3", replicas=3), manager="kubectl"
        ),
    )
    timed("delete", lambda: store.delete(rt, "default", name))


def bench_writes(rounds: int) -> dict[str, float]:
    store = Store()
    rt = store.registry.get("apps", "v1", "deployments")
    assert rt is not None
    spent = dict.fromkeys(KINDS, 0.0)
    for i in range(rounds):
        _round(store, rt, i, spent)
    total = sum(spent.values())
    out = {"writes_per_s": round(rounds * len(KINDS) / total), "ms_per_write": 0.0}
    out["ms_per_write"] = round(total / (rounds * len(KINDS)) * 1000, 3)
    for kind in KINDS:
        out[f"{kind}_ms"] = round(spent[kind] / rounds * 1000, 3)
    return out


def bench_bootstrap(clusters: int) -> dict[str, float]:
    Registry()  # imports and tables warmed
    started = time.process_time()
    stores = [Store(root_ca_pem="-----BEGIN CERTIFICATE-----\n") for _ in range(clusters)]
    elapsed = time.process_time() - started
    assert all(len(s.list(s.registry.get("", "v1", "configmaps"))[0]) == 4 for s in stores)
    return {"bootstrap_ms_per_cluster": round(elapsed / clusters * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="Deployment rounds (6 writes each)")
    parser.add_argument("--clusters", type=int, default=200, help="stores to bootstrap")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best one is reported")
    args = parser.parse_args()
    gc.collect()
    writes = min(
        (bench_writes(args.rounds) for _ in range(args.repeat)), key=lambda r: r["ms_per_write"]
    )
    boot = min(
        (bench_bootstrap(args.clusters) for _ in range(args.repeat)),
        key=lambda r: r["bootstrap_ms_per_cluster"],
    )
    report = {"python": platform.python_version(), "rounds": args.rounds, **writes,
              "clusters": args.clusters, **boot}  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
