"""Unit tests of the operator's pure machinery: quantities, drift detection, conditions,
rollout status, the work queue, and the generated CRDs."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from llmops_operator import conditions
from llmops_operator.api import crd
from llmops_operator.conditions import Cond
from llmops_operator.kube import compare
from llmops_operator.kube.quantity import parse_quantity
from llmops_operator.reconcilers.base import status_patch
from llmops_operator.reconcilers.embedding import rollout_conditions
from llmops_operator.runtime.workqueue import WorkQueue


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", "0.5"), ("2", "2"), ("1Gi", str(2**30)), ("1.5k", "1500"), ("1e3", "1000"), ("100Mi", str(100 * 2**20))],
)
def test_parse_quantity(text: str, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("bad", ["", "lots", "4 gigs", "1.2.3", "Gi", "-"])
def test_parse_quantity_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(bad)


def _desired(**spec: Any) -> dict[str, Any]:
    return compare.with_hash({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}, "spec": spec})


@pytest.mark.parametrize(
    ("desired", "live_spec", "same_hash", "needs"),
    [
        (_desired(cpu="1"), {"cpu": "1", "extra": "server default"}, True, False),
        (_desired(cpu="1000m"), {"cpu": "1"}, True, False),  # the server's canonical form
        (_desired(cpu="1"), {"cpu": "2"}, True, True),  # someone changed it
        (_desired(items=[{"a": 1}]), {"items": [{"a": 1, "b": 2}]}, True, False),
        (_desired(items=[{"a": 1}]), {"items": [{"a": 1}, {"a": 2}]}, True, True),
        (_desired(image="x:1"), {"image": "x:1"}, False, True),  # we changed what we want
        (_desired(flag=True), {"flag": "true"}, True, True),
    ],
)
def test_needs_apply(desired: dict[str, Any], live_spec: dict[str, Any], same_hash: bool, needs: bool) -> None:
    stamp = desired["metadata"]["annotations"][compare.APPLIED_HASH] if same_hash else "other"
    meta = {"name": "x", "annotations": {compare.APPLIED_HASH: stamp}}
    live = {"apiVersion": "v1", "kind": "X", "metadata": meta, "spec": live_spec}
    assert compare.needs_apply(desired, live) is needs


def test_needs_apply_when_missing_and_hash_is_stable() -> None:
    d = _desired(a=1)
    assert compare.needs_apply(d, None)
    assert compare.with_hash(d) == d  # hashing ignores its own annotation


def test_condition_transition_time_moves_only_on_flip() -> None:
    first = conditions.merge([], [Cond("Ready", "False", "Creating")], 1, timestamp="t1")
    same = conditions.merge(first, [Cond("Ready", "False", "NoReplicasReady", "0/1")], 2, timestamp="t2")
    assert same[0]["lastTransitionTime"] == "t1"
    assert same[0]["observedGeneration"] == 2
    flipped = conditions.merge(same, [Cond("Ready", "True", "Available")], 2, timestamp="t3")
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_status_patch_only_when_changed() -> None:
    assert status_patch({"a": 1}, {"a": 1}) is None
    assert status_patch({"a": 1, "gone": 2}, {"a": 2}) == {"a": 2, "gone": None}


def _dep(replicas: int, status: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "spec": {"replicas": replicas}, "status": status}


@pytest.mark.parametrize(
    ("dep", "ready", "progressing", "degraded"),
    [
        (None, ("False", "Creating"), "True", "False"),
        (
            _dep(
                2,
                {
                    "observedGeneration": 1,
                    "replicas": 2,
                    "updatedReplicas": 2,
                    "readyReplicas": 2,
                    "availableReplicas": 2,
                },
            ),
            ("True", "Available"),
            "False",
            "False",
        ),
        (
            _dep(
                2,
                {
                    "observedGeneration": 1,
                    "replicas": 3,
                    "updatedReplicas": 1,
                    "readyReplicas": 2,
                    "availableReplicas": 2,
                },
            ),
            ("True", "Available"),
            "True",
            "False",
        ),
        (_dep(1, {"observedGeneration": 1, "replicas": 1}), ("False", "NoReplicasReady"), "True", "False"),
        (_dep(0, {"observedGeneration": 1}), ("False", "ScaledToZero"), "False", "False"),
        (
            _dep(
                1,
                {
                    "observedGeneration": 1,
                    "conditions": [{"type": "ReplicaFailure", "status": "True", "message": "quota"}],
                },
            ),
            ("False", "NoReplicasReady"),
            "True",
            "True",
        ),
        (
            _dep(
                1, {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}, 2
            ),
            ("False", "NoReplicasReady"),
            "True",
            "True",
        ),
    ],
)
def test_rollout_conditions(
    dep: dict[str, Any] | None, ready: tuple[str, str], progressing: str, degraded: str
) -> None:
    conds, _, _ = rollout_conditions(dep)
    by_type = {c.type: c for c in conds}
    assert (by_type["Ready"].status, by_type["Ready"].reason) == ready
    assert by_type["Progressing"].status == progressing
    assert by_type["Degraded"].status == degraded


def test_workqueue_dedups_serialises_and_backs_off() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.04)
        q.add("a")
        q.add("a")
        assert len(q) == 1
        key = await q.get()
        q.add("a")  # while processing: runs once more afterwards, not concurrently
        assert len(q) == 0
        q.done(key)
        assert len(q) == 1
        key = await q.get()
        delays = [q.retry(key) for _ in range(4)]
        assert delays == [0.01, 0.02, 0.04, 0.04]
        q.done(key)
        q.forget(key)
        assert q.retry(key) == 0.01
        assert await asyncio.wait_for(q.get(), 1) == "a"

    asyncio.run(scenario())


def test_generated_crds_are_up_to_date() -> None:
    for directory in crd.CRD_DIRS:
        for name, text in crd.rendered().items():
            path = directory / name
            assert path.exists(), f"{path} missing: run python -m llmops_operator.api.crd"
            assert path.read_text() == text, f"{path} is stale: run python -m llmops_operator.api.crd"


def test_crd_schema_is_structural_and_carries_the_rules() -> None:
    kind = next(k for k in crd.KINDS if k.kind == "EmbeddingService")
    schema = crd.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert "$ref" not in node and "anyOf" not in node and "title" not in node
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    messages = [r["message"] for r in schema["x-kubernetes-validations"]]
    assert any("replicas or autoscaling" in m for m in messages)
    assert (
        schema["properties"]["model"]["properties"]["name"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    )
    assert schema["properties"]["batching"]["default"] == {}


def test_api_errors_that_retrying_cannot_fix_are_permanent() -> None:
    from llmops_operator.kube.client import ApiError

    typed = ApiError(500, "InternalError", "failed to create typed patch object: .spec.x: field not declared in schema")
    assert typed.permanent
    assert ApiError(422, "Invalid", "spec.replicas: Invalid value").permanent
    assert not ApiError(500, "InternalError", "etcdserver: request timed out").permanent
    assert not ApiError(503, "ServiceUnavailable", "").permanent
