"""EmbeddingService (llmops.dev/v1alpha1): an embedding model served over HTTP with dynamic
batching, OpenAI- and TEI-compatible APIs."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .base import ApiModel
from .common import (
    RESOURCES_RULES,
    AuditSpec,
    AuthSpec,
    AutoscalingSpec,
    CommonStatus,
    LocalObjectReference,
    MonitoringSpec,
    NetworkPolicySpec,
    PodPlacement,
    RateLimitsSpec,
    RedactionSpec,
    ResourcesSpec,
    SecretKeyRef,
    cel,
    validations,
)

GROUP = "llmops.dev"
VERSION = "v1alpha1"
KIND = "EmbeddingService"
PLURAL = "embeddingservices"


class HuggingFaceSource(ApiModel):
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Hub token for gated or private models (passed as HF_TOKEN from the Secret)."
    )


class PvcSource(ApiModel):
    claim_name: str = Field(min_length=1, max_length=253, description="PersistentVolumeClaim holding the model.")
    path: str = Field(
        "",
        max_length=1024,
        pattern=r"^[^/].*$|^$",
        description="Directory of the model inside the volume (relative; empty for the volume's root).",
    )


class ModelSource(ApiModel):
    """Where the weights come from: exactly one of huggingface, pvc or fineTuneJobRef."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.huggingface) ? 1 : 0) + (has(self.pvc) ? 1 : 0) + (has(self.fineTuneJobRef) ? 1 : 0) == 1",
                "set exactly one of model.source.huggingface, model.source.pvc or model.source.fineTuneJobRef",
            )
        )
    )

    huggingface: HuggingFaceSource | None = None
    pvc: PvcSource | None = None
    fine_tune_job_ref: LocalObjectReference | None = Field(
        None,
        description="Serve the output of a FineTuneJob in this namespace once it has succeeded.",
    )


class ModelSpec(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=256,
        description=(
            "Model id, e.g. sentence-transformers/all-MiniLM-L6-v2 (the Hugging Face id, and the name clients "
            "pass as 'model'). Immutable: another model embeds into another vector space, so every index built "
            "on this service would silently stop matching; create a new EmbeddingService instead."
        ),
        json_schema_extra=validations(
            cel(
                "self == oldSelf",
                "model.name is immutable: a different model embeds into a different vector space; "
                "create a new EmbeddingService instead",
            )
        ),
    )
    revision: str = Field("main", max_length=128, description="Hub revision (branch, tag or commit).")
    source: ModelSource = Field(
        default_factory=lambda: ModelSource(huggingface=HuggingFaceSource()),
        json_schema_extra={"default": {"huggingface": {}}},
        description="Where the weights come from (default: the Hugging Face Hub).",
    )
    pooling: Literal["mean", "cls", "lasttoken"] | None = Field(
        None,
        description=(
            "How token vectors become one vector. Unset: what the model's sentence-transformers config says. "
            "Immutable once set, for the same reason as name."
        ),
        json_schema_extra=validations(
            cel("self == oldSelf", "model.pooling is immutable: it changes the vector space")
        ),
    )
    normalize: bool = Field(True, description="L2-normalise embeddings (cosine similarity becomes a dot product).")
    max_input_tokens: int | None = Field(
        None, ge=1, le=32768, description="Longest input in tokens (default: the model's own limit)."
    )
    dimension: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Embedding dimension, when known in advance; published in status for RAGPipelines.",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on GPU, float32 on CPU."
    )
    quantization: Literal["none", "int8"] = Field("none", description="int8: dynamic quantisation (CPU only).")


class BatchingSpec(ApiModel):
    """Dynamic batching: a batch closes at maxBatchSize inputs, maxBatchTokens tokens or maxWaitMillis."""

    max_batch_size: int = Field(32, ge=1, le=1024, description="Most inputs in one forward pass.")
    max_batch_tokens: int = Field(16384, ge=1, le=1048576, description="Token budget of one forward pass.")
    max_wait_millis: int = Field(5, ge=0, le=1000, description="Longest a request waits for a batch to fill.")
    max_concurrent_requests: int = Field(
        512, ge=1, le=100000, description="Queue bound; beyond it the server answers 429 with Retry-After."
    )


class EmbeddingServiceSpec(PodPlacement):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(has(self.replicas) && has(self.autoscaling))",
                "set either replicas or autoscaling, not both: with autoscaling the HorizontalPodAutoscaler owns "
                "the replica count",
            ),
            cel(
                "!has(self.model.quantization) || self.model.quantization != 'int8' || !has(self.resources) "
                "|| !has(self.resources.gpu) || self.resources.gpu == 0",
                "model.quantization int8 is for CPU serving: set resources.gpu to 0, or use dtype float16",
            ),
        )
    )

    model: ModelSpec
    batching: BatchingSpec = Field(default_factory=BatchingSpec, json_schema_extra={"default": {}})
    replicas: int | None = Field(
        None, ge=0, le=1000, description="Replica count (default 1). Leave unset when autoscaling is set."
    )
    autoscaling: AutoscalingSpec | None = None
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec,
        json_schema_extra={"default": {}, **RESOURCES_RULES},
    )
    auth: AuthSpec = Field(default_factory=AuthSpec, json_schema_extra={"default": {}})
    rate_limits: RateLimitsSpec | None = None
    audit: AuditSpec = Field(default_factory=AuditSpec, json_schema_extra={"default": {}})
    redaction: RedactionSpec = Field(default_factory=RedactionSpec, json_schema_extra={"default": {}})
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, json_schema_extra={"default": {}})
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec, json_schema_extra={"default": {}})


class EmbeddingServiceStatus(CommonStatus):
    replicas: int | None = None
    ready_replicas: int | None = None
    endpoint: str | None = Field(None, description="Cluster URL of the OpenAI/TEI-compatible API.")
    model: str | None = Field(None, description="The model being served (name@revision).")
    dimension: int | None = None
    selector: str | None = Field(None, description="Label selector of the pods (for the scale subresource).")


class EmbeddingService(ApiModel):
    model_config = ConfigDict(extra="ignore")

    spec: EmbeddingServiceSpec
    status: EmbeddingServiceStatus | None = None
