"""The operator process: ``python -m llmops_operator`` (or ``llmops-operator``).

One replica (Deployment strategy Recreate): kopf runs standalone, without peering. Two
replicas would both reconcile; that is safe (every write is an idempotent server-side apply)
but wasteful, so the chart runs one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import kopf
from prometheus_client import start_http_server

from .kube import credentials
from .kube.client import Client
from .logs import configure_logging
from .reconcilers.base import Context
from .runtime.controller import Controller
from .runtime.events import EventRecorder
from .runtime.store import Store

log = logging.getLogger("llmops.main")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmops-operator", description="The llmops Kubernetes operator.")
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="Watch only this namespace (repeatable). Default: every namespace.",
    )
    p.add_argument("--kubeconfig", default=None, help="Default: $KUBECONFIG, else the pod's service account.")
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("LLMOPS_METRICS_PORT", "8000")))
    p.add_argument("--health-port", type=int, default=int(os.environ.get("LLMOPS_HEALTH_PORT", "8080")))
    p.add_argument("--bind-address", default=os.environ.get("LLMOPS_BIND_ADDRESS", "0.0.0.0"))  # noqa: S104
    # Reconciles mostly wait on the API server, so more of them in flight finish a burst of
    # creates sooner (docs/reliability.md, "Scale: 1,000 EmbeddingServices").
    p.add_argument("--workers", type=int, default=16, help="Reconciles run at once.")
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(os.environ.get("LLMOPS_RESYNC_SECONDS", "600")),
        help="Reconcile every object this often even without events (0: never).",
    )
    p.add_argument(
        "--always-apply",
        action="store_true",
        help="Benchmark baseline: server-side apply every child on every reconcile (never use in production).",
    )
    p.add_argument("--log-format", choices=("json", "text"), default=os.environ.get("LLMOPS_LOG_FORMAT", "json"))
    p.add_argument("--log-level", default=os.environ.get("LLMOPS_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


class RetryForever:
    """kopf's ``error_backoffs``: 0.5 s, 1 s, then every 2 s, never giving up (an iterable, not an
    iterator: kopf iterates it afresh for every request)."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((0.5, 1.0), itertools.repeat(2.0))


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    # Watches can stall silently behind proxies and load balancers (kopf #585, #810): ask the
    # server to end every watch after a while, and give up on a silent connection client-side.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # An API server (or its etcd) that is down for a while: kopf retries a failed request with
    # these backoffs and then escalates the error, which ends a watch-stream for good when it is
    # a 5xx (etcd down). Retry every request for ever, at most a few seconds apart, so that
    # the watches resume within seconds of the API server's return, however long it was away.
    settings.networking.error_backoffs = RetryForever()
    # kopf would post its log lines as Events (writes); our reconcilers post their own. (Only raw
    # on.event handlers are registered, so kopf keeps no state on the user's objects either.)
    settings.posting.enabled = False


def tune_garbage_collector() -> None:
    """The caches hold every watched object as nested dicts: with the default thresholds the
    cyclic collector keeps re-scanning them during a burst of watch events. Objects alive after
    start-up (modules, kopf's registry) are frozen out of it, and young collections run less
    often; reference counting still frees everything that is not in a cycle at once."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def run(args: argparse.Namespace) -> None:
    tune_garbage_collector()
    creds = credentials.load(args.kubeconfig)
    client = Client(creds)
    ctx = Context(
        client=client,
        owners=Store(),
        children=Store(),
        events=EventRecorder(client),
        always_apply=args.always_apply,
    )
    namespaces = args.namespace or None
    controller = Controller(client, ctx, namespaces, workers=args.workers, resync_seconds=args.resync_seconds)
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(**creds.for_kopf())

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)

    @kopf.on.probe(id="synced", registry=registry)
    def synced(**_: Any) -> bool:
        return controller.synced.is_set()

    controller.register(registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "starting",
        extra={
            "namespaces": namespaces or "all",
            "server": creds.server,
            "resync_seconds": args.resync_seconds,
        },
    )
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=namespaces is None,
            namespaces=namespaces or [],
            liveness_endpoint=f"http://{args.bind_address}:{args.health_port}/healthz",
            stop_flag=stop,
        )
    )
    workers = asyncio.create_task(controller.run())
    done, _ = await asyncio.wait({operator, workers}, return_when=asyncio.FIRST_COMPLETED)
    workers.cancel()
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await operator
    await client.close()
    for task in done:
        # A cancelled task has no exception to ask for (exception() would raise CancelledError).
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    start_http_server(args.metrics_port, addr=args.bind_address)
    threading.current_thread().name = "main"
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
