"""Process lifecycle shared by every llmops server: HTTP first (``/health`` answers at once), the
model or dependencies load off the event loop, then ``/ready`` turns 200. SIGTERM: ``/ready``
turns 503 at once, new work is refused after ``drainSeconds``, in-flight requests finish (up to
``gracefulTimeoutSeconds``), the process exits 0. A load failure (SIGUSR1) exits 1."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import uvicorn
from prometheus_client import start_http_server
from pydantic import Field
from starlette.applications import Starlette
from starlette.types import ASGIApp

from . import logs
from .http import ErrorBody, Guard
from .settings import FileSettings, Section

if TYPE_CHECKING:
    from .security import Security

log = logging.getLogger("llmops.server")
__all__ = ["AuthConfig", "GracefulServer", "Lifecycle", "Section", "ServerConfig", "make_server", "serve"]


class ServerConfig(Section):
    host: str = "0.0.0.0"  # noqa: S104 (in a pod; tests pass 127.0.0.1)
    port: int = Field(8080, ge=0, le=65535)
    metrics_port: int = Field(9090, ge=0, le=65535, description="0: /metrics only on the main port.")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # After SIGTERM: stay up (not ready) this long for load balancers to notice, then drain.
    drain_seconds: float = Field(0.0, ge=0)
    graceful_timeout_seconds: float = Field(30.0, ge=0)
    retry_after_seconds: int = Field(1, ge=1)


class AuthConfig(Section):
    api_key_file: str | None = Field(
        None, description="One key per line, 'name:key' or a bare key; re-read when it changes (rotation)."
    )
    api_key: str | None = Field(None, description="Prefer api_key_file; this is for local runs.")
    exempt_paths: list[str] = Field(
        default_factory=lambda: ["/health", "/ready", "/metrics"], description="Paths served without a key."
    )


@dataclass
class Lifecycle:
    """What /ready reports and SIGTERM changes."""

    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    api_keys: Iterable[str] = field(default_factory=list)  # common.auth.ApiKeys: re-read on change

    @property
    def phase(self) -> str:
        if self.ready:
            return "ready"
        return "draining" if self.draining else ("failed" if self.load_error else "loading")


class GracefulServer(uvicorn.Server):
    """uvicorn, minus its own signal handling: SIGTERM first drains (see ``serve``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def assemble(
    app: Starlette,
    cfg: ServerConfig,
    routes: Collection[str],
    error_body: ErrorBody,
    security: Security,
    start: Callable[[], Coroutine[Any, Any, None]],
    stop: Callable[[], Coroutine[Any, Any, None]],
) -> GracefulServer:
    """The server every llmops process runs: ``start`` (load models, reach dependencies) runs in the
    background from start-up, so /health answers at once; ``stop`` releases what it built; the
    ``Guard`` middleware (keys, limits, audit, size limit, metrics) wraps the app."""

    @asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        starter = asyncio.create_task(start())
        yield
        starter.cancel()
        await stop()

    app.router.lifespan_context = lifespan
    return make_server(Guard(app, cfg.max_request_bytes, routes, error_body, security), cfg)


def failed_to_start(life: Lifecycle, exc: BaseException, what: str) -> None:
    """A start-up that cannot succeed: say why in /ready and the log, and exit 1 (see ``serve``)."""
    life.load_error = f"{type(exc).__name__}: {exc}"
    log.exception("%s; exiting", what)
    os.kill(os.getpid(), signal.SIGUSR1)


def make_server(app: ASGIApp, cfg: ServerConfig) -> GracefulServer:
    return GracefulServer(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(cfg.graceful_timeout_seconds) or None,
            timeout_keep_alive=30,
        )
    )


async def serve(server: GracefulServer, life: Lifecycle, cfg: ServerConfig) -> int:
    loop = asyncio.get_running_loop()
    exit_code = 0

    def terminate() -> None:
        if life.draining:
            return
        log.info("SIGTERM: not ready; draining", extra={"drain_seconds": cfg.drain_seconds})
        life.draining, life.ready = True, False
        loop.call_later(cfg.drain_seconds, lambda: setattr(server, "should_exit", True))

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


class _ServedConfig(Protocol):
    server: ServerConfig
    log_format: str
    log_level: str


C = TypeVar("C", bound=FileSettings)


def main(
    config_cls: type[C],
    run: Callable[[C], Coroutine[Any, Any, int]],
    prog: str,
    doc: str | None,
    argv: list[str] | None,
) -> None:
    """The command line every server shares: ``--config`` (what the operator mounts), and
    ``--host``/``--port`` overrides for local runs."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    parser.add_argument("--config", help="YAML config file (what the operator mounts)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    cfg = config_cls.load(args.config)
    served: _ServedConfig = cfg  # type: ignore[assignment]
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        cfg = cfg.model_copy(update={"server": served.server.model_copy(update=overrides)})
        served = cfg  # type: ignore[assignment]
    redaction = getattr(cfg, "redaction", None)
    log_filter = None
    if redaction is not None and redaction.logs:
        from .redaction import RedactingFilter

        log_filter = RedactingFilter(redaction.redactor())
    logs.configure(served.log_format, served.log_level, log_filter)
    if served.server.metrics_port and served.server.metrics_port != served.server.port:
        start_http_server(served.server.metrics_port, addr=served.server.host)
    sys.exit(asyncio.run(run(cfg)))
