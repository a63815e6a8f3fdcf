"""HTTP API of the RAG server: ``POST /v1/query`` (JSON or Server-Sent Events), ``/v1/query/stream``,
``/v1/retrieve``, ``/v1/ingest``, ``DELETE /v1/documents/{id}``, ``/health``, ``/ready``,
``/info``, ``/metrics``.

Errors are ``{"error": {"message", "type", "param"}}``: a client's mistake is a 4xx naming the
field; a dependency that is down or slow is 503 with Retry-After (and ``dependency`` in the
body), within its configured timeout; liveness never depends on them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..common.http import key_is_valid, presented_key, watch_disconnect
from ..common.serving import Lifecycle
from .config import RagServerConfig
from .documents import MAX_DOC_ID, from_text
from .errors import ClientError, ConfigError, DependencyUnavailable, Overloaded
from .filters import FilterError
from .metrics import OVERLOADED
from .service import RagService, source

log = logging.getLogger("llmops.rag.api")
ROUTES = {
    "/v1/query",
    "/v1/query/stream",
    "/v1/retrieve",
    "/v1/ingest",
    "/v1/documents/*",
    "/health",
    "/ready",
    "/info",
    "/metrics",
}


@dataclass
class RagState(Lifecycle):
    cfg: RagServerConfig = field(kw_only=True)
    service: RagService | None = None
    readiness: tuple[float, dict[str, bool]] | None = None
    in_flight: int = 0  # admitted requests not yet answered (streams until their last event)


class Admission:
    """At most ``limit`` requests in flight; beyond that, ``Overloaded`` (429) at once: the
    server never queues without bound, so memory stays flat however hard it is driven."""

    def __init__(self, state: RagState, limit: int) -> None:
        self.state, self.limit = state, limit

    def enter(self) -> Callable[[], None]:
        """Take a slot; the returned function gives it back (once, however often it is called)."""
        if self.state.in_flight >= self.limit:
            OVERLOADED.inc()
            raise Overloaded(f"{self.state.in_flight} requests in flight (limit {self.limit}); retry later")
        self.state.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.state.in_flight -= 1

        return release


class _StreamHoldingSlot(StreamingResponse):
    """A stream that gives its admission slot back when it ends, however it ends."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=_SSE_HEADERS)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def error_body(route: str, status: int, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None}}


# -- requests ---------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: JSON true is no integer


class RetrieveRequest(_Request):
    query: str = Field(min_length=1)
    top_k: int | None = Field(None, ge=1)
    filter: dict[str, Any] | None = None
    distinct_documents: bool = Field(False, description="At most one chunk per document.")


class QueryRequest(_Request):
    query: str = Field(min_length=1)
    top_k: int | None = Field(None, ge=1)
    filter: dict[str, Any] | None = None
    stream: bool = False
    max_new_tokens: int | None = Field(None, ge=1, description="Clamped to the server's limit.")
    temperature: float | None = Field(None, ge=0, le=2)


class IngestDocument(_Request):
    id: str = Field(min_length=1, max_length=MAX_DOC_ID)
    text: str
    format: Literal["text", "markdown", "html"] = "text"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json(value, "metadata")
        return value


