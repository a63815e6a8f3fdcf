"""Table-driven tests of the pure builders: EmbeddingService spec in, child objects out."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from llmops_operator.api.embedding import EmbeddingServiceSpec
from llmops_operator.children import (
    autoscaler,
    configmap,
    deployment,
    disruption,
    networkpolicy,
    service,
    servicemonitor,
)
from llmops_operator.children.common import Owner
from llmops_operator.children.embedding import workload

OWNER = Owner("llmops.dev/v1alpha1", "EmbeddingService", "emb", "uid-1", "team-a")
MODEL = {"name": "sentence-transformers/all-MiniLM-L6-v2"}


def build(pvc: tuple[str, str] | None = None, **spec: Any) -> Any:
    return workload(OWNER, EmbeddingServiceSpec.model_validate({"model": MODEL, **spec}), pvc)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


@pytest.mark.parametrize(
    ("spec", "replicas", "gpu_limit", "node_selector", "image_suffix"),
    [
        ({}, 1, None, None, "-cpu"),
        ({"replicas": 3}, 3, None, None, "-cpu"),
        ({"replicas": 0}, 0, None, None, "-cpu"),
        ({"resources": {"gpu": 2}}, 1, "2", None, "-cuda"),
        (
            {"resources": {"gpu": 1, "gpuProduct": "NVIDIA-L4"}, "nodeSelector": {"zone": "a"}},
            1,
            "1",
            {"zone": "a", "nvidia.com/gpu.product": "NVIDIA-L4"},
            "-cuda",
        ),
        ({"autoscaling": {"maxReplicas": 4, "targetQueueDepth": 32}}, None, None, None, "-cpu"),
    ],
)
def test_deployment(
    spec: dict[str, Any],
    replicas: int | None,
    gpu_limit: str | None,
    node_selector: dict[str, str] | None,
    image_suffix: str,
) -> None:
    dep = deployment.build(build(**spec))
    assert dep["spec"].get("replicas") == replicas
    c = container(dep)
    assert c["resources"]["limits"].get("nvidia.com/gpu") == gpu_limit
    assert c["resources"]["requests"].get("nvidia.com/gpu") == gpu_limit
    pod = dep["spec"]["template"]["spec"]
    assert pod.get("nodeSelector") == node_selector
    has_gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod.get(
        "tolerations", []
    )
    assert has_gpu_toleration is (gpu_limit is not None)
    assert c["image"].endswith(image_suffix)
    assert dep["spec"]["selector"]["matchLabels"] == {
        "llmops.dev/embedding-service": "emb",
        "app.kubernetes.io/component": "embedding",
    }
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_deployment_is_restricted_and_drains() -> None:
    dep = deployment.build(build())
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/etc/llmops", "/cache", "/tmp"}
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert pod["terminationGracePeriodSeconds"] >= 30
    # The startup probe allows a slow model load; liveness does not start before it passes.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_config_changes_roll_pods_and_placement_does_not_change_the_hash() -> None:
    def hash_of(**spec: Any) -> str:
        dep = deployment.build(build(**spec))
        return str(dep["spec"]["template"]["metadata"]["annotations"]["llmops.dev/config-hash"])

    base = hash_of()
    assert hash_of(batching={"maxBatchSize": 8}) != base
    assert hash_of(model={**MODEL, "revision": "v2"}) != base
    assert hash_of(replicas=5) == base


def test_sources_secrets_and_auth_are_wired_by_reference() -> None:
    w = build(
        pvc=("models", "minilm"),
        auth={"apiKeySecretRef": {"name": "keys", "key": "k1"}},
        model={**MODEL, "source": {"huggingface": {"tokenSecretRef": {"name": "hf", "key": "token"}}}},
    )
    dep = deployment.build(w)
    c = container(dep)
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert "value" not in env["HF_TOKEN"]
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volumes["api-key"]["secret"]["secretName"] == "keys"
    config = yaml.safe_load(configmap.build(w)["data"]["config.yaml"])
    assert config["model"]["path"] == "/models/minilm"
    assert config["auth"] == {"apiKeyFile": "/var/run/secrets/llmops/api-key"}
    assert "keys" not in configmap.build(w)["data"]["config.yaml"]


def test_config_file_is_the_documented_contract() -> None:
    config = yaml.safe_load(
        configmap.build(build(model={**MODEL, "pooling": "cls", "maxInputTokens": 128}))["data"]["config.yaml"]
    )
    assert config == {
        "model": {
            "name": MODEL["name"],
            "revision": "main",
            "pooling": "cls",
            "normalize": True,
            "maxInputTokens": 128,
            "dtype": "auto",
            "quantization": "none",
        },
        "batching": {"maxBatchSize": 32, "maxBatchTokens": 16384, "maxWaitMillis": 5, "maxConcurrentRequests": 512},
        "server": {"host": "0.0.0.0", "port": 8080, "metricsPort": 9090},
    }


@pytest.mark.parametrize(
    ("autoscaling", "metrics"),
    [
        (None, None),
        ({"maxReplicas": 4, "targetCPUUtilizationPercentage": 60}, ["Resource"]),
        ({"maxReplicas": 4, "targetQueueDepth": 16}, ["Pods"]),
        (
            {"minReplicas": 2, "maxReplicas": 9, "targetCPUUtilizationPercentage": 60, "targetQueueDepth": 16},
            ["Resource", "Pods"],
        ),
    ],
)
def test_hpa(autoscaling: dict[str, Any] | None, metrics: list[str] | None) -> None:
    hpa = autoscaler.build(build(autoscaling=autoscaling) if autoscaling else build())
    if metrics is None:
        assert hpa is None
        return
    assert hpa is not None
    assert [m["type"] for m in hpa["spec"]["metrics"]] == metrics
    assert hpa["spec"]["maxReplicas"] == autoscaling["maxReplicas"]  # type: ignore[index]
    assert hpa["spec"]["minReplicas"] == autoscaling.get("minReplicas", 1)  # type: ignore[union-attr]
    if "Pods" in metrics:
        pods = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")["pods"]
        assert pods["metric"]["name"] == "llmops_queue_depth"


@pytest.mark.parametrize(
    ("spec", "has_pdb"),
    [
        ({}, False),
        ({"replicas": 1}, False),
        ({"replicas": 2}, True),
        ({"autoscaling": {"maxReplicas": 1, "targetQueueDepth": 4}}, False),
        ({"autoscaling": {"maxReplicas": 3, "targetQueueDepth": 4}}, True),
    ],
)
def test_pdb_only_with_more_than_one_replica(spec: dict[str, Any], has_pdb: bool) -> None:
    pdb = disruption.build(build(**spec))
    assert (pdb is not None) is has_pdb
    if pdb:
        assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(
    ("policy", "api_from", "metrics_from"),
    [
        ({}, [{"podSelector": {}}], [{"namespaceSelector": {}}]),
        ({"enabled": False}, None, None),
        (
            {"allowSameNamespace": False, "allowFrom": [{"podSelector": {"matchLabels": {"app": "rag"}}}]},
            [{"podSelector": {"matchLabels": {"app": "rag"}}}],
            [{"namespaceSelector": {}}],
        ),
        (
            {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
            [{"podSelector": {}}],
            [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        ),
    ],
)
def test_network_policy(policy: dict[str, Any], api_from: list[Any] | None, metrics_from: list[Any] | None) -> None:
    np = networkpolicy.build(build(networkPolicy=policy))
    if api_from is None:
        assert np is None
        return
    assert np is not None
    rules = {r["ports"][0]["port"]: r.get("from") for r in np["spec"]["ingress"]}
    assert rules == {8080: api_from, 9090: metrics_from}


@pytest.mark.parametrize(
    ("enabled", "crd", "expected"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_service_monitor(enabled: bool, crd: bool, expected: bool) -> None:
    sm = servicemonitor.build(build(monitoring={"serviceMonitor": {"enabled": enabled}}), crd_installed=crd)
    assert (sm is not None) is expected


def test_service_and_endpoint() -> None:
    w = build()
    svc = service.build(w)
    assert svc["spec"]["selector"] == w.selector
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("http", 8080), ("metrics", 9090)]
    assert service.endpoint(w) == "http://emb.team-a.svc.cluster.local:8080"


def test_rate_limits_and_audit_reach_the_embedding_server_config() -> None:
    from llmops_workloads.common.settings import snake_keys
    from llmops_workloads.embedding.config import EmbeddingServerConfig

    w = build(rateLimits={"requestsPerMinute": 60, "redis": {"url": "redis://r:6379/0"}}, audit={"enabled": True})
    cfg = EmbeddingServerConfig.model_validate(snake_keys(yaml.safe_load(configmap.config_file(w))))
    assert cfg.rate_limits.requests_per_minute == 60 and cfg.rate_limits.redis_url == "redis://r:6379/0"
    assert cfg.audit.enabled is True
    assert "rateLimits" not in configmap.config_file(build())  # off unless asked for


def test_affinity_reaches_the_pod_exactly_as_written() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}
            ],
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"llmops.dev/embedding-service": "emb"}},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        },
    }
    pod = deployment.build(build(affinity=affinity))["spec"]["template"]["spec"]
    assert pod["affinity"] == affinity
