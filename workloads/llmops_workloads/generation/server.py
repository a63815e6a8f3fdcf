"""Run the generation server: ``python -m llmops_workloads.generation --config config.yaml``.

The lifecycle (load off the event loop, then ready; SIGTERM drains) is ``common.serving``'s; a
model that cannot load exits 1 with the reason in the log.
"""

from __future__ import annotations

import asyncio
import logging

import torch

from ..common import serving
from ..common.security import build_security
from ..common.serving import GracefulServer
from .api import ROUTES, ServerState, create_app, error_body
from .config import GenerationServerConfig
from .engine import Engine
from .model import GenerationModel
from .validation import Limits

log = logging.getLogger("llmops.generation.server")


def warm_up(model: GenerationModel) -> None:
    """One short prefill and decode step, so the first request does not pay for lazy setup."""
    with torch.inference_mode():
        ids = torch.tensor([[model.pad_id + 1] * 8], device=model.device)
        mask = torch.ones_like(ids)
        cache = model.new_cache()
        model.forward(ids, mask, torch.arange(8, device=model.device)[None], cache, True)
        model.forward(
            ids[:, :1], torch.ones((1, 9), dtype=torch.long, device=model.device), mask[:, :1] * 8, cache, True
        )


async def load(state: ServerState) -> None:
    """Load and warm the model, then start the engine; on failure, stop the process."""
    cfg = state.cfg
    try:
        model = await asyncio.to_thread(GenerationModel, cfg.model)
        await asyncio.to_thread(warm_up, model)
        limits = Limits.of(cfg.limits, model.info.max_position_embeddings)
        if limits.max_total_tokens < cfg.limits.max_total_tokens:
            log.warning(
                "maxTotalTokens capped by the model's positions",
                extra={"configured": cfg.limits.max_total_tokens, "max_total_tokens": limits.max_total_tokens},
            )
        engine = Engine(model, cfg.batching, limits.max_concurrent_requests)
        engine.start()
        state.model, state.engine, state.limits = model, engine, limits
        state.ready = True
        log.info("ready", extra={"device": model.info.device, "dtype": model.info.dtype, **limits.__dict__})
    except Exception as exc:
        serving.failed_to_start(state, exc, "the model could not be loaded")


def build(cfg: GenerationServerConfig) -> tuple[ServerState, GracefulServer]:
    security = build_security(
        cfg.auth, cfg.rate_limits, cfg.audit, cfg.model.name,
        {"server": "generation", "model": cfg.model.name, "revision": cfg.model.revision},
    )  # fmt: skip
    state = ServerState(cfg=cfg, api_keys=security.keys)

    async def stop() -> None:
        if state.engine is not None:
            await asyncio.to_thread(state.engine.stop)

    server = serving.assemble(create_app(state), cfg.server, ROUTES, error_body, security, lambda: load(state), stop)
    return state, server


async def serve(cfg: GenerationServerConfig) -> int:
    state, server = build(cfg)
    return await serving.serve(server, state, cfg.server)


def main(argv: list[str] | None = None) -> None:
    serving.main(GenerationServerConfig, serve, "llmops-generation-server", __doc__, argv)
