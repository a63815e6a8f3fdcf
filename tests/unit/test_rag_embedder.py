"""The RAG server's embeddings client against a local HTTP server that misbehaves on purpose:
429 and 503 answers are retried (Retry-After honoured), a client error is not, and the deadline
holds. (The happy path runs against the real embedding server in the integration tests.)"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from llmops_workloads.rag.config import EmbeddingClientConfig
from llmops_workloads.rag.embedder import Embedder
from llmops_workloads.rag.errors import ClientError, DependencyUnavailable


class Script:
    """The statuses to answer, in order; then 200 with 3-dimensional vectors."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.seen: list[dict[str, Any]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            script.seen.append(body)
            status = script.statuses.pop(0) if script.statuses else 200
            if status == 200:
                data = [
                    {"index": i, "embedding": base64.b64encode(np.full(3, i, dtype="<f4").tobytes()).decode()}
                    for i in range(len(body["input"]))
                ]
                payload = json.dumps({"data": data}).encode()
            else:
                payload = json.dumps({"error": {"message": f"status {status}"}}).encode()
            self.send_response(status)
            if status in (429, 503):
                self.send_header("Retry-After", "0")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()


def embed(url: str, texts: list[str], **cfg: Any) -> np.ndarray:
    async def run() -> np.ndarray:
        embedder = Embedder(EmbeddingClientConfig(url=url, backoff_seconds=0.01, **cfg))
        try:
            return await embedder.embed(texts)
        finally:
            await embedder.close()

    return asyncio.run(run())


def test_overload_and_unavailability_are_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.statuses = [429, 503]
    vectors = embed(url, ["a", "b"], max_retries=3)
    assert vectors.shape == (2, 3) and vectors[1].tolist() == [1, 1, 1]
    assert len(script.seen) == 3


def test_retries_are_bounded(server: tuple[str, Script]) -> None:
    url, script = server
    script.statuses = [503, 503, 503]
    with pytest.raises(DependencyUnavailable, match="HTTP 503"):
        embed(url, ["a"], max_retries=1)
    assert len(script.seen) == 2


def test_a_refused_input_is_a_client_error_and_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.statuses = [413]
    with pytest.raises(ClientError, match="refused the input: status 413"):
        embed(url, ["a"])
    assert len(script.seen) == 1


def test_nothing_listening_is_unavailable() -> None:
    with pytest.raises(DependencyUnavailable, match="unreachable"):
        embed("http://127.0.0.1:9", ["a"], max_retries=1)
