"""HTTP API of the generation server: TGI's ``POST /``, ``/generate``, ``/generate_stream`` and
``GET /info``; OpenAI's ``POST /v1/chat/completions`` and ``GET /v1/models``; and ``/health``,
``/ready``, ``/metrics``.

Errors are JSON in the caller's dialect: TGI's ``{"error", "error_type"}`` (error types
``validation``, ``overloaded``, ``generation``, as huggingface_hub maps them to exceptions), or
OpenAI's ``{"error": {...}}`` under ``/v1``. A client's mistake is a 4xx, overload is 429 with
Retry-After, not being ready is 503 with Retry-After. A client that goes away (during a stream
or while waiting for a whole answer) stops its generation: the engine drops its row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..common.http import key_is_valid, presented_key, watch_disconnect
from ..common.ratelimit import charge_tokens
from ..common.serving import Lifecycle
from . import openai_chat, tgi
from .config import GenerationServerConfig
from .engine import Engine, Finished, Generation, GenerationFailed, GenerationRequest, Overloaded, Token
from .model import GenerationModel
from .validation import Limits, ValidationFailed

log = logging.getLogger("llmops.generation.api")
ROUTES = {
    "/",
    "/generate",
    "/generate_stream",
    "/v1/chat/completions",
    "/v1/models",
    "/health",
    "/ready",
    "/info",
    "/metrics",
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_TGI_TYPES = {401: "authentication", 413: "validation", 422: "validation", 429: "overloaded", 503: "unhealthy"}
_OPENAI_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
    503: "server_unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.headers: dict[str, str] = {}


@dataclass
class ServerState(Lifecycle):
    cfg: GenerationServerConfig = field(kw_only=True)
    model: GenerationModel | None = None
    engine: Engine | None = None
    limits: Limits | None = None


def _tgi_type(status: int) -> str:
    return _TGI_TYPES.get(status, "generation" if status in (424, 500) else "validation")


def error_body(route: str, status: int, message: str) -> dict[str, Any]:
    """The caller's dialect: OpenAI's under /v1, TGI's elsewhere."""
    if route.startswith("/v1/"):
        kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return {"error": message, "error_type": _tgi_type(status)}


class GenerationStream(StreamingResponse):
    """Server-sent events of one generation, which is cancelled however the response ends: even
    when the client is gone before the first event (the event generator then never starts, so
    its own cleanup never runs)."""

    def __init__(self, events: AsyncIterator[bytes], handle: Generation) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self.handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.handle.cancel()


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    return b"data: " + payload + b"\n\n"


