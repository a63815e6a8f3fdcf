"""A rate-limited work queue in the style of client-go's: each key is processed by one worker at
a time; a key added while it is being processed runs once more afterwards; failures back off
exponentially per key; a success resets the backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

from ..metrics import QUEUE_DEPTH

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, base_delay: float = 0.5, max_delay: float = 300.0) -> None:
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._failures: dict[K, int] = {}
        self.base_delay = base_delay
        self.max_delay = max_delay

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: K) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._ready.put_nowait(key)
        QUEUE_DEPTH.set(len(self._queued))

    def add_after(self, key: K, delay: float) -> None:
        """Add the key once ``delay`` seconds have passed (an earlier pending timer wins)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> K:
        key = await self._ready.get()
        self._queued.discard(key)
        self._processing.add(key)
        QUEUE_DEPTH.set(len(self._queued))
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def retry(self, key: K) -> float:
        """Schedule the key again after its next backoff delay; return the delay."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay: float = min(self.base_delay * (2.0 ** (failures - 1)), self.max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts the backoff from the beginning."""
        self._failures.pop(key, None)

    def drop(self, key: K) -> None:
        """The object is gone: no more timers for it."""
        self.forget(key)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
