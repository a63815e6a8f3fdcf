"""Scenario 6: the embedding and RAG servers driven at twice their capacity, and SIGTERM under load.

Capacity is what the server admits at once: ``batching.maxConcurrentRequests`` inputs for the
embedding server, ``limits.maxConcurrentRequests`` requests (a stream until its last event) for the
RAG server. Clients run at twice that concurrency: the excess must be refused at once with 429,
``Retry-After`` and a JSON error body, nothing may be a 5xx, and the server's memory (RSS, sampled
through the run) must stay flat, because nothing queues without bound.

SIGTERM under load: every request the server accepted before the signal completes with 200, and
every SSE stream open at the signal ends with its ``done`` event. The servers run with
``drainSeconds: 1`` (what a pod behind a load balancer uses): requests that arrive after the signal
are refused with 503 ``draining`` rather than cut off on a closing connection.

Everything is real: the MiniLM model, Milvus Lite, the generation server with the tiny Llama.
Figures (latencies, counts, RSS) are reported, never asserted on time.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from faults import Figures, scale
from llmops_dev.services import MilvusLite, ServerProcess
from servers import minilm_path, start_tiny_generator

pytestmark = pytest.mark.fault

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_CAPACITY = 8  # inputs queued or in a forward pass
RAG_CAPACITY = 4  # requests in flight
LOAD_SECONDS = scale(6, 60)
_TEXT = (
    "kettle citric acid descale rinse tea leaves steep green black oolong bread sourdough starter flour water "
    "yeast oven crust crumb proof knead salt butter milk sugar honey lemon ginger mint basil garden soil "
    "compost seed sprout harvest river bridge mountain valley forest meadow winter summer autumn spring"
)
WORDS = _TEXT.split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# -- what the load generator records ------------------------------------------------------------


@dataclass(eq=False)
class Outcome:
    started: float
    ended: float
    status: int | None  # None: a transport error (reset, timeout, refused)
    error: str = ""
    retry_after: str | None = None
    json_error: bool = False  # the body is JSON with an "error" member
    headers_at: float | None = None  # streams: when the 200 headers arrived
    events: list[str] = field(default_factory=list)  # streams: the event names, in order


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    stop_at: float | None = None  # workers start no request after this instant
    open_streams: int = 0  # streams whose headers arrived and whose body has not ended

    def by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            key = str(o.status) if o.status is not None else "transport_error"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def ms(self, status: int, q: float) -> float:
        times = sorted((o.ended - o.started) * 1000 for o in self.outcomes if o.status == status)
        if not times:
            return 0.0
        return times[min(len(times) - 1, int(q * len(times)))]


def _is_json_error(response: httpx.Response, body: bytes) -> bool:
    if not response.headers.get("content-type", "").startswith("application/json"):
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and bool(parsed.get("error"))


def sse_names(raw: str) -> list[str]:
    names = []
    for block in raw.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
    return names


Request = Callable[[httpx.AsyncClient, random.Random, Load], Awaitable[Outcome]]


def post_json(path: str, body: Callable[[random.Random], dict[str, Any]]) -> Request:
    async def send(client: httpx.AsyncClient, rng: random.Random, _: Load) -> Outcome:
        started = time.monotonic()
        try:
            r = await client.post(path, json=body(rng))
        except httpx.HTTPError as exc:
            return Outcome(started, time.monotonic(), None, f"{type(exc).__name__}: {exc}")
        return Outcome(
            started, time.monotonic(), r.status_code, r.text[:200] if r.status_code != 200 else "",
            r.headers.get("retry-after"), _is_json_error(r, r.content),
        )  # fmt: skip

    return send


def post_stream(path: str, body: Callable[[random.Random], dict[str, Any]]) -> Request:
    async def send(client: httpx.AsyncClient, rng: random.Random, load: Load) -> Outcome:
        started = time.monotonic()
        headers_at = None
        status: int | None = None
        chunks: list[str] = []
        try:
            async with client.stream("POST", path, json=body(rng)) as r:
                status, headers_at = r.status_code, time.monotonic()
                load.open_streams += 1
                try:
                    async for text in r.aiter_text():
                        chunks.append(text)
                finally:
                    load.open_streams -= 1
                raw = "".join(chunks)
                out = Outcome(started, time.monotonic(), status, raw[:200] if status != 200 else "")
                out.retry_after = r.headers.get("retry-after")
                out.json_error = status != 200 and _is_json_error(r, raw.encode())
        except httpx.HTTPError as exc:
            # A stream cut mid-way lands here: the status is kept, the events say how far it got.
            out = Outcome(started, time.monotonic(), None, f"{type(exc).__name__} after HTTP {status}: {exc}")
            raw = "".join(chunks)
        out.headers_at = headers_at
        if status == 200:
            out.events = sse_names(raw)
        return out

    return send


async def drive(
    base_url: str, requests: list[Request], concurrency: int, seconds: float, load: Load, seed: int = 0
) -> None:
    """``concurrency`` clients, each sending the next request as soon as its last one is answered,
    for ``seconds`` or until ``load.stop_at``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        end = time.monotonic() + seconds

        async def worker(i: int) -> None:
            rng = random.Random(seed * 1000 + i)  # noqa: S311
            n = 0
            while time.monotonic() < end and (load.stop_at is None or time.monotonic() < load.stop_at):
                load.outcomes.append(await requests[(i + n) % len(requests)](client, rng, load))
                n += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))


