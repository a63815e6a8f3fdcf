"""Prometheus metrics every llmops server exports under the same names (each server is its own
process, so one registry per process holds its own figures)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REQUESTS = Counter("llmops_requests_total", "HTTP requests by route and status", ["route", "status"])
REQUEST_DURATION = Histogram("llmops_request_duration_seconds", "Request latency", ["route"], buckets=LATENCY)
