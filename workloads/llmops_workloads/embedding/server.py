"""Run the embedding server: ``python -m llmops_workloads.embedding --config config.yaml``.

The lifecycle (load off the event loop, then ready; SIGTERM drains) is ``common.serving``'s; a
model that cannot load exits 1 with the reason in the log.
"""

from __future__ import annotations

import asyncio
import logging

from ..common import serving
from ..common.security import build_security
from ..common.serving import GracefulServer
from .api import ROUTES, ServerState, create_app, error_body
from .batcher import Batcher
from .config import EmbeddingServerConfig
from .model import EmbeddingModel

log = logging.getLogger("llmops.embedding.server")
WARMUP_LENGTHS = (8, 32, 128)


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
        serving.failed_to_start(state, exc, "the model could not be loaded")


def build(cfg: EmbeddingServerConfig) -> tuple[ServerState, GracefulServer]:
    security = build_security(
        cfg.auth, cfg.rate_limits, cfg.audit, cfg.model.name,
        {"server": "embedding", "model": cfg.model.name, "revision": cfg.model.revision},
    )  # fmt: skip
    state = ServerState(cfg=cfg, api_keys=security.keys)

    async def stop() -> None:
        if state.batcher is not None:
            await state.batcher.stop()

    server = serving.assemble(create_app(state), cfg.server, ROUTES, error_body, security, lambda: load(state), stop)
    return state, server


async def serve(cfg: EmbeddingServerConfig) -> int:
    state, server = build(cfg)
    return await serving.serve(server, state, cfg.server)


def main(argv: list[str] | None = None) -> None:
    serving.main(EmbeddingServerConfig, serve, "llmops-embedding-server", __doc__, argv)
