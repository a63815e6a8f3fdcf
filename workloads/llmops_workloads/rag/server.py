"""Run the RAG server: ``python -m llmops_workloads.rag --config config.yaml``.

Start-up waits for its dependencies without failing: until the embedding service answers and the
collection exists (created if absent) and is loaded, ``/ready`` is 503 and retried with backoff. A
wrong deployment (the collection's dimension differs from the model's) exits 1 with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from ..common import serving
from ..common.security import build_security
from ..common.serving import GracefulServer
from .api import ROUTES, RagState, create_app, error_body
from .config import RagServerConfig
from .errors import ConfigError, DependencyUnavailable
from .service import RagService

log = logging.getLogger("llmops.rag.server")


async def start(state: RagState) -> None:
    service = RagService(state.cfg)
    delay = 0.5
    while True:
        try:
            await service.start()
            break
        except DependencyUnavailable as exc:
            log.warning("waiting for a dependency", extra={"dependency": exc.dependency, "error": exc.message})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        except ConfigError as exc:
            state.load_error = str(exc)
            log.error("cannot serve: %s", exc)
            os.kill(os.getpid(), signal.SIGUSR1)
            return
    state.service = service
    state.ready = True
    log.info("ready", extra={"collection": state.cfg.milvus.collection, "dimension": service.store.dimension})


def build(cfg: RagServerConfig) -> tuple[RagState, GracefulServer]:
    security = build_security(
        cfg.auth, cfg.rate_limits, cfg.audit, cfg.milvus.collection,
        {"server": "rag", "collection": cfg.milvus.collection},
    )  # fmt: skip
    state = RagState(cfg=cfg, api_keys=security.keys)

    async def stop() -> None:
        if state.service is not None:
            await state.service.close()

    server = serving.assemble(create_app(state), cfg.server, ROUTES, error_body, security, lambda: start(state), stop)
    return state, server


async def serve(cfg: RagServerConfig) -> int:
    state, server = build(cfg)
    return await serving.serve(server, state, cfg.server)


def main(argv: list[str] | None = None) -> None:
    serving.main(RagServerConfig, serve, "llmops-rag-server", __doc__, argv)
