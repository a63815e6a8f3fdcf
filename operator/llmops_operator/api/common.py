"""Types shared by every llmops resource: pod placement, resources, autoscaling, auth,
monitoring, network policy, status conditions.

These pydantic models are the one source of truth for the API: the CRD schemas in ``crds/``
are generated from them (``llmops_operator.api.crd``), and the operator parses specs with
them. CEL rules (``x-kubernetes-validations``) sit next to the field they guard, with
messages written for the person who typed the spec.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from ..kube.quantity import is_quantity
from .affinity import Affinity
from .base import ApiModel

NAME_MAX = 253
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def cel(rule: str, message: str, **extra: str) -> dict[str, str]:
    return {"rule": rule, "message": message, **extra}


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


def quantity_field(description: str, example: str) -> Any:
    return Field(
        None,
        description=f"{description} A Kubernetes quantity, for example {example}.",
        max_length=64,
        json_schema_extra=validations(
            cel(
                "isQuantity(self)",
                f"must be a Kubernetes quantity such as {example}",
                reason="FieldValueInvalid",
            )
        ),
    )


def _check_quantity(value: str | None) -> str | None:
    if value is not None and not is_quantity(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return value


class LocalObjectReference(ApiModel):
    name: str = Field(description="Name of the object in the same namespace.", min_length=1, max_length=NAME_MAX)


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace. Secrets are only ever referenced, never copied."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=NAME_MAX)
    key: str = Field(description="Key inside the Secret.", min_length=1, max_length=NAME_MAX)


class ResourcesSpec(ApiModel):
    """Compute for each replica. Requests equal limits for GPUs (they cannot be overcommitted)."""

    gpu: int = Field(0, ge=0, le=16, description="Number of nvidia.com/gpu per replica.")
    gpu_product: str | None = Field(
        None,
        max_length=128,
        description="Required value of the node label nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3.",
    )
    cpu: str | None = quantity_field("CPU request (and limit).", "500m")
    memory: str | None = quantity_field("Memory request (and limit).", "4Gi")

    _q = field_validator("cpu", "memory")(_check_quantity)


RESOURCES_RULES = validations(
    cel("!has(self.gpuProduct) || self.gpu > 0", "gpuProduct needs gpu > 0: it selects the kind of GPU to use"),
)


class AutoscalingSpec(ApiModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) owns the replica count when this is set."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "minReplicas must be less than or equal to maxReplicas",
            ),
            cel(
                "has(self.targetCPUUtilizationPercentage) || has(self.targetQueueDepth)",
                "set targetCPUUtilizationPercentage and/or targetQueueDepth: the autoscaler needs a metric",
            ),
        )
    )

    min_replicas: int = Field(1, ge=1, le=1000, description="Lower bound of the replica count.")
    max_replicas: int = Field(ge=1, le=1000, description="Upper bound of the replica count.")
    target_cpu_utilization_percentage: int | None = Field(
        None,
        ge=1,
        le=100,
        alias="targetCPUUtilizationPercentage",
        description="Average CPU utilisation target.",
    )
    target_queue_depth: int | None = Field(
        None,
        ge=1,
        le=100000,
        description=(
            "Average requests waiting per pod (pods metric llmops_queue_depth, served through a "
            "custom-metrics adapter such as prometheus-adapter)."
        ),
    )


class Toleration(ApiModel):
    key: str | None = Field(None, max_length=317)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)


class AuthSpec(ApiModel):
    api_key_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Clients must send a key as 'Authorization: Bearer <key>' (or X-API-Key). The Secret's value "
        "holds one key per line, 'name:key' (names appear in audit records and rate limits); it is mounted as a "
        "file and re-read when it changes, so keys rotate without a restart.",
    )


class KeyRateLimit(ApiModel):
    requests_per_minute: int | None = Field(None, ge=1, le=10_000_000)
    tokens_per_minute: int | None = Field(None, ge=1, le=1_000_000_000)


class RedisRef(ApiModel):
    url: str = Field(max_length=2048, pattern=r"^rediss?://[^\s]+$")
    secret_ref: SecretKeyRef | None = Field(None, description="The Redis password.")


class RateLimitsSpec(ApiModel):
    """Per-client token buckets (the API key's name, or the client address without auth): 429 with
    Retry-After beyond them. With redis, every replica shares one budget per client."""

    requests_per_minute: int | None = Field(None, ge=1, le=10_000_000)
    tokens_per_minute: int | None = Field(
        None,
        ge=1,
        le=1_000_000_000,
        description="Embedding input tokens or generated tokens, charged after each request.",
    )
    per_key: dict[str, KeyRateLimit] = Field(default_factory=dict, description="Overrides by key name.")
    redis: RedisRef | None = None


class AuditSpec(ApiModel):
    enabled: bool = Field(False, description="One JSON record per request on stdout (never request text).")


class RedactionSpec(ApiModel):
    """PII redaction (e-mail, phone, card, IBAN, IP, national IDs) by the servers."""

    logs: bool = Field(False, description="Redact log records.")
    prompts: bool = Field(False, description="RAG: redact the question and sources sent to the generator.")
    types: list[Literal["email", "iban", "card", "ssn", "nino", "dni", "aadhaar", "bsn", "ip", "phone"]] | None = Field(
        None, max_length=10, description="Which types; unset: all."
    )


class ServiceMonitorSpec(ApiModel):
    enabled: bool = Field(True, description="Create a ServiceMonitor (only when the Prometheus Operator CRD exists).")
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m)$", max_length=16, description="Scrape interval.")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels, e.g. the one your Prometheus selects on."
    )


class MonitoringSpec(ApiModel):
    service_monitor: ServiceMonitorSpec = Field(
        default_factory=ServiceMonitorSpec,
        json_schema_extra={"default": {}},
        description="Prometheus Operator.",
    )


class LabelSelector(ApiModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class NetworkPeer(ApiModel):
    pod_selector: LabelSelector | None = Field(None, description="Pods (in namespaceSelector's namespaces, or ours).")
    namespace_selector: LabelSelector | None = Field(None, description="Namespaces; {} selects every namespace.")


class NetworkPolicySpec(ApiModel):
    """Who may call the API port. Secure by default: pods of the same namespace only."""

    enabled: bool = Field(True, description="Create a NetworkPolicy for the serving pods.")
    allow_same_namespace: bool = Field(True, description="Allow every pod of this namespace.")
    allow_from: list[NetworkPeer] = Field(
        default_factory=list, max_length=32, description="More allowed callers of the API port."
    )
    metrics_from: list[NetworkPeer] | None = Field(
        None,
        max_length=32,
        description="Who may scrape the metrics port; when unset, any pod in the cluster (Prometheus).",
    )


class PodPlacement(ApiModel):
    """Pod-level knobs shared by every workload."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="Extra node selector.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Extra tolerations.")
    affinity: Affinity | None = Field(None, description="A core/v1 Affinity (node and pod (anti-)affinity).")
    priority_class_name: str | None = Field(None, max_length=NAME_MAX)
    image: str | None = Field(None, max_length=512, description="Override the workload image.")
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    pod_labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on the pods.")
    pod_annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations on the pods.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """metav1.Condition."""

    type: str = Field(max_length=316)
    status: ConditionStatus
    reason: str = Field(max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: str
    observed_generation: int | None = None


class CommonStatus(ApiModel):
    model_config = ConfigDict(extra="allow")

    observed_generation: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