def _check_json(value: Any, where: str) -> None:
    """What Milvus' JSON field stores: 64-bit integers, finite numbers, valid UTF-8. Anything else
    is the client's mistake (422), not a failed write (5xx)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{where}: integer out of the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: numbers must be finite")
    elif isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{where}: not valid UTF-8 (a lone surrogate)") from None
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, f"{where} key")
            _check_json(item, f"{where}.{key}")


class IngestRequest(_Request):
    documents: list[IngestDocument] = Field(min_length=1)


# -- the app ----------------------------------------------------------------------------


def create_app(state: RagState) -> FastAPI:
    cfg = state.cfg
    app = FastAPI(title="llmops RAG server", version=__version__, docs_url=None, redoc_url=None)
    retry_after = {"Retry-After": str(cfg.server.retry_after_seconds)}
    admission = Admission(state, cfg.limits.max_concurrent_requests)

    def fail(status: int, message: str, kind: str, param: str | None = None, **extra: Any) -> JSONResponse:
        body = {"error": {"message": message, "type": kind, "param": param, **extra}}
        headers = retry_after if status in (429, 503) else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ClientError)
    async def _client_error(_: Request, exc: ClientError) -> JSONResponse:
        return fail(exc.status, exc.message, "invalid_request_error", exc.param)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return fail(429, str(exc), "overloaded")

    @app.exception_handler(FilterError)
    async def _filter_error(_: Request, exc: FilterError) -> JSONResponse:
        return fail(422, str(exc), "invalid_request_error", "filter")

    @app.exception_handler(DependencyUnavailable)
    async def _dependency(_: Request, exc: DependencyUnavailable) -> JSONResponse:
        log.warning("dependency failed", extra={"dependency": exc.dependency, "error": exc.message})
        kind = "dependency_unavailable" if exc.status == 503 else "dependency_error"
        return fail(exc.status, str(exc), kind, dependency=exc.dependency)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return fail(422, f"{where}: {first['msg']}" if where else str(first["msg"]), "invalid_request_error", where)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that is not JSON, an unknown path, a wrong method) in
        # this server's error shape, not as {"detail": ...}.
        response = fail(exc.status_code, str(exc.detail), "invalid_request_error")
        response.headers.update(exc.headers or {})
        return response

    def guard(request: Request) -> RagService:
        if state.api_keys and not key_is_valid(presented_key(request), state.api_keys):
            raise ClientError(401, "missing or invalid API key (send Authorization: Bearer <key>)")
        if state.service is None or not state.ready:
            raise DependencyUnavailable("server", "draining" if state.draining else "starting: dependencies not ready")
        return state.service

    def check_query(query: str, top_k: int | None) -> int:
        if len(query) > cfg.limits.max_query_chars:
            raise ClientError(
                413, f"query has {len(query)} characters; the limit is {cfg.limits.max_query_chars}", "query"
            )
        if not query.strip():
            raise ClientError(422, "query must not be blank", "query")
        k = top_k or cfg.retrieval.default_top_k
        if k > cfg.retrieval.max_top_k:
            raise ClientError(422, f"top_k must be at most {cfg.retrieval.max_top_k}", "top_k")
        return k

    async def until_disconnect(request: Request, work: asyncio.Future[Any]) -> Any:
        """Await ``work``, cancelling it if the client leaves first."""
        watcher = asyncio.create_task(watch_disconnect(request))
        watcher.add_done_callback(lambda _: work.cancel())
        try:
            return await work
        finally:
            watcher.cancel()

    @app.post("/v1/retrieve")
    async def retrieve(body: RetrieveRequest, request: Request) -> Response:
        service = guard(request)
        k = check_query(body.query, body.top_k)
        started = time.monotonic()
        release = admission.enter()
        try:
            result = await service.retrieve(body.query, k, body.filter, body.distinct_documents)
        finally:
            release()
        snippet = cfg.retrieval.snippet_chars
        payload = {
            "sources": [source(h, snippet) for h in result.hits],
            "timings": {**result.timings, "total_ms": round((time.monotonic() - started) * 1000, 2)},
            "cached": result.cached,
        }
        return Response(orjson.dumps(payload), media_type="application/json")

    async def run_query(body: QueryRequest, request: Request, stream: bool) -> Response:
        service = guard(request)
        k = check_query(body.query, body.top_k)
        if not service.generator.configured:
            raise DependencyUnavailable("generator", "no generator is configured (generator.url): use /v1/retrieve")
        release = admission.enter()
        handed_over = False  # a stream gives its slot back when it ends
        try:
            events = service.answer(body.query, k, body.filter, body.max_new_tokens, body.temperature)
            if not stream:
                collected = asyncio.ensure_future(_collect(events))
                result = await until_disconnect(request, collected)
                return Response(orjson.dumps(result), media_type="application/json")
            # Fetch the sources and the first token before answering, so that Milvus or the generator
            # being down is a 503, not a 200 followed by an error event.
            head: list[dict[str, Any]] = []
            try:
                head.append(await anext(events))
                head.append(await anext(events))
            except StopAsyncIteration:
                pass
            except BaseException:
                await events.aclose()
                raise
            response = _StreamHoldingSlot(_sse(head, events), release)
            handed_over = True
            return response
        finally:
            if not handed_over:
                release()

    @app.post("/v1/query")
    async def query(body: QueryRequest, request: Request) -> Response:
        return await run_query(body, request, body.stream)

    @app.post("/v1/query/stream")
    async def query_stream(body: QueryRequest, request: Request) -> Response:
        return await run_query(body, request, True)

    @app.post("/v1/ingest")
    async def ingest(body: IngestRequest, request: Request) -> Response:
        service = guard(request)
        if len(body.documents) > cfg.limits.max_documents_per_request:
            raise ClientError(
                413,
                f"{len(body.documents)} documents; at most {cfg.limits.max_documents_per_request} per request",
                "documents",
            )
        seen: set[str] = set()
        docs = []
        for i, d in enumerate(body.documents):
            if d.id in seen:
                raise ClientError(422, f"documents[{i}].id: {d.id!r} appears twice in this request", "documents")
            seen.add(d.id)
            if len(d.text) > cfg.limits.max_document_chars:
                raise ClientError(
                    413, f"documents[{i}].text is over {cfg.limits.max_document_chars} characters", "documents"
                )
            if not d.text.strip():
                raise ClientError(422, f"documents[{i}].text must not be empty", "documents")
            docs.append(from_text(d.id, d.text, d.format, d.metadata))
        # Ingestion is not cancelled when the client leaves: a half-written document is worse.
        release = admission.enter()
        try:
            summary = await service.ingestor.ingest(docs)
        finally:
            release()
        return Response(orjson.dumps(summary.as_dict()), media_type="application/json")

    @app.delete("/v1/documents/{doc_id:path}")
    async def delete_document(doc_id: str, request: Request) -> Response:
        service = guard(request)
        if len(doc_id) > MAX_DOC_ID:
            raise ClientError(422, f"document ids are at most {MAX_DOC_ID} characters", "doc_id")
        release = admission.enter()
        try:
            deleted = await service.ingestor.delete(doc_id)
        finally:
            release()
        if not deleted:
            raise ClientError(404, f"no document {doc_id!r}", "doc_id")
        return Response(orjson.dumps({"doc_id": doc_id, "deleted_chunks": deleted}), media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "starting, draining, or a dependency is down"}})
    async def ready() -> JSONResponse:
        if not state.ready or state.service is None:
            body: dict[str, Any] = {"status": state.phase}
            if state.load_error:
                body["error"] = state.load_error
            return JSONResponse(body, status_code=503)
        checks = await _dependencies(state)
        status = 200 if all(checks.values()) else 503
        return JSONResponse({"status": "ready" if status == 200 else "degraded", "dependencies": checks}, status)

    @app.get("/info")
    async def info(request: Request) -> dict[str, Any]:
        if state.api_keys and not key_is_valid(presented_key(request), state.api_keys):
            raise ClientError(401, "missing or invalid API key")
        out: dict[str, Any] = {
            "version": __version__,
            "collection": cfg.milvus.collection,
            "index_type": cfg.milvus.index_type,
            "metric": cfg.milvus.metric,
            "generator": cfg.generator.kind if cfg.generator.url else None,
            "chunking": cfg.chunking.model_dump(),
            "cache": {"enabled": cfg.cache.enabled, "redis": bool(cfg.cache.redis_url)},
        }
        if state.service is not None and state.ready:
            try:
                out["chunks"] = await state.service.store.count()
            except DependencyUnavailable:
                out["chunks"] = None
            out["dimension"] = state.service.store.dimension
        return out

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse_event(event: dict[str, Any]) -> bytes:
    name: str = event.pop("event")
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def _sse(head: list[dict[str, Any]], events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    for event in head:
        yield _sse_event(event)
    try:
        async for event in events:
            yield _sse_event(event)
    except DependencyUnavailable as exc:
        # Headers are gone: the failure travels as an event, and the stream ends.
        yield _sse_event({"event": "error", "error": {"message": str(exc), "type": "dependency_unavailable"}})


async def _collect(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    answer: list[str] = []
    result: dict[str, Any] = {}
    async for event in events:
        kind = event.pop("event")
        if kind == "sources":
            result["sources"] = event["sources"]
        elif kind == "token":
            answer.append(event["text"])
        elif kind == "done":
            result.update(event)
    return {"answer": "".join(answer).strip(), **result}


async def _dependencies(state: RagState) -> dict[str, bool]:
    """Milvus, embedding and generator reachability, remembered for a second (probes are frequent)."""
    now = time.monotonic()
    if state.readiness and now - state.readiness[0] < 1.0:
        return state.readiness[1]
    service = state.service
    assert service is not None
    names = ["milvus", "embedding"]
    probes = [service.store.ping(), service.embedder.healthy()]
    if service.generator.configured:
        names.append("generator")
        probes.append(service.generator.healthy())
    results = await asyncio.gather(*probes)
    checks = dict(zip(names, results, strict=True))
    state.readiness = (now, checks)
    return checks


__all__ = ["ROUTES", "ConfigError", "RagState", "create_app", "error_body"]
