"""What the API server refuses, and how it says so: the CRD's schema and CEL rules at work.

No operator is needed: admission happens before any controller sees the object."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube import Kube

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
VALID: dict[str, Any] = {
    "apiVersion": "llmops.dev/v1alpha1",
    "kind": "EmbeddingService",
    "metadata": {"name": "v"},
    "spec": {"model": {"name": "sentence-transformers/all-MiniLM-L6-v2"}},
}


def _with(path: str, value: Any, **more: Any) -> dict[str, Any]:
    """VALID with spec fields set: _with("batching.maxBatchSize", -1), more as model__name=..."""
    obj = copy.deepcopy(VALID)
    for dotted, v in [(path, value), *((k.replace("__", "."), v) for k, v in more.items())]:
        node = obj["spec"]
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return obj


CPU_AUTOSCALING = {"maxReplicas": 3, "targetCPUUtilizationPercentage": 70}
CASES = [
    ("negative batch size", _with("batching.maxBatchSize", -1), "should be greater than or equal to 1"),
    ("batch wait too long", _with("batching.maxWaitMillis", 5000), "should be less than or equal to 1000"),
    (
        "replicas with autoscaling",
        _with("autoscaling", CPU_AUTOSCALING, replicas=2),
        "set either replicas or autoscaling, not both",
    ),
    (
        "min greater than max",
        _with("autoscaling", {**CPU_AUTOSCALING, "minReplicas": 5, "maxReplicas": 2}),
        "minReplicas must be less than or equal to maxReplicas",
    ),
    ("autoscaling without a metric", _with("autoscaling", {"maxReplicas": 3}), "the autoscaler needs a metric"),
    ("unknown pooling", _with("model.pooling", "max"), 'Unsupported value: "max"'),
    (
        # Found by the fault suite: a malformed affinity used to be admitted, copied into the
        # Deployment and refused there on every retry.
        "affinity with an unknown operator",
        _with(
            "affinity",
            {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Near"}]}]
                    }
                }
            },
        ),
        'Unsupported value: "Near"',
    ),
    (
        "affinity with a field Kubernetes does not have",
        _with("affinity", {"nodeAffinity": {"preferred": []}}),
        ".spec.affinity.nodeAffinity.preferred: field not declared in schema",
    ),
    ("bad cpu quantity", _with("resources.cpu", "lots"), "must be a Kubernetes quantity such as 500m"),
    ("bad memory quantity", _with("resources.memory", "4 gigs"), "must be a Kubernetes quantity such as 4Gi"),
    ("too many GPUs", _with("resources.gpu", 17), "should be less than or equal to 16"),
    ("gpuProduct without a GPU", _with("resources.gpuProduct", "NVIDIA-L4"), "gpuProduct needs gpu > 0"),
    (
        "two model sources",
        _with("model.source", {"huggingface": {}, "pvc": {"claimName": "models"}}),
        "set exactly one of model.source.huggingface, model.source.pvc or model.source.fineTuneJobRef",
    ),
    (
        "int8 on a GPU",
        _with("resources.gpu", 1, model__quantization="int8"),
        "model.quantization int8 is for CPU serving",
    ),
    ("missing model", {**VALID, "spec": {"replicas": 1}}, "spec.model: Required value"),
    ("unknown field", _with("modle", {"name": "x"}), ".spec.modle: field not declared in schema"),
    ("negative replicas", _with("replicas", -2), "should be greater than or equal to 0"),
]


@pytest.fixture(scope="module")
def validation_namespace(kube: Kube, crds: list[str]) -> str:
    kube.run("create", "namespace", "validation")
    return "validation"


@pytest.mark.parametrize(("case", "manifest", "message"), CASES, ids=[c[0] for c in CASES])
def test_invalid_spec_is_rejected_with_a_clear_message(
    kube: Kube, validation_namespace: str, case: str, manifest: dict[str, Any], message: str
) -> None:
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["name"] = case.replace(" ", "-")
    accepted, output = kube.try_apply(manifest, validation_namespace)
    assert not accepted, f"{case}: accepted"
    assert message in output, output
    assert not kube.exists("emb", manifest["metadata"]["name"], validation_namespace)


@pytest.mark.parametrize(
    ("field", "first", "second", "message"),
    [
        ("model.name", "sentence-transformers/all-MiniLM-L6-v2", "BAAI/bge-small-en-v1.5", "model.name is immutable"),
        ("model.pooling", "mean", "cls", "model.pooling is immutable"),
    ],
)
def test_immutable_fields(
    kube: Kube, validation_namespace: str, field: str, first: str, second: str, message: str
) -> None:
    name = f"immutable-{field.replace('.', '-')}"
    obj = _with(field, first)
    obj["metadata"]["name"] = name
    accepted, output = kube.try_apply(obj, validation_namespace)
    assert accepted, output
    changed = _with(field, second)
    changed["metadata"]["name"] = name
    accepted, output = kube.try_apply(changed, validation_namespace)
    assert not accepted
    assert message in output, output
    # Fields that may change in place still can.
    revised = _with(field, first)
    revised["metadata"]["name"] = name
    revised["spec"]["model"]["revision"] = "v2"
    accepted, output = kube.try_apply(revised, validation_namespace)
    assert accepted, output


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("embedding-service*.yaml")), ids=lambda p: p.name)
def test_examples_are_admitted(kube: Kube, validation_namespace: str, example: Path) -> None:
    for doc in yaml.safe_load_all(example.read_text()):
        accepted, output = kube.try_apply(doc, validation_namespace)
        assert accepted, output
