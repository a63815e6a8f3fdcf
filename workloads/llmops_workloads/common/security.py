"""What every server puts in front of its API, in one place: API keys (named, rotated without a
restart), per-client rate limits and the audit log. ``Guard`` applies it to every request except
the open paths (``/health``, ``/ready``, ``/metrics`` by default), before the body is read."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from pydantic import Field

from .audit import AuditConfig, AuditLog
from .auth import ApiKeys
from .ratelimit import RateLimitConfig, RateLimiter
from .redaction import Redactor
from .serving import AuthConfig
from .settings import Section

OPEN_PATHS = ("/health", "/ready", "/metrics")


class RedactionConfig(Section):
    """PII redaction (common.redaction): off unless asked for."""

    logs: bool = Field(False, description="Redact log records (messages, extras, tracebacks).")
    prompts: bool = Field(False, description="RAG: redact the question and sources sent to the generator.")
    types: list[str] | None = Field(None, description="Subset of common.redaction.TYPES; unset: all.")

    def redactor(self) -> Redactor:
        return Redactor(self.types)


@dataclass
class Security:
    keys: ApiKeys = field(default_factory=ApiKeys)
    limiter: RateLimiter | None = None
    audit: AuditLog | None = None
    open_paths: Collection[str] = OPEN_PATHS

    def is_open(self, path: str) -> bool:
        return path in self.open_paths


def build_security(
    auth: AuthConfig, limits: RateLimitConfig, audit: AuditConfig, namespace: str, identity: dict[str, str]
) -> Security:
    """``namespace`` separates servers sharing one Redis (e.g. the service's name)."""
    limiter = RateLimiter(limits, namespace)
    return Security(
        keys=ApiKeys(auth.api_key_file, auth.api_key),
        limiter=limiter if limiter.enabled else None,
        audit=AuditLog(audit, identity) if audit.enabled else None,
        open_paths=tuple(auth.exempt_paths),
    )
