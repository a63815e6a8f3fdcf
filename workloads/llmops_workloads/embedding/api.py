"""HTTP API of the embedding server: OpenAI-compatible ``POST /v1/embeddings``, TEI-compatible
``POST /embed``, and ``/health``, ``/ready``, ``/info``, ``/metrics``.

Every error is JSON in the caller's dialect (OpenAI's ``{"error": {...}}`` on /v1, TEI's
``{"error", "error_type"}`` elsewhere); a client's mistake is a 4xx, overload is 429 with
Retry-After, not being ready is 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from .. import __version__
from ..common.http import key_is_valid, presented_key, watch_disconnect
from ..common.ratelimit import charge_tokens
from ..common.serving import Lifecycle
from .batcher import Batcher, Overloaded
from .config import EmbeddingServerConfig
from .model import EmbeddingModel

log = logging.getLogger("llmops.embedding.api")
OPEN_PATHS = {"/health", "/ready", "/metrics"}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.headers: dict[str, str] = {}


@dataclass
class ServerState(Lifecycle):
    cfg: EmbeddingServerConfig = field(kw_only=True)
    model: EmbeddingModel | None = None
    batcher: Batcher | None = None


# -- request and response models --------------------------------------------------------


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request (plus ``truncate``, an llmops extension)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: JSON true is no integer

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = Field(None, max_length=512)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=512)
    truncate: bool = False


class TeiEmbedRequest(BaseModel):
    """TEI's /embed request."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: JSON true is no integer

    inputs: str | list[str]
    normalize: bool = True
    truncate: bool = False
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    dimensions: int | None = Field(None, ge=1)
    prompt_name: str | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


ROUTES = {"/", "/v1/embeddings", "/embed", "/health", "/ready", "/info", "/metrics"}


def error_body(route: str, status: int, message: str) -> dict[str, Any]:
    """The caller's dialect: OpenAI's under /v1, TEI's elsewhere."""
    if route.startswith("/v1/"):
        return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return {"error": message, "error_type": _tei_type(status)}


# -- the app ----------------------------------------------------------------------------


def _tei_type(status: int) -> str:
    return {401: "Unauthorized", 413: "Validation", 422: "Validation", 429: "Overloaded", 503: "Unhealthy"}.get(
        status, "Backend"
    )


