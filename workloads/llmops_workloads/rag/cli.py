"""``python -m llmops_workloads.rag ingest --config config.yaml PATH...``: what an ingestion Job
runs. Reads txt, md, html and jsonl[.gz] files (directories are walked), ingests them in batches
through the same code as ``POST /v1/ingest``, logs progress, and ends with one summary line
(``"message": "ingest summary"``). Exit status: 0 when every batch was written, 1 otherwise."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path

from ..common import logs
from .config import RagServerConfig
from .documents import Document, DocumentError, JsonlFields, fetch_url, read_files
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


def _documents(sources: list[Path], urls: list[str], fields: JsonlFields) -> Iterator[Document]:
    yield from read_files(sources, fields)
    for url in urls:
        yield fetch_url(url)


async def ingest(
    cfg: RagServerConfig,
    sources: list[Path],
    fields: JsonlFields,
    batch_size: int,
    urls: list[str] | None = None,
    termination_log: str | None = None,
) -> int:
    urls = urls or []
    service = RagService(cfg)
    total = IngestSummary()
    started = time.monotonic()
    failed = 0
    try:
        await service.start()
        for n, batch in enumerate(_batches(_documents(sources, urls, fields), batch_size), 1):
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
    final = {**total.as_dict(), "failed": failed, "collection": cfg.milvus.collection}
    log.info("ingest summary", extra=final)
    _termination_message(termination_log, final)
    return 0 if failed == 0 else 1


def _termination_message(path: str | None, summary: Mapping[str, object]) -> None:
    """Kubernetes puts this file's content into the pod's status: the operator reads the outcome
    there, with no API access from the pod."""
    if not path or not Path(path).exists():  # the kubelet creates it; elsewhere: nothing to do
        return
    try:
        with open(path, "w") as f:
            f.write(json.dumps(summary)[:4000])  # the kubelet keeps at most 4096 bytes
    except OSError:
        log.debug("no termination log at %s", path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmops-rag ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the RAG server's YAML config")
    parser.add_argument("sources", nargs="+", help="files, directories or http(s) URLs")
    parser.add_argument("--batch-size", type=int, default=64, help="documents per batch (default 64)")
    parser.add_argument("--id-field", default="id", help="JSON Lines: the document id field")
    parser.add_argument("--text-fields", default="text", help="JSON Lines: text fields, comma-separated, joined")
    parser.add_argument("--metadata-field", default="metadata", help="JSON Lines: an object copied into metadata")
    parser.add_argument("--keep-fields", default="", help="JSON Lines: fields copied into metadata")
    parser.add_argument(
        "--termination-log", default="/dev/termination-log", help="where the summary goes for Kubernetes ('' = off)"
    )
    args = parser.parse_args(argv)
    cfg = RagServerConfig.load(args.config)
    logs.configure(cfg.log_format, cfg.log_level)
    fields = JsonlFields(
        id=args.id_field,
        text=tuple(f for f in args.text_fields.split(",") if f),
        metadata=args.metadata_field or None,
        keep=tuple(f for f in args.keep_fields.split(",") if f),
    )
    urls = [s for s in args.sources if s.startswith(("http://", "https://"))]
    paths = [Path(s) for s in args.sources if s not in urls]
    return asyncio.run(ingest(cfg, paths, fields, max(1, args.batch_size), urls, args.termination_log))
