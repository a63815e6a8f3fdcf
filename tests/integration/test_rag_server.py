"""The RAG server for real: Milvus Lite in server mode, the embedding server with the real
all-MiniLM-L6-v2 model, real Redis, and the generation server with a tiny locally built causal LM.

Documents are SciFact abstracts (each is about one distinct claim), so "the right document" is
known: a query made of a document's title must retrieve and cite that document first."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmops_dev.services import MilvusLite, Redis, ServerProcess
from servers import minilm_path, start_tiny_generator

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LLMOPS_SHARED_DIR", REPO.parent / "shared"))
CORPUS = SHARED / "data" / "scifact" / "corpus.jsonl.gz"


def scifact(n: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    with gzip.open(CORPUS, "rt") as f:
        for line in f:
            d = json.loads(line)
            docs.append({"id": d["_id"], "title": d["title"], "text": f"{d['title']} {d['text']}", "year": len(docs)})
            if len(docs) == n:
                return docs
    return docs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rag")


@pytest.fixture(scope="module")
def milvus(workdir: Path) -> Iterator[MilvusLite]:
    with MilvusLite(workdir / "milvus") as m:
        yield m


@pytest.fixture(scope="module")
def redis(workdir: Path) -> Iterator[Redis]:
    with Redis(workdir / "redis") as r:
        yield r


@pytest.fixture(scope="module")
def embedding(workdir: Path) -> Iterator[ServerProcess]:
    cfg = {"model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "path": minilm_path()}, "logLevel": "WARNING"}
    proc = ServerProcess("llmops_workloads.embedding", cfg, workdir / "embedding").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def generator(workdir: Path) -> Iterator[ServerProcess]:
    proc = start_tiny_generator(workdir)
    yield proc
    proc.stop()


def rag_config(
    embedding: ServerProcess, milvus: MilvusLite, collection: str, **sections: dict[str, Any]
) -> dict[str, Any]:
    return {
        "embedding": {"url": embedding.url, "timeoutSeconds": 10},
        "milvus": {"uri": milvus.uri, "collection": collection, "timeoutSeconds": 3},
        "chunking": {"tokenizer": minilm_path(), "chunkTokens": 128, "overlapTokens": 16},
        "generator": {"url": None},
        "prompt": {"maxContextTokens": 300},
        **sections,
    }


@pytest.fixture(scope="module")
def rag(
    workdir: Path, embedding: ServerProcess, milvus: MilvusLite, redis: Redis, generator: ServerProcess
) -> Iterator[ServerProcess]:
    cfg = rag_config(
        embedding,
        milvus,
        "main",
        generator={"url": generator.url, "timeoutSeconds": 20, "maxNewTokens": 64, "defaultMaxNewTokens": 16},
        cache={"redisUrl": redis.url},
    )
    proc = ServerProcess("llmops_workloads.rag", cfg, workdir / "rag").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(rag: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=rag.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def corpus(client: httpx.Client) -> list[dict[str, Any]]:
    docs = scifact(40)
    body = {"documents": [{"id": d["id"], "text": d["text"], "metadata": {"year": d["year"]}} for d in docs]}
    summary = client.post("/v1/ingest", json=body).json()
    assert summary["ingested"] == 40 and summary["unchanged"] == 0
    assert summary["chunks"] > 40  # abstracts are longer than one 128-token window
    return docs


def milvus_count(milvus: MilvusLite, collection: str, doc_id: str | None = None) -> int:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus.uri)
    try:
        expr = f'doc_id == "{doc_id}"' if doc_id else ""
        return int(client.query(collection, filter=expr, output_fields=["count(*)"])[0]["count(*)"])
    finally:
        client.close()


def sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# -- retrieval and ingestion ------------------------------------------------------------


def test_retrieve_finds_each_document_by_its_title(client: httpx.Client, corpus: list[dict[str, Any]]) -> None:
    misses = []
    for doc in corpus[:15]:
        r = client.post("/v1/retrieve", json={"query": doc["title"], "top_k": 3, "distinct_documents": True})
        assert r.status_code == 200, r.text
        sources = r.json()["sources"]
        if sources[0]["doc_id"] != doc["id"]:
            misses.append(doc["id"])
        assert len({s["doc_id"] for s in sources}) == len(sources)  # distinct documents
    assert not misses, f"titles that did not retrieve their own document first: {misses}"
    source = client.post("/v1/retrieve", json={"query": corpus[0]["title"]}).json()["sources"][0]
    assert set(source) == {"doc_id", "chunk_id", "chunk_index", "score", "snippet", "metadata"}
    assert source["metadata"] == {"year": 0} and 0 < source["score"] <= 1.0001


def test_reingest_is_idempotent_and_replaces_changed_documents(
    client: httpx.Client, corpus: list[dict[str, Any]], milvus: MilvusLite
) -> None:
    before = milvus_count(milvus, "main")
    doc = corpus[5]
    chunks_before = milvus_count(milvus, "main", doc["id"])
    assert chunks_before >= 2
    again = {"documents": [{"id": d["id"], "text": d["text"], "metadata": {"year": d["year"]}} for d in corpus]}
    summary = client.post("/v1/ingest", json=again).json()
    assert (summary["ingested"], summary["unchanged"], summary["chunks"]) == (0, 40, 0)
    assert milvus_count(milvus, "main") == before

    # The document shrinks to one sentence: one chunk remains, the surplus ones are deleted.
    short = {"id": doc["id"], "text": "Zebrafish fins regenerate after amputation.", "metadata": {"year": 5}}
    summary = client.post("/v1/ingest", json={"documents": [short]}).json()
    assert (summary["ingested"], summary["chunks"], summary["deleted_chunks"]) == (1, 1, chunks_before - 1)
    assert milvus_count(milvus, "main", doc["id"]) == 1
    assert milvus_count(milvus, "main") == before - chunks_before + 1
    hit = client.post("/v1/retrieve", json={"query": "do zebrafish fins regrow?", "top_k": 1}).json()["sources"][0]
    assert hit["doc_id"] == doc["id"] and hit["snippet"] == short["text"]
    # Metadata alone changing re-ingests too.
    summary = client.post("/v1/ingest", json={"documents": [{**short, "metadata": {"year": 6}}]}).json()
    assert summary["ingested"] == 1


def test_delete_removes_every_chunk(client: httpx.Client, corpus: list[dict[str, Any]], milvus: MilvusLite) -> None:
    doc = corpus[7]
    chunks = milvus_count(milvus, "main", doc["id"])
    assert chunks >= 1
    r = client.delete(f"/v1/documents/{doc['id']}")
    assert r.status_code == 200 and r.json() == {"doc_id": doc["id"], "deleted_chunks": chunks}
    assert milvus_count(milvus, "main", doc["id"]) == 0
    ids = [
        s["doc_id"] for s in client.post("/v1/retrieve", json={"query": doc["title"], "top_k": 10}).json()["sources"]
    ]
    assert doc["id"] not in ids
    again = client.delete(f"/v1/documents/{doc['id']}")
    assert again.status_code == 404 and "no document" in again.json()["error"]["message"]


def test_filters_restrict_results_and_cannot_inject(client: httpx.Client, corpus: list[dict[str, Any]]) -> None:
    query = {"query": corpus[0]["title"], "top_k": 10}
    r = client.post("/v1/retrieve", json={**query, "filter": {"year": {"$gte": 30}}})
    years = [s["metadata"]["year"] for s in r.json()["sources"]]
    assert years and all(y >= 30 for y in years)
    only = client.post("/v1/retrieve", json={**query, "filter": {"doc_id": corpus[3]["id"]}}).json()["sources"]
    assert {s["doc_id"] for s in only} == {corpus[3]["id"]}
    # An attempt to break out of the string literal is just a document id that does not exist.
    injected = client.post("/v1/retrieve", json={**query, "filter": {"doc_id": 'x" or doc_id != "'}})
    assert injected.status_code == 200 and injected.json()["sources"] == []
    bad = client.post("/v1/retrieve", json={**query, "filter": {"year": {"$regex": ".*"}}})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "filter"


def test_cache_hits_on_repeat_and_ingest_invalidates(
    client: httpx.Client, rag: ServerProcess, corpus: list[dict[str, Any]]
) -> None:
    query = {"query": "a question nobody asked before about " + corpus[10]["title"], "top_k": 5}
    hits_before = rag.metric("llmops_rag_cache_lookups_total", cache="retrieval", result="hit_l1")
    first = client.post("/v1/retrieve", json=query).json()
    second = client.post("/v1/retrieve", json=query).json()
    assert first["cached"] == {"embedding": False, "retrieval": False}
    assert second["cached"] == {"embedding": True, "retrieval": True}
    assert second["sources"] == first["sources"]
    assert rag.metric("llmops_rag_cache_lookups_total", cache="retrieval", result="hit_l1") == hits_before + 1

    new = {"id": "new-doc", "text": corpus[10]["title"] + " (a near copy).", "metadata": {}}
    client.post("/v1/ingest", json={"documents": [new]})
    third = client.post("/v1/retrieve", json=query).json()
    assert third["cached"] == {"embedding": True, "retrieval": False}  # the collection changed
    assert "new-doc" in [s["doc_id"] for s in third["sources"]]


def test_replicas_share_the_redis_cache(
    workdir: Path, client: httpx.Client, embedding: ServerProcess, milvus: MilvusLite, redis: Redis,
    corpus: list[dict[str, Any]],
) -> None:  # fmt: skip
    other = ServerProcess(
        "llmops_workloads.rag",
        rag_config(embedding, milvus, "main", cache={"redisUrl": redis.url}),
        workdir / "rag-replica",
    ).start()
    try:
        query = {"query": "shared across replicas: " + corpus[12]["title"], "top_k": 3}
        client.post("/v1/retrieve", json=query)
        from_other = httpx.post(f"{other.url}/v1/retrieve", json=query, timeout=30).json()
        assert from_other["cached"] == {"embedding": True, "retrieval": True}
        assert other.metric("llmops_rag_cache_lookups_total", cache="retrieval", result="hit_l2") == 1
        # A write through the first replica invalidates the second one's results (shared generation).
        client.post("/v1/ingest", json={"documents": [{"id": "replica-doc", "text": corpus[12]["title"]}]})
        after = httpx.post(f"{other.url}/v1/retrieve", json=query, timeout=30).json()
        assert after["cached"]["retrieval"] is False
        assert "replica-doc" in [s["doc_id"] for s in after["sources"]]
    finally:
        other.stop()


# -- answers ----------------------------------------------------------------------------


def test_query_answers_and_cites_the_right_document(client: httpx.Client, corpus: list[dict[str, Any]]) -> None:
    doc = corpus[20]
    r = client.post("/v1/query", json={"query": doc["title"], "top_k": 3, "max_new_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sources"][0]["doc_id"] == doc["id"]
    assert body["answer"]
    assert body["usage"]["completion_tokens"] == 12 and body["finish_reason"] == "length"
    assert body["usage"]["sources_in_prompt"] >= 1
    assert set(body["timings"]) >= {"embed_ms", "search_ms", "generate_ms", "total_ms"}
    # max_new_tokens is clamped to the configured maximum (64).
    clamped = client.post("/v1/query", json={"query": doc["title"], "max_new_tokens": 5000}).json()
    assert clamped["usage"]["max_new_tokens"] == 64 and clamped["usage"]["completion_tokens"] == 64


@pytest.mark.parametrize("route", ["/v1/query", "/v1/query/stream"])
def test_streamed_answer_sends_sources_then_tokens_then_done(
    client: httpx.Client, corpus: list[dict[str, Any]], route: str
) -> None:
    doc = corpus[21]
    body: dict[str, Any] = {"query": doc["title"], "top_k": 2, "max_new_tokens": 10}
    if route == "/v1/query":
        body["stream"] = True
    r = client.post(route, json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r)
    kinds = [k for k, _ in events]
    assert kinds[0] == "sources" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"token"} and len(kinds) - 2 >= 5
    assert events[0][1]["sources"][0]["doc_id"] == doc["id"]
    done = events[-1][1]
    assert done["usage"]["completion_tokens"] == 10 and done["timings"]["time_to_first_token_ms"] > 0


def test_client_disconnect_stops_generation_upstream(
    rag: ServerProcess, generator: ServerProcess, corpus: list[dict[str, Any]]
) -> None:
    cancelled_before = generator.metric("llmops_generation_cancelled_total")
    rag_cancelled_before = rag.metric("llmops_rag_cancelled_queries_total")
    tokens_before = generator.metric("llmops_generation_generated_tokens_total")
    body = {"query": corpus[22]["title"], "stream": True, "max_new_tokens": 64}
    with httpx.Client(base_url=rag.url, timeout=60) as c, c.stream("POST", "/v1/query", json=body) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("event: token"):
                seen += 1
            if seen == 3:
                break  # leave mid-answer: the connection closes
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and generator.metric("llmops_generation_cancelled_total") == cancelled_before:
        time.sleep(0.1)
    assert generator.metric("llmops_generation_cancelled_total") == cancelled_before + 1
    assert rag.metric("llmops_rag_cancelled_queries_total") == rag_cancelled_before + 1
    assert generator.metric("llmops_generation_generated_tokens_total") - tokens_before < 64


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/retrieve", {"query": ""}, 422, "query: String should have at least 1 character"),
        ("/v1/retrieve", {"query": "   "}, 422, "query must not be blank"),
        ("/v1/retrieve", {"query": "x" * 4001}, 413, "the limit is 4000"),
        ("/v1/retrieve", {"query": "x", "top_k": 51}, 422, "top_k must be at most 50"),
        ("/v1/retrieve", {"query": "x", "top_k": 0}, 422, "top_k"),
        ("/v1/retrieve", {"query": "x", "topk": 3}, 422, "topk: Extra inputs are not permitted"),
        ("/v1/retrieve", {"query": "x", "filter": "doc_id == 'a'"}, 422, "filter"),
        ("/v1/query", {"query": "x", "temperature": 9}, 422, "temperature"),
        ("/v1/ingest", {"documents": []}, 422, "documents"),
        ("/v1/ingest", {"documents": [{"id": "a", "text": " "}]}, 422, "documents[0].text must not be empty"),
        ("/v1/ingest", {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, 422, "appears twice"),
        ("/v1/ingest", {"documents": [{"id": "a", "text": "x", "format": "pdf"}]}, 422, "format"),
        ("/v1/ingest", {"documents": [{"id": "a" * 513, "text": "x"}]}, 422, "id"),
    ],
)
def test_bad_requests_get_clear_json_errors(
    client: httpx.Client, path: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


def test_malformed_and_oversized_bodies(client: httpx.Client) -> None:
    r = client.post("/v1/retrieve", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    big = client.post("/v1/ingest", content=b"x" * (5 * 1024 * 1024), headers={"content-type": "application/json"})
    assert big.status_code == 413 and "over" in big.json()["error"]["message"]


def test_health_ready_info_metrics(client: httpx.Client, corpus: list[dict[str, Any]]) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready == {"status": "ready", "dependencies": {"milvus": True, "embedding": True, "generator": True}}
    info = client.get("/info").json()
    assert info["dimension"] == 384 and info["chunks"] > 0 and info["generator"] == "tgi"
    text = client.get("/metrics").text
    for name in ("llmops_rag_stage_seconds", "llmops_rag_cache_lookups_total", "llmops_requests_total"):
        assert name in text


# -- the ingestion command ---------------------------------------------------------------


def test_ingest_command_reads_files_and_is_idempotent(
    workdir: Path, rag: ServerProcess, client: httpx.Client, milvus: MilvusLite
) -> None:
    import subprocess
    import sys

    src = workdir / "files"
    (src / "guides").mkdir(parents=True, exist_ok=True)
    (src / "guides" / "kettle.md").write_text("# Kettle\n\nDescale the kettle with citric acid every month.")
    (src / "bread.txt").write_text("Sourdough bread needs a starter fed with flour and water.")
    (src / "tea.html").write_text("<html><title>Tea</title><body><p>Green tea steeps at 80 degrees.</p></body></html>")
    (src / "more.jsonl").write_text(json.dumps({"id": "bikes", "text": "Oil the bicycle chain after rain."}) + "\n")
    cmd = [sys.executable, "-m", "llmops_workloads.rag", "ingest", "--config", str(rag.config_path), str(src)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads([line for line in out.stdout.splitlines() if "ingest summary" in line][-1])
    assert (summary["documents"], summary["ingested"], summary["failed"]) == (4, 4, 0)
    hit = client.post("/v1/retrieve", json={"query": "how hot should water be for green tea?", "top_k": 1}).json()
    assert hit["sources"][0]["doc_id"] == "tea.html" and hit["sources"][0]["metadata"]["title"] == "Tea"
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    summary = json.loads([line for line in again.stdout.splitlines() if "ingest summary" in line][-1])
    assert (summary["ingested"], summary["unchanged"]) == (0, 4)
    assert milvus_count(milvus, "main", "guides/kettle.md") == 1


def test_concurrent_queries_all_answer(client: httpx.Client, corpus: list[dict[str, Any]]) -> None:
    statuses: list[int] = []

    def ask(i: int) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
            statuses.append(c.post("/v1/query", json={"query": corpus[i]["title"], "max_new_tokens": 8}).status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8


def test_openai_compatible_generator(
    workdir: Path, embedding: ServerProcess, milvus: MilvusLite, generator: ServerProcess, corpus: list[dict[str, Any]]
) -> None:
    """generator.kind openai: the chat-completions protocol (what vLLM serves), here the generation
    server's own /v1/chat/completions."""
    cfg = rag_config(
        embedding,
        milvus,
        "main",
        generator={
            "kind": "openai",
            "url": f"{generator.url}/v1",
            "model": "llmops/tiny-llama",
            "maxNewTokens": 8,
            "defaultMaxNewTokens": 8,
            "temperature": 0,  # greedy: chat endpoints sample by default
        },
    )
    proc = ServerProcess("llmops_workloads.rag", cfg, workdir / "rag-openai").start()
    try:
        doc = corpus[25]
        body = httpx.post(f"{proc.url}/v1/query", json={"query": doc["title"]}, timeout=60).json()
        assert body["sources"][0]["doc_id"] == doc["id"]
        assert body["answer"] and body["usage"]["completion_tokens"] == 8
        assert body["usage"]["prompt_tokens"] > 50  # the fenced sources went into the chat messages
        stream = httpx.post(f"{proc.url}/v1/query", json={"query": doc["title"], "stream": True}, timeout=60)
        kinds = [k for k, _ in sse(stream)]
        assert kinds[0] == "sources" and kinds[-1] == "done" and "token" in kinds
    finally:
        proc.stop()


def test_prompts_are_redacted_before_the_generator(
    workdir: Path, embedding: ServerProcess, milvus: MilvusLite, generator: ServerProcess, corpus: list[dict[str, Any]]
) -> None:
    cfg = rag_config(
        embedding,
        milvus,
        "main",
        generator={"url": generator.url, "maxNewTokens": 4, "defaultMaxNewTokens": 4},
        redaction={"prompts": True},
    )
    cfg.update(debug=True, logLevel="DEBUG")
    proc = ServerProcess("llmops_workloads.rag", cfg, workdir / "rag-redacted").start()
    try:
        question = corpus[1]["title"] + " (ask jane.doe@example.com)"
        assert httpx.post(f"{proc.url}/v1/query", json={"query": question}, timeout=60).status_code == 200
        prompts = [json.loads(line)["prompt"] for line in proc.log().splitlines() if '"message": "prompt"' in line]
        assert prompts and "[EMAIL]" in prompts[-1] and "jane.doe@example.com" not in prompts[-1]
    finally:
        proc.stop()
