"""Errors the RAG server maps to HTTP: a client's mistake (4xx) or a dependency that is down or
too slow (503 with Retry-After; liveness is never affected)."""

from __future__ import annotations


class ClientError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class DependencyUnavailable(Exception):
    """Milvus, the embedding service or the generator failed or timed out."""

    def __init__(self, dependency: str, message: str, status: int = 503) -> None:
        super().__init__(f"{dependency}: {message}")
        self.dependency = dependency
        self.message = message
        self.status = status  # 502 when the dependency answered but refused what we sent


class ConfigError(Exception):
    """The deployment is wrong (e.g. the collection's dimension differs from the model's)."""


class Overloaded(Exception):
    """limits.maxConcurrentRequests requests are in flight: answered 429 with Retry-After."""
