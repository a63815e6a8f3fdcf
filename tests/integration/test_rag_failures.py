"""The RAG server when its dependencies fail: Milvus, the embedding service, the generator or
Redis down or restarted. Each failure is a 503 with a JSON body naming the dependency, within the
configured timeout; liveness stays 200; the server recovers by itself when the dependency returns."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmops_dev.cluster.controlplane import free_port
from llmops_dev.services import MilvusLite, Redis, ServerProcess
from servers import minilm_path

MILVUS_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rag-failures")


@pytest.fixture(scope="module")
def milvus(workdir: Path) -> Iterator[MilvusLite]:
    m = MilvusLite(workdir / "milvus").start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def redis(workdir: Path) -> Iterator[Redis]:
    r = Redis(workdir / "redis").start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def embedding(workdir: Path) -> Iterator[ServerProcess]:
    cfg = {"model": {"name": "all-MiniLM-L6-v2", "path": minilm_path()}, "logLevel": "WARNING"}
    proc = ServerProcess("llmops_workloads.embedding", cfg, workdir / "embedding").start()
    yield proc
    proc.stop()


def config(embedding_url: str, milvus: MilvusLite, redis: Redis, generator_url: str) -> dict[str, Any]:
    return {
        "embedding": {"url": embedding_url, "timeoutSeconds": 3, "maxRetries": 2, "backoffSeconds": 0.05},
        "milvus": {"uri": milvus.uri, "collection": "failures", "timeoutSeconds": MILVUS_TIMEOUT},
        "generator": {"url": generator_url, "timeoutSeconds": 3},
        "chunking": {"tokenizer": minilm_path()},
        "cache": {"redisUrl": redis.url, "redisTimeoutSeconds": 0.2},
    }


@pytest.fixture(scope="module")
def rag(workdir: Path, embedding: ServerProcess, milvus: MilvusLite, redis: Redis) -> Iterator[ServerProcess]:
    # The generator URL points at a port where nothing listens: the generator is down.
    dead = f"http://127.0.0.1:{free_port()}"
    proc = ServerProcess("llmops_workloads.rag", config(embedding.url, milvus, redis, dead), workdir / "rag")
    # Not ready while the generator is down (it is part of readiness): wait for the rest instead.
    proc.start(ready_path="/health")
    deadline = time.monotonic() + 60
    while httpx.get(proc.url + "/ready").json().get("status") == "loading" and time.monotonic() < deadline:
        time.sleep(0.2)
    docs = [
        {"id": "kettle", "text": "Descale the kettle with citric acid every month."},
        {"id": "tea", "text": "Green tea steeps at 80 degrees for two minutes."},
    ]
    assert httpx.post(f"{proc.url}/v1/ingest", json={"documents": docs}, timeout=30).status_code == 200
    yield proc
    proc.stop()


def post(rag: ServerProcess, path: str, body: dict[str, Any]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = httpx.post(rag.url + path, json=body, timeout=30)
    return r, time.monotonic() - started


def assert_unavailable(r: httpx.Response, dependency: str) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    error = r.json()["error"]
    assert error["type"] == "dependency_unavailable" and error["dependency"] == dependency


def test_generator_down_is_503_and_retrieval_still_works(rag: ServerProcess) -> None:
    for body in ({"query": "tea?"}, {"query": "tea?", "stream": True}):
        r, _ = post(rag, "/v1/query", body)
        assert_unavailable(r, "generator")  # a JSON 503, even when a stream was asked for
        assert r.headers["content-type"] == "application/json"
    r, _ = post(rag, "/v1/retrieve", {"query": "how hot for green tea?", "top_k": 1})
    assert r.status_code == 200 and r.json()["sources"][0]["doc_id"] == "tea"
    assert rag.status("/health") == 200
    ready = httpx.get(rag.url + "/ready").json()
    assert ready["status"] == "degraded" and ready["dependencies"]["generator"] is False


def test_hung_generator_is_503_after_its_timeout(
    workdir: Path, embedding: ServerProcess, milvus: MilvusLite, redis: Redis
) -> None:
    """A generator that accepts connections and never answers (the listen backlog does the accepting)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cfg = config(embedding.url, milvus, redis, url)
        cfg["generator"]["timeoutSeconds"] = 2
        proc = ServerProcess("llmops_workloads.rag", cfg, workdir / "rag-hung").start(ready_path="/health")
        try:
            deadline = time.monotonic() + 60
            while httpx.get(proc.url + "/ready").json().get("status") == "loading" and time.monotonic() < deadline:
                time.sleep(0.2)
            r, elapsed = post(proc, "/v1/query", {"query": "tea?"})
            assert_unavailable(r, "generator")
            assert "no answer within 2.0s" in r.json()["error"]["message"]
            assert 1.5 < elapsed < 2 * 3, f"the 503 took {elapsed:.1f}s"
        finally:
            proc.stop()


