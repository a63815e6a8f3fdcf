"""The embedding server's configuration (docs/embedding-server.md is the contract)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..common.audit import AuditConfig
from ..common.ratelimit import RateLimitConfig
from ..common.security import RedactionConfig
from ..common.serving import AuthConfig, ServerConfig
from ..common.serving import Section as _Section
from ..common.settings import FileSettings


class ModelConfig(_Section):
    name: str = Field(min_length=1, description="Hugging Face id or a local directory.")
    revision: str = "main"
    path: str | None = Field(None, description="Local directory with the weights (PVC, fine-tune output).")
    pooling: Literal["mean", "cls", "lasttoken"] | None = None
    normalize: bool | None = Field(None, description="Unset: what the model's sentence-transformers config says.")
    max_input_tokens: int | None = Field(None, ge=1, le=32768)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantization: Literal["none", "int8"] = "none"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trust_remote_code: bool = False


class BatchingConfig(_Section):
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_batch_tokens: int = Field(16384, ge=1)
    max_wait_millis: int = Field(5, ge=0, le=1000)
    max_concurrent_requests: int = Field(512, ge=1, description="Inputs waiting or running; beyond: 429.")


class EmbeddingHttpConfig(ServerConfig):
    max_items_per_request: int = Field(2048, ge=1)


class EmbeddingServerConfig(FileSettings):
    model: ModelConfig
    batching: BatchingConfig = BatchingConfig()
    server: EmbeddingHttpConfig = EmbeddingHttpConfig()
    auth: AuthConfig = AuthConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    audit: AuditConfig = AuditConfig()
    redaction: RedactionConfig = RedactionConfig()
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    debug: bool = Field(False, description="Log request text (never in production).")
