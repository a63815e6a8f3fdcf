"""The generation server's configuration (docs/generation-server.md is the contract)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from ..common.audit import AuditConfig
from ..common.ratelimit import RateLimitConfig
from ..common.security import RedactionConfig
from ..common.serving import AuthConfig, ServerConfig
from ..common.serving import Section as _Section
from ..common.settings import FileSettings


class ModelConfig(_Section):
    name: str = Field(min_length=1, description="Hugging Face id (what /info reports) or a local directory.")
    revision: str = "main"
    path: str | None = Field(None, description="Local directory with the weights (PVC, fine-tune output).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trust_remote_code: bool = False
    cpu_threads: int | None = Field(
        None, ge=1, le=256, description="torch threads on CPU; set it to the pod's CPU limit (torch sees the node's)."
    )


class LimitsConfig(_Section):
    """What one request may ask for (TGI's names where TGI has the setting)."""

    max_input_tokens: int = Field(1024, ge=1, description="Prompt tokens; more is a 422 unless truncate is set.")
    max_total_tokens: int = Field(2048, ge=2, description="Prompt + new tokens; capped by the model's positions.")
    default_max_new_tokens: int = Field(100, ge=1, description="When a request gives no max_new_tokens.")
    max_new_tokens: int = Field(1024, ge=1, description="The most a request may ask for.")
    max_stop_sequences: int = Field(4, ge=0, le=64)
    max_concurrent_requests: int = Field(128, ge=1, description="Queued + generating; beyond: 429.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_input_tokens >= self.max_total_tokens:
            raise ValueError("maxInputTokens must be less than maxTotalTokens")
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ValueError("defaultMaxNewTokens must not exceed maxNewTokens")
        return self


class BatchingConfig(_Section):
    max_batch_size: int = Field(16, ge=1, le=1024, description="Sequences generating together.")
    max_batch_tokens: int = Field(8192, ge=1, description="Padded prompt tokens per prefill pass.")
    max_wait_millis: int = Field(5, ge=0, le=1000, description="An idle engine waits this long for company.")


class GenerationServerConfig(FileSettings):
    model: ModelConfig
    limits: LimitsConfig = LimitsConfig()
    batching: BatchingConfig = BatchingConfig()
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    audit: AuditConfig = AuditConfig()
    redaction: RedactionConfig = RedactionConfig()
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    debug: bool = Field(False, description="Log prompts (never in production).")

    @model_validator(mode="after")
    def _prompt_fits_a_prefill(self) -> Self:
        # The oldest waiting prompt always gets into the next prefill: it must fit the budget alone.
        if self.batching.max_batch_tokens < self.limits.max_input_tokens:
            raise ValueError("batching.maxBatchTokens must be at least limits.maxInputTokens")
        return self
