"""Prometheus metrics of the embedding server (names shared by every llmops server where they apply)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ..common.metrics import LATENCY, REQUEST_DURATION, REQUESTS

__all__ = ["LATENCY", "REQUESTS", "REQUEST_DURATION"]
QUEUE_WAIT = Histogram("llmops_queue_wait_seconds", "Time an input waited for its batch", buckets=LATENCY)
INFERENCE = Histogram("llmops_inference_duration_seconds", "Forward pass time per batch", buckets=LATENCY)
BATCH_SIZE = Histogram(
    "llmops_batch_size", "Inputs per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
)
BATCH_TOKENS = Histogram(
    "llmops_batch_tokens",
    "Padded tokens per forward pass",
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
QUEUE_DEPTH = Gauge("llmops_queue_depth", "Inputs waiting for or in a forward pass")
TOKENS = Counter("llmops_tokens_total", "Input tokens embedded")
DROPPED = Counter("llmops_dropped_inputs_total", "Inputs skipped because their client went away")
REJECTED = Counter("llmops_overload_rejections_total", "Requests answered 429 because the queue was full")
