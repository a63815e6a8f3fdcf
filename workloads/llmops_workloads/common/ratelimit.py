"""Per-client rate limits: token buckets per client (the API key's name, or the client address
when auth is off) for requests per minute and, where the server counts them, tokens per minute
(embedding input tokens, generated tokens). In-process by default; with Redis, one shared budget
for every replica (an atomic Lua script, the clock from Redis so replicas agree).

Tokens are known only once a request has been served: they are charged afterwards (the bucket may
go negative) and a client whose token bucket is below zero is refused until it refills.

Redis down or slow: each replica falls back to its own in-process bucket for that client. The
limit then holds per replica (so the total can reach replicas x limit) rather than failing open
(no limit at all) or closed (rejecting everyone because a cache is down): a documented choice.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from pydantic import Field

from .settings import Section

log = logging.getLogger("llmops.ratelimit")
LIMITED = Counter("llmops_rate_limited_total", "Requests answered 429 by the per-client rate limit", ["client"])
REDIS_ERRORS = Counter("llmops_rate_limit_redis_errors_total", "Rate-limit checks that fell back to the local bucket")

# KEYS[1] bucket; ARGV: capacity, refill per second, cost, mode ("take": only if the cost is there;
# "charge": always, down to -capacity). Returns {allowed, remaining, retry_after_ms}.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local mode = ARGV[4]
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - at) * rate)
local allowed = 0
local retry = 0
if mode == 'charge' then
  tokens = math.max(-capacity, tokens - cost)
  allowed = 1
elseif tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = math.ceil((cost - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, math.floor(tokens), retry}
"""


class KeyLimit(Section):
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)


class RateLimitConfig(Section):
    requests_per_minute: int | None = Field(None, ge=1, description="Per client; unset: no limit.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Per client, where the server counts tokens.")
    per_key: dict[str, KeyLimit] = Field(default_factory=dict, description="Overrides by API key name.")
    redis_url: str | None = Field(None, description="Share each client's budget across replicas.")
    redis_password_file: str | None = None
    redis_timeout_seconds: float = Field(0.1, gt=0)
    key_prefix: str = "llmops:ratelimit"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds
    unit: str = "requests"

    def headers(self) -> dict[str, str]:
        out = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(max(0, self.remaining))}
        if not self.allowed:
            wait = max(1, math.ceil(self.retry_after))
            out["Retry-After"] = str(wait)
            out["X-RateLimit-Reset"] = str(wait)
        return out


class _Bucket:
    def __init__(self, capacity: float) -> None:
        self.tokens = capacity
        self.at = time.monotonic()


def _unit(bucket: str) -> str:
    return "tokens" if bucket.startswith("tpm:") else "requests"


class Usage:
    """Tokens a request used, reported by the server's handler (``charge_tokens``) and charged to
    the client by the middleware once the response is sent."""

    def __init__(self) -> None:
        self.tokens = 0


usage: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("llmops_usage", default=None)


def charge_tokens(n: int) -> None:
    """Called by handlers: this request used ``n`` tokens (input or generated)."""
    current = usage.get()
    if current is not None and n > 0:
        current.tokens += n


class RateLimiter:
    def __init__(self, cfg: RateLimitConfig, namespace: str) -> None:
        self.cfg = cfg
        self.prefix = f"{cfg.key_prefix}:{namespace}"
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._redis: Any = None
        self._script: Any = None
        if cfg.redis_url:
            import redis.asyncio as aioredis

            password = None
            if cfg.redis_password_file:
                with open(cfg.redis_password_file) as f:
                    password = f.read().strip()
            self._redis = aioredis.from_url(
                cfg.redis_url,
                password=password,
                socket_timeout=cfg.redis_timeout_seconds,
                socket_connect_timeout=cfg.redis_timeout_seconds,
            )
            self._script = self._redis.register_script(_LUA)

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.requests_per_minute or self.cfg.tokens_per_minute or self.cfg.per_key)

    def _limits(self, client: str) -> tuple[int | None, int | None]:
        key = self.cfg.per_key.get(client)
        rpm = key.requests_per_minute if key and key.requests_per_minute else self.cfg.requests_per_minute
        tpm = key.tokens_per_minute if key and key.tokens_per_minute else self.cfg.tokens_per_minute
        return rpm, tpm

    async def check(self, client: str) -> Decision | None:
        """Admit one request: a request from the request bucket, and a token bucket not below zero.
        None when the client has no limit."""
        rpm, tpm = self._limits(client)
        decision = None
        if tpm is not None:
            decision = await self._bucket(f"tpm:{client}", tpm, 0, "take")
            if not decision.allowed:
                return decision
        if rpm is not None:
            decision = await self._bucket(f"rpm:{client}", rpm, 1, "take")
        return decision

    async def charge(self, client: str, tokens: int) -> None:
        _, tpm = self._limits(client)
        if tpm is not None and tokens > 0:
            await self._bucket(f"tpm:{client}", tpm, tokens, "charge")

    async def _bucket(self, name: str, limit: int, cost: int, mode: str) -> Decision:
        rate = limit / 60.0
        if self._script is not None:
            try:
                key = f"{self.prefix}:{name}"
                allowed, remaining, retry_ms = await self._script(keys=[key], args=[limit, rate, cost, mode])
                return Decision(bool(allowed), limit, int(remaining), int(retry_ms) / 1000, _unit(name))
            except Exception as exc:
                REDIS_ERRORS.inc()
                log.debug("rate-limit redis failed: %s", exc)
        return self._local(name, limit, rate, cost, mode)

    def _local(self, name: str, limit: int, rate: float, cost: int, mode: str) -> Decision:
        with self._lock:
            bucket = self._buckets.setdefault(name, _Bucket(limit))
            now = time.monotonic()
            bucket.tokens = min(limit, bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
            if mode == "charge":
                bucket.tokens = max(-limit, bucket.tokens - cost)
                return Decision(True, limit, int(bucket.tokens), 0.0, _unit(name))
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return Decision(True, limit, int(bucket.tokens), 0.0, _unit(name))
            return Decision(False, limit, 0, (max(cost, 1) - bucket.tokens) / rate, _unit(name))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
