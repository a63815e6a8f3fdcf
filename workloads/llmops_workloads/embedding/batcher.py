"""Dynamic batching: requests' inputs wait in one bounded queue; a batch closes at maxBatchSize
inputs, at maxBatchTokens padded tokens, or when its oldest input has waited maxWaitMillis.

- Inputs of similar length go together (padding is wasted compute): the oldest input anchors
  the batch, which then takes the inputs closest to it in length.
- The forward pass runs on one inference thread, off the event loop: health checks and new
  requests are served while the model works, and the next batch forms in the meantime.
- A request larger than a batch is split into inputs and reassembled in order.
- Inputs whose request was cancelled (the client went away) are dropped before compute.
- Overload is refused at the door (``Overloaded``, answered 429), never queued without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .config import BatchingConfig

log = logging.getLogger("llmops.embedding.batcher")


class Overloaded(Exception):
    """The queue is full: come back later."""


@dataclass(eq=False)
class _Request:
    future: asyncio.Future[np.ndarray]
    vectors: list[np.ndarray | None]
    remaining: int
    enqueued: float


@dataclass(eq=False)
class _Input:
    ids: list[int]
    request: _Request
    index: int
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, embed: Callable[[list[list[int]]], np.ndarray], cfg: BatchingConfig) -> None:
        self._embed = embed
        self.cfg = cfg
        self._queue: list[_Input] = []
        self._in_flight = 0  # inputs queued or in the current forward pass
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._in_flight

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def embed(self, inputs: list[list[int]]) -> np.ndarray:
        """Vectors for ``inputs`` (token ids), in order. Raises Overloaded when the queue is full."""
        if self._in_flight + len(inputs) > self.cfg.max_concurrent_requests:
            metrics.REJECTED.inc()
            raise Overloaded(f"{self._in_flight} inputs in the queue (limit {self.cfg.max_concurrent_requests})")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        request = _Request(loop.create_future(), [None] * len(inputs), len(inputs), now)
        self._queue.extend(_Input(ids, request, i, now) for i, ids in enumerate(inputs))
        self._in_flight += len(inputs)
        metrics.QUEUE_DEPTH.set(self._in_flight)
        self._wakeup.set()
        return await request.future

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        max_wait = self.cfg.max_wait_millis / 1000
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            oldest = min(i.enqueued for i in self._queue)
            # Wait for the batch to fill, but never keep the oldest input past its deadline.
            while len(self._queue) < self.cfg.max_batch_size:
                remaining = oldest + max_wait - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            started = time.monotonic()
            for item in batch:
                metrics.QUEUE_WAIT.observe(started - item.enqueued)
            try:
                vectors = await loop.run_in_executor(self._executor, self._embed, [i.ids for i in batch])
            except Exception as exc:  # the model failed: fail these requests, keep serving
                log.exception("forward pass failed", extra={"batch": len(batch)})
                self._fail(batch, exc)
                continue
            metrics.INFERENCE.observe(time.monotonic() - started)
            metrics.BATCH_SIZE.observe(len(batch))
            metrics.BATCH_TOKENS.observe(len(batch) * max(len(i.ids) for i in batch))
            metrics.TOKENS.inc(sum(len(i.ids) for i in batch))
            self._deliver(batch, vectors)

    def _take_batch(self) -> list[_Input]:
        """Remove and return the next batch: the oldest live input plus its nearest in length."""
        live = []
        for item in self._queue:
            if item.request.future.done():  # cancelled: the client went away
                metrics.DROPPED.inc()
                self._in_flight -= 1
            else:
                live.append(item)
        self._queue = live
        metrics.QUEUE_DEPTH.set(self._in_flight)
        if not live:
            return []
        by_length = sorted(live, key=lambda i: len(i.ids))
        anchor = min(live, key=lambda i: i.enqueued)
        lo = hi = by_length.index(anchor)
        hi += 1
        longest = len(anchor.ids)
        size, budget = self.cfg.max_batch_size, self.cfg.max_batch_tokens
        while hi - lo < size:
            # A shorter input never raises the padded width; take those first.
            if lo > 0 and longest * (hi - lo + 1) <= budget:
                lo -= 1
            elif hi < len(by_length) and max(longest, len(by_length[hi].ids)) * (hi - lo + 1) <= budget:
                longest = max(longest, len(by_length[hi].ids))
                hi += 1
            else:
                break
        batch = by_length[lo:hi]
        chosen = set(map(id, batch))
        self._queue = [i for i in live if id(i) not in chosen]
        return batch

    def _deliver(self, batch: list[_Input], vectors: np.ndarray) -> None:
        for item, vector in zip(batch, vectors, strict=True):
            self._in_flight -= 1
            req = item.request
            if req.future.done():
                continue
            req.vectors[item.index] = vector
            req.remaining -= 1
            if req.remaining == 0:
                req.future.set_result(np.stack(req.vectors))  # type: ignore[arg-type]
        metrics.QUEUE_DEPTH.set(self._in_flight)

    def _fail(self, batch: list[_Input], exc: Exception) -> None:
        for item in batch:
            self._in_flight -= 1
            if not item.request.future.done():
                item.request.future.set_exception(exc)
        metrics.QUEUE_DEPTH.set(self._in_flight)
