"""Ingestion: documents → chunks → embeddings → Milvus, idempotent by document id.

An unchanged document (same content hash) is skipped; a changed one has its chunks overwritten in
place (primary keys are ``hash(doc_id)-index``) and then its surplus chunks deleted, so searches
never see the document missing while it is re-ingested. Used by ``POST /v1/ingest`` and by the
``ingest`` command an ingestion Job runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .cache import Cache
from .chunking import Tokenizer, chunk_text
from .config import ChunkingConfig
from .documents import Document
from .embedder import Embedder
from .metrics import DELETED_CHUNKS, INGESTED_CHUNKS, INGESTED_DOCUMENTS
from .store import MAX_TEXT, VectorStore, chunk_pk

log = logging.getLogger("llmops.rag.ingest")


@dataclass
class IngestSummary:
    documents: int = 0
    ingested: int = 0
    unchanged: int = 0
    empty: int = 0
    chunks: int = 0
    deleted_chunks: int = 0
    seconds: float = 0.0

    def add(self, other: IngestSummary) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["chunks_per_second"] = round(self.chunks / self.seconds, 1) if self.seconds else 0.0
        return out


class Ingestor:
    def __init__(
        self, store: VectorStore, embedder: Embedder, tokenizer: Tokenizer, chunking: ChunkingConfig, cache: Cache
    ) -> None:
        self.store, self.embedder, self.tokenizer = store, embedder, tokenizer
        self.chunking, self.cache = chunking, cache

    async def ingest(self, docs: Sequence[Document]) -> IngestSummary:
        """One batch of documents (ids unique within the batch)."""
        started = time.monotonic()
        summary = IngestSummary(documents=len(docs))
        stored = await self.store.content_hashes([d.id for d in docs])
        todo: list[tuple[Document, list[str]]] = []
        for doc in docs:
            if stored.get(doc.id) == self.fingerprint(doc):
                summary.unchanged += 1
                continue
            pieces = [c.text[:MAX_TEXT] for c in chunk_text(doc.text, self.tokenizer, *self._window)]
            if not pieces:
                summary.empty += 1
                # An emptied document: its old chunks must go.
                summary.deleted_chunks += await self.store.delete_chunks(doc.id)
                continue
            todo.append((doc, pieces))
        texts = [t for _, pieces in todo for t in pieces]
        vectors = await self.embedder.embed_many(texts) if texts else None
        rows = []
        at = 0
        for doc, pieces in todo:
            for index, text in enumerate(pieces):
                assert vectors is not None
                rows.append(
                    {
                        "id": chunk_pk(doc.id, index),
                        "doc_id": doc.id,
                        "chunk_index": index,
                        "content_hash": self.fingerprint(doc),
                        "text": text,
                        "metadata": doc.metadata,
                        "vector": vectors[at].tolist(),
                    }
                )
                at += 1
        await self.store.upsert(rows)
        for doc, pieces in todo:
            if doc.id in stored:  # it had chunks: remove those past its new end
                summary.deleted_chunks += await self.store.delete_chunks(doc.id, from_index=len(pieces))
        summary.ingested = len(todo)
        summary.chunks = len(rows)
        if todo or summary.deleted_chunks:
            await self.cache.invalidate()
        INGESTED_DOCUMENTS.labels(result="ingested").inc(summary.ingested)
        INGESTED_DOCUMENTS.labels(result="unchanged").inc(summary.unchanged)
        INGESTED_CHUNKS.inc(summary.chunks)
        DELETED_CHUNKS.inc(summary.deleted_chunks)
        summary.seconds = time.monotonic() - started
        return summary

    async def delete(self, doc_id: str) -> int:
        deleted = await self.store.delete_chunks(doc_id)
        if deleted:
            DELETED_CHUNKS.inc(deleted)
            await self.cache.invalidate()
        return deleted

    def fingerprint(self, doc: Document) -> str:
        """The document's content hash, salted with the chunking settings: changing them re-ingests."""
        return Cache.digest(doc.content_hash, repr(self._window), self.chunking.tokenizer or "words")[:64]

    @property
    def _window(self) -> tuple[int, int]:
        return self.chunking.chunk_tokens, self.chunking.overlap_tokens
