"""The operator killed and stopped (issue 9, scenarios 1 and 2; docs/reliability.md).

1. SIGKILLed every few seconds while EmbeddingServices are created concurrently: every one ends
   Ready, with exactly one of each child, and no error left in its status.
2. Stopped while EmbeddingServices are edited and their children deleted: once started again,
   everything converges to the latest spec and the deleted children are back.

Both use the session's cluster and operator (killed and started again here; left running).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml

from faults import Figures, scale
from llmops_dev.operator_process import OperatorProcess

from kube import Kube, condition, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.fault]

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# What the operator makes of an EmbeddingService with 2 replicas and no autoscaling: the
# plural kubectl understands and the child's name.
CHILDREN = {
    "configmaps": "{}-config",
    "deployments": "{}",
    "services": "{}",
    "poddisruptionbudgets": "{}",
    "networkpolicies": "{}",
}
MANAGED = "app.kubernetes.io/managed-by=llmops-operator"


def emb(name: str, replicas: int = 2, max_batch_size: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": MODEL},
        "replicas": replicas,
        # Small requests: a hundred of these fit on the fake CPU node next to everything else.
        "resources": {"cpu": "10m", "memory": "32Mi"},
    }
    if max_batch_size is not None:
        spec["batching"] = {"maxBatchSize": max_batch_size}
    return {"apiVersion": "llmops.dev/v1alpha1", "kind": "EmbeddingService", "metadata": {"name": name}, "spec": spec}


def converged(obj: dict[str, Any], replicas: int) -> bool:
    """Ready, rolled out, not Degraded, for the current generation."""
    gen = obj["metadata"]["generation"]
    status = obj.get("status") or {}
    conds = {t: condition(obj, t) or {} for t in ("Ready", "Progressing", "Degraded")}
    return (
        status.get("observedGeneration") == gen
        and all(c.get("observedGeneration") == gen for c in conds.values())
        and conds["Ready"].get("status") == "True"
        and conds["Progressing"].get("status") == "False"
        and conds["Degraded"].get("status") == "False"
        and status.get("readyReplicas") == replicas
    )


def all_converged(kube: Kube, ns: str, names: list[str], replicas: int) -> list[dict[str, Any]] | None:
    items: list[dict[str, Any]] = kube.get("emb", namespace=ns)["items"]
    by_name = {o["metadata"]["name"]: o for o in items}
    if set(by_name) != set(names) or not all(converged(o, replicas) for o in items):
        return None
    return items


def assert_one_child_of_each(kube: Kube, ns: str, owners: list[dict[str, Any]], one_replica_set: bool) -> None:
    """Exactly one child of each kind per EmbeddingService, named as the operator names them,
    controlled by it; no HorizontalPodAutoscaler (no autoscaling); with ``one_replica_set``, one
    ReplicaSet per Deployment (the pod template never changed on the way)."""
    uids = {o["metadata"]["uid"]: o["metadata"]["name"] for o in owners}
    for plural, pattern in CHILDREN.items():
        items = kube.get(plural, namespace=ns)["items"]
        managed = [i for i in items if i["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by")]
        per_owner: Counter[str] = Counter()
        for item in managed:
            refs = [r for r in item["metadata"].get("ownerReferences", []) if r.get("controller")]
            assert len(refs) == 1, (plural, item["metadata"]["name"], refs)
            owner = uids.get(refs[0]["uid"])
            assert owner is not None, f"{plural} {item['metadata']['name']} owned by an unknown uid"
            assert item["metadata"]["name"] == pattern.format(owner), (plural, item["metadata"]["name"], owner)
            per_owner[owner] += 1
        assert per_owner == Counter(uids.values()), f"{plural}: {per_owner - Counter(uids.values())} extra"
    assert kube.get("hpa", namespace=ns)["items"] == []
    if not one_replica_set:
        return
    replica_sets = Counter(
        ref["name"]
        for rs in kube.get("replicasets", namespace=ns)["items"]
        for ref in rs["metadata"].get("ownerReferences", [])
    )
    assert replica_sets == Counter(uids.values()), f"Deployments with another ReplicaSet: {replica_sets}"


def assert_no_error_in_status(owners: list[dict[str, Any]]) -> None:
    for obj in owners:
        conds = {c["type"]: c for c in obj["status"]["conditions"]}
        assert set(conds) == {"Ready", "Progressing", "Degraded"}, conds
        assert (conds["Ready"]["reason"], conds["Progressing"]["reason"], conds["Degraded"]["reason"]) == (
            "Available",
            "RolloutComplete",
            "AsExpected",
        ), (obj["metadata"]["name"], conds)


def test_sigkill_during_a_burst_of_creates(
    kube: Kube, operator: OperatorProcess, namespace: str, figures: Figures
) -> None:
    count = scale(20, 100)
    min_kills = scale(5, 12)
    names = [f"e{i:03d}" for i in range(count)]
    chunks = [names[i : i + 5] for i in range(0, count, 5)]
    spread = scale(8, 25)  # seconds over which the creates are spread
    rng = random.Random(9)  # noqa: S311 (kill timings, not cryptography)
    created = threading.Event()
    errors: list[BaseException] = []

    def create(k: int, chunk: list[str]) -> None:
        time.sleep(k * spread / len(chunks))
        kube.apply([emb(n) for n in chunk], namespace)

    def create_all() -> None:
        try:
            with ThreadPoolExecutor(8) as pool:
                for f in [pool.submit(create, k, c) for k, c in enumerate(chunks)]:
                    f.result()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            created.set()

    started = time.monotonic()
    creator = threading.Thread(target=create_all, daemon=True)
    creator.start()
    kills = 0
    try:
        # Kill at a random moment of the operator's life, start-up and cache sync included, while
        # the creates go on and for a few rounds after.
        while not created.is_set() or kills < min_kills:
            time.sleep(rng.uniform(1.0, 4.0))
            operator.kill()
            kills += 1
            operator.start(wait=False)
        last_kill = time.monotonic()
        creator.join()
        assert not errors, errors
        operator.wait_healthy()
        owners = wait_for(
            f"{count} EmbeddingServices Ready and rolled out",
            lambda: all_converged(kube, namespace, names, replicas=2),
            timeout=600,
            interval=1,
        )
    finally:
        if not operator.running:
            operator.start()
    figures["objects"] = count
    figures["kills"] = kills
    figures["total_s"] = round(time.monotonic() - started, 1)
    figures["ready_after_last_kill_s"] = round(time.monotonic() - last_kill, 1)

    assert_one_child_of_each(kube, namespace, owners, one_replica_set=True)
    assert_no_error_in_status(owners)


def test_edits_and_deletions_while_stopped_converge_on_start(
    kube: Kube, operator: OperatorProcess, namespace: str, figures: Figures
) -> None:
    edited = scale(10, 50)
    deleted = scale(5, 10)
    names = [f"s{i:03d}" for i in range(edited)]
    kube.apply([emb(n) for n in names], namespace)
    wait_for(
        f"{edited} EmbeddingServices Ready",
        lambda: all_converged(kube, namespace, names, replicas=2),
        timeout=300,
        interval=1,
    )

    operator.stop()
    try:
        # The latest spec: one more replica and another batch size (the server's config file).
        kube.apply([emb(n, replicas=3, max_batch_size=64) for n in names], namespace)
        # Children of every kind deleted, round-robin over the edited objects.
        gone: dict[tuple[str, str], str] = {}
        kinds = list(CHILDREN)
        for i in range(deleted):
            plural, owner = kinds[i % len(kinds)], names[i * len(names) // deleted]
            child = CHILDREN[plural].format(owner)
            gone[(plural, child)] = kube.get(plural, child, namespace)["metadata"]["uid"]
            kube.run("delete", plural, child, "-n", namespace, "--wait=false")
        started = time.monotonic()
        operator.start()
        synced_s = time.monotonic() - started
    finally:
        if not operator.running:
            operator.start()

    def latest_everywhere() -> list[dict[str, Any]] | None:
        owners = all_converged(kube, namespace, names, replicas=3)
        if owners is None:
            return None
        deployments = kube.get("deployments", namespace=namespace)["items"]
        if sorted(d["metadata"]["name"] for d in deployments) != names:
            return None
        if any(d["spec"]["replicas"] != 3 or d["status"].get("readyReplicas") != 3 for d in deployments):
            return None
        configs = kube.get("configmaps", namespace=namespace)["items"]
        batch = {
            c["metadata"]["name"]: yaml.safe_load(c["data"]["config.yaml"])["batching"]["maxBatchSize"]
            for c in configs
            if c["metadata"]["name"].endswith("-config")
        }
        if batch != {f"{n}-config": 64 for n in names}:
            return None
        return owners

    owners = wait_for("every EmbeddingService at its latest spec", latest_everywhere, timeout=600, interval=0.5)
    figures["edited"] = edited
    figures["children_deleted"] = deleted
    figures["operator_sync_s"] = round(synced_s, 1)
    figures["converged_after_start_s"] = round(time.monotonic() - started, 1)

    for (plural, child), uid in gone.items():
        now = kube.get(plural, child, namespace)
        assert now["metadata"]["uid"] != uid, f"{plural} {child} was not recreated"
    assert_one_child_of_each(kube, namespace, owners, one_replica_set=False)
    assert_no_error_in_status(owners)
