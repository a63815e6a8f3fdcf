"""The ClusterIP Service: the API port and the metrics port."""

from __future__ import annotations

from typing import Any

from .common import HTTP_PORT, METRICS_PORT, Workload, meta


def build(w: Workload) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(w),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(w.selector),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def endpoint(w: Workload) -> str:
    return f"http://{w.name}.{w.namespace}.svc.cluster.local:{HTTP_PORT}"
