"""The Milvus collection: schema, index, load state, and the reads and writes the RAG server
makes. pymilvus is synchronous, so every call runs in a small thread pool under a deadline; a
Milvus that is down or slow becomes ``DependencyUnavailable`` within ``timeout_seconds``.

Schema: ``id`` (primary key: a hash of the document id plus the chunk index, so re-ingesting a
document overwrites its chunks in place), ``doc_id``, ``chunk_index``, ``content_hash`` (of the
whole document, on every chunk: an unchanged document is skipped), ``text``, ``metadata`` (JSON)
and ``vector``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import schema
from .config import MilvusConfig
from .errors import ConfigError, DependencyUnavailable
from .filters import literal
from .metrics import DEPENDENCY_ERRORS

log = logging.getLogger("llmops.rag.store")
T = TypeVar("T")
MAX_TEXT = schema.MAX_TEXT
MAX_DOC_ID = schema.MAX_DOC_ID
UPSERT_BATCH = 256
# Milvus Lite answers this when a collection exists but is released (after a restart).
NOT_LOADED = ("not loaded", "not load", "released")


def chunk_pk(doc_id: str, index: int) -> str:
    return f"{hashlib.sha256(doc_id.encode()).hexdigest()[:32]}-{index}"


@dataclass(frozen=True)
class Hit:
    id: str
    doc_id: str
    chunk_index: int
    text: str
    metadata: dict[str, Any]
    score: float


class VectorStore:
    def __init__(self, cfg: MilvusConfig) -> None:
        self.cfg = cfg
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="milvus")
        self._client: Any = None
        self._lock = threading.Lock()
        self.dimension: int | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> Any:
        with self._lock:
            if self._client is None:
                from pymilvus import MilvusClient

                token = Path(self.cfg.token_file).read_text().strip() if self.cfg.token_file else ""
                self._client = MilvusClient(
                    uri=self.cfg.uri, token=token, db_name=self.cfg.db_name, timeout=self.cfg.timeout_seconds
                )
            return self._client

    def _reset(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("closing the Milvus client failed", exc_info=True)

    async def call(self, fn: Callable[[Any], T], what: str) -> T:
        """Run ``fn(client)`` in the pool under the deadline; map failures to DependencyUnavailable."""
        from pymilvus.exceptions import MilvusException

        def run() -> T:
            return fn(self._connect())

        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, run), self.cfg.timeout_seconds)
        except TimeoutError:
            DEPENDENCY_ERRORS.labels(dependency="milvus").inc()
            self._reset()
            raise DependencyUnavailable("milvus", f"{what}: no answer within {self.cfg.timeout_seconds}s") from None
        except MilvusException as exc:
            DEPENDENCY_ERRORS.labels(dependency="milvus").inc()
            if getattr(exc, "code", None) in (1, 2) or "connect" in str(exc).lower():
                self._reset()
            raise DependencyUnavailable("milvus", f"{what}: {getattr(exc, 'message', exc)}") from None
        except (ConnectionError, OSError) as exc:
            DEPENDENCY_ERRORS.labels(dependency="milvus").inc()
            self._reset()
            raise DependencyUnavailable("milvus", f"{what}: {exc}") from None

    async def close(self) -> None:
        self._reset()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- collection lifecycle ---------------------------------------------------------------

    async def ensure_collection(self, dimension: int) -> None:
        """Create the collection with its index if absent, check it matches if present, load it."""
        name = self.cfg.collection

        spec = schema.CollectionSpec(
            name=name,
            dimension=dimension,
            index_type=self.cfg.index_type,
            metric=self.cfg.metric,
            index_params=dict(self.cfg.index_params),
            consistency_level=self.cfg.consistency_level,
        )

        def ensure(client: Any) -> None:
            created, mismatch = schema.ensure(client, spec)
            if mismatch is not None:
                raise ConfigError(mismatch.message)
            if created:
                log.info("created collection", extra={"collection": name, "dimension": dimension})

        await self.call(ensure, "create or load the collection")
        self.dimension = dimension

    async def ping(self) -> bool:
        try:
            await self.call(lambda c: c.has_collection(self.cfg.collection), "ping")
        except DependencyUnavailable:
            return False
        return True

    # -- reads ------------------------------------------------------------------------------

    async def search(self, vector: np.ndarray, limit: int, expr: str) -> list[Hit]:
        name = self.cfg.collection

        def search(client: Any) -> list[Hit]:
            kwargs: dict[str, Any] = {
                "data": [vector.tolist()],
                "limit": limit,
                "output_fields": ["doc_id", "chunk_index", "text", "metadata"],
                "search_params": {"metric_type": self.cfg.metric, "params": dict(self.cfg.search_params)},
                "consistency_level": self.cfg.consistency_level,
            }
            if expr:
                kwargs["filter"] = expr
            try:
                result = client.search(name, **kwargs)
            except Exception as exc:
                # After a Milvus restart the collection comes back released: load it, once.
                if not any(s in str(exc).lower() for s in NOT_LOADED):
                    raise
                log.warning("collection not loaded (Milvus restarted?); loading it", extra={"collection": name})
                client.load_collection(name)
                result = client.search(name, **kwargs)
            return [
                Hit(
                    id=str(h["id"]),
                    doc_id=h["entity"]["doc_id"],
                    chunk_index=int(h["entity"]["chunk_index"]),
                    text=h["entity"]["text"],
                    metadata=h["entity"].get("metadata") or {},
                    score=float(h["distance"]),
                )
                for h in result[0]
            ]

        return await self.call(search, "search")

    async def content_hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """doc_id → content hash of the documents already stored (by their first chunk)."""
        if not doc_ids:
            return {}
        expr = f"chunk_index == 0 and doc_id in [{', '.join(literal(d, 'doc_id') for d in doc_ids)}]"
        rows = await self.call(
            lambda c: c.query(self.cfg.collection, filter=expr, output_fields=["doc_id", "content_hash"]),
            "read content hashes",
        )
        return {r["doc_id"]: r["content_hash"] for r in rows}

    async def count(self, doc_id: str | None = None) -> int:
        expr = f"doc_id == {literal(doc_id, 'doc_id')}" if doc_id is not None else ""
        rows = await self.call(lambda c: c.query(self.cfg.collection, filter=expr, output_fields=["count(*)"]), "count")
        return int(rows[0]["count(*)"]) if rows else 0

    # -- writes -----------------------------------------------------------------------------

    async def upsert(self, rows: list[dict[str, Any]]) -> None:
        # Bounded messages: a gRPC request under Milvus's size limit whatever the batch holds.
        for start in range(0, len(rows), UPSERT_BATCH):
            batch = rows[start : start + UPSERT_BATCH]
            await self.call(partial(self._upsert, batch), "upsert")

    def _upsert(self, rows: list[dict[str, Any]], client: Any) -> None:
        client.upsert(self.cfg.collection, rows)

    async def delete_chunks(self, doc_id: str, from_index: int = 0) -> int:
        """Delete a document's chunks from ``from_index`` on; the number deleted."""
        expr = f"doc_id == {literal(doc_id, 'doc_id')} and chunk_index >= {int(from_index)}"

        def delete(client: Any) -> int:
            ids = client.query(self.cfg.collection, filter=expr, output_fields=["id"])
            if not ids:
                return 0
            client.delete(self.cfg.collection, ids=[r["id"] for r in ids])
            return len(ids)

        return await self.call(delete, "delete")
