"""HorizontalPodAutoscaler (autoscaling/v2): CPU utilisation and/or queue depth per pod."""

from __future__ import annotations

from typing import Any

from .common import Workload, meta

QUEUE_DEPTH_METRIC = "llmops_queue_depth"


def build(w: Workload) -> dict[str, Any] | None:
    a = w.autoscaling
    if a is None:
        return None
    metrics: list[dict[str, Any]] = []
    if a.target_cpu_utilization_percentage is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": a.target_cpu_utilization_percentage,
                    },
                },
            }
        )
    if a.target_queue_depth is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": QUEUE_DEPTH_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(a.target_queue_depth)},
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(w),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": w.name},
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": metrics,
        },
    }
