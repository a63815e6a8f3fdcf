"""The operator's Prometheus metrics (served on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("llmops_operator_reconciles_total", "Reconciles run", ["kind", "result"])
RECONCILE_ERRORS = Counter("llmops_operator_reconcile_errors_total", "Reconciles that failed", ["kind", "error_class"])
RECONCILE_DURATION = Histogram(
    "llmops_operator_reconcile_duration_seconds",
    "Time of one reconcile",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_REQUESTS = Counter(
    "llmops_operator_api_requests_total",
    "Requests this operator sent to the Kubernetes API",
    ["verb", "code"],
)
QUEUE_DEPTH = Gauge("llmops_operator_workqueue_depth", "Keys waiting to be reconciled")
OBJECTS_BY_CONDITION = Gauge(
    "llmops_operator_objects", "Custom resources by kind and Ready condition", ["kind", "ready"]
)
