"""The generation server for real: the tiny Llama built by ``build_tiny_lm``, real HTTP, real
clients (huggingface_hub's InferenceClient, openai), TGI's wire format checked on raw bytes."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmops_dev.tiny_lm import build_tiny_lm
from servers import ServerProcess

MODULE = "llmops_workloads.generation"
MODEL_ID = "llmops/tiny-lm"
PROMPT = "The quick brown fox jumps over the lazy dog"
LIMITS = {"maxInputTokens": 256, "maxTotalTokens": 1280, "maxNewTokens": 1100, "maxStopSequences": 3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.getbasetemp() / "tiny-lm")


def config(tiny: Path, limits: dict[str, Any] | None = None, **batching: Any) -> dict[str, Any]:
    return {
        "model": {"name": MODEL_ID, "path": str(tiny), "cpuThreads": 1},
        "limits": {**LIMITS, **(limits or {})},
        "batching": {"maxBatchSize": 8, "maxWaitMillis": 20, **batching},
    }


@pytest.fixture(scope="module")
def server(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(MODULE, config(tiny), tmp_path_factory.mktemp("gen")).start()
    yield proc
    proc.stop()


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE (set for model loading) would also stop the hub client calling our server."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def post(server: ServerProcess, path: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def sse_events(raw: str) -> list[dict[str, Any]]:
    """Parse a server-sent event stream strictly: ``data: <json>`` lines, each followed by a blank line."""
    assert raw.endswith("\n\n"), raw[-200:]
    events = []
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        assert "\n" not in block, block
        events.append(json.loads(block[len("data: ") :]))
    return events


@pytest.mark.usefixtures("online")
def test_inference_client_text_generation(server: ServerProcess) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=server.url)
    text = client.text_generation(PROMPT, max_new_tokens=16)
    assert isinstance(text, str) and text
    assert post(server, "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 16}}).json() == {
        "generated_text": text
    }

    out = client.text_generation(PROMPT, max_new_tokens=16, details=True, decoder_input_details=True)
    assert out.generated_text == text
    assert out.details is not None
    assert out.details.finish_reason == "length"
    assert out.details.generated_tokens == len(out.details.tokens) == 16
    assert out.details.seed is None
    assert "".join(t.text for t in out.details.tokens) == text
    assert all(t.logprob <= 0 and not t.special for t in out.details.tokens)
    assert out.details.prefill[0].logprob is None
    assert "".join(t.text for t in out.details.prefill[1:]) == PROMPT

    assert "".join(client.text_generation(PROMPT, max_new_tokens=16, stream=True)) == text
    events = list(client.text_generation(PROMPT, max_new_tokens=16, stream=True, details=True))
    assert len(events) == 16
    assert all(e.details is None and e.generated_text is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text == text
    assert last.details is not None
    assert last.details.finish_reason == "length"
    assert last.details.generated_tokens == 16
    assert last.details.input_length == len(out.details.prefill)

    assert client.text_generation(PROMPT, max_new_tokens=4, return_full_text=True).startswith(PROMPT)
    stop = text[4:7]
    stopped = client.text_generation(PROMPT, max_new_tokens=16, stop=[stop], details=True)
    assert stopped.details is not None and stopped.details.finish_reason == "stop_sequence"
    assert stop in stopped.generated_text and text.startswith(stopped.generated_text)

    sampled = [client.text_generation(PROMPT, max_new_tokens=12, do_sample=True, seed=42, details=True) for _ in "ab"]
    assert sampled[0].generated_text == sampled[1].generated_text != text[: len(sampled[0].generated_text)]
    assert sampled[0].details is not None and sampled[0].details.seed == 42
    random_seed = client.text_generation(PROMPT, max_new_tokens=2, temperature=0.7, details=True)
    assert random_seed.details is not None and isinstance(random_seed.details.seed, int)

    # TGI's error types become the client's exceptions.
    from huggingface_hub.errors import ValidationError

    with pytest.raises(ValidationError, match=r"`top_p` must be > 0\.0 and < 1\.0"):
        client.text_generation(PROMPT, max_new_tokens=2, top_p=1.5)
    with pytest.raises(ValidationError, match="`inputs` must have less than 256 tokens"):
        list(client.text_generation("word " * 400, max_new_tokens=2, stream=True))


@pytest.mark.usefixtures("online")
def test_async_inference_client(server: ServerProcess) -> None:
    from huggingface_hub import AsyncInferenceClient

    async def scenario() -> tuple[str, list[Any]]:
        client = AsyncInferenceClient(base_url=server.url)
        try:
            text = await client.text_generation(PROMPT, max_new_tokens=10)
            stream = await client.text_generation(PROMPT, max_new_tokens=10, stream=True, details=True)
            return text, [event async for event in stream]
        finally:
            await client.close()  # type: ignore[no-untyped-call]

    text, events = asyncio.run(scenario())
    assert "".join(e.token.text for e in events) == text == events[-1].generated_text
    assert events[-1].details.finish_reason == "length"


def test_sse_wire_format(server: ServerProcess) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True}}
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = sse_events(raw)
    assert [e["index"] for e in events] == [1, 2, 3, 4, 5, 6]
    for event in events:
        assert set(event) == {"index", "token", "top_tokens", "generated_text", "details"}
        assert set(event["token"]) == {"id", "text", "logprob", "special"}
        assert event["top_tokens"] is None
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == "".join(e["token"]["text"] for e in events)
    details = events[-1]["details"]
    assert set(details) == {"finish_reason", "generated_tokens", "seed", "input_length"}
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 6 and details["seed"] is None

    # Without details, the last event carries the text only.
    body["parameters"] = {"max_new_tokens": 2}
    events = sse_events(post(server, "/generate_stream", body).text)
    assert events[-1]["details"] is None and events[-1]["generated_text"]


def test_the_root_route_dispatches_on_stream(server: ServerProcess) -> None:
    body: dict[str, Any] = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5}}
    plain = post(server, "/generate", body).json()
    assert post(server, "/", body).json() == [plain]  # TGI wraps it in a list on /
    streamed = sse_events(post(server, "/", {**body, "stream": True}).text)
    assert streamed[-1]["generated_text"] == plain["generated_text"]
    assert post(server, "/generate", {**body, "stream": True}).status_code == 422


def test_truncate_keeps_the_last_tokens(server: ServerProcess) -> None:
    long = "word " * 400
    body = {"inputs": long, "parameters": {"max_new_tokens": 2, "truncate": 10, "details": True}}
    events = sse_events(post(server, "/generate_stream", body).text)
    assert events[-1]["details"]["input_length"] == 10


async def _burst(url: str, bodies: list[dict[str, Any]], path: str = "/generate") -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return list(await asyncio.gather(*(client.post(path, json=b) for b in bodies)))


def test_concurrent_requests_share_decode_steps(server: ServerProcess) -> None:
    def decode(stat: str, **labels: str) -> float:
        return server.metric(f"llmops_generation_batch_size_{stat}", phase="decode", **labels)

    passes, rows, single = decode("count"), decode("sum"), decode("bucket", le="1.0")
    prompts = [f"{PROMPT} {i}" for i in range(8)]
    responses = asyncio.run(_burst(server.url, [{"inputs": p, "parameters": {"max_new_tokens": 32}} for p in prompts]))
    assert [r.status_code for r in responses] == [200] * 8
    passes, rows, single = decode("count") - passes, decode("sum") - rows, decode("bucket", le="1.0") - single
    print(f"8 concurrent requests of 32 tokens: {passes:.0f} decode steps, {rows / passes:.1f} sequences each")
    assert passes - single > 0, "some decode steps must carry more than one sequence"
    assert rows / passes > 1
    # Each answer is the one it gets alone.
    for prompt, resp in zip(prompts[:2], responses[:2], strict=True):
        alone = post(server, "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 32}})
        assert alone.json() == resp.json()


LONG = "word " * 400  # over 256 tokens


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/generate", {"inputs": ""}, "`inputs` cannot be empty"),
        ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 5000}}, "`max_new_tokens` must be <= 1100"),
        ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 0}}, "must be strictly positive"),
        ("/generate", {"inputs": LONG}, "`inputs` must have less than 256 tokens"),
        (
            "/generate",
            {"inputs": "word " * 80, "parameters": {"max_new_tokens": 1100}},
            "`inputs` tokens + `max_new_tokens` must be <= 1280",
        ),
        ("/generate", {"inputs": "x", "parameters": {"temperature": 0}}, "`temperature` must be strictly positive"),
        ("/generate", {"inputs": "x", "parameters": {"top_p": 1.0}}, "`top_p` must be > 0.0 and < 1.0"),
        ("/generate", {"inputs": "x", "parameters": {"top_k": 0}}, "`top_k` must be strictly positive"),
        ("/generate", {"inputs": "x", "parameters": {"repetition_penalty": 0}}, "`repetition_penalty` must be"),
        ("/generate", {"inputs": "x", "parameters": {"stop": ["a", "b", "c", "d"]}}, "up to 3 stop sequences"),
        ("/generate", {"inputs": "x", "parameters": {"truncate": 0}}, "`truncate` must be strictly positive"),
        ("/generate", {"inputs": "x", "parameters": {"best_of": 2}}, "`best_of` != 1 is not allowed"),
        ("/generate", {"inputs": "x", "parameters": {"typical_p": 0.5}}, "`typical_p` is not supported"),
        ("/generate", {"inputs": "x", "parameters": {"watermark": True}}, "`watermark` is not supported"),
        ("/generate", {"inputs": "x", "parameters": {"top_n_tokens": 2}}, "`top_n_tokens` != 0 is not allowed"),
        ("/generate", {"inputs": "x", "parameters": {"frequency_penalty": 0.5}}, "`frequency_penalty` is not"),
        ("/generate", {"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "a"}}}, "grammar is not"),
        ("/generate", {"inputs": "x", "parameters": {"adapter_id": "lora"}}, "`adapter_id` is not supported"),
        ("/generate", {"inputs": "x", "parameters": {"bogus": 1}}, "parameters.bogus: Extra inputs"),
        ("/generate", {"inputs": "x", "bogus": 1}, "bogus: Extra inputs are not permitted"),
        ("/generate", {"inputs": 5}, "inputs: Input should be a valid string"),
        ("/generate", {"parameters": {}}, "inputs: Field required"),
        (
            "/generate_stream",
            {"inputs": "x", "parameters": {"decoder_input_details": True}},
            "`decoder_input_details` == true is not supported when streaming",
        ),
        ("/", {"inputs": "", "stream": True}, "`inputs` cannot be empty"),
    ],
)
def test_client_mistakes_are_422_with_tgi_error_bodies(
    server: ServerProcess, path: str, body: dict[str, Any], fragment: str
) -> None:
    resp = post(server, path, body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error_type"] == "validation"
    assert fragment in resp.json()["error"], resp.json()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n must be 1"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, "`max_new_tokens` must be <= 1100"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools are not"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text content"),
    ],
)
def test_chat_mistakes_are_422_with_openai_error_bodies(
    server: ServerProcess, body: dict[str, Any], fragment: str
) -> None:
    resp = post(server, "/v1/chat/completions", {"model": MODEL_ID, **body})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"], error


def test_malformed_json_is_422(server: ServerProcess) -> None:
    resp = httpx.post(f"{server.url}/generate", content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["error_type"] == "validation"


def test_info(server: ServerProcess) -> None:
    info = server.get_json("/info")
    assert info["model_id"] == MODEL_ID
    assert info["router"] == "llmops"
    assert info["max_best_of"] == 1
    assert info["max_stop_sequences"] == 3
    assert info["max_input_tokens"] == 256
    assert info["max_total_tokens"] == 1280
    assert info["model_dtype"] == "torch.float32"
    assert info["model_device_type"] == "cpu"
    assert info["max_concurrent_requests"] == 128
    assert info["batching"]["continuous"] is True
    for key in ("model_sha", "max_client_batch_size", "validation_workers", "version", "model_pipeline_tag"):
        assert key in info


def test_openai_chat_completions(server: ServerProcess) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a pod?"}]
    resp = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=12, temperature=0)
    content = resp.choices[0].message.content
    assert content
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12
    assert resp.model == MODEL_ID

    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12

    # OpenAI leaves the stop sequence out of the text.
    stop = content[3:6]
    stopped = client.chat.completions.create(
        model=MODEL_ID, messages=messages, max_tokens=12, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == content[: content.index(stop)]
    streamed = client.chat.completions.create(
        model=MODEL_ID, messages=messages, max_tokens=12, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == content[: content.index(stop)]

    # No temperature: OpenAI's default, 1, samples; a seed makes that repeatable.
    seeded = [client.chat.completions.create(model="any", messages=messages, max_tokens=8, seed=5) for _ in "ab"]
    assert seeded[0].choices[0].message.content == seeded[1].choices[0].message.content
    assert seeded[0].choices[0].message.content != content[: len(seeded[0].choices[0].message.content or "")]
    assert [m.id for m in client.models.list()] == [MODEL_ID]


@pytest.mark.usefixtures("online")
def test_hub_client_chat_stream_as_the_rag_server_uses_it(server: ServerProcess) -> None:
    from huggingface_hub import AsyncInferenceClient, ChatCompletionInputStreamOptions

    async def scenario() -> tuple[str, Any]:
        client = AsyncInferenceClient(base_url=server.url)
        try:
            chunks = await client.chat_completion(
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=8,
                stream=True,
                stream_options=ChatCompletionInputStreamOptions(include_usage=True),
                temperature=0,
            )
            text, usage = "", None
            async for chunk in chunks:
                for choice in chunk.choices or []:
                    text += choice.delta.content or ""
                usage = chunk.usage or usage
            return text, usage
        finally:
            await client.close()  # type: ignore[no-untyped-call]

    text, usage = asyncio.run(scenario())
    assert text
    assert usage.completion_tokens == 8


def test_client_disconnect_stops_the_generation(server: ServerProcess) -> None:
    cancelled = server.metric("llmops_generation_cancelled_total")
    generated = server.metric("llmops_generation_generated_tokens_total")
    finished = server.metric("llmops_generation_finished_total")
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 1100}}
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line]
    assert len(received) == 3  # three events (each followed by a blank line), then the connection closes

    # A non-streamed request whose client gives up waiting is stopped too.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/generate", json=body, timeout=0.3)

    deadline = time.monotonic() + 60
    while server.metric("llmops_generation_cancelled_total") < cancelled + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("llmops_generation_cancelled_total") == cancelled + 2
    assert server.metric("llmops_generation_finished_total") == finished
    tokens = server.metric("llmops_generation_generated_tokens_total") - generated
    print(f"two abandoned requests of 1100 tokens: {tokens:.0f} tokens generated")
    assert tokens < 1100, "the abandoned sequences must stop long before max_new_tokens"
    assert server.metric("llmops_generation_running") == 0


def test_overload_is_429_with_retry_after(tiny: Path, tmp_path: Path) -> None:
    cfg = config(tiny, {"maxConcurrentRequests": 2}, maxBatchSize=2)
    proc = ServerProcess(MODULE, cfg, tmp_path).start()
    try:
        bodies = [{"inputs": f"{PROMPT} {i}", "parameters": {"max_new_tokens": 200}} for i in range(10)]
        responses = asyncio.run(_burst(proc.url, bodies))
        statuses = [r.status_code for r in responses]
        print(f"10 concurrent requests against 2 slots: {statuses.count(200)} x 200, {statuses.count(429)} x 429")
        assert set(statuses) == {200, 429}
        for r in responses:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1"
                assert r.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        assert proc.metric("llmops_generation_overload_rejections_total") == statuses.count(429)
    finally:
        proc.stop()


def test_api_key_and_a_hub_id_resolved_offline(tiny: Path, tmp_path: Path) -> None:
    """The production path: a Hugging Face id (no local path) found in a hub cache laid out the
    way huggingface_hub writes it, with HF_HUB_OFFLINE=1; and an API key."""
    repo = tmp_path / "hf" / "hub" / "models--llmops--tiny-lm"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    key_file = tmp_path / "api-key"
    key_file.write_text("s3cret\n")
    cfg = {"model": {"name": MODEL_ID, "cpuThreads": 1}, "auth": {"apiKeyFile": str(key_file)}}
    proc = ServerProcess(MODULE, cfg, tmp_path / "run", env={"HF_HOME": str(tmp_path / "hf")}).start()
    try:
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3}}
        denied = httpx.post(f"{proc.url}/generate", json=body)
        assert denied.status_code == 401
        assert denied.json()["error_type"] == "authentication"
        assert httpx.post(f"{proc.url}/v1/chat/completions", json={}).json()["error"]["type"] == "authentication_error"
        ok = httpx.post(f"{proc.url}/generate", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        info = httpx.get(f"{proc.url}/info", headers={"X-API-Key": "s3cret"}).json()
        assert info["model_id"] == MODEL_ID
        assert info["model_sha"] == commit
        assert proc.status("/health") == 200 and proc.status("/ready") == 200 and proc.status("/metrics") == 200
        assert "s3cret" not in proc.log()
        assert PROMPT not in proc.log()
    finally:
        proc.stop()


def test_sigterm_lets_a_stream_finish(tiny: Path, tmp_path: Path) -> None:
    proc = ServerProcess(MODULE, config(tiny), tmp_path).start()
    assert proc.proc is not None
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 300, "details": True}}
    with httpx.stream("POST", f"{proc.url}/generate_stream", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        first = next(lines)
        proc.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert first.startswith("data: ")
    last = json.loads(rest[-1][len("data: ") :])
    assert last["details"]["finish_reason"] == "length"
    assert last["details"]["generated_tokens"] == 300
    assert proc.proc.wait(timeout=30) == 0
    assert "draining" in proc.log()
