"""``python -m llmops_workloads.rag ingest --config config.yaml PATH...``: what an ingestion Job
runs. Reads txt, md, html and jsonl[.gz] files (directories are walked), ingests them in batches
through the same code as ``POST /v1/ingest``, logs progress, and ends with one summary line
(``"message": "ingest summary"``). Exit status: 0 when every batch was written, 1 otherwise."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from ..common import logs
from .config import RagServerConfig
from .documents import Document, DocumentError, JsonlFields, read_files
from .errors import ClientError, ConfigError, DependencyUnavailable
from .ingest import IngestSummary
from .service import RagService

log = logging.getLogger("llmops.rag.ingest")


def _batches(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    while batch := list(islice(docs, size)):
        yield batch


def _unique(batch: list[Document]) -> list[Document]:
    """The last version of each id in a batch (a later line of a file wins)."""
    return list({d.id: d for d in batch}.values())


async def ingest(cfg: RagServerConfig, sources: list[Path], fields: JsonlFields, batch_size: int) -> int:
    service = RagService(cfg)
    total = IngestSummary()
    started = time.monotonic()
    failed = 0
    try:
        await service.start()
        for n, batch in enumerate(_batches(read_files(sources, fields), batch_size), 1):
            try:
                summary = await service.ingestor.ingest(_unique(batch))
            except (DependencyUnavailable, ClientError) as exc:
                failed += len(batch)
                log.error("batch failed", extra={"batch": n, "documents": len(batch), "error": str(exc)})
                continue
            total.add(summary)
            log.info("progress", extra={"batch": n, **total.as_dict(), "elapsed": round(time.monotonic() - started, 1)})
    except (DocumentError, ConfigError, DependencyUnavailable) as exc:
        log.error("ingestion stopped: %s", exc)
        failed += 1
    finally:
        await service.close()
    total.seconds = time.monotonic() - started
    log.info("ingest summary", extra={**total.as_dict(), "failed": failed, "collection": cfg.milvus.collection})
    return 0 if failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmops-rag ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the RAG server's YAML config")
    parser.add_argument("sources", nargs="+", type=Path, help="files or directories")
    parser.add_argument("--batch-size", type=int, default=64, help="documents per batch (default 64)")
    parser.add_argument("--id-field", default="id", help="JSON Lines: the document id field")
    parser.add_argument("--text-fields", default="text", help="JSON Lines: text fields, comma-separated, joined")
    parser.add_argument("--metadata-field", default="metadata", help="JSON Lines: an object copied into metadata")
    parser.add_argument("--keep-fields", default="", help="JSON Lines: fields copied into metadata")
    args = parser.parse_args(argv)
    cfg = RagServerConfig.load(args.config)
    logs.configure(cfg.log_format, cfg.log_level)
    fields = JsonlFields(
        id=args.id_field,
        text=tuple(f for f in args.text_fields.split(",") if f),
        metadata=args.metadata_field or None,
        keep=tuple(f for f in args.keep_fields.split(",") if f),
    )
    return asyncio.run(ingest(cfg, args.sources, fields, max(1, args.batch_size)))
