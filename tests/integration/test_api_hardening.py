"""Authentication with named keys and rotation, per-client rate limits (in-process and shared
through Redis), and the audit log: one implementation in front of every llmops server, exercised
here on the embedding server (real model, real `openai` client) and the generation server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmops_dev.services import Redis, ServerProcess
from llmops_dev.tiny_lm import build_tiny_lm
from servers import minilm_path

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SECRET_TEXT = "my card is the one from the bakery"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hardening")


@pytest.fixture(scope="module")
def keys_file(workdir: Path) -> Path:
    path = workdir / "keys"
    path.write_text("alice:alice-key-1\nbob:bob-key-1\nbatch:batch-key-1\n")
    return path


@pytest.fixture(scope="module")
def embedding(workdir: Path, keys_file: Path) -> Iterator[ServerProcess]:
    cfg = {
        "model": {"name": MODEL, "path": minilm_path()},
        "auth": {"apiKeyFile": str(keys_file)},
        "rateLimits": {"requestsPerMinute": 3, "perKey": {"batch": {"requestsPerMinute": 1000}}},
        "audit": {"enabled": True, "file": str(workdir / "audit.jsonl")},
        "logLevel": "WARNING",
    }
    proc = ServerProcess("llmops_workloads.embedding", cfg, workdir / "embedding").start()
    yield proc
    proc.stop()


def post(url: str, key: str | None, text: str = "hello", header: str = "authorization") -> httpx.Response:
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if header == "authorization" else {"X-API-Key": key}
    return httpx.post(f"{url}/v1/embeddings", json={"input": text}, headers=headers, timeout=30)


def test_missing_or_wrong_key_is_401_and_health_stays_open(embedding: ServerProcess) -> None:
    for key in (None, "nope"):
        r = post(embedding.url, key)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "missing or invalid API key" in r.json()["error"]["message"]  # OpenAI's error shape on /v1
    tei = httpx.post(f"{embedding.url}/embed", json={"inputs": "x"}, timeout=10)
    assert tei.status_code == 401 and tei.json()["error_type"] == "Unauthorized"  # TEI's shape elsewhere
    for path in ("/health", "/ready", "/metrics"):
        assert embedding.status(path) == 200
    assert post(embedding.url, "batch-key-1", header="x-api-key").status_code == 200


def test_the_openai_client_with_a_key(embedding: ServerProcess) -> None:
    from openai import AuthenticationError, OpenAI

    ok = OpenAI(base_url=f"{embedding.url}/v1", api_key="batch-key-1")
    assert len(ok.embeddings.create(model=MODEL, input=["a", "b"]).data) == 2
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{embedding.url}/v1", api_key="wrong", max_retries=0).embeddings.create(model=MODEL, input="a")


def test_a_client_over_its_limit_gets_429_another_is_unaffected(embedding: ServerProcess) -> None:
    answers = [post(embedding.url, "alice-key-1") for _ in range(5)]
    assert [r.status_code for r in answers][:3] == [200, 200, 200]
    limited = answers[-1]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-limit"] == "3" and limited.headers["x-ratelimit-remaining"] == "0"
    assert "rate limit of 3 requests per minute exceeded" in limited.json()["error"]["message"]
    assert answers[0].headers["x-ratelimit-limit"] == "3"
    bob = post(embedding.url, "bob-key-1")
    assert bob.status_code == 200  # his own bucket
    assert embedding.metric("llmops_rate_limited_total", client="alice") >= 2


def test_keys_rotate_without_a_restart(embedding: ServerProcess, keys_file: Path) -> None:
    pid = embedding.proc.pid if embedding.proc else None
    assert post(embedding.url, "batch-key-1").status_code == 200
    # Kubernetes swaps the Secret's file: new content under the same path.
    tmp = keys_file.with_suffix(".new")
    tmp.write_text("alice:alice-key-1\nbob:bob-key-1\nbatch:batch-key-2\n")
    tmp.replace(keys_file)
    deadline = time.monotonic() + 10
    while post(embedding.url, "batch-key-2").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert post(embedding.url, "batch-key-2").status_code == 200
    assert post(embedding.url, "batch-key-1").status_code == 401
    assert embedding.proc is not None and embedding.proc.pid == pid and embedding.proc.poll() is None


def test_every_request_is_audited_without_its_text(embedding: ServerProcess, workdir: Path) -> None:
    r = post(embedding.url, "batch-key-2", text=SECRET_TEXT)
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    deadline = time.monotonic() + 5
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = [json.loads(line) for line in (workdir / "audit.jsonl").read_text().splitlines()]
        if any(rec["request_id"] == rid for rec in records):
            break
        time.sleep(0.1)
    mine = next(rec for rec in records if rec["request_id"] == rid)
    assert mine["key"] == "batch" and mine["route"] == "/v1/embeddings" and mine["status"] == 200
    assert mine["model"] == MODEL and mine["server"] == "embedding" and mine["request_bytes"] > 0
    assert mine["response_bytes"] > 1000 and mine["ms"] > 0
    statuses = {rec["status"] for rec in records}
    assert {200, 401, 429} <= statuses  # refusals are audited too
    text = (workdir / "audit.jsonl").read_text()
    assert SECRET_TEXT not in text and "alice-key-1" not in text and "batch-key-2" not in text
    assert not any(rec["route"] in ("/health", "/ready", "/metrics") for rec in records)


# -- a budget shared by replicas --------------------------------------------------------------


@pytest.fixture(scope="module")
def redis(workdir: Path) -> Iterator[Redis]:
    r = Redis(workdir / "redis").start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def replicas(workdir: Path, redis: Redis) -> Iterator[list[ServerProcess]]:
    model = build_tiny_lm(workdir / "tiny-lm")
    procs = []
    for i in range(2):
        cfg = {
            "model": {"name": "llmops/tiny-llama", "path": str(model), "cpuThreads": 1},
            "auth": {"apiKey": "team:team-key"},
            "rateLimits": {"requestsPerMinute": 4, "redisUrl": redis.url},
            "logLevel": "WARNING",
        }
        procs.append(ServerProcess("llmops_workloads.generation", cfg, workdir / f"gen-{i}").start())
    yield procs
    for p in procs:
        p.stop()


def generate(proc: ServerProcess) -> int:
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 2}}
    r = httpx.post(f"{proc.url}/generate", json=body, headers={"Authorization": "Bearer team-key"}, timeout=30)
    return r.status_code


def test_two_replicas_share_one_budget_in_redis(replicas: list[ServerProcess], redis: Redis) -> None:
    a, b = replicas
    assert [generate(a), generate(b), generate(a), generate(b)] == [200] * 4
    assert generate(a) == 429 and generate(b) == 429  # one budget of 4 for the key, whichever replica

    # Redis down: each replica falls back to its own bucket (the limit holds per replica).
    redis.kill()
    statuses = [generate(a) for _ in range(6)]
    assert statuses[:4] == [200] * 4 and statuses[-1] == 429
    assert a.metric("llmops_rate_limit_redis_errors_total") >= 6


def test_generated_tokens_count_against_a_tokens_per_minute_limit(workdir: Path) -> None:
    model = build_tiny_lm(workdir / "tiny-lm")
    cfg = {
        "model": {"name": "llmops/tiny-llama", "path": str(model), "cpuThreads": 1},
        "auth": {"apiKey": "team:team-key"},
        "rateLimits": {"tokensPerMinute": 50},
        "logLevel": "WARNING",
    }
    proc = ServerProcess("llmops_workloads.generation", cfg, workdir / "gen-tpm").start()
    try:

        def ask(tokens: int, stream: bool = False) -> httpx.Response:
            body = {"inputs": "hello", "parameters": {"max_new_tokens": tokens}}
            path = "/generate_stream" if stream else "/generate"
            return httpx.post(f"{proc.url}{path}", json=body, headers={"X-API-Key": "team-key"}, timeout=30)

        assert ask(30).status_code == 200  # 20 of 50 left
        assert ask(30, stream=True).status_code == 200  # admitted with 20 left; now 10 below zero
        refused = ask(1)
        assert refused.status_code == 429
        assert "rate limit of 50 tokens per minute exceeded" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) >= 1
    finally:
        proc.stop()


def test_logs_are_redacted_when_asked(workdir: Path) -> None:
    """With debug on the server logs request text: redaction.logs keeps the PII out of it."""
    cfg = {
        "model": {"name": MODEL, "path": minilm_path()},
        "redaction": {"logs": True},
        "debug": True,
        "logLevel": "DEBUG",
    }
    proc = ServerProcess("llmops_workloads.embedding", cfg, workdir / "embedding-redacted").start()
    try:
        text = "write to jane.doe@example.com or call +44 20 7946 0958 about card 4111 1111 1111 1111"
        r = httpx.post(f"{proc.url}/v1/embeddings", json={"input": text}, timeout=30)
        assert r.status_code == 200
        deadline = time.monotonic() + 5
        while "[EMAIL]" not in proc.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = proc.log()
        assert "[EMAIL]" in log and "[CARD]" in log and "[PHONE]" in log
        assert "jane.doe@example.com" not in log and "4111 1111 1111 1111" not in log and "7946 0958" not in log
    finally:
        proc.stop()