def create_app(state: ServerState) -> FastAPI:
    cfg = state.cfg
    app = FastAPI(title="llmops embedding server", version=__version__, docs_url=None, redoc_url=None)

    def error_response(request: Request, exc: ApiError) -> JSONResponse:
        if request.url.path.startswith("/v1/"):
            body: dict[str, Any] = {
                "error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": None}
            }
        else:
            body = {"error": exc.message, "error_type": _tei_type(exc.status)}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        return error_response(request, ApiError(422, message, param=where or None))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that is not JSON, an unknown path, a wrong method) in
        # the caller's dialect, not as {"detail": ...}.
        err = ApiError(exc.status_code, str(exc.detail))
        err.headers.update(exc.headers or {})
        return error_response(request, err)

    def check_auth(request: Request) -> None:
        if state.api_keys and not key_is_valid(presented_key(request), state.api_keys):
            raise ApiError(401, "missing or invalid API key (send Authorization: Bearer <key>)", "authentication_error")

    def require_ready() -> tuple[EmbeddingModel, Batcher]:
        if not state.ready or state.model is None or state.batcher is None:
            err = ApiError(503, "draining" if state.draining else "the model is loading", "server_unavailable")
            err.headers["Retry-After"] = str(cfg.server.retry_after_seconds)
            raise err
        return state.model, state.batcher

    async def encode(request: Request, texts: list[str], truncate: bool, left: bool = False) -> tuple[np.ndarray, int]:
        model, batcher = require_ready()
        if len(texts) > cfg.server.max_items_per_request:
            raise ApiError(413, f"{len(texts)} inputs; at most {cfg.server.max_items_per_request} per request")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ApiError(422, f"input[{i}] is empty", param="input")
        if cfg.debug:
            log.debug("inputs", extra={"texts": texts})
        ids = model.tokenize(texts)
        limit = model.max_input_tokens
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                if not truncate:
                    raise ApiError(
                        413,
                        f"input[{i}] has {len(seq)} tokens; the limit is {limit} (or ask for truncation)",
                        param="input",
                    )
                ids[i] = (seq[:1] + seq[-(limit - 1) :]) if left else model.truncate(seq)
        tokens = sum(len(s) for s in ids)
        charge_tokens(tokens)  # per-client tokens-per-minute limits count input tokens
        watcher = asyncio.create_task(watch_disconnect(request))
        work = asyncio.ensure_future(batcher.embed(ids))
        watcher.add_done_callback(lambda _: work.cancel())
        try:
            vectors = await work
        except Overloaded as exc:
            err = ApiError(429, f"overloaded: {exc}; retry later", "rate_limit_exceeded")
            err.headers["Retry-After"] = str(cfg.server.retry_after_seconds)
            raise err from exc
        finally:
            watcher.cancel()
        return vectors, tokens

    def shape(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
        dim = vectors.shape[1]
        if dimensions is not None:
            if dimensions > dim:
                raise ApiError(422, f"dimensions must be at most {dim} for this model", param="dimensions")
            vectors = vectors[:, :dimensions]
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.clip(norms, 1e-12, None)
        return vectors.astype(np.float32)

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse)
    async def openai_embeddings(body: EmbeddingsRequest, request: Request) -> Response:
        check_auth(request)
        if isinstance(body.input, str):
            texts = [body.input]
        elif body.input and all(isinstance(x, str) for x in body.input):
            texts = list(body.input)  # type: ignore[arg-type]
        elif not body.input:
            raise ApiError(422, "input must not be empty", param="input")
        else:
            raise ApiError(422, "token-id inputs are not supported by this server: send text", param="input")
        model_name = cfg.model.name
        if body.model and body.model not in (model_name, model_name.rsplit("/", 1)[-1]):
            raise ApiError(
                404, f"model {body.model!r} is not served here; this server serves {model_name!r}", param="model"
            )
        vectors, tokens = await encode(request, texts, body.truncate)
        assert state.model is not None
        vectors = shape(vectors, body.dimensions, state.model.normalize)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        items: list[dict[str, Any]] = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                if body.encoding_format == "base64"
                else v,
            }
            for i, v in enumerate(vectors)
        ]
        # orjson writes numpy rows directly: ~50x faster than building lists of Python floats.
        payload = {"object": "list", "data": items, "model": model_name, "usage": usage}
        return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    @app.post("/", response_model=list[list[float]], include_in_schema=False)  # TEI routes / to its task
    @app.post("/embed", response_model=list[list[float]])
    async def tei_embed(body: TeiEmbedRequest, request: Request) -> Response:
        check_auth(request)
        if body.prompt_name:
            raise ApiError(422, "prompt_name is not supported by this server", param="prompt_name")
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        if not texts:
            raise ApiError(422, "inputs must not be empty", param="inputs")
        vectors, _ = await encode(request, texts, body.truncate, left=body.truncation_direction.lower() == "left")
        vectors = shape(vectors, body.dimensions, body.normalize)
        return Response(orjson.dumps(vectors, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

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

    @app.get("/info")
    async def info(request: Request) -> dict[str, Any]:
        check_auth(request)
        out: dict[str, Any] = {"model_id": cfg.model.name, "revision": cfg.model.revision, "version": __version__}
        if state.model is not None:
            out.update(state.model.info.__dict__)
            out["max_input_length"] = state.model.max_input_tokens  # TEI's name for it
        out["batching"] = cfg.batching.model_dump()
        out["max_client_batch_size"] = cfg.server.max_items_per_request
        return out

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
