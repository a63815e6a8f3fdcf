"""RAGPipeline (llmops.dev/v1alpha1): a retrieval-augmented generation stack as one object: the
Milvus collection, the RAG server, declarative ingestion, and optionally its generation server."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .base import ApiModel
from .common import (
    NAME_MAX,
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
from .embedding import ModelSource

GROUP = "llmops.dev"
VERSION = "v1alpha1"
KIND = "RAGPipeline"
PLURAL = "ragpipelines"
URL_PATTERN = r"^https?://[^\s]+$"
COLLECTION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"


class EmbeddingRef(ApiModel):
    """Which embedding service turns text into vectors: an EmbeddingService, or any
    OpenAI-compatible endpoint (then its dimension must be given)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.serviceRef) != has(self.endpoint)",
                "set exactly one of embedding.serviceRef (an EmbeddingService) or embedding.endpoint",
            ),
            cel(
                "!has(self.endpoint) || has(self.dimension)",
                "embedding.endpoint needs embedding.dimension (the collection is created with it)",
            ),
        )
    )

    service_ref: LocalObjectReference | None = Field(None, description="An EmbeddingService in this namespace.")
    endpoint: str | None = Field(None, max_length=2048, pattern=URL_PATTERN, description="Base URL of /v1/embeddings.")
    dimension: int | None = Field(None, ge=1, le=65536, description="Vector size (default: the service's status).")
    model: str | None = Field(None, max_length=256, description="The `model` sent with embedding requests.")
    api_key_secret_ref: SecretKeyRef | None = Field(None, description="The RAG server's key for the embedding API.")


class IndexSpec(ApiModel):
    type: Literal["AUTOINDEX", "FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8"] = "HNSW"
    metric: Literal["COSINE", "IP", "L2"] = "COSINE"
    params: dict[str, int] = Field(default_factory=dict, description="Build parameters, e.g. {M: 16}.")
    search_params: dict[str, int] = Field(default_factory=dict, description="Search parameters, e.g. {ef: 64}.")


class MilvusSpec(ApiModel):
    uri: str = Field(max_length=2048, pattern=r"^(https?|tcp)://[^\s]+$", description="e.g. http://milvus:19530")
    secret_ref: SecretKeyRef | None = Field(None, description="Token (user:password or API key) in a Secret.")
    database: str = Field("", max_length=255)
    collection: str | None = Field(
        None,
        pattern=COLLECTION_PATTERN,
        description="Default: llmops_<namespace>_<name> (dashes become underscores). Immutable.",
        json_schema_extra=validations(
            cel(
                "self == oldSelf",
                "vectorStore.milvus.collection is immutable: create a new RAGPipeline for another collection",
            )
        ),
    )
    index: IndexSpec = Field(default_factory=IndexSpec, json_schema_extra={"default": {}})
    consistency_level: Literal["Strong", "Bounded", "Session", "Eventually"] = "Bounded"
    deletion_policy: Literal["Retain", "Delete"] = Field(
        "Retain", description="Delete drops the collection with the RAGPipeline (a finalizer waits for Milvus)."
    )


class VectorStoreSpec(ApiModel):
    milvus: MilvusSpec


class GeneratorModel(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.source) || !has(self.source.fineTuneJobRef)",
                "generator.deploy.model.source.fineTuneJobRef is not supported yet: use huggingface or pvc",
            )
        )
    )

    name: str = Field(min_length=1, max_length=256, description="Hugging Face id of a causal LM.")
    revision: str = Field("main", max_length=128)
    source: ModelSource = Field(
        default_factory=lambda: ModelSource.model_validate({"huggingface": {}}),
        json_schema_extra={"default": {"huggingface": {}}},
    )


class GeneratorDeploy(ApiModel):
    """The built-in generation server (for small models; use TGI or vLLM for large ones)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.maxInputTokens < self.maxTotalTokens",
                "generator.deploy.maxInputTokens must be less than maxTotalTokens (the prompt and the answer share "
                "maxTotalTokens)",
            )
        )
    )

    model: GeneratorModel
    replicas: int = Field(1, ge=0, le=100)
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, json_schema_extra={"default": {}, **RESOURCES_RULES}
    )
    image: str | None = Field(None, max_length=512)
    max_input_tokens: int = Field(1024, ge=1, le=131072)
    max_total_tokens: int = Field(2048, ge=2, le=131072)


class GeneratorSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.endpoint) != has(self.deploy)",
                "set exactly one of generator.endpoint (an existing TGI or OpenAI-compatible server) or "
                "generator.deploy (the built-in generation server)",
            ),
            cel(
                "!has(self.deploy) || self.protocol == 'tgi'",
                "generator.deploy serves the TGI protocol: leave protocol as tgi",
            ),
        )
    )

    endpoint: str | None = Field(None, max_length=2048, pattern=URL_PATTERN)
    protocol: Literal["tgi", "openai"] = Field("tgi", description="tgi: /generate_stream; openai: chat completions.")
    model: str | None = Field(None, max_length=256, description="The model name sent to an OpenAI endpoint.")
    secret_ref: SecretKeyRef | None = Field(None, description="API key of the endpoint.")
    deploy: GeneratorDeploy | None = None
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Answers never exceed this.")
    temperature: float | None = Field(None, ge=0, le=2, description="Unset: greedy.")
    stop: list[str] = Field(default_factory=list, max_length=4)


class ConfigMapKeyRef(ApiModel):
    name: str = Field(min_length=1, max_length=NAME_MAX)
    key: str = Field(min_length=1, max_length=NAME_MAX)


class RetrievalSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.chunkOverlap) || !has(self.chunkSize) || self.chunkOverlap < self.chunkSize",
                "retrieval.chunkOverlap must be smaller than chunkSize",
            ),
            cel(
                "!(has(self.promptTemplate) && has(self.promptTemplateRef))",
                "set promptTemplate or promptTemplateRef, not both",
            ),
        )
    )

    top_k: int = Field(5, ge=1, le=100)
    score_threshold: float | None = Field(None, description="Similarity floor (COSINE, IP) or distance ceiling (L2).")
    chunk_size: int = Field(256, ge=16, le=8192, description="Tokens per chunk (the embedding model's tokenizer).")
    chunk_overlap: int = Field(32, ge=0, le=4096)
    max_context_tokens: int = Field(1500, ge=16, le=131072)
    prompt_template: str | None = Field(
        None, max_length=16384, description="Must contain {context} and {question}; {system} is optional."
    )
    prompt_template_ref: ConfigMapKeyRef | None = None
    tokenizer: str | None = Field(
        None,
        max_length=1024,
        description="Hugging Face id (or a path in the image) of the tokenizer that counts chunk tokens. Default: "
        "the EmbeddingService's model; with an endpoint and no tokenizer, chunks are counted in words.",
    )


class ConfigMapSource(ApiModel):
    name: str = Field(min_length=1, max_length=NAME_MAX)


class PvcPathSource(ApiModel):
    claim_name: str = Field(min_length=1, max_length=NAME_MAX)
    path: str = Field("", max_length=1024, pattern=r"^[^/].*$|^$", description="Relative directory or file.")


class SourceSpec(ApiModel):
    """Documents to ingest: every key of a ConfigMap (a file each), a path in a PVC, or a URL."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.configMap) ? 1 : 0) + (has(self.pvc) ? 1 : 0) + (has(self.url) ? 1 : 0) == 1",
                "each source sets exactly one of configMap, pvc or url",
            )
        )
    )

    config_map: ConfigMapSource | None = None
    pvc: PvcPathSource | None = None
    url: str | None = Field(None, max_length=2048, pattern=URL_PATTERN, description="Needs egress from the pod.")


