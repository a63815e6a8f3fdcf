"""Prometheus metrics of the RAG server (request counts and latency come from common.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from ..common.metrics import LATENCY

STAGE = Histogram(
    "llmops_rag_stage_seconds", "Time per query stage (embed, search, generate)", ["stage"], buckets=LATENCY
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llmops_rag_time_to_first_token_seconds", "Query to first answer token", buckets=LATENCY
)
CACHE_LOOKUPS = Counter("llmops_rag_cache_lookups_total", "Cache lookups by cache and result", ["cache", "result"])
CACHE_ERRORS = Counter("llmops_rag_cache_errors_total", "Redis errors and timeouts (treated as misses)")
DEPENDENCY_ERRORS = Counter("llmops_rag_dependency_errors_total", "Failed calls by dependency", ["dependency"])
EMBED_RETRIES = Counter("llmops_rag_embedding_retries_total", "Embedding requests retried")
INGESTED_DOCUMENTS = Counter("llmops_rag_ingested_documents_total", "Documents by outcome", ["result"])
INGESTED_CHUNKS = Counter("llmops_rag_ingested_chunks_total", "Chunks embedded and written")
DELETED_CHUNKS = Counter("llmops_rag_deleted_chunks_total", "Chunks deleted (stale or by request)")
GENERATED_TOKENS = Counter("llmops_rag_generated_tokens_total", "Answer tokens received from the generator")
CANCELLED = Counter("llmops_rag_cancelled_queries_total", "Streamed answers whose client went away")
OVERLOADED = Counter(
    "llmops_rag_overload_rejections_total", "Requests answered 429 because limits.maxConcurrentRequests were in flight"
)
