"""core/v1 Affinity, typed: the CRD carries its schema, so a malformed affinity is refused by the
API server when the resource is applied, with the field's name, instead of being copied into a
Deployment or Job that the API server then refuses (found by the fault suite's generated
resources: the child was rejected on every retry and the resource never got a status).

Field names and enums are Kubernetes' own (k8s.io/api/core/v1)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import ApiModel

LABEL_KEY_MAX = 317  # an optional 253-character prefix, "/", a 63-character name
VALUES_MAX = 256


class NodeSelectorRequirement(ApiModel):
    key: str = Field(min_length=1, max_length=LABEL_KEY_MAX)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] = Field(default_factory=list, max_length=VALUES_MAX)


class NodeSelectorTerm(ApiModel):
    match_expressions: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=32)
    match_fields: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=32)


class NodeSelector(ApiModel):
    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=32)


class PreferredSchedulingTerm(ApiModel):
    weight: int = Field(ge=1, le=100)
    preference: NodeSelectorTerm


class NodeAffinity(ApiModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=32
    )


class LabelSelectorRequirement(ApiModel):
    key: str = Field(min_length=1, max_length=LABEL_KEY_MAX)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list, max_length=VALUES_MAX)


class AffinityLabelSelector(ApiModel):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)


class PodAffinityTerm(ApiModel):
    label_selector: AffinityLabelSelector | None = None
    namespace_selector: AffinityLabelSelector | None = None
    namespaces: list[str] = Field(default_factory=list, max_length=64)
    topology_key: str = Field(min_length=1, max_length=LABEL_KEY_MAX)
    match_label_keys: list[str] = Field(default_factory=list, max_length=32)
    mismatch_label_keys: list[str] = Field(default_factory=list, max_length=32)


class WeightedPodAffinityTerm(ApiModel):
    weight: int = Field(ge=1, le=100)
    pod_affinity_term: PodAffinityTerm


class PodAffinity(ApiModel):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=32
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=32
    )


class Affinity(ApiModel):
    """Where the pods may run (node affinity) and next to or away from which pods."""

    node_affinity: NodeAffinity | None = None
    pod_affinity: PodAffinity | None = None
    pod_anti_affinity: PodAffinity | None = None
