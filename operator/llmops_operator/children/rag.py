"""RAGPipeline -> Workloads and Jobs: the RAG server's config file and pod wiring, the built-in
generation server's, and the ingestion Job (and CronJob) that runs the RAG server's own ingest
command with the sources mounted.

The config keys and commands are the workloads' documented contracts (docs/rag-server.md,
docs/generation-server.md); keep them in step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..api.rag import RAGPipelineSpec
from ..images import workload_image
from . import deployment
from .common import (
    CONFIG_FILE,
    HTTP_PORT,
    METRICS_PORT,
    TERMINATION_LOG,
    Owner,
    Workload,
    container_resources,
    meta,
    secret_volume,
    security_config,
)

RAG_COMMAND = ("python", "-m", "llmops_workloads.rag")
GENERATION_COMMAND = ("python", "-m", "llmops_workloads.generation")
OWNER_LABEL = "llmops.dev/rag-pipeline"
SOURCES_HASH = "llmops.dev/sources-hash"
SOURCES_DIR = "/sources"
MODELS_DIR = "/models"


@dataclass(frozen=True)
class Resolved:
    """What the reconciler found out before building: nothing here comes from the spec alone."""

    collection: str
    dimension: int
    embedding_url: str
    embedding_model: str | None  # the `model` field sent
    tokenizer: str | None
    prompt_template: str | None
    generator_url: str | None


def server_config(
    spec: RAGPipelineSpec, r: Resolved
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The RAG server's config file, and the Secret volumes and mounts it refers to."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []

    def secret_file(name: str, secret: str, key: str, file: str) -> str:
        volume, mount, path = secret_volume(name, secret, key, file)
        volumes.append(volume)
        mounts.append(mount)
        return path

    milvus = spec.vector_store.milvus
    embedding: dict[str, Any] = {"url": r.embedding_url}
    if r.embedding_model:
        embedding["model"] = r.embedding_model
    if ref := spec.embedding.api_key_secret_ref:
        embedding["apiKeyFile"] = secret_file("embedding", ref.name, ref.key, "api-key")
    store: dict[str, Any] = {
        "uri": milvus.uri,
        "dbName": milvus.database,
        "collection": r.collection,
        "indexType": milvus.index.type,
        "metric": milvus.index.metric,
        "indexParams": dict(milvus.index.params),
        "searchParams": dict(milvus.index.search_params),
        "consistencyLevel": milvus.consistency_level,
    }
    if ref := milvus.secret_ref:
        store["tokenFile"] = secret_file("milvus", ref.name, ref.key, "token")
    generator: dict[str, Any] = {"url": r.generator_url}
    if spec.generator is not None:
        g = spec.generator
        generator.update(
            kind="openai" if g.protocol == "openai" else "tgi",
            maxNewTokens=g.max_new_tokens,
            defaultMaxNewTokens=min(256, g.max_new_tokens),
            stop=list(g.stop),
        )
        if g.model:
            generator["model"] = g.model
        if g.temperature is not None:
            generator["temperature"] = g.temperature
        if g.secret_ref:
            generator["apiKeyFile"] = secret_file("generator", g.secret_ref.name, g.secret_ref.key, "api-key")
    ret = spec.retrieval
    retrieval: dict[str, Any] = {"defaultTopK": ret.top_k, "maxTopK": max(50, ret.top_k)}
    if ret.score_threshold is not None:
        retrieval["scoreThreshold"] = ret.score_threshold
    prompt: dict[str, Any] = {"maxContextTokens": ret.max_context_tokens}
    if r.prompt_template:
        prompt["template"] = r.prompt_template
    cache: dict[str, Any] = {
        "enabled": spec.cache.enabled,
        "maxEntries": spec.cache.max_entries,
        "retrievalTtlSeconds": spec.cache.ttl_seconds,
    }
    if spec.cache.redis is not None:
        cache["redisUrl"] = spec.cache.redis.url
        if ref := spec.cache.redis.secret_ref:
            cache["redisPasswordFile"] = secret_file("redis", ref.name, ref.key, "password")
    config: dict[str, Any] = {
        "embedding": embedding,
        "milvus": store,
        "generator": generator,
        "chunking": {"tokenizer": r.tokenizer, "chunkTokens": ret.chunk_size, "overlapTokens": ret.chunk_overlap},
        "retrieval": retrieval,
        "prompt": prompt,
        "cache": cache,
        "server": {"host": "0.0.0.0", "port": HTTP_PORT, "metricsPort": METRICS_PORT},  # noqa: S104 (in a pod)
    }
    if ref := spec.server.auth.api_key_secret_ref:
        config["auth"] = {"apiKeyFile": secret_file("auth", ref.name, ref.key, "api-key")}
    extra, extra_volumes, extra_mounts = security_config(
        spec.server.rate_limits, spec.server.audit, spec.server.redaction
    )
    config.update(extra)
    return config, volumes + extra_volumes, mounts + extra_mounts


def rag_workload(owner: Owner, spec: RAGPipelineSpec, r: Resolved) -> Workload:
    config, volumes, mounts = server_config(spec, r)
    s = spec.server
    return Workload(
        owner=owner,
        name=owner.name,
        app="rag-server",
        component="rag",
        owner_label=OWNER_LABEL,
        image=s.image or workload_image(False),
        command=RAG_COMMAND,
        config=config,
        placement=s,
        resources=s.resources,
        replicas=s.replicas,
        autoscaling=s.autoscaling,
        monitoring=s.monitoring,
        network_policy=s.network_policy,
        volumes=tuple(volumes),
        mounts=tuple(mounts),
        default_cpu="1",
        default_memory="1Gi",
        startup_seconds=300,
    )


def generator_name(owner: Owner) -> str:
    return f"{owner.name}-generator"


def generator_workload(owner: Owner, spec: RAGPipelineSpec) -> Workload | None:
    if spec.generator is None or spec.generator.deploy is None:
        return None
    d = spec.generator.deploy
    model: dict[str, Any] = {"name": d.model.name, "revision": d.model.revision}
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = []
    source = d.model.source
    if source.pvc is not None:
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": source.pvc.claim_name, "readOnly": True}}
        )
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
        model["path"] = f"{MODELS_DIR}/{source.pvc.path}".rstrip("/")
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    if source.huggingface and (ref := source.huggingface.token_secret_ref):
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    gpu = d.resources.gpu > 0
    config = {
        "model": model,
        "limits": {
            "maxInputTokens": d.max_input_tokens,
            "maxTotalTokens": d.max_total_tokens,
            "maxNewTokens": spec.generator.max_new_tokens,
            # The server's own default (100) must not exceed the pipeline's limit.
            "defaultMaxNewTokens": min(100, spec.generator.max_new_tokens),
        },
        "server": {"host": "0.0.0.0", "port": HTTP_PORT, "metricsPort": METRICS_PORT},  # noqa: S104 (in a pod)
    }
    s = spec.server
    return Workload(
        owner=owner,
        name=generator_name(owner),
        app="generation-server",
        component="generator",
        owner_label=OWNER_LABEL,
        image=d.image or workload_image(gpu),
        command=GENERATION_COMMAND,
        config=config,
        placement=s,
        resources=d.resources,
        replicas=d.replicas,
        autoscaling=None,
        monitoring=s.monitoring,
        network_policy=s.network_policy,
        env=tuple(env),
        volumes=tuple(volumes),
        mounts=tuple(mounts),
        default_cpu="2" if not gpu else "4",
        default_memory="4Gi" if not gpu else "24Gi",
    )


# -- ingestion ------------------------------------------------------------------------------


def ingestion_job_name(owner: Owner, sources_hash: str) -> str:
    return f"{owner.name[:40]}-ingest-{sources_hash[:10]}"


def _ingestion_pod(w: Workload, spec: RAGPipelineSpec) -> dict[str, Any]:
    """The server's pod template, turned into a run-to-completion ingest pod: the same image,
    config file, Secrets and security context, plus the sources mounted read-only."""
    template = deployment.pod_template(w)
    pod = template["spec"]
    container = pod["containers"][0]
    args: list[str] = []
    volumes = pod["volumes"]
    mounts = container["volumeMounts"]
    for i, src in enumerate(spec.sources):
        if src.config_map is not None:
            volumes.append({"name": f"source-{i}", "configMap": {"name": src.config_map.name}})
            mounts.append({"name": f"source-{i}", "mountPath": f"{SOURCES_DIR}/{i}", "readOnly": True})
            args.append(f"{SOURCES_DIR}/{i}")
        elif src.pvc is not None:
            volumes.append(
                {"name": f"source-{i}", "persistentVolumeClaim": {"claimName": src.pvc.claim_name, "readOnly": True}}
            )
            mounts.append({"name": f"source-{i}", "mountPath": f"{SOURCES_DIR}/{i}", "readOnly": True})
            args.append(f"{SOURCES_DIR}/{i}/{src.pvc.path}".rstrip("/"))
        elif src.url is not None:
            args.append(src.url)
    ingestion = spec.ingestion
    job_w = replace(w, resources=ingestion.resources)
    container.update(
        name="ingest",
        command=[
            *RAG_COMMAND,
            "ingest",
            "--config",
            CONFIG_FILE,
            "--batch-size",
            str(ingestion.batch_size),
            "--termination-log",
            TERMINATION_LOG,
            *args,
        ],
        resources=container_resources(job_w),
        terminationMessagePath=TERMINATION_LOG,
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    for key in ("ports", "startupProbe", "livenessProbe", "readinessProbe", "lifecycle"):
        container.pop(key, None)
    pod["restartPolicy"] = "Never"
    pod.pop("terminationGracePeriodSeconds", None)
    if ingestion.node_selector:
        pod["nodeSelector"] = {**pod.get("nodeSelector", {}), **ingestion.node_selector}
    labels = {**template["metadata"]["labels"], "app.kubernetes.io/component": "ingestion"}
    template["metadata"]["labels"] = labels
    return template


def ingestion_labels(w: Workload) -> dict[str, str]:
    return {**w.labels, "app.kubernetes.io/component": "ingestion"}


def ingestion_job(w: Workload, spec: RAGPipelineSpec, sources_hash: str) -> dict[str, Any]:
    name = ingestion_job_name(w.owner, sources_hash)
    metadata = meta(w, name, annotations={SOURCES_HASH: sources_hash})
    metadata["labels"] = ingestion_labels(w)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": spec.ingestion.backoff_limit,
            "template": _ingestion_pod(w, spec),
        },
    }


def ingestion_cronjob(w: Workload, spec: RAGPipelineSpec) -> dict[str, Any] | None:
    if not spec.ingestion.schedule or not spec.sources:
        return None
    metadata = meta(w, f"{w.owner.name[:40]}-ingest")
    metadata["labels"] = ingestion_labels(w)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata,
        "spec": {
            "schedule": spec.ingestion.schedule,
            # Re-ingestion is idempotent; overlapping runs would only compete for the embedder.
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": spec.ingestion.history_limit,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {
                "metadata": {"labels": ingestion_labels(w)},
                "spec": {"backoffLimit": spec.ingestion.backoff_limit, "template": _ingestion_pod(w, spec)},
            },
        },
    }
