"""NetworkPolicy: who may call the API port (same namespace by default, plus allowFrom) and who
may scrape metrics (anyone in the cluster unless metricsFrom says otherwise)."""

from __future__ import annotations

from typing import Any

from ..api.common import NetworkPeer
from .common import HTTP_PORT, METRICS_PORT, Workload, meta


def _peer(p: NetworkPeer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if p.pod_selector is not None:
        out["podSelector"] = {"matchLabels": dict(p.pod_selector.match_labels)}
    if p.namespace_selector is not None:
        out["namespaceSelector"] = {"matchLabels": dict(p.namespace_selector.match_labels)}
    return out


def build(w: Workload) -> dict[str, Any] | None:
    np = w.network_policy
    if not np.enabled:
        return None
    api_from = [_peer(p) for p in np.allow_from]
    if np.allow_same_namespace:
        api_from.insert(0, {"podSelector": {}})
    rules: list[dict[str, Any]] = []
    if api_from:
        rules.append({"from": api_from, "ports": [{"protocol": "TCP", "port": HTTP_PORT}]})
    metrics_rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": METRICS_PORT}]}
    if np.metrics_from is not None:
        metrics_rule["from"] = [_peer(p) for p in np.metrics_from]
    else:
        metrics_rule["from"] = [{"namespaceSelector": {}}]
    rules.append(metrics_rule)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(w),
        "spec": {
            "podSelector": {"matchLabels": dict(w.selector)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }
