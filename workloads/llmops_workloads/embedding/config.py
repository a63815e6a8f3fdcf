"""The embedding server's configuration (docs/embedding-server.md is the contract)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..common.settings import FileSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class ServerConfig(_Section):
    host: str = "0.0.0.0"  # noqa: S104 (in a pod; tests pass 127.0.0.1)
    port: int = Field(8080, ge=0, le=65535)
    metrics_port: int = Field(9090, ge=0, le=65535, description="0: /metrics only on the main port.")
    max_items_per_request: int = Field(2048, ge=1)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # After SIGTERM: stay up (not ready) this long for load balancers to notice, then drain.
    drain_seconds: float = Field(0.0, ge=0)
    graceful_timeout_seconds: float = Field(30.0, ge=0)
    retry_after_seconds: int = Field(1, ge=1)


class AuthConfig(_Section):
    api_key_file: str | None = None
    api_key: str | None = Field(None, description="Prefer api_key_file; this is for local runs.")


class EmbeddingServerConfig(FileSettings):
    model: ModelConfig
    batching: BatchingConfig = BatchingConfig()
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    debug: bool = Field(False, description="Log request text (never in production).")
