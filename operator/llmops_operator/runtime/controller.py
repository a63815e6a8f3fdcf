"""Glue between kopf's watches and our reconcilers.

kopf does what it is best at: watch streams with timeouts, reconnection and login. We use only
its raw event handlers (``on.event``), which store nothing on the objects: no progress or
last-handled annotations, no finalizers. Events go into caches and a work queue; workers run
one idempotent reconcile per object (level-based, as in controller-runtime).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import kopf

from ..children.common import MANAGED_BY
from ..kube.client import ApiError, Client, ResourceType
from ..kube.resources import CHILDREN, EMBEDDING_SERVICE, FINE_TUNE_JOB, RAG_PIPELINE, SERVICE_MONITOR
from ..metrics import OBJECTS_BY_CONDITION, RECONCILE_DURATION, RECONCILE_ERRORS, RECONCILES
from ..reconcilers import embedding, finetune, rag
from ..reconcilers.base import Context, PermanentError, Result, TemporaryError
from .store import Key, key_of
from .workqueue import WorkQueue

log = logging.getLogger("llmops.controller")
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
COUNT_INTERVAL = 1.0  # seconds between two counts of objects by Ready (the llmops_operator_objects gauge)

Reconcile = Callable[[Context, Key], Awaitable[Result]]
ReportError = Callable[[Context, Key, PermanentError | TemporaryError], Awaitable[None]]


@dataclass(frozen=True)
class Kind:
    rt: ResourceType
    reconcile: Reconcile
    report_error: ReportError


KINDS: dict[str, Kind] = {
    EMBEDDING_SERVICE.kind: Kind(EMBEDDING_SERVICE, embedding.reconcile, embedding.report_error),
    RAG_PIPELINE.kind: Kind(RAG_PIPELINE, rag.reconcile, rag.report_error),
    FINE_TUNE_JOB.kind: Kind(FINE_TUNE_JOB, finetune.reconcile, finetune.report_error),
}


def _fine_tune_result(obj: dict[str, Any]) -> tuple[Any, Any]:
    """What an EmbeddingService serving a FineTuneJob depends on (progress updates are not news)."""
    status = obj.get("status") or {}
    return status.get("phase"), status.get("output")


class Controller:
    def __init__(
        self,
        client: Client,
        ctx: Context,
        namespaces: list[str] | None,
        workers: int = 4,
        resync_seconds: float = 0,
    ) -> None:
        self.client = client
        self.ctx = ctx
        self.namespaces = namespaces  # None: every namespace
        self.queue: WorkQueue[Key] = WorkQueue()
        self.workers = workers
        self.resync_seconds = resync_seconds
        self.synced = asyncio.Event()
        self._fine_tune_seen: dict[Key, tuple[Any, Any]] = {}  # (phase, output) by FineTuneJob
        # The objects-by-Ready gauge needs a pass over every object: counted at most every
        # COUNT_INTERVAL seconds when something changed, not after every reconcile (which made a
        # burst of N creates cost O(N^2)).
        self._counts_stale = True

    # -- kopf handlers ---------------------------------------------------------------------

    def register(self, registry: kopf.OperatorRegistry) -> None:
        for kind in KINDS.values():
            rt = kind.rt
            kopf.on.event(rt.group, rt.version, rt.plural, registry=registry)(cast(Any, self._on_owner_event))
        for rt in CHILDREN.values():
            kopf.on.event(
                rt.group, rt.version, rt.plural, registry=registry, labels={"app.kubernetes.io/managed-by": MANAGED_BY}
            )(cast(Any, self._on_child_event))

    async def _on_owner_event(self, event: dict[str, Any], **_: Any) -> None:
        obj = event.get("object")
        if not obj or obj.get("kind") not in KINDS:
            return
        key = key_of(obj)
        if event.get("type") == "DELETED":
            self.ctx.owners.remove(key)
            self.queue.drop(key)
        else:
            self.ctx.owners.put(obj)
            self.queue.add(key)
        if key.kind == EMBEDDING_SERVICE.kind:
            self._enqueue_dependents(key)
        elif key.kind == FINE_TUNE_JOB.kind:
            # Compared with what the last event said, not with the cache: the reconciler puts its
            # own status writes into the cache before their watch events arrive.
            result = None if event.get("type") == "DELETED" else _fine_tune_result(obj)
            if self._fine_tune_seen.get(key) != result:
                self._enqueue_fine_tune_users(key)
            if result is None:
                self._fine_tune_seen.pop(key, None)
            else:
                self._fine_tune_seen[key] = result
        if event.get("type") == "DELETED":
            self._counts_stale = True

    def _enqueue_dependents(self, service: Key) -> None:
        """RAGPipelines that use this EmbeddingService learn of its changes (Ready, endpoint)."""
        for pipeline in self.ctx.owners.items_of(RAG_PIPELINE.kind):
            meta = pipeline["metadata"]
            ref = ((pipeline.get("spec") or {}).get("embedding") or {}).get("serviceRef") or {}
            if meta["namespace"] == service.namespace and ref.get("name") == service.name:
                self.queue.add(Key(RAG_PIPELINE.kind, meta["namespace"], meta["name"]))

    def _enqueue_fine_tune_users(self, job: Key) -> None:
        """EmbeddingServices that serve this FineTuneJob's output learn at once that it succeeded
        (or went away), instead of at their next periodic check."""
        for service in self.ctx.owners.items_of(EMBEDDING_SERVICE.kind):
            meta = service["metadata"]
            model = (service.get("spec") or {}).get("model") or {}
            ref = (model.get("source") or {}).get("fineTuneJobRef") or {}
            if meta["namespace"] == job.namespace and ref.get("name") == job.name:
                self.queue.add(Key(EMBEDDING_SERVICE.kind, meta["namespace"], meta["name"]))

    async def _on_child_event(self, event: dict[str, Any], **_: Any) -> None:
        obj = event.get("object")
        if not obj or obj.get("kind") not in CHILDREN:
            return
        if event.get("type") == "DELETED":
            self.ctx.children.remove(key_of(obj))
        else:
            self.ctx.children.put(obj)
        for ref in obj["metadata"].get("ownerReferences", []):
            if ref.get("controller") and ref.get("kind") in KINDS:
                self.queue.add(Key(ref["kind"], obj["metadata"]["namespace"], ref["name"]))

    # -- startup ---------------------------------------------------------------------------

    async def sync_caches(self) -> None:
        """List our children once before the first reconcile (the informer's initial sync), so
        that a restarted operator compares against what exists instead of re-applying it."""
        self.ctx.optional_kinds = await self._optional_kinds()
        for kind, rt in CHILDREN.items():
            if rt is SERVICE_MONITOR and kind not in self.ctx.optional_kinds:
                continue
            namespaces: list[str | None] = list(self.namespaces) if self.namespaces else [None]
            for ns in namespaces:
                data = await self.client.request("list", "GET", rt.path(ns), params={"labelSelector": MANAGED_SELECTOR})
                for item in data.get("items", []):
                    item.setdefault("kind", kind)
                    item.setdefault("apiVersion", rt.api_version)
                    self.ctx.children.put(item)
        self.synced.set()
        log.info("caches synced", extra={"children": len(self.ctx.children)})

    async def _optional_kinds(self) -> set[str]:
        kinds = set()
        if SERVICE_MONITOR.plural in await self.client.discover(SERVICE_MONITOR.api_version):
            kinds.add(SERVICE_MONITOR.kind)
        return kinds

    # -- workers ---------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.sync_caches()
                break
            except (ApiError, OSError) as exc:
                log.warning("cache sync failed; retrying", extra={"error": str(exc)})
                await asyncio.sleep(2)
        tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        tasks.append(asyncio.create_task(self._publish_counts()))
        if self.resync_seconds > 0:
            tasks.append(asyncio.create_task(self._resync()))
        await asyncio.gather(*tasks)

    async def _resync(self) -> None:
        """Reconcile everything now and then: a safety net for a missed event, and the
        evidence that a converged reconcile writes nothing."""
        while True:
            await asyncio.sleep(self.resync_seconds)
            try:  # a ServiceMonitor CRD installed (or removed) after start-up
                self.ctx.optional_kinds = await self._optional_kinds()
            except (ApiError, OSError) as exc:
                log.warning("discovery failed", extra={"error": str(exc)})
            for kind in KINDS:
                for obj in self.ctx.owners.items_of(kind):
                    self.queue.add(key_of(obj))

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._process(key)
            finally:
                self.queue.done(key)

    async def _process(self, key: Key) -> None:
        kind = KINDS[key.kind]
        started = time.monotonic()
        try:
            result = await kind.reconcile(self.ctx, key)
        except PermanentError as exc:
            RECONCILES.labels(kind=key.kind, result="permanent_error").inc()
            RECONCILE_ERRORS.labels(kind=key.kind, error_class="permanent").inc()
            log.warning("reconcile failed permanently", extra={"key": key, "reason": exc.reason, "error": exc.message})
            self.queue.forget(key)  # nothing to retry until the object changes
            await self._report(kind, key, exc)
        except TemporaryError as exc:
            RECONCILES.labels(kind=key.kind, result="temporary_error").inc()
            RECONCILE_ERRORS.labels(kind=key.kind, error_class="temporary").inc()
            delay = exc.delay if exc.delay is not None else self.queue.retry(key)
            if exc.delay is not None:
                self.queue.add_after(key, delay)
            log.info("reconcile will retry", extra={"key": key, "reason": exc.reason, "delay": delay})
            await self._report(kind, key, exc)
        except (TimeoutError, ApiError, OSError) as exc:
            RECONCILES.labels(kind=key.kind, result="error").inc()
            RECONCILE_ERRORS.labels(kind=key.kind, error_class=type(exc).__name__).inc()
            delay = self.queue.retry(key)
            log.warning("reconcile error; retrying", extra={"key": key, "error": str(exc), "delay": delay})
        except Exception:
            RECONCILES.labels(kind=key.kind, result="error").inc()
            RECONCILE_ERRORS.labels(kind=key.kind, error_class="unexpected").inc()
            delay = self.queue.retry(key)
            log.exception("unexpected reconcile error; retrying", extra={"key": key, "delay": delay})
        else:
            RECONCILES.labels(kind=key.kind, result="success").inc()
            self.queue.forget(key)
            if result.requeue_after:
                self.queue.add_after(key, result.requeue_after)
        finally:
            RECONCILE_DURATION.labels(kind=key.kind).observe(time.monotonic() - started)
            self._counts_stale = True

    async def _report(self, kind: Kind, key: Key, exc: PermanentError | TemporaryError) -> None:
        try:
            await kind.report_error(self.ctx, key, exc)
        except (ApiError, OSError) as report_exc:
            log.warning("could not write the error into status", extra={"key": key, "error": str(report_exc)})

    async def _publish_counts(self) -> None:
        while True:
            if self._counts_stale:
                self._counts_stale = False
                self._count_conditions()
            await asyncio.sleep(COUNT_INTERVAL)

    def _count_conditions(self) -> None:
        for kind in KINDS:
            counts = {"True": 0, "False": 0, "Unknown": 0}
            for obj in self.ctx.owners.items_of(kind):
                ready = next(
                    (
                        c.get("status")
                        for c in (obj.get("status") or {}).get("conditions", [])
                        if c.get("type") == "Ready"
                    ),
                    "Unknown",
                )
                counts[ready if ready in counts else "Unknown"] += 1
            for ready, n in counts.items():
                OBJECTS_BY_CONDITION.labels(kind=kind, ready=ready).set(n)
