"""Prometheus metrics of the generation server. Request counts and latencies are common's
(``llmops_requests_total``, ``llmops_request_duration_seconds``); the engine's own figures are
named ``llmops_generation_*`` (every workload module is importable in one process, so names
must not collide with the embedding server's)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ..common.metrics import LATENCY, REQUEST_DURATION, REQUESTS

__all__ = ["LATENCY", "REQUESTS", "REQUEST_DURATION"]
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)

QUEUE_DEPTH = Gauge("llmops_generation_queue_depth", "Requests waiting for their prefill")
RUNNING = Gauge("llmops_generation_running", "Sequences in the running batch")
BATCH_SIZE = Histogram(
    "llmops_generation_batch_size", "Sequences per forward pass, by phase (prefill, decode)", ["phase"], buckets=SIZES
)
FORWARD = Histogram("llmops_generation_forward_seconds", "Forward pass time, by phase", ["phase"], buckets=LATENCY)
PREFILL_TOKENS = Histogram(
    "llmops_generation_prefill_tokens",
    "Padded prompt tokens per prefill pass",
    buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
)
QUEUE_WAIT = Histogram("llmops_generation_queue_wait_seconds", "Time a request waited for its prefill", buckets=LATENCY)
TIME_TO_FIRST_TOKEN = Histogram(
    "llmops_generation_time_to_first_token_seconds", "Request accepted to first token", buckets=LATENCY
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "llmops_generation_time_per_output_token_seconds", "Mean time between tokens, per request", buckets=PER_TOKEN
)
INPUT_TOKENS = Counter("llmops_generation_input_tokens_total", "Prompt tokens prefilled")
GENERATED_TOKENS = Counter("llmops_generation_generated_tokens_total", "Tokens generated")
FINISHED = Counter("llmops_generation_finished_total", "Sequences finished, by finish reason", ["reason"])
CANCELLED = Counter("llmops_generation_cancelled_total", "Sequences stopped because their client went away")
FAILED = Counter("llmops_generation_failed_total", "Sequences failed by an error in the model")
REJECTED = Counter("llmops_generation_overload_rejections_total", "Requests answered 429: too many in flight")
