"""Operator reconcile benchmark: apply-to-Ready latency, API requests per reconcile, and writes
while idle, for our operator and for a naive baseline that server-side-applies every child on
every reconcile, side by side in one run on one local control plane.

    .venv/bin/python benchmarks/operator_reconcile.py [--count 50] [--idle-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from llmops_dev.cluster import controlplane
from llmops_dev.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[1]


def kubectl(state: controlplane.ClusterState, *args: str, input: str | None = None) -> str:
    return controlplane.kubectl(state, *args, input=input)


def emb(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
            "replicas": 2,
            # Small requests, so that every pod fits on the fake nodes.
            "resources": {"cpu": "100m", "memory": "256Mi"},
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_mode(
    state: controlplane.ClusterState, label: str, args: tuple[str, ...], count: int, idle: float
) -> dict[str, Any]:
    ns = f"bench-{label}"
    kubectl(state, "create", "namespace", ns)
    op = OperatorProcess(state, Path(tempfile.mkdtemp()), resync_seconds=5, extra_args=args)
    op.start()
    try:
        base = op.metrics()
        items = [emb(f"e{i}") for i in range(count)]
        started = time.monotonic()
        kubectl(
            state, "apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        )
        ready_at: dict[str, float] = {}
        while len(ready_at) < count and time.monotonic() - started < 300:
            for obj in json.loads(kubectl(state, "get", "emb", "-n", ns, "-o", "json"))["items"]:
                name = obj["metadata"]["name"]
                conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", [])}
                if name not in ready_at and conds.get("Ready") == "True":
                    ready_at[name] = time.monotonic() - started
            time.sleep(0.1)
        all_ready = max(ready_at.values()) if len(ready_at) == count else float("nan")
        time.sleep(3)  # let the rollouts settle
        settled = op.metrics()

        def delta(prefix: str, before: dict[str, float], after: dict[str, float]) -> float:
            return sum(v for k, v in after.items() if k.startswith(prefix)) - sum(
                v for k, v in before.items() if k.startswith(prefix)
            )

        reconciles = delta("llmops_operator_reconciles_total{", base, settled)
        requests = delta("llmops_operator_api_requests_total{", base, settled)
        idle_since = time.time()
        idle_before = op.metrics()
        time.sleep(idle)
        idle_after = op.metrics()
        idle_writes = len(op.writes(since=idle_since, namespace=ns))
        rss_kb = int(Path(f"/proc/{op.proc.pid}/status").read_text().split("VmRSS:")[1].split()[0]) if op.proc else 0
        return {
            "mode": label,
            "objects": count,
            "ready_median_s": statistics.median(ready_at.values()),
            "ready_p95_s": percentile(list(ready_at.values()), 0.95),
            "all_ready_s": all_ready,
            "reconciles": reconciles,
            "requests_per_reconcile": requests / reconciles if reconciles else float("nan"),
            "idle_reconciles": delta("llmops_operator_reconciles_total{", idle_before, idle_after),
            "idle_writes_per_min": idle_writes * 60 / idle,
            "rss_mb": rss_kb / 1024,
        }
    finally:
        op.stop()
        # Wait for the namespace (and its pods) to go, so the next mode runs on a quiet cluster.
        kubectl(state, "delete", "namespace", ns, "--wait=true", "--timeout=300s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=30)
    args = parser.parse_args()
    with controlplane.running("bench-operator") as state:
        kubectl(state, "apply", "--server-side", "-f", str(REPO / "crds"))
        kubectl(state, "wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=llmops")
        rows = [
            run_mode(state, "baseline-always-apply", ("--always-apply",), args.count, args.idle_seconds),
            run_mode(state, "llmops", (), args.count, args.idle_seconds),
        ]
    cols = list(rows[0])
    print("\n" + " | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    base, ours = rows
    print(
        f"\nrequests per reconcile: {ours['requests_per_reconcile']:.2f} vs {base['requests_per_reconcile']:.2f} "
        f"(x{base['requests_per_reconcile'] / ours['requests_per_reconcile']:.1f} fewer); "
        f"idle writes/min: {ours['idle_writes_per_min']:.0f} vs {base['idle_writes_per_min']:.0f}"
    )


if __name__ == "__main__":
    main()