class IngestionSpec(ApiModel):
    schedule: str | None = Field(
        None, max_length=128, description="Cron schedule for periodic re-ingestion (a CronJob); unchanged documents "
        "are skipped, so a re-run is cheap.",
    )  # fmt: skip
    history_limit: int = Field(3, ge=1, le=20, description="Finished ingestion Jobs kept.")
    backoff_limit: int = Field(2, ge=0, le=10)
    batch_size: int = Field(64, ge=1, le=1024, description="Documents per batch.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, json_schema_extra={"default": {}})
    node_selector: dict[str, str] = Field(default_factory=dict, description="Where ingestion pods run.")


class RedisSpec(ApiModel):
    url: str = Field(max_length=2048, pattern=r"^rediss?://[^\s]+$")
    secret_ref: SecretKeyRef | None = Field(None, description="The Redis password.")


class CacheSpec(ApiModel):
    enabled: bool = True
    max_entries: int = Field(10000, ge=0, le=10_000_000, description="In-process entries per cache.")
    ttl_seconds: int = Field(60, ge=0, le=86400, description="Retrieval results' lifetime.")
    redis: RedisSpec | None = Field(None, description="Shared cache for every replica (and ingestion Jobs).")


class ServerSpec(PodPlacement):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(has(self.replicas) && has(self.autoscaling))",
                "set either server.replicas or server.autoscaling, not both",
            )
        )
    )

    replicas: int | None = Field(None, ge=0, le=1000, description="Default 1; leave unset with autoscaling.")
    autoscaling: AutoscalingSpec | None = None
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, json_schema_extra={"default": {}, **RESOURCES_RULES}
    )
    auth: AuthSpec = Field(default_factory=AuthSpec, json_schema_extra={"default": {}})
    rate_limits: RateLimitsSpec | None = None
    audit: AuditSpec = Field(default_factory=AuditSpec, json_schema_extra={"default": {}})
    redaction: RedactionSpec = Field(default_factory=RedactionSpec, json_schema_extra={"default": {}})
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, json_schema_extra={"default": {}})
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec, json_schema_extra={"default": {}})


class RAGPipelineSpec(ApiModel):
    embedding: EmbeddingRef
    vector_store: VectorStoreSpec
    generator: GeneratorSpec | None = Field(None, description="Unset: a retrieval-only pipeline.")
    retrieval: RetrievalSpec = Field(default_factory=RetrievalSpec, json_schema_extra={"default": {}})
    sources: list[SourceSpec] = Field(default_factory=list, max_length=64)
    ingestion: IngestionSpec = Field(default_factory=IngestionSpec, json_schema_extra={"default": {}})
    cache: CacheSpec = Field(default_factory=CacheSpec, json_schema_extra={"default": {}})
    server: ServerSpec = Field(default_factory=ServerSpec, json_schema_extra={"default": {}})


class LastIngestion(ApiModel):
    job_name: str | None = None
    sources_hash: str | None = None
    outcome: Literal["Running", "Succeeded", "Failed"] | None = None
    time: str | None = Field(None, description="When it finished (or started, while running).")
    documents: int | None = None
    chunks: int | None = None
    message: str | None = None


class RAGPipelineStatus(CommonStatus):
    collection: str | None = None
    dimension: int | None = None
    entity_count: int | None = Field(None, description="Chunks in the collection (refreshed every minute).")
    document_count: int | None = Field(None, description="Documents in the collection.")
    endpoint: str | None = Field(None, description="Cluster URL of the RAG API.")
    embedding: str | None = Field(None, description="The EmbeddingService used, or the endpoint's URL.")
    embedding_endpoint: str | None = None
    last_ingestion: LastIngestion | None = None


class RAGPipeline(ApiModel):
    model_config = ConfigDict(extra="ignore")

    spec: RAGPipelineSpec
    status: RAGPipelineStatus | None = None
