"""ServiceMonitor (monitoring.coreos.com/v1), only where the Prometheus Operator's CRD exists."""

from __future__ import annotations

from typing import Any

from .common import Workload, meta


def build(w: Workload, crd_installed: bool) -> dict[str, Any] | None:
    sm = w.monitoring.service_monitor
    if not (sm.enabled and crd_installed):
        return None
    metadata = meta(w)
    metadata["labels"] = {**metadata["labels"], **sm.labels}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": dict(w.selector)},
            "namespaceSelector": {"matchNames": [w.namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": sm.interval}],
        },
    }
