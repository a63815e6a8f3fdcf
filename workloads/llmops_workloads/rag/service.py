"""The query path: embed the question (cached), search Milvus (cached per collection generation),
build the prompt, stream the answer. ``RagService`` holds the clients the API and the ingestion
command share."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .cache import Cache
from .chunking import Tokenizer, load_tokenizer
from .config import RagServerConfig
from .embedder import Embedder
from .filters import canonical, translate
from .generator import Delta, Generator
from .ingest import Ingestor
from .metrics import CANCELLED, GENERATED_TOKENS, STAGE, TIME_TO_FIRST_TOKEN
from .prompt import build_prompt
from .store import Hit, VectorStore

log = logging.getLogger("llmops.rag.service")


@dataclass
class Retrieval:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)


def source(hit: Hit, snippet_chars: int) -> dict[str, Any]:
    snippet = hit.text if len(hit.text) <= snippet_chars else hit.text[:snippet_chars].rstrip() + "…"
    return {
        "doc_id": hit.doc_id,
        "chunk_id": hit.id,
        "chunk_index": hit.chunk_index,
        "score": round(hit.score, 6),
        "snippet": snippet,
        "metadata": hit.metadata,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class RagService:
    def __init__(self, cfg: RagServerConfig, tokenizer: Tokenizer | None = None) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer or load_tokenizer(cfg.chunking.tokenizer)
        self.embedder = Embedder(cfg.embedding)
        self.store = VectorStore(cfg.milvus)
        self.cache = Cache(cfg.cache, namespace=cfg.milvus.collection)
        self.generator = Generator(cfg.generator)
        self.ingestor = Ingestor(self.store, self.embedder, self.tokenizer, cfg.chunking, self.cache)
        self.redactor = cfg.redaction.redactor() if cfg.redaction.prompts else None

    async def start(self) -> None:
        """Learn the model's dimension, then create or check and load the collection."""
        probe = await self.embedder.embed(["dimension probe"])
        await self.store.ensure_collection(int(probe.shape[1]))

    async def close(self) -> None:
        await self.embedder.close()
        await self.store.close()
        await self.cache.close()

    async def embed_query(self, query: str) -> tuple[np.ndarray, bool]:
        key = Cache.digest(self.cfg.embedding.url, self.cfg.embedding.model or "", query)
        cached = await self.cache.get("embedding", key)
        if cached is not None:
            return np.frombuffer(cached, dtype="<f4"), True
        vector = (await self.embedder.embed([query], truncate=True))[0]
        await self.cache.put("embedding", key, vector.astype("<f4").tobytes())
        return vector, False

    async def retrieve(
        self, query: str, top_k: int, filter_spec: dict[str, Any] | None, distinct_documents: bool = False
    ) -> Retrieval:
        expr = translate(filter_spec, self.cfg.limits.max_filter_conditions)  # FilterError → 422, before any I/O
        timings: dict[str, float] = {}
        started = time.monotonic()
        vector, emb_cached = await self.embed_query(query)
        timings["embed_ms"] = _ms(time.monotonic() - started)
        STAGE.labels(stage="embed").observe(time.monotonic() - started)

        started = time.monotonic()
        generation = await self.cache.generation()
        key = Cache.digest(generation, query, str(top_k), canonical(filter_spec), str(distinct_documents))
        cached = await self.cache.get("retrieval", key)
        if cached is not None:
            hits = [Hit(**h) for h in json.loads(cached)]
        else:
            limit = top_k * self.cfg.retrieval.overfetch if distinct_documents else top_k
            hits = self._above_threshold(await self.store.search(vector, limit, expr))
            if distinct_documents:
                best: dict[str, Hit] = {}
                for hit in hits:  # Milvus returns best first
                    best.setdefault(hit.doc_id, hit)
                hits = list(best.values())[:top_k]
            await self.cache.put("retrieval", key, json.dumps([asdict(h) for h in hits]).encode())
        timings["search_ms"] = _ms(time.monotonic() - started)
        STAGE.labels(stage="search").observe(time.monotonic() - started)
        return Retrieval(hits, timings, {"embedding": emb_cached, "retrieval": cached is not None})

    def _above_threshold(self, hits: list[Hit]) -> list[Hit]:
        threshold = self.cfg.retrieval.score_threshold
        if threshold is None:
            return hits
        if self.cfg.milvus.metric == "L2":  # a distance: smaller is closer
            return [h for h in hits if h.score <= threshold]
        return [h for h in hits if h.score >= threshold]

    async def answer(
        self,
        query: str,
        top_k: int,
        filter_spec: dict[str, Any] | None,
        max_new_tokens: int | None,
        temperature: float | None,
    ) -> AsyncGenerator[dict[str, Any]]:
        """Events: ``sources`` first, then ``token``s, then ``done`` (usage, timings)."""
        started = time.monotonic()
        retrieval = await self.retrieve(query, top_k, filter_spec)
        snippet = self.cfg.retrieval.snippet_chars
        yield {"event": "sources", "sources": [source(h, snippet) for h in retrieval.hits]}
        prompt = build_prompt(self.cfg.prompt, query, retrieval.hits, self.tokenizer)
        if self.redactor is not None:  # the generator (often a third party) never sees the PII
            prompt = replace(prompt, user=self.redactor.redact(prompt.user), text=self.redactor.redact(prompt.text))
        if self.cfg.debug:
            log.debug("prompt", extra={"prompt": prompt.text})
        new_tokens = self.generator.clamp(max_new_tokens)
        gen_started = time.monotonic()
        first: float | None = None
        count = 0
        final = Delta("")
        try:
            # aclosing: when our consumer leaves, the upstream stream closes now, not at garbage collection.
            async with aclosing(self.generator.stream(prompt, new_tokens, temperature)) as deltas:
                async for delta in deltas:
                    if delta.text:
                        if first is None:
                            first = time.monotonic()
                            TIME_TO_FIRST_TOKEN.observe(first - started)
                        count += 1
                        yield {"event": "token", "text": delta.text}
                    if delta.finish_reason or delta.completion_tokens is not None:
                        final = delta
        except (GeneratorExit, asyncio.CancelledError):
            CANCELLED.inc()
            raise
        generate = time.monotonic() - gen_started
        STAGE.labels(stage="generate").observe(generate)
        completion = final.completion_tokens if final.completion_tokens is not None else count
        GENERATED_TOKENS.inc(completion)
        timings = {
            **retrieval.timings,
            "generate_ms": _ms(generate),
            "time_to_first_token_ms": _ms(first - started) if first else None,
            "total_ms": _ms(time.monotonic() - started),
        }
        yield {
            "event": "done",
            "finish_reason": final.finish_reason,
            "usage": {
                "prompt_tokens": final.prompt_tokens,
                "completion_tokens": completion,
                "max_new_tokens": new_tokens,
                "sources_in_prompt": prompt.sources_used,
            },
            "timings": timings,
            "cached": retrieval.cached,
        }
