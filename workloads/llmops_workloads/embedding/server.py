"""Run the embedding server: ``python -m llmops_workloads.embedding --config config.yaml``.

Start-up: HTTP first (``/health`` answers at once), then the model loads and warms up off the
event loop, then ``/ready`` turns 200. SIGTERM: ``/ready`` turns 503 at once, new work is
refused after ``drainSeconds``, in-flight requests finish (up to ``gracefulTimeoutSeconds``), the
process exits 0. A model that cannot load exits 1 with the reason in the log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from prometheus_client import start_http_server

from ..common import logs
from .api import Guard, ServerState, create_app
from .batcher import Batcher
from .config import EmbeddingServerConfig
from .model import EmbeddingModel

log = logging.getLogger("llmops.embedding.server")
WARMUP_LENGTHS = (8, 32, 128)


def read_api_keys(cfg: EmbeddingServerConfig) -> list[str]:
    keys = []
    if cfg.auth.api_key_file:
        keys += [k.strip() for k in Path(cfg.auth.api_key_file).read_text().splitlines() if k.strip()]
    if cfg.auth.api_key:
        keys.append(cfg.auth.api_key)
    return keys


async def load(state: ServerState) -> None:
    """Load and warm the model, then start batching; on failure, stop the process."""
    try:
        model = await asyncio.to_thread(EmbeddingModel, state.cfg.model)
        for n in WARMUP_LENGTHS:
            length = min(n, model.max_input_tokens)
            await asyncio.to_thread(
                model.embed, [[model.pad_id + 1] * length] * min(4, state.cfg.batching.max_batch_size)
            )
        state.model = model
        state.batcher = Batcher(model.embed, state.cfg.batching)
        state.batcher.start()
        state.ready = True
        log.info("ready", extra={"dimension": model.info.dimension, "device": model.info.device})
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("the model could not be loaded; exiting")
        os.kill(os.getpid(), signal.SIGUSR1)


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: SIGTERM first drains (see ``serve``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build(cfg: EmbeddingServerConfig) -> tuple[ServerState, uvicorn.Server]:
    state = ServerState(cfg=cfg, api_keys=read_api_keys(cfg))

    @asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        loader = asyncio.create_task(load(state))
        yield
        loader.cancel()
        if state.batcher is not None:
            await state.batcher.stop()

    app = create_app(state)
    app.router.lifespan_context = lifespan
    server = _Server(
        uvicorn.Config(
            Guard(app, cfg.server.max_request_bytes),
            host=cfg.server.host,
            port=cfg.server.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(cfg.server.graceful_timeout_seconds) or None,
            timeout_keep_alive=30,
        )
    )
    return state, server


async def serve(cfg: EmbeddingServerConfig) -> int:
    state, server = build(cfg)
    loop = asyncio.get_running_loop()
    exit_code = 0

    def terminate() -> None:
        if state.draining:
            return
        log.info("SIGTERM: not ready; draining", extra={"drain_seconds": cfg.server.drain_seconds})
        state.draining, state.ready = True, False
        loop.call_later(cfg.server.drain_seconds, lambda: setattr(server, "should_exit", True))

    def failed() -> None:
        nonlocal exit_code
        exit_code = 1
        server.should_exit = True

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGINT, terminate)
    loop.add_signal_handler(signal.SIGUSR1, failed)
    await server.serve()
    log.info("stopped", extra={"exit_code": exit_code})
    return exit_code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llmops-embedding-server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config file (what the operator mounts)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    cfg = EmbeddingServerConfig.load(args.config)
    if args.host or args.port is not None:
        server_cfg = cfg.server.model_copy(
            update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        )
        cfg = cfg.model_copy(update={"server": server_cfg})
    logs.configure(cfg.log_format, cfg.log_level)
    if cfg.server.metrics_port and cfg.server.metrics_port != cfg.server.port:
        start_http_server(cfg.server.metrics_port, addr=cfg.server.host)
    sys.exit(asyncio.run(serve(cfg)))
