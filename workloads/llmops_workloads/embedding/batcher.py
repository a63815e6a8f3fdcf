"""Dynamic batching: requests' inputs wait in one bounded queue; a batch closes at maxBatchSize
inputs, at maxBatchTokens padded tokens, or when its oldest input has waited maxWaitMillis.

- Inputs of similar length go together (padding is wasted compute): the oldest inputs, about
  two batches' worth, are sorted by length and cut into batches; no input waits behind an
  endless stream of better-fitting newcomers.
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
from collections import deque
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
        self._queue: list[_Input] = []  # arrival order
        self._planned: deque[list[_Input]] = deque()  # batches cut from the current window
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
        request = _Request(loop.create_future(), [None] * len(inputs), len(inputs))
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
            if not self._queue and not self._planned:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            oldest = self._queue[0].enqueued if self._queue else 0.0
            # Wait for the batch to fill, but never keep the oldest input past its deadline.
            while not self._planned and len(self._queue) < self.cfg.max_batch_size:
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
        """The next batch. Batches are planned a window at a time: the oldest inputs, about two
        batches' worth, sorted by length and cut by size and token budget. Grouping by length
        inside a window wastes little padding, and no input waits more than a window behind
        inputs that arrived after it."""
        self._drop_cancelled()
        while self._planned:
            batch = [i for i in self._planned.popleft() if not i.request.future.done()]
            if batch:
                return batch
        if not self._queue:
            return []
        size, budget = self.cfg.max_batch_size, self.cfg.max_batch_tokens
        window: list[_Input] = []
        longest = 0
        for item in self._queue:  # arrival order
            longest = max(longest, len(item.ids))
            if window and (len(window) >= 2 * size or (len(window) + 1) * longest > 2 * budget):
                break
            window.append(item)
        self._queue = self._queue[len(window) :]
        current: list[_Input] = []
        for item in sorted(window, key=lambda i: len(i.ids)):
            # Sorted ascending: the newcomer is the longest, so it sets the padded width.
            if current and (len(current) >= size or (len(current) + 1) * len(item.ids) > budget):
                self._planned.append(current)
                current = []
            current.append(item)
        self._planned.append(current)
        return self._planned.popleft()

    def _drop_cancelled(self) -> None:
        """Forget inputs whose request is already done (cancelled: the client went away)."""
        before = len(self._queue) + sum(len(b) for b in self._planned)
        self._queue = [i for i in self._queue if not i.request.future.done()]
        self._planned = deque(kept for b in self._planned if (kept := [i for i in b if not i.request.future.done()]))
        dropped = before - len(self._queue) - sum(len(b) for b in self._planned)
        if dropped:
            metrics.DROPPED.inc(dropped)
            self._in_flight -= dropped
            metrics.QUEUE_DEPTH.set(self._in_flight)

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
