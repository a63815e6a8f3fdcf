"""PodDisruptionBudget, only when more than one replica can serve: with one replica a PDB would
block every node drain."""

from __future__ import annotations

from typing import Any

from .common import Workload, meta


def build(w: Workload) -> dict[str, Any] | None:
    most = w.autoscaling.max_replicas if w.autoscaling else w.effective_replicas
    if w.effective_replicas < 2 and most < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(w),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": dict(w.selector)},
            # Pods that never became ready may always be evicted (a broken rollout must not block drains).
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
