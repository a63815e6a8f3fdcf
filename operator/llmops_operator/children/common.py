"""What every child object shares: the workload description, labels, owner references and the
restricted security context. Builders are pure functions of a ``Workload``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..api.common import (
    AuditSpec,
    AutoscalingSpec,
    MonitoringSpec,
    NetworkPolicySpec,
    PodPlacement,
    RateLimitsSpec,
    RedactionSpec,
    ResourcesSpec,
)

MANAGED_BY = "llmops-operator"
PART_OF = "llmops"
CONFIG_HASH = "llmops.dev/config-hash"
CONFIG_DIR = "/etc/llmops"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
SECRETS_DIR = "/var/run/secrets/llmops"
# Where run-to-completion containers (trainer, ingestion) leave their JSON summary; named in the
# pod spec and passed to the program, so both always agree.
TERMINATION_LOG = "/dev/termination-log"
HTTP_PORT = 8080
METRICS_PORT = 9090
RUN_AS = 65532  # the "nonroot" user of distroless-style images
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class Owner:
    api_version: str
    kind: str
    name: str
    uid: str
    namespace: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class Workload:
    """Everything the builders need to know about one serving workload."""

    owner: Owner
    name: str  # base name of every child
    app: str  # app.kubernetes.io/name, e.g. "embedding-server"
    component: str  # e.g. "embedding"
    owner_label: str  # e.g. "llmops.dev/embedding-service"
    image: str
    command: tuple[str, ...]
    config: dict[str, Any]  # the server's config file, mounted from the ConfigMap
    placement: PodPlacement
    resources: ResourcesSpec
    replicas: int | None  # None: an HPA owns the count
    autoscaling: AutoscalingSpec | None
    monitoring: MonitoringSpec
    network_policy: NetworkPolicySpec
    env: tuple[dict[str, Any], ...] = ()
    volumes: tuple[dict[str, Any], ...] = ()
    mounts: tuple[dict[str, Any], ...] = ()
    default_cpu: str = "1"
    default_memory: str = "2Gi"
    # A slow model load must not be mistaken for a hung process.
    startup_seconds: int = 900
    termination_grace_seconds: int = 60
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.owner.namespace

    @property
    def selector(self) -> dict[str, str]:
        return {self.owner_label: self.owner.name, "app.kubernetes.io/component": self.component}

    @property
    def selector_string(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))

    @property
    def labels(self) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": self.app,
            "app.kubernetes.io/instance": self.owner.name,
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/part-of": PART_OF,
            **self.selector,
            **self.extra_labels,
        }

    @property
    def config_map_name(self) -> str:
        return f"{self.name}-config"

    @property
    def effective_replicas(self) -> int:
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return 1 if self.replicas is None else self.replicas


def meta(w: Workload, name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": name or w.name,
        "namespace": w.namespace,
        "labels": dict(w.labels),
        "ownerReferences": [w.owner.reference()],
        **extra,
    }


def config_hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def pod_security_context() -> dict[str, Any]:
    """The restricted Pod Security profile, at pod level."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tolerations(w: Workload) -> list[dict[str, Any]]:
    out = [t.model_dump(by_alias=True, exclude_none=True) for t in w.placement.tolerations]
    if w.resources.gpu > 0:
        gpu_toleration = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in out:
            out.append(gpu_toleration)
    return out


def node_selector(w: Workload) -> dict[str, str]:
    out = dict(w.placement.node_selector)
    if w.resources.gpu > 0 and w.resources.gpu_product:
        out[GPU_PRODUCT_LABEL] = w.resources.gpu_product
    return out


def container_resources(w: Workload) -> dict[str, Any]:
    cpu = w.resources.cpu or w.default_cpu
    memory = w.resources.memory or w.default_memory
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    # Memory limit = request (no overcommit: an OOM kill beats a noisy neighbour); no CPU limit
    # (throttling hurts latency more than it protects anyone).
    limits: dict[str, str] = {"memory": memory}
    if w.resources.gpu > 0:
        requests[GPU_RESOURCE] = str(w.resources.gpu)
        limits[GPU_RESOURCE] = str(w.resources.gpu)
    return {"requests": requests, "limits": limits}


def secret_volume(name: str, secret: str, key: str, file: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A volume with one key of a Secret as one file, its mount, and the file's path."""
    directory = f"{SECRETS_DIR}/{name}"
    volume = {
        "name": f"secret-{name}",
        "secret": {"secretName": secret, "items": [{"key": key, "path": file}], "defaultMode": 0o440},
    }
    mount = {"name": f"secret-{name}", "mountPath": directory, "readOnly": True}
    return volume, mount, f"{directory}/{file}"


def security_config(
    limits: RateLimitsSpec | None, audit: AuditSpec, redaction: RedactionSpec | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The servers' shared ``rateLimits`` and ``audit`` config sections, with the Secret volume a
    Redis password needs (docs/api-hardening.md is the servers' side)."""
    config: dict[str, Any] = {}
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if limits is not None:
        per_key = {k: v.model_dump(by_alias=True, exclude_none=True) for k, v in limits.per_key.items()}
        rl: dict[str, Any] = {"perKey": per_key}
        if limits.requests_per_minute is not None:
            rl["requestsPerMinute"] = limits.requests_per_minute
        if limits.tokens_per_minute is not None:
            rl["tokensPerMinute"] = limits.tokens_per_minute
        if limits.redis is not None:
            rl["redisUrl"] = limits.redis.url
            if ref := limits.redis.secret_ref:
                volume, mount, path = secret_volume("ratelimit", ref.name, ref.key, "password")
                volumes.append(volume)
                mounts.append(mount)
                rl["redisPasswordFile"] = path
        config["rateLimits"] = rl
    if audit.enabled:
        config["audit"] = {"enabled": True}
    if redaction is not None and (redaction.logs or redaction.prompts):
        config["redaction"] = redaction.model_dump(by_alias=True, exclude_none=True)
    return config, volumes, mounts


def place(pod: dict[str, Any], w: Workload) -> None:
    """Pod-level placement every workload shares: node selector (GPU product included),
    tolerations (the GPU taint included), affinity, priority class, image pull secrets."""
    if sel := node_selector(w):
        pod["nodeSelector"] = sel
    if tol := tolerations(w):
        pod["tolerations"] = tol
    if w.placement.affinity:
        pod["affinity"] = w.placement.affinity.model_dump(by_alias=True, exclude_defaults=True)
    if w.placement.priority_class_name:
        pod["priorityClassName"] = w.placement.priority_class_name
    if w.placement.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in w.placement.image_pull_secrets]
