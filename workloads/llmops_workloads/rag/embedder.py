"""Client of an OpenAI-compatible embeddings API (an llmops EmbeddingService, TEI, OpenAI).

Retries 429 and 5xx and connection failures with exponential backoff and jitter, honouring the
server's Retry-After (capped), all inside one overall deadline: the caller gets vectors or a
``DependencyUnavailable`` within ``timeout_seconds``, never a hang."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Sequence

import httpx
import numpy as np

from ..common.http import read_api_keys
from .config import EmbeddingClientConfig
from .errors import ClientError, DependencyUnavailable
from .metrics import DEPENDENCY_ERRORS, EMBED_RETRIES

log = logging.getLogger("llmops.rag.embedder")
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class Embedder:
    def __init__(self, cfg: EmbeddingClientConfig) -> None:
        self.cfg = cfg
        keys = read_api_keys(cfg.api_key_file, cfg.api_key)
        headers = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
        self.client = httpx.AsyncClient(
            base_url=cfg.url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_seconds),
            limits=httpx.Limits(max_connections=max(8, cfg.concurrency * 2)),
        )
        self.dimension: int | None = None

    async def close(self) -> None:
        await self.client.aclose()

    async def embed(self, texts: Sequence[str], truncate: bool = False) -> np.ndarray:
        """Float32 vectors, one row per text, in order."""
        body: dict[str, object] = {"input": list(texts), "encoding_format": "base64"}
        if self.cfg.model:
            body["model"] = self.cfg.model
        if truncate and self.cfg.send_truncate:
            body["truncate"] = True
        deadline = time.monotonic() + self.cfg.timeout_seconds
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DependencyUnavailable("embedding", f"no answer within {self.cfg.timeout_seconds}s")
            delay: float | None = None
            try:
                response = await self.client.post("/v1/embeddings", json=body, timeout=remaining)
            except httpx.TimeoutException:
                DEPENDENCY_ERRORS.labels(dependency="embedding").inc()
                raise DependencyUnavailable("embedding", f"no answer within {self.cfg.timeout_seconds}s") from None
            except httpx.TransportError as exc:
                problem = f"unreachable ({type(exc).__name__})"
            else:
                if response.status_code == 200:
                    return self._vectors(response.json(), len(texts))
                problem = f"HTTP {response.status_code}: {_message(response)}"
                if response.status_code not in RETRYABLE:
                    if response.status_code in (400, 413, 422):
                        raise ClientError(422, f"the embedding service refused the input: {_message(response)}")
                    DEPENDENCY_ERRORS.labels(dependency="embedding").inc()
                    raise DependencyUnavailable("embedding", problem)
                retry_after = response.headers.get("retry-after", "")
                if retry_after.isdigit():
                    delay = min(float(retry_after), 5.0)
            if attempt >= self.cfg.max_retries:
                DEPENDENCY_ERRORS.labels(dependency="embedding").inc()
                raise DependencyUnavailable("embedding", problem)
            attempt += 1
            EMBED_RETRIES.inc()
            if delay is None:
                delay = self.cfg.backoff_seconds * 2 ** (attempt - 1) * (0.5 + random.random())  # noqa: S311
            log.warning("embedding request failed; retrying", extra={"attempt": attempt, "problem": problem})
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))

    def _vectors(self, payload: dict[str, object], expected: int) -> np.ndarray:
        data = payload.get("data")
        if not isinstance(data, list) or len(data) != expected:
            raise DependencyUnavailable("embedding", "malformed response (wrong number of embeddings)")
        rows: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * expected
        for item in data:
            emb = item["embedding"]
            if isinstance(emb, str):
                rows[item["index"]] = np.frombuffer(base64.b64decode(emb), dtype="<f4")
            else:
                rows[item["index"]] = np.asarray(emb, dtype=np.float32)
        out = np.vstack(rows)
        self.dimension = int(out.shape[1])
        return out

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Ingestion: batches of ``batch_size`` texts, ``concurrency`` requests in flight. Chunks fit
        the model by construction; truncation is a safety net for a tokenizer edge case."""
        size = self.cfg.batch_size
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        gate = asyncio.Semaphore(self.cfg.concurrency)

        async def one(batch: Sequence[str]) -> np.ndarray:
            async with gate:
                return await self.embed(batch, truncate=True)

        results = await asyncio.gather(*(one(b) for b in batches))
        return np.vstack(results) if results else np.empty((0, self.dimension or 0), dtype=np.float32)

    async def healthy(self) -> bool:
        try:
            response = await self.client.get("/health", timeout=min(2.0, self.cfg.timeout_seconds))
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))[:200]
    return str(error or body)[:200]
