"""Pure builders of a RAGPipeline: spec in, config files, Jobs and workloads out. The config files
are checked against the servers' own config models: the operator writes what they read."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from llmops_operator.api.rag import RAGPipelineSpec
from llmops_operator.children import configmap, deployment
from llmops_operator.children.common import Owner
from llmops_operator.children.rag import (
    Resolved,
    generator_workload,
    ingestion_cronjob,
    ingestion_job,
    ingestion_job_name,
    rag_workload,
)
from llmops_operator.reconcilers.rag import default_collection
from llmops_workloads.common.settings import snake_keys
from llmops_workloads.generation.config import GenerationServerConfig
from llmops_workloads.rag.config import RagServerConfig

OWNER = Owner("llmops.dev/v1alpha1", "RAGPipeline", "docs", "uid-9", "team-a")
RESOLVED = Resolved(
    collection="llmops_team_a_docs",
    dimension=384,
    embedding_url="http://minilm.team-a.svc.cluster.local:8080",
    embedding_model=None,
    tokenizer="sentence-transformers/all-MiniLM-L6-v2",
    prompt_template=None,
    generator_url="http://tgi:8080",
)
BASE: dict[str, Any] = {
    "embedding": {"serviceRef": {"name": "minilm"}},
    "vectorStore": {"milvus": {"uri": "http://milvus:19530"}},
}


def spec(**extra: Any) -> RAGPipelineSpec:
    return RAGPipelineSpec.model_validate({**BASE, **extra})


def server_config(w: Any) -> RagServerConfig:
    return RagServerConfig.model_validate(snake_keys(yaml.safe_load(configmap.config_file(w))))


def test_server_config_is_what_the_rag_server_reads() -> None:
    s = spec(
        generator={
            "endpoint": "http://tgi:8080",
            "maxNewTokens": 128,
            "temperature": 0.2,
            "secretRef": {"name": "g", "key": "k"},
        },
        retrieval={"topK": 8, "scoreThreshold": 0.3, "chunkSize": 200, "chunkOverlap": 20, "maxContextTokens": 900},
        cache={"redis": {"url": "redis://r:6379/0", "secretRef": {"name": "r", "key": "password"}}, "ttlSeconds": 30},
        vectorStore={"milvus": {"uri": "http://milvus:19530", "secretRef": {"name": "m", "key": "token"},
                                "index": {"type": "IVF_FLAT", "metric": "IP", "params": {"nlist": 128}}}},
        server={"auth": {"apiKeySecretRef": {"name": "keys", "key": "k"}}},
    )  # fmt: skip
    w = rag_workload(OWNER, s, RESOLVED)
    cfg = server_config(w)
    assert cfg.milvus.collection == "llmops_team_a_docs" and cfg.milvus.index_type == "IVF_FLAT"
    assert cfg.milvus.metric == "IP" and cfg.milvus.index_params == {"nlist": 128}
    assert cfg.milvus.token_file == "/var/run/secrets/llmops/milvus/token"
    assert cfg.generator.url == "http://tgi:8080" and cfg.generator.max_new_tokens == 128
    assert cfg.generator.api_key_file == "/var/run/secrets/llmops/generator/api-key"
    assert cfg.retrieval.default_top_k == 8 and cfg.retrieval.score_threshold == 0.3
    assert (cfg.chunking.chunk_tokens, cfg.chunking.overlap_tokens) == (200, 20)
    assert cfg.cache.redis_password_file == "/var/run/secrets/llmops/redis/password"
    assert cfg.auth.api_key_file == "/var/run/secrets/llmops/auth/api-key"
    # Every referenced Secret is mounted, read-only, as exactly the file the config names.
    pod = deployment.build(w)["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"].startswith("secret-")}
    assert mounts == {f"/var/run/secrets/llmops/{n}" for n in ("milvus", "generator", "redis", "auth")}
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"m", "g", "r", "keys"}


def test_retrieval_only_pipeline_has_no_generator() -> None:
    w = rag_workload(OWNER, spec(), Resolved(**{**RESOLVED.__dict__, "generator_url": None}))
    assert server_config(w).generator.url is None
    assert generator_workload(OWNER, spec()) is None


def test_built_in_generator_config_is_what_the_generation_server_reads() -> None:
    s = spec(generator={"deploy": {"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}, "resources": {"gpu": 1}},
                        "maxNewTokens": 300})  # fmt: skip
    g = generator_workload(OWNER, s)
    assert g is not None and g.name == "docs-generator" and g.image.endswith("-cuda")
    cfg = GenerationServerConfig.model_validate(snake_keys(yaml.safe_load(configmap.config_file(g))))
    assert cfg.model.name == "Qwen/Qwen2.5-0.5B-Instruct" and cfg.limits.max_new_tokens == 300
    assert deployment.build(g)["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "python", "-m", "llmops_workloads.generation"
    ]  # fmt: skip


@pytest.mark.parametrize("max_new_tokens", [1, 40, 100, 4096])
def test_any_admitted_max_new_tokens_gives_a_config_the_generation_server_accepts(max_new_tokens: int) -> None:
    # Found by the quickstart: maxNewTokens below the server's default (100) crash-looped the pod.
    s = spec(generator={"deploy": {"model": {"name": "m"}}, "maxNewTokens": max_new_tokens})
    g = generator_workload(OWNER, s)
    assert g is not None
    cfg = GenerationServerConfig.model_validate(snake_keys(yaml.safe_load(configmap.config_file(g))))
    assert cfg.limits.max_new_tokens == max_new_tokens
    assert cfg.limits.default_max_new_tokens == min(100, max_new_tokens)


def test_ingestion_job_runs_the_ingest_command_with_sources_mounted() -> None:
    s = spec(
        sources=[
            {"configMap": {"name": "handbook"}},
            {"pvc": {"claimName": "corpus", "path": "docs/2026"}},
            {"url": "https://example.com/faq.html"},
        ],
        ingestion={"batchSize": 32, "backoffLimit": 1, "nodeSelector": {"pool": "batch"}, "resources": {"cpu": "2"}},
    )
    w = rag_workload(OWNER, s, RESOLVED)
    job = ingestion_job(w, s, "0123456789abcdef")
    assert job["metadata"]["name"] == ingestion_job_name(OWNER, "0123456789abcdef") == "docs-ingest-0123456789"
    assert job["metadata"]["annotations"]["llmops.dev/sources-hash"] == "0123456789abcdef"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    assert job["spec"]["backoffLimit"] == 1
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == [
        "python", "-m", "llmops_workloads.rag", "ingest", "--config", "/etc/llmops/config.yaml", "--batch-size", "32",
        "--termination-log", "/dev/termination-log", "/sources/0", "/sources/1/docs/2026", "https://example.com/faq.html",
    ]  # fmt: skip
    assert container["terminationMessagePath"] == "/dev/termination-log"  # the same file, named in both places
    assert pod["restartPolicy"] == "Never" and pod["nodeSelector"] == {"pool": "batch"}
    assert container["resources"]["requests"]["cpu"] == "2"
    assert not {"ports", "livenessProbe", "readinessProbe", "startupProbe"} & set(container)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["source-0"]["configMap"]["name"] == "handbook"
    assert volumes["source-1"]["persistentVolumeClaim"] == {"claimName": "corpus", "readOnly": True}
    # Ingestion pods never match the server's Service.
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "ingestion" != w.selector["app.kubernetes.io/component"]


def test_cronjob_only_with_a_schedule_and_sources() -> None:
    w = rag_workload(OWNER, spec(), RESOLVED)
    assert ingestion_cronjob(w, spec(ingestion={"schedule": "0 3 * * *"})) is None  # no sources
    s = spec(sources=[{"configMap": {"name": "h"}}], ingestion={"schedule": "0 3 * * *", "historyLimit": 5})
    cron = ingestion_cronjob(rag_workload(OWNER, s, RESOLVED), s)
    assert cron is not None
    assert (cron["spec"]["schedule"], cron["spec"]["concurrencyPolicy"]) == ("0 3 * * *", "Forbid")
    assert cron["spec"]["successfulJobsHistoryLimit"] == 5


@pytest.mark.parametrize(
    ("namespace", "name", "collection"),
    [("team-a", "docs", "llmops_team_a_docs"), ("default", "my.rag", "llmops_default_my_rag")],
)
def test_default_collection_names_are_valid_milvus_names(namespace: str, name: str, collection: str) -> None:
    assert default_collection(namespace, name) == collection


def test_rate_limits_and_audit_reach_the_server_config() -> None:
    s = spec(
        server={
            "rateLimits": {
                "requestsPerMinute": 120,
                "perKey": {"batch": {"requestsPerMinute": 6000, "tokensPerMinute": 900000}},
                "tokensPerMinute": 20000,
                "redis": {"url": "redis://redis:6379/1", "secretRef": {"name": "redis", "key": "password"}},
            },
            "audit": {"enabled": True},
            "redaction": {"prompts": True, "types": ["email", "phone"]},
        }
    )
    w = rag_workload(OWNER, s, RESOLVED)
    cfg = server_config(w)
    assert cfg.redaction.prompts is True and cfg.redaction.logs is False and cfg.redaction.types == ["email", "phone"]
    assert cfg.rate_limits.requests_per_minute == 120 and cfg.rate_limits.per_key["batch"].requests_per_minute == 6000
    assert cfg.rate_limits.tokens_per_minute == 20000
    assert cfg.rate_limits.per_key["batch"].tokens_per_minute == 900000
    assert cfg.rate_limits.redis_url == "redis://redis:6379/1"
    assert cfg.rate_limits.redis_password_file == "/var/run/secrets/llmops/ratelimit/password"
    assert cfg.audit.enabled is True
    pod = deployment.build(w)["spec"]["template"]["spec"]
    assert "/var/run/secrets/llmops/ratelimit" in {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
