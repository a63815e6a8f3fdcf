"""The embedding server for real: the all-MiniLM-L6-v2 model, real HTTP, real clients (openai,
huggingface_hub), compared with sentence-transformers on real sentences."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from servers import ServerProcess, minilm_path

REPO = Path(__file__).resolve().parents[2]
# CI and sessions have shared/ beside the clone; LLMOPS_SHARED_DIR points elsewhere.
SHARED = Path(os.environ.get("LLMOPS_SHARED_DIR", REPO.parent / "shared"))
QUERIES = SHARED / "data" / "scifact" / "queries.jsonl"
MODULE = "llmops_workloads.embedding"


MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def config(**batching: Any) -> dict[str, Any]:
    """The hub id as the served name, the weights from a local directory (as from a PVC)."""
    return {
        "model": {"name": MODEL_ID, "path": minilm_path()},
        "batching": {"maxBatchSize": 32, "maxWaitMillis": 5, **batching},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(MODULE, config(), tmp_path_factory.mktemp("emb")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    assert QUERIES.exists(), f"the shared data set is missing: {QUERIES}"
    lines = QUERIES.read_text().splitlines()[:300]
    return [json.loads(line)["text"] for line in lines]


@pytest.fixture(scope="module")
def reference(sentences: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path(), device="cpu")
    vectors: np.ndarray = st.encode(sentences, batch_size=64, convert_to_numpy=True)
    return vectors


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    result: np.ndarray = (a * b).sum(axis=1)
    return result


def test_openai_client_matches_sentence_transformers(
    server: ServerProcess, sentences: list[str], reference: np.ndarray
) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    vectors = []
    for start in range(0, len(sentences), 100):
        resp = client.embeddings.create(model=MODEL_ID, input=sentences[start : start + 100])
        assert [d.index for d in resp.data] == list(range(len(resp.data)))
        assert resp.usage.prompt_tokens > len(resp.data)
        vectors += [d.embedding for d in resp.data]
    cos = cosine_rows(np.array(vectors), reference)
    print(f"cosine to sentence-transformers over {len(cos)} sentences: min {cos.min():.6f}")
    assert cos.min() >= 0.9999
    assert np.allclose(np.linalg.norm(np.array(vectors), axis=1), 1, atol=1e-4)

    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=sentences[0], encoding_format="float")
    assert cosine_rows(np.array([floats.data[0].embedding]), reference[:1])[0] >= 0.9999
    short = client.embeddings.create(model=MODEL_ID, input=sentences[0], dimensions=64)
    assert len(short.data[0].embedding) == 64
    assert np.linalg.norm(short.data[0].embedding) == pytest.approx(1, abs=1e-4)


def test_tei_clients(
    server: ServerProcess, sentences: list[str], reference: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    # Offline mode (set for model loading) would also block this client's calls to our loopback server.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    got = np.asarray(InferenceClient(model=server.url).feature_extraction(sentences[3])).reshape(1, -1)
    assert cosine_rows(got, reference[3:4])[0] >= 0.9999

    raw = httpx.post(f"{server.url}/embed", json={"inputs": sentences[:4], "normalize": False}).json()
    raw_vectors = np.array(raw)
    assert raw_vectors.shape == (4, 384)
    assert not np.allclose(np.linalg.norm(raw_vectors, axis=1), 1, atol=1e-3)
    assert cosine_rows(raw_vectors, reference[:4]).min() >= 0.9999

    info = server.get_json("/info")
    assert info["dimension"] == 384
    assert info["max_input_length"] == 256
    assert info["pooling"] == "mean"
    assert info["batching"]["max_batch_size"] == 32


LONG = "word " * 400


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/embeddings", {"input": LONG}, 413, "tokens; the limit is 256"),
        ("/embed", {"inputs": LONG}, 413, "tokens; the limit is 256"),
        ("/v1/embeddings", {"input": ["ok"] * 2049}, 413, "at most 2048 per request"),
        ("/v1/embeddings", {"input": ""}, 422, "input[0] is empty"),
        ("/v1/embeddings", {"input": []}, 422, "input must not be empty"),
        ("/embed", {"inputs": []}, 422, "inputs must not be empty"),
        ("/v1/embeddings", {"input": 5}, 422, "input"),
        ("/v1/embeddings", {"input": [[1, 2, 3]]}, 422, "token-id inputs are not supported"),
        ("/v1/embeddings", {"input": "x", "dimensions": 1000}, 422, "dimensions must be at most 384"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 422, "encoding_format"),
        ("/v1/embeddings", {"input": "x", "temperature": 1}, 422, "temperature"),
        ("/v1/embeddings", {"input": "x", "model": "text-embedding-3-large"}, 404, "is not served here"),
        ("/embed", {"inputs": "x", "prompt_name": "query"}, 422, "prompt_name is not supported"),
    ],
)
def test_bad_requests_get_clear_json_errors(
    server: ServerProcess, path: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    resp = httpx.post(server.url + path, json=body, timeout=30)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert fragment in message, message
    if path == "/embed":
        assert resp.json()["error_type"] == "Validation"


def test_malformed_and_oversized_bodies(server: ServerProcess) -> None:
    resp = httpx.post(f"{server.url}/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert "error" in resp.json()
    big = json.dumps({"input": "a" * (5 * 1024 * 1024)}).encode()
    resp = httpx.post(f"{server.url}/v1/embeddings", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert "request body over" in resp.json()["error"]["message"]


def test_truncation_when_asked(server: ServerProcess) -> None:
    resp = httpx.post(f"{server.url}/embed", json={"inputs": LONG, "truncate": True})
    assert resp.status_code == 200
    assert len(resp.json()[0]) == 384
    resp = httpx.post(f"{server.url}/v1/embeddings", json={"input": LONG, "truncate": True})
    assert resp.status_code == 200
    assert resp.json()["usage"]["prompt_tokens"] == 256


async def _burst(url: str, bodies: list[dict[str, Any]], path: str = "/v1/embeddings") -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*(client.post(path, json=b) for b in bodies)))


def test_concurrent_requests_are_batched_and_metrics_move(server: ServerProcess, sentences: list[str]) -> None:
    batches_before = server.metric("llmops_batch_size_count")
    inputs_before = server.metric("llmops_batch_size_sum")
    tokens_before = server.metric("llmops_tokens_total")
    ok_before = server.metric("llmops_requests_total", route="/v1/embeddings", status="200")
    responses = asyncio.run(_burst(server.url, [{"input": s} for s in sentences[:64]]))
    assert [r.status_code for r in responses] == [200] * 64
    batches = server.metric("llmops_batch_size_count") - batches_before
    inputs = server.metric("llmops_batch_size_sum") - inputs_before
    print(f"64 concurrent single-sentence requests: {batches:.0f} forward passes, {inputs / batches:.1f} inputs each")
    assert inputs == 64
    assert batches < 64, "concurrent requests must share forward passes"
    assert server.metric("llmops_tokens_total") > tokens_before
    assert server.metric("llmops_requests_total", route="/v1/embeddings", status="200") == ok_before + 64


def test_overload_is_answered_429_with_retry_after(tmp_path: Path, sentences: list[str]) -> None:
    proc = ServerProcess(MODULE, config(maxBatchSize=2, maxWaitMillis=200, maxConcurrentRequests=4), tmp_path).start()
    try:
        responses = asyncio.run(_burst(proc.url, [{"input": s} for s in sentences[:40]]))
        statuses = [r.status_code for r in responses]
        print(f"flood of 40 against a queue of 4: {statuses.count(200)} x 200, {statuses.count(429)} x 429")
        assert set(statuses) <= {200, 429}
        assert statuses.count(429) > 0
        assert statuses.count(200) >= 4
        for r in responses:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1"
                assert "overloaded" in r.json()["error"]["message"]
        assert proc.metric("llmops_overload_rejections_total") == statuses.count(429)
    finally:
        proc.stop()


def test_api_key(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("s3cret-key\n")
    # A local directory as the model's name: the loader's "name is a path" case.
    local = {"model": {"name": minilm_path()}, "auth": {"apiKeyFile": str(key_file)}}
    proc = ServerProcess(MODULE, local, tmp_path).start()
    try:
        assert httpx.post(f"{proc.url}/v1/embeddings", json={"input": "x"}).status_code == 401
        wrong = httpx.post(f"{proc.url}/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error_type"] == "Unauthorized"
        assert (
            httpx.post(f"{proc.url}/embed", json={"inputs": "x"}, headers={"X-API-Key": "s3cret-key"}).status_code
            == 200
        )
        assert proc.status("/health") == 200
        assert proc.status("/ready") == 200
        assert proc.status("/metrics") == 200

        from openai import AuthenticationError, OpenAI

        ok = OpenAI(base_url=f"{proc.url}/v1", api_key="s3cret-key").embeddings.create(model=minilm_path(), input="x")
        assert len(ok.data[0].embedding) == 384
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{proc.url}/v1", api_key="wrong", max_retries=0).embeddings.create(
                model=minilm_path(), input="x"
            )
        assert "s3cret-key" not in proc.log()
    finally:
        proc.stop()


def test_sigterm_finishes_in_flight_requests(tmp_path: Path, sentences: list[str]) -> None:
    proc = ServerProcess(MODULE, config(maxBatchSize=4, maxWaitMillis=300), tmp_path).start()
    assert proc.proc is not None

    async def scenario() -> tuple[list[httpx.Response], int | None]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60, limits=httpx.Limits(max_connections=40)) as c:
            tasks = [asyncio.create_task(c.post("/v1/embeddings", json={"input": s})) for s in sentences[:24]]
            await asyncio.sleep(0.15)  # requests are in the queue (300 ms batching window)
            proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
            ready = proc.status("/ready")
            return list(await asyncio.gather(*tasks)), ready

    responses, ready_after_term = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 24
    assert ready_after_term in (503, None)  # not ready at once (None: already closed)
    assert proc.proc.wait(timeout=30) == 0
    assert "draining" in proc.log()


def test_client_disconnect_frees_its_batch_slots(tmp_path: Path) -> None:
    proc = ServerProcess(MODULE, config(maxBatchSize=1, maxWaitMillis=0), tmp_path).start()
    try:
        long_text = "the quick brown fox jumps over the lazy dog " * 25  # ~230 tokens: slow batches of one

        async def give_up() -> None:
            async with httpx.AsyncClient(base_url=proc.url, timeout=0.3) as client:
                results = await asyncio.gather(
                    *(client.post("/embed", json={"inputs": long_text}) for _ in range(60)), return_exceptions=True
                )
            assert any(isinstance(r, httpx.TimeoutException) for r in results)

        batches_before = proc.metric("llmops_batch_size_count")
        asyncio.run(give_up())
        deadline = time.monotonic() + 30
        while proc.metric("llmops_queue_depth") > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        dropped = proc.metric("llmops_dropped_inputs_total")
        computed = proc.metric("llmops_batch_size_count") - batches_before
        print(f"60 requests abandoned: {computed:.0f} computed, {dropped:.0f} dropped before compute")
        assert dropped > 0
        assert computed + dropped == 60
        assert proc.metric("llmops_queue_depth") == 0
    finally:
        proc.stop()


def test_int8_quantisation_on_cpu_stays_close(tmp_path: Path, sentences: list[str], reference: np.ndarray) -> None:
    cfg = config()
    cfg["model"]["quantization"] = "int8"
    proc = ServerProcess(MODULE, cfg, tmp_path).start()
    try:
        assert proc.get_json("/info")["quantization"] == "int8"
        got = httpx.post(f"{proc.url}/embed", json={"inputs": sentences[:32]}, timeout=60).json()
        cos = cosine_rows(np.array(got), reference[:32])
        print(f"int8 vs float32 sentence-transformers: cosine min {cos.min():.4f}, mean {cos.mean():.4f}")
        # Dynamic int8 trades accuracy for speed on small models; the docs quote these figures.
        assert cos.mean() >= 0.9
        assert cos.min() >= 0.85
    finally:
        proc.stop()


def test_logs_are_json_with_request_ids_and_no_text(server: ServerProcess, sentences: list[str]) -> None:
    marker = "a distinctive sentence that must never reach a log line"
    resp = httpx.post(f"{server.url}/v1/embeddings", json={"input": marker}, headers={"X-Request-ID": "req-123"})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == "req-123"
    time.sleep(0.2)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert any(rec.get("request_id") == "req-123" and rec.get("status") == 200 for rec in lines)
    assert marker not in server.log()
    assert sentences[0] not in server.log()


def test_a_hub_id_resolves_through_the_hub_cache_offline(
    tmp_path: Path, sentences: list[str], reference: np.ndarray
) -> None:
    """The production path (a Hugging Face id, no local path) against a hub cache laid out the
    way huggingface_hub writes it, with HF_HUB_OFFLINE=1: no network, same vectors."""
    import shutil

    repo = tmp_path / "hf" / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(minilm_path(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    cfg = {"model": {"name": MODEL_ID, "revision": "main"}}
    proc = ServerProcess(MODULE, cfg, tmp_path / "run", env={"HF_HOME": str(tmp_path / "hf")}).start()
    try:
        got = httpx.post(f"{proc.url}/embed", json={"inputs": sentences[:8]}, timeout=60).json()
        assert cosine_rows(np.array(got), reference[:8]).min() >= 0.9999
        assert proc.get_json("/info")["model_id"] == MODEL_ID
    finally:
        proc.stop()