def test_hung_milvus_is_503_after_its_timeout_then_recovers(rag: ServerProcess, milvus: MilvusLite) -> None:
    assert milvus.proc is not None
    os.kill(milvus.proc.pid, signal.SIGSTOP)
    try:
        r, elapsed = post(rag, "/v1/retrieve", {"query": "a question while Milvus hangs", "top_k": 1})
        assert_unavailable(r, "milvus")
        assert f"no answer within {MILVUS_TIMEOUT}s" in r.json()["error"]["message"]
        assert MILVUS_TIMEOUT * 0.9 < elapsed < MILVUS_TIMEOUT * 3, f"the 503 took {elapsed:.1f}s"
    finally:
        os.kill(milvus.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 20
    while True:
        r, _ = post(rag, "/v1/retrieve", {"query": "a question after Milvus woke up", "top_k": 1})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert r.status_code == 200, r.text


def test_redis_down_degrades_to_local_cache(rag: ServerProcess, redis: Redis) -> None:
    redis.kill()
    errors = rag.metric("llmops_rag_cache_errors_total")
    for _ in range(2):
        r, _ = post(rag, "/v1/retrieve", {"query": "descaling a kettle", "top_k": 1})
        assert r.status_code == 200 and r.json()["sources"][0]["doc_id"] == "kettle"
    assert rag.metric("llmops_rag_cache_errors_total") > errors
    assert r.json()["cached"]["retrieval"] is True  # L1 still serves the repeat


def test_milvus_down_is_503_within_the_timeout_then_recovers(
    workdir: Path, rag: ServerProcess, milvus: MilvusLite
) -> None:
    milvus.kill()
    r, elapsed = post(rag, "/v1/retrieve", {"query": "a new question about kettles", "top_k": 1})
    assert_unavailable(r, "milvus")
    assert elapsed < MILVUS_TIMEOUT * 3, f"the 503 took {elapsed:.1f}s"
    r, _ = post(rag, "/v1/ingest", {"documents": [{"id": "x", "text": "lost?"}]})
    assert_unavailable(r, "milvus")
    assert rag.status("/health") == 200
    # /ready remembers its probes for a second: poll.
    deadline = time.monotonic() + 10
    while httpx.get(rag.url + "/ready").json()["dependencies"]["milvus"] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert httpx.get(rag.url + "/ready").json()["dependencies"]["milvus"] is False

    # Back on the same port and data: the collection comes back released and is loaded again.
    restarted = MilvusLite(workdir / "milvus", port=milvus.port).start()
    try:
        deadline = time.monotonic() + 30
        while True:
            r, _ = post(rag, "/v1/retrieve", {"query": "another kettle question", "top_k": 2})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        assert {s["doc_id"] for s in r.json()["sources"]} == {"kettle", "tea"}  # nothing was lost
    finally:
        milvus.proc = restarted.proc  # the module fixture stops it


def test_embedding_down_is_503(rag: ServerProcess, embedding: ServerProcess) -> None:
    embedding.stop()
    r, elapsed = post(rag, "/v1/retrieve", {"query": "an uncached question", "top_k": 1})
    assert_unavailable(r, "embedding")
    assert elapsed < 3 * 3
    r, _ = post(rag, "/v1/ingest", {"documents": [{"id": "y", "text": "needs embeddings"}]})
    assert_unavailable(r, "embedding")
    # A cached query still answers: its embedding and results are in the cache.
    r, _ = post(rag, "/v1/retrieve", {"query": "descaling a kettle", "top_k": 1})
    assert r.status_code == 200


def test_dependencies_down_at_start_keep_it_alive_not_ready(workdir: Path, milvus: MilvusLite, redis: Redis) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc = ServerProcess("llmops_workloads.rag", config(dead, milvus, redis, dead), workdir / "rag-early")
    proc.start(wait_ready=False)
    try:
        deadline = time.monotonic() + 20
        while proc.status("/health") != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.status("/health") == 200
        assert proc.status("/ready") == 503
        r = httpx.post(proc.url + "/v1/retrieve", json={"query": "x"}, timeout=10)
        assert r.status_code == 503 and "starting" in r.json()["error"]["message"]
        assert proc.proc is not None and proc.proc.poll() is None
    finally:
        proc.stop()
