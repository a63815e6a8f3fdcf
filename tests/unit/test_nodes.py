from __future__ import annotations

import pytest

from llmops_dev.cluster.nodes import GPU_TAINT, KWOK_ANNOTATION, default_nodes, node


@pytest.mark.parametrize(
    ("kwargs", "gpu_capacity", "tainted"),
    [
        ({"cpu": "4", "memory": "8Gi"}, None, False),
        ({"cpu": "96", "memory": "1Ti", "gpus": 8}, "8", True),
        ({"cpu": "8", "memory": "16Gi", "gpus": 1, "gpu_product": "NVIDIA-L4"}, "1", True),
    ],
)
def test_node_builder(kwargs: dict[str, object], gpu_capacity: str | None, tainted: bool) -> None:
    n = node("n0", **kwargs)  # type: ignore[arg-type]
    assert n["metadata"]["annotations"] == {KWOK_ANNOTATION: "fake"}
    assert n["status"]["capacity"] == n["status"]["allocatable"]
    assert n["status"]["capacity"].get("nvidia.com/gpu") == gpu_capacity
    assert (n["spec"].get("taints") == [GPU_TAINT]) is tainted
    if gpu_capacity:
        assert n["metadata"]["labels"]["nvidia.com/gpu.product"] == kwargs.get("gpu_product", "NVIDIA-H100-80GB-HBM3")


def test_default_nodes_have_one_cpu_and_one_gpu_node() -> None:
    nodes = default_nodes()
    gpu = [n for n in nodes if "nvidia.com/gpu" in n["status"]["capacity"]]
    assert len(nodes) == 2
    assert [n["status"]["capacity"]["nvidia.com/gpu"] for n in gpu] == ["8"]
    # Builders return fresh objects: mutating one result cannot leak into the next.
    gpu[0]["spec"]["taints"][0]["effect"] = "NoExecute"
    assert GPU_TAINT["effect"] == "NoSchedule"
