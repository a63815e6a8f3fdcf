"""Two-tier cache for query embeddings and retrieval results: in-process LRU with TTL (L1),
optionally backed by Redis (L2) so replicas share hits.

Retrieval results depend on the collection, so their keys carry a *generation* number that every
write (ingest, delete) increments: old entries are never read again and expire on their TTL. With
Redis the generation lives there, so a write through any replica or an ingestion Job invalidates
every replica at once; without Redis each process has its own and other writers' changes are seen
within the retrieval TTL.

Redis is an optimisation, never a dependency: an error or a slow answer (``redis_timeout_seconds``)
is counted and treated as a miss.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .config import CacheConfig
from .metrics import CACHE_ERRORS, CACHE_LOOKUPS

log = logging.getLogger("llmops.rag.cache")


class TtlLru:
    """A bounded LRU map whose entries expire (monotonic clock)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: str, value: bytes, ttl: float) -> None:
        if self.max_entries <= 0 or ttl <= 0:
            return
        self._data[key] = (time.monotonic() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class Cache:
    def __init__(self, cfg: CacheConfig, namespace: str) -> None:
        self.cfg = cfg
        self.prefix = f"{cfg.key_prefix}:{namespace}"
        self.l1 = {"embedding": TtlLru(cfg.max_entries), "retrieval": TtlLru(cfg.max_entries)}
        self.ttl = {"embedding": cfg.embedding_ttl_seconds, "retrieval": cfg.retrieval_ttl_seconds}
        self.local_generation = 0
        self.redis: Any = None
        if cfg.enabled and cfg.redis_url:
            import redis.asyncio as aioredis

            password = Path(cfg.redis_password_file).read_text().strip() if cfg.redis_password_file else None
            self.redis = aioredis.from_url(
                cfg.redis_url,
                password=password,
                socket_timeout=cfg.redis_timeout_seconds,
                socket_connect_timeout=cfg.redis_timeout_seconds,
                retry_on_timeout=False,
            )

    @staticmethod
    def digest(*parts: str) -> str:
        h = hashlib.sha256()
        for p in parts:
            h.update(p.encode())
            h.update(b"\0")
        return h.hexdigest()

    async def _redis(self, op: str, *args: Any) -> Any:
        try:
            return await getattr(self.redis, op)(*args)
        except Exception as exc:
            CACHE_ERRORS.inc()
            log.debug("redis %s failed: %s", op, exc)
            return None

    async def generation(self) -> str:
        """The collection's write generation (see the module docstring)."""
        if self.redis is not None:
            value = await self._redis("get", f"{self.prefix}:generation")
            if value is not None:
                return f"r{int(value)}"
            # Redis down or the key absent: fall back to this process's counter.
        return f"l{self.local_generation}"

    async def invalidate(self) -> None:
        """Called after every write to the collection."""
        self.local_generation += 1
        self.l1["retrieval"].clear()
        if self.redis is not None:
            await self._redis("incr", f"{self.prefix}:generation")

    async def get(self, kind: str, key: str) -> bytes | None:
        if not self.cfg.enabled:
            return None
        value = self.l1[kind].get(key)
        if value is not None:
            CACHE_LOOKUPS.labels(cache=kind, result="hit_l1").inc()
            return value
        if self.redis is not None:
            value = await self._redis("get", f"{self.prefix}:{kind}:{key}")
            if value is not None:
                CACHE_LOOKUPS.labels(cache=kind, result="hit_l2").inc()
                self.l1[kind].put(key, value, self.ttl[kind])
                return bytes(value)
        CACHE_LOOKUPS.labels(cache=kind, result="miss").inc()
        return None

    async def put(self, kind: str, key: str, value: bytes) -> None:
        if not self.cfg.enabled:
            return
        ttl = self.ttl[kind]
        self.l1[kind].put(key, value, ttl)
        if self.redis is not None and ttl > 0:
            await self._redis("set", f"{self.prefix}:{kind}:{key}", value, max(1, int(ttl)))  # ex=seconds

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
