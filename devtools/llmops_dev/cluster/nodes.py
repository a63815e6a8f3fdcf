"""The fake nodes that kwok manages: one CPU node and one GPU node, as a pure builder."""

from __future__ import annotations

from typing import Any

# kwok is started with --manage-nodes-with-annotation-selector on this annotation, so it
# manages only the nodes we create (and would never touch a real node).
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}


def node(
    name: str,
    *,
    cpu: str,
    memory: str,
    pods: int = 110,
    gpus: int = 0,
    gpu_product: str = GPU_PRODUCT,
) -> dict[str, Any]:
    """A Node object for kwok. Capacity goes in ``status``: kwok keeps what it finds there."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node-role.kubernetes.io/agent": "",
        "type": "kwok",
    }
    capacity: dict[str, str] = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    spec: dict[str, Any] = {}
    if gpus:
        labels[GPU_PRODUCT_LABEL] = gpu_product
        labels["nvidia.com/gpu.present"] = "true"
        capacity[GPU_RESOURCE] = str(gpus)
        spec["taints"] = [dict(GPU_TAINT)]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": {KWOK_ANNOTATION: "fake"}, "labels": labels},
        "spec": spec,
        "status": {
            "allocatable": dict(capacity),
            "capacity": dict(capacity),
        },
    }


def default_nodes() -> list[dict[str, Any]]:
    """What every local cluster starts with."""
    return [
        node("llmops-cpu-0", cpu="32", memory="128Gi", pods=500),
        node("llmops-gpu-0", cpu="96", memory="1024Gi", pods=250, gpus=8),
    ]