def create_app(state: ServerState) -> FastAPI:
    cfg = state.cfg
    app = FastAPI(title="llmops generation server", version=__version__, docs_url=None, redoc_url=None)

    def error_response(request: Request, exc: ApiError) -> JSONResponse:
        body = error_body(request.url.path, exc.status, exc.message)
        if isinstance(body["error"], dict):
            body["error"]["param"] = exc.param
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(ValidationFailed)
    async def _invalid(request: Request, exc: ValidationFailed) -> JSONResponse:
        return error_response(request, ApiError(422, exc.message, exc.param))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        return error_response(request, ApiError(422, message, where or None))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that is not JSON, an unknown path, a wrong method) in
        # the caller's dialect, not as {"detail": ...}.
        err = ApiError(exc.status_code, str(exc.detail))
        err.headers.update(exc.headers or {})
        return error_response(request, err)

    def check_auth(request: Request) -> None:
        """A route dependency: it runs before the body is validated (no hints for strangers)."""
        if state.api_keys and not key_is_valid(presented_key(request), state.api_keys):
            raise ApiError(401, "missing or invalid API key (send Authorization: Bearer <key>)")

    authorized = [Depends(check_auth)]

    def require_ready() -> tuple[GenerationModel, Engine, Limits]:
        if not state.ready or state.model is None or state.engine is None or state.limits is None:
            err = ApiError(503, "draining" if state.draining else "the model is loading")
            err.headers["Retry-After"] = str(cfg.server.retry_after_seconds)
            raise err
        return state.model, state.engine, state.limits

    def submit(engine: Engine, request: GenerationRequest) -> Generation:
        try:
            return engine.submit(request)
        except Overloaded as exc:
            err = ApiError(429, "Model is overloaded")
            err.headers["Retry-After"] = str(cfg.server.retry_after_seconds)
            raise err from exc

    def watch(request: Request, handle: Generation) -> asyncio.Task[None]:
        """Cancel the generation when the client disconnects."""
        watcher = asyncio.create_task(watch_disconnect(request))
        watcher.add_done_callback(lambda _: handle.cancel())
        return watcher

    async def run_to_end(request: Request, handle: Generation) -> tuple[list[Token], Finished]:
        watcher = watch(request, handle)
        tokens: list[Token] = []
        try:
            async for step in handle:
                tokens.append(step.token)
                if step.finished is not None:
                    return tokens, step.finished
        except GenerationFailed as exc:
            raise ApiError(424, f"Request failed during generation: {exc}") from exc
        finally:
            watcher.cancel()
            handle.cancel()
            charge_tokens(handle.received)  # generated tokens count against tokens-per-minute limits
        raise ApiError(499, "the client closed the request")

    def stream(request: Request, handle: Generation, events: AsyncIterator[bytes]) -> StreamingResponse:
        async def guarded() -> AsyncIterator[bytes]:
            watcher = watch(request, handle)
            try:
                async for chunk in events:
                    yield chunk
            except GenerationFailed as exc:
                yield sse({"error": f"Request failed during generation: {exc}", "error_type": "generation"})
            finally:
                watcher.cancel()
                handle.cancel()
                charge_tokens(handle.received)

        return GenerationStream(guarded(), handle)

    def log_prompt(text: str) -> None:
        if cfg.debug:
            log.debug("prompt", extra={"prompt": text})

    # -- TGI ------------------------------------------------------------------------------

    async def generate(body: tgi.GenerateRequest, request: Request, wrap: bool = False) -> Response:
        model, engine, limits = require_ready()
        log_prompt(body.inputs)
        handle = submit(engine, tgi.to_engine(body, False, model, limits))
        tokens, finished = await run_to_end(request, handle)
        out = tgi.generate_response(body, tokens, finished)
        headers = {
            "x-prompt-tokens": str(finished.input_length),
            "x-generated-tokens": str(finished.generated_tokens),
        }
        # TGI answers POST / with a one-element list ("to match api-inference").
        return Response(orjson.dumps([out] if wrap else out), media_type="application/json", headers=headers)

    async def generate_stream(body: tgi.GenerateRequest, request: Request) -> StreamingResponse:
        model, engine, limits = require_ready()
        log_prompt(body.inputs)
        handle = submit(engine, tgi.to_engine(body, True, model, limits))

        async def events() -> AsyncIterator[bytes]:
            index = 0
            async for step in handle:
                index += 1  # TGI counts from 1
                yield sse(tgi.stream_event(body, index, step.token, step.finished))

        return stream(request, handle, events())

    @app.post("/", include_in_schema=False, dependencies=authorized)
    async def compat_generate(body: tgi.CompatGenerateRequest, request: Request) -> Response:
        if body.stream:
            return await generate_stream(body, request)
        return await generate(body, request, wrap=True)

    @app.post("/generate", dependencies=authorized)
    async def tgi_generate(body: tgi.GenerateRequest, request: Request) -> Response:
        return await generate(body, request)

    @app.post("/generate_stream", dependencies=authorized)
    async def tgi_generate_stream(body: tgi.GenerateRequest, request: Request) -> StreamingResponse:
        return await generate_stream(body, request)

    # -- OpenAI ---------------------------------------------------------------------------

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat_completions(body: openai_chat.ChatRequest, request: Request) -> Response:
        model, engine, limits = require_ready()
        gen_request = openai_chat.to_engine(body, model, limits)
        log_prompt(str([m.model_dump() for m in body.messages]))
        handle = submit(engine, gen_request)
        if not body.stream:
            tokens, finished = await run_to_end(request, handle)
            out = openai_chat.completion(body, gen_request, cfg.model.name, tokens, finished)
            return Response(orjson.dumps(out), media_type="application/json")
        writer = openai_chat.ChunkWriter(body, gen_request, cfg.model.name)

        async def events() -> AsyncIterator[bytes]:
            yield sse(writer.first())
            async for step in handle:
                for chunk in writer.token(step.token, step.finished):
                    yield sse(chunk)
            yield sse("[DONE]")

        return stream(request, handle, events())

    @app.get("/v1/models", dependencies=authorized)
    async def models() -> dict[str, Any]:
        entry = {"id": cfg.model.name, "object": "model", "created": 0, "owned_by": "llmops"}
        return {"object": "list", "data": [entry]}

    # -- operations -----------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "loading, draining or failed"}})
    async def ready() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ready"})
        body: dict[str, Any] = {"status": state.phase}
        if state.load_error:
            body["error"] = state.load_error
        return JSONResponse(body, status_code=503)

    @app.get("/info", dependencies=authorized)
    async def info() -> dict[str, Any]:
        """TGI's Info fields, then llmops' own (batching)."""
        limits = state.limits or Limits.of(cfg.limits, None)
        model_info = state.model.info if state.model is not None else None
        return {
            "model_id": cfg.model.name,
            "model_sha": model_info.model_sha if model_info else None,
            "model_dtype": model_info.dtype if model_info else None,
            "model_device_type": model_info.device if model_info else None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": limits.max_concurrent_requests,
            "max_best_of": 1,
            "max_stop_sequences": limits.max_stop_sequences,
            "max_input_tokens": limits.max_input_tokens,
            "max_input_length": limits.max_input_tokens,  # TGI's name before 2.1
            "max_total_tokens": limits.max_total_tokens,
            "max_new_tokens": limits.max_new_tokens,
            "max_batch_size": cfg.batching.max_batch_size,
            "max_client_batch_size": 1,
            "validation_workers": 1,
            "router": "llmops",
            "version": __version__,
            "sha": None,
            "docker_label": None,
            "revision": cfg.model.revision,
            "batching": {
                **cfg.batching.model_dump(),
                "continuous": state.engine.continuous if state.engine is not None else None,
            },
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
