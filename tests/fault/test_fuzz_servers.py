"""Scenario 8 (b): schemathesis against each server's own OpenAPI document, over HTTP, live.

For every operation of the embedding, RAG and generation servers, schemathesis generates requests
that fit the schema (positive) and requests that do not (negative: wrong types, missing fields,
out-of-range numbers, unknown members, ...). Checked on every answer:

- ``not_a_server_error``: no 5xx, ever: a client's mistake is a 4xx;
- ``negative_data_rejection``: data that breaks the schema is refused with a 4xx;
- every 4xx has a JSON body with an ``error`` member (what clients parse).

The RAG server runs against Milvus Lite, the embedding server (itself under test) and the
generation server (itself under test) with the tiny Llama; generation limits are small, so a
fuzzed request never costs more than a few milliseconds of decoding.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import negative_data_rejection

from faults import Figures, scale
from llmops_dev.services import MilvusLite, ServerProcess
from servers import minilm_path, start_tiny_generator

pytestmark = pytest.mark.fault

EXAMPLES = scale(30, 300)  # per operation and mode
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-servers")


@pytest.fixture(scope="module")
def embedding(workdir: Path) -> Iterator[ServerProcess]:
    cfg = {"model": {"name": MODEL, "path": minilm_path()}, "logLevel": "WARNING"}
    proc = ServerProcess("llmops_workloads.embedding", cfg, workdir / "embedding").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def generation(workdir: Path) -> Iterator[ServerProcess]:
    limits = {"maxInputTokens": 1024, "maxTotalTokens": 2048, "maxNewTokens": 16, "defaultMaxNewTokens": 8}
    proc = start_tiny_generator(workdir, limits)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def milvus(workdir: Path) -> Iterator[MilvusLite]:
    with MilvusLite(workdir / "milvus") as m:
        yield m


@pytest.fixture(scope="module")
def rag(
    workdir: Path, embedding: ServerProcess, milvus: MilvusLite, generation: ServerProcess
) -> Iterator[ServerProcess]:
    cfg = {
        "embedding": {"url": embedding.url, "timeoutSeconds": 30},
        "milvus": {"uri": milvus.uri, "collection": "fuzz", "timeoutSeconds": 10},
        "chunking": {"tokenizer": minilm_path(), "chunkTokens": 128, "overlapTokens": 16},
        "generator": {"url": generation.url, "timeoutSeconds": 60, "maxNewTokens": 8, "defaultMaxNewTokens": 4},
        "prompt": {"maxContextTokens": 200},
        "logLevel": "WARNING",
    }
    proc = ServerProcess("llmops_workloads.rag", cfg, workdir / "rag").start()
    docs = [{"id": f"d{i}", "text": f"Document {i} is about kettles, tea and bread number {i}."} for i in range(5)]
    r = requests.post(proc.url + "/v1/ingest", json={"documents": docs}, timeout=60)
    assert r.status_code == 200, r.text
    yield proc
    proc.stop()


def json_error_body(case: Case[Any], response: schemathesis.Response) -> str | None:
    """A 4xx must say what is wrong in JSON (``error``), in every dialect the servers speak."""
    if not 400 <= response.status_code < 500:
        return None
    where = f"{case.method} {case.formatted_path}: {response.status_code}"
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return f"{where} without a JSON body: {response.content[:200]!r}"
    if not (isinstance(body, dict) and body.get("error")):
        return f"{where} without an error member: {body!r}"
    return None


def fuzz(server: ServerProcess, figures: Figures) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    session = requests.Session()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        checks = [not_a_server_error] + ([negative_data_rejection] if mode.is_negative else [])
        for operation in operations:

            def one(case: Case[Any], mode: GenerationMode = mode, checks: list[Any] = checks) -> None:
                response = case.call(base_url=server.url, session=session, timeout=60)
                statuses[f"{mode.value}_{response.status_code // 100}xx"] += 1
                case.validate_response(response, checks=checks)
                problem = json_error_body(case, response)
                if problem:
                    failures.append(problem)
                assert problem is None, problem

            run = settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,  # the same cases every CI run; LLMOPS_FAULT_SCALE=full explores more
                database=None,
                suppress_health_check=list(HealthCheck),
                print_blob=True,
            )(given(case=operation.as_strategy(generation_mode=mode))(lambda case: one(case)))
            try:
                run()
            except Exception as exc:
                name = type(exc).__name__
                if name in ("Unsatisfiable", "NoSuchExample") or "cannot be negated" in str(exc).lower():
                    continue  # nothing to negate (an operation without parameters or body)
                raise
    figures["operations"] = len(operations)
    figures["examples_per_operation_and_mode"] = EXAMPLES
    figures.values.update(sorted(statuses.items()))
    figures["requests"] = sum(statuses.values())
    assert statuses, "schemathesis generated nothing"
    assert not failures, failures[:5]
    assert all(not k.endswith("5xx") for k in statuses), statuses


def test_embedding_server_openapi_fuzz(embedding: ServerProcess, figures: Figures) -> None:
    fuzz(embedding, figures)
    assert embedding.status("/ready") == 200


def test_generation_server_openapi_fuzz(generation: ServerProcess, figures: Figures) -> None:
    fuzz(generation, figures)
    assert generation.status("/ready") == 200


def test_rag_server_openapi_fuzz(rag: ServerProcess, figures: Figures) -> None:
    fuzz(rag, figures)
    assert rag.status("/ready") == 200