class RssSampler:
    """The resident set of a process, read from /proc every ``every`` seconds on a thread."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.rss())
            except OSError:
                return
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


MIB = 1024 * 1024


def check_overload(load: Load, rss: RssSampler, figures: Figures) -> None:
    """The assertions shared by both servers at twice their capacity."""
    counts = load.by_status()
    figures["requests"] = len(load.outcomes)
    figures.values.update({f"status_{k}": v for k, v in sorted(counts.items())})
    figures["ok_p50_ms"] = load.ms(200, 0.5)
    figures["ok_p99_ms"] = load.ms(200, 0.99)
    figures["rejected_p50_ms"] = load.ms(429, 0.5)
    figures["rejected_p99_ms"] = load.ms(429, 0.99)
    start, peak, end = rss.samples[0], max(rss.samples), rss.samples[-1]
    figures["rss_start_mib"] = round(start / MIB, 1)
    figures["rss_peak_mib"] = round(peak / MIB, 1)
    figures["rss_end_mib"] = round(end / MIB, 1)
    figures["rss_samples"] = len(rss.samples)

    errors = [o for o in load.outcomes if o.status is None or o.status >= 500]
    assert not errors, f"{len(errors)} server errors or transport failures, e.g. {errors[:3]}"
    assert set(counts) <= {"200", "429"}, counts
    assert counts.get("200", 0) > 0, "nothing was served"
    assert counts.get("429", 0) > 0, "twice the capacity was never refused: the limit did not hold"
    for o in load.outcomes:
        if o.status == 429:
            assert o.retry_after is not None and o.retry_after.isdigit(), o
            assert o.json_error, f"a 429 without a JSON error body: {o.error!r}"
        if o.events:
            assert o.events[-1] == "done" and "error" not in o.events, o.events
    # Flat: a bounded queue holds a bounded amount of work, however long the load lasts. The bound
    # is generous for allocator noise; a queue that grew with the offered load would blow through it.
    assert peak - start < max(96 * MIB, start // 4), f"RSS grew from {start // MIB} MiB to {peak // MIB} MiB"


def check_sigterm(load: Load, sigterm_at: float, exit_code: int | None, figures: Figures) -> None:
    before = [o for o in load.outcomes if o.started < sigterm_at]
    in_flight = [o for o in before if o.ended > sigterm_at]
    streams_open = [o for o in in_flight if o.headers_at is not None and o.headers_at < sigterm_at]
    refused = [o for o in before if o.status == 503 and "draining" in o.error]
    figures["requests_before_sigterm"] = len(before)
    figures["in_flight_at_sigterm"] = len(in_flight)
    figures["in_flight_ok"] = sum(o.status == 200 for o in in_flight)
    figures["streams_open_at_sigterm"] = len(streams_open)
    figures["refused_draining"] = len(refused)
    figures["drain_ms"] = round((max(o.ended for o in load.outcomes) - sigterm_at) * 1000, 1)

    assert exit_code == 0, f"the server exited {exit_code} after SIGTERM"
    assert in_flight, "no request was in flight at SIGTERM: the test proved nothing"
    failed = [o for o in before if o.status is None or (o.status >= 500 and o not in refused)]
    assert not failed, f"{len(failed)} requests sent before SIGTERM failed, e.g. {failed[:3]}"
    # A request is accepted when the server started to work on it: it then completes with 200.
    accepted_but_lost = [o for o in in_flight if o.status not in (200, 429) and o not in refused]
    assert not accepted_but_lost, accepted_but_lost[:3]
    truncated = [o for o in load.outcomes if o.status == 200 and o.headers_at and o.events[-1:] != ["done"]]
    assert not truncated, f"{len(truncated)} SSE streams ended without 'done': {[o.events for o in truncated[:3]]}"


def sigterm_during(
    proc: ServerProcess, load: Load, after: float, open_streams: int = 0
) -> Callable[[], Awaitable[float]]:
    """SIGTERM ``after`` seconds of load, once at least ``open_streams`` streams are open."""

    async def fire() -> float:
        await asyncio.sleep(after)
        for _ in range(600):
            if load.open_streams >= open_streams:
                break
            await asyncio.sleep(0.05)
        assert proc.proc is not None
        at = time.monotonic()
        load.stop_at = at  # clients send nothing new: what is measured is what was in flight
        proc.proc.send_signal(signal.SIGTERM)
        return at

    return fire


# -- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("capacity")


def embedding_config(capacity: int) -> dict[str, Any]:
    return {
        "model": {"name": MODEL, "path": minilm_path()},
        "batching": {"maxBatchSize": 8, "maxWaitMillis": 5, "maxConcurrentRequests": capacity},
        "server": {"drainSeconds": 1, "gracefulTimeoutSeconds": 30},
        "logLevel": "WARNING",
    }


@pytest.fixture(scope="module")
def milvus(workdir: Path) -> Iterator[MilvusLite]:
    with MilvusLite(workdir / "milvus") as m:
        yield m


@pytest.fixture(scope="module")
def backend(workdir: Path) -> Iterator[ServerProcess]:
    """The embedding service behind the RAG server: default capacity (it is not under test)."""
    proc = ServerProcess("llmops_workloads.embedding", embedding_config(512), workdir / "backend").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def generator(workdir: Path) -> Iterator[ServerProcess]:
    proc = start_tiny_generator(workdir)
    yield proc
    proc.stop()


def rag_config(backend: ServerProcess, milvus: MilvusLite, generator: ServerProcess, capacity: int) -> dict[str, Any]:
    return {
        "embedding": {"url": backend.url, "timeoutSeconds": 30},
        "milvus": {"uri": milvus.uri, "collection": "capacity", "timeoutSeconds": 10},
        "chunking": {"tokenizer": minilm_path(), "chunkTokens": 128, "overlapTokens": 16},
        "generator": {"url": generator.url, "timeoutSeconds": 60, "maxNewTokens": 256, "defaultMaxNewTokens": 16},
        "prompt": {"maxContextTokens": 300},
        "cache": {"enabled": False},  # every query does the whole work: embed, search, generate
        "limits": {"maxConcurrentRequests": capacity},
        "server": {"drainSeconds": 1, "gracefulTimeoutSeconds": 60},
        "logLevel": "WARNING",
    }


@pytest.fixture(scope="module")
def corpus(workdir: Path, backend: ServerProcess, milvus: MilvusLite, generator: ServerProcess) -> int:
    """A small collection, written once through a RAG server of its own."""
    proc = ServerProcess(
        "llmops_workloads.rag", rag_config(backend, milvus, generator, 16), workdir / "rag-ingest"
    ).start()
    try:
        rng = random.Random(7)  # noqa: S311
        docs = [{"id": f"doc-{i}", "text": sentence(rng, 120), "metadata": {"n": i}} for i in range(12)]
        r = httpx.post(proc.url + "/v1/ingest", json={"documents": docs}, timeout=120)
        assert r.status_code == 200, r.text
        return len(docs)
    finally:
        proc.stop()


def rag_server(workdir: Path, name: str, capacity: int, backend: ServerProcess, milvus: MilvusLite,
               generator: ServerProcess) -> ServerProcess:  # fmt: skip
    return ServerProcess("llmops_workloads.rag", rag_config(backend, milvus, generator, capacity), workdir / name)


def rag_requests(max_new_tokens: int) -> list[Request]:
    def query(rng: random.Random) -> dict[str, Any]:
        return {"query": sentence(rng, 8) + "?", "top_k": 3, "max_new_tokens": max_new_tokens}

    return [
        post_stream("/v1/query", lambda rng: {**query(rng), "stream": True}),
        post_json("/v1/query", query),
        post_json("/v1/retrieve", lambda rng: {"query": sentence(rng, 8), "top_k": 5}),
    ]


def embedding_requests() -> list[Request]:
    return [
        post_json("/v1/embeddings", lambda rng: {"input": sentence(rng, 60), "model": MODEL}),
        post_json("/embed", lambda rng: {"inputs": sentence(rng, 60)}),
    ]


# -- the scenarios -----------------------------------------------------------------------------


def test_embedding_server_at_twice_its_capacity(workdir: Path, figures: Figures) -> None:
    proc = ServerProcess("llmops_workloads.embedding", embedding_config(EMBEDDING_CAPACITY), workdir / "emb-2x")
    proc.start()
    try:
        assert proc.proc is not None
        asyncio.run(drive(proc.url, embedding_requests(), EMBEDDING_CAPACITY, 1.0, Load()))  # warm-up
        load = Load()
        with RssSampler(proc.proc.pid) as rss:
            asyncio.run(drive(proc.url, embedding_requests(), 2 * EMBEDDING_CAPACITY, LOAD_SECONDS, load))
        figures["capacity"] = EMBEDDING_CAPACITY
        figures["concurrency"] = 2 * EMBEDDING_CAPACITY
        figures["seconds"] = LOAD_SECONDS
        check_overload(load, rss, figures)
        assert proc.metric("llmops_overload_rejections_total") == load.by_status()["429"]
    finally:
        proc.stop()


def test_rag_server_at_twice_its_capacity(
    workdir: Path, backend: ServerProcess, milvus: MilvusLite, generator: ServerProcess, corpus: int,
    figures: Figures,
) -> None:  # fmt: skip
    proc = rag_server(workdir, "rag-2x", RAG_CAPACITY, backend, milvus, generator).start()
    try:
        assert proc.proc is not None
        asyncio.run(drive(proc.url, rag_requests(8), RAG_CAPACITY, 1.0, Load()))  # warm-up
        load = Load()
        with RssSampler(proc.proc.pid) as rss:
            asyncio.run(drive(proc.url, rag_requests(8), 2 * RAG_CAPACITY, LOAD_SECONDS, load))
        figures["capacity"] = RAG_CAPACITY
        figures["concurrency"] = 2 * RAG_CAPACITY
        figures["seconds"] = LOAD_SECONDS
        figures["streams_done"] = sum(o.events[-1:] == ["done"] for o in load.outcomes)
        check_overload(load, rss, figures)
        assert proc.metric("llmops_rag_overload_rejections_total") == load.by_status()["429"]
    finally:
        proc.stop()


def test_embedding_server_sigterm_under_load(workdir: Path, figures: Figures) -> None:
    proc = ServerProcess("llmops_workloads.embedding", embedding_config(512), workdir / "emb-sigterm").start()
    load = Load()
    # Requests of 16 long inputs: each one is a few forward passes, so some are always in flight.
    big = post_json("/v1/embeddings", lambda rng: {"input": [sentence(rng, 120) for _ in range(16)]})

    async def run() -> float:
        driver = asyncio.ensure_future(drive(proc.url, [big], 8, 600, load))
        at = await sigterm_during(proc, load, scale(3, 20))()
        await driver
        return at

    try:
        sigterm_at = asyncio.run(run())
        assert proc.proc is not None
        exit_code = proc.proc.wait(timeout=60)
    finally:
        proc.stop()
    check_sigterm(load, sigterm_at, exit_code, figures)


def test_rag_server_sigterm_under_load_ends_every_stream(
    workdir: Path, backend: ServerProcess, milvus: MilvusLite, generator: ServerProcess, corpus: int,
    figures: Figures,
) -> None:  # fmt: skip
    proc = rag_server(workdir, "rag-sigterm", 64, backend, milvus, generator).start()
    load = Load()
    requests = rag_requests(200)[:1] * 3 + rag_requests(200)[1:]  # mostly streams, long enough to be open

    async def run() -> float:
        driver = asyncio.ensure_future(drive(proc.url, requests, 8, 600, load))
        at = await sigterm_during(proc, load, scale(3, 20), open_streams=2)()
        await driver
        return at

    try:
        sigterm_at = asyncio.run(run())
        assert proc.proc is not None
        exit_code = proc.proc.wait(timeout=90)
    finally:
        proc.stop()
    check_sigterm(load, sigterm_at, exit_code, figures)
    streams = [o for o in load.outcomes if o.headers_at is not None and o.headers_at < sigterm_at < o.ended]
    assert streams, "no stream was open at SIGTERM: the test proved nothing"
    assert all(o.status == 200 and o.events[-1] == "done" for o in streams)
    figures["ok_p50_ms"] = statistics.median([(o.ended - o.started) * 1000 for o in load.outcomes if o.status == 200])
