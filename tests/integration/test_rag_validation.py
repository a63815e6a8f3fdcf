"""What the API server refuses in a RAGPipeline, and how it says so (schema and CEL rules; no
operator needed)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kube import Kube

pytestmark = pytest.mark.cluster
VALID: dict[str, Any] = {
    "apiVersion": "llmops.dev/v1alpha1",
    "kind": "RAGPipeline",
    "metadata": {"name": "v"},
    "spec": {
        "embedding": {"serviceRef": {"name": "minilm"}},
        "vectorStore": {"milvus": {"uri": "http://milvus:19530"}},
    },
}


def _with(**fields: Any) -> dict[str, Any]:
    """VALID with spec fields set; keys use __ for dots: _with(retrieval__chunkSize=8)."""
    obj = copy.deepcopy(VALID)
    for dotted, value in fields.items():
        node = obj["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return obj


CASES = [
    (
        "service and endpoint",
        _with(embedding={"serviceRef": {"name": "a"}, "endpoint": "http://e:8080", "dimension": 3}),
        "set exactly one of embedding.serviceRef (an EmbeddingService) or embedding.endpoint",
    ),
    (
        "endpoint without dimension",
        _with(embedding={"endpoint": "http://e:8080"}),
        "embedding.endpoint needs embedding.dimension",
    ),
    ("overlap not below size", _with(retrieval={"chunkSize": 64, "chunkOverlap": 64}), "chunkOverlap must be smaller"),
    ("unsupported index", _with(vectorStore__milvus__index={"type": "DISKANN"}), 'Unsupported value: "DISKANN"'),
    ("bad collection name", _with(vectorStore__milvus__collection="my-docs"), "should match"),
    ("bad milvus uri", _with(vectorStore__milvus__uri="milvus:19530"), "should match"),
    (
        "two kinds in one source",
        _with(sources=[{"configMap": {"name": "a"}, "url": "https://x.org/a"}]),
        "each source sets exactly one of configMap, pvc or url",
    ),
    (
        "generator endpoint and deploy",
        _with(generator={"endpoint": "http://tgi:80", "deploy": {"model": {"name": "m"}}}),
        "set exactly one of generator.endpoint",
    ),
    (
        "deployed generator speaking openai",
        _with(generator={"protocol": "openai", "deploy": {"model": {"name": "m"}}}),
        "generator.deploy serves the TGI protocol",
    ),
    (
        "deployed generator whose prompt limit leaves no room for an answer",
        _with(generator={"deploy": {"model": {"name": "m"}, "maxInputTokens": 2048, "maxTotalTokens": 2048}}),
        "generator.deploy.maxInputTokens must be less than maxTotalTokens",
    ),
    (
        "template inline and by reference",
        _with(retrieval={"promptTemplate": "{context} {question}", "promptTemplateRef": {"name": "p", "key": "t"}}),
        "set promptTemplate or promptTemplateRef, not both",
    ),
    (
        "replicas and autoscaling",
        _with(server={"replicas": 2, "autoscaling": {"maxReplicas": 3, "targetQueueDepth": 8}}),
        "set either server.replicas or server.autoscaling",
    ),
    ("unknown deletion policy", _with(vectorStore__milvus__deletionPolicy="Orphan"), 'Unsupported value: "Orphan"'),
    ("missing vector store", {**VALID, "spec": {"embedding": {"serviceRef": {"name": "a"}}}}, "Required value"),
]


@pytest.fixture(scope="module")
def rag_namespace(kube: Kube, crds: list[str]) -> str:
    kube.run("create", "namespace", "rag-validation")
    return "rag-validation"


@pytest.mark.parametrize(("case", "manifest", "message"), CASES, ids=[c[0] for c in CASES])
def test_invalid_spec_is_rejected_with_a_clear_message(
    kube: Kube, rag_namespace: str, case: str, manifest: dict[str, Any], message: str
) -> None:
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["name"] = case.replace(" ", "-")
    accepted, output = kube.try_apply(manifest, rag_namespace)
    assert not accepted, f"{case}: accepted"
    assert message in output, output


def test_collection_is_immutable(kube: Kube, rag_namespace: str) -> None:
    first = _with(vectorStore__milvus__collection="first")
    first["metadata"]["name"] = "immutable-collection"
    assert kube.try_apply(first, rag_namespace)[0]
    second = _with(vectorStore__milvus__collection="second")
    second["metadata"]["name"] = "immutable-collection"
    accepted, output = kube.try_apply(second, rag_namespace)
    assert not accepted and "vectorStore.milvus.collection is immutable" in output
    changed = _with(vectorStore__milvus__collection="first", retrieval={"topK": 9})
    changed["metadata"]["name"] = "immutable-collection"
    assert kube.try_apply(changed, rag_namespace)[0]
