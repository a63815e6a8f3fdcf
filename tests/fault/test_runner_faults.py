"""Faults that need the workloads really running: a control plane of its own with the pod runner's
node (the quickstart's), so the operator's pods are real processes.

5. Milvus down during a RAGPipeline's create, while it serves, and during its delete.
7. A fine-tune pod SIGKILLed, then evicted (SIGTERM) mid-training: it resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from faults import Figures, scale
from llmops_dev import quickstart
from llmops_dev.cluster import ClusterState, running
from llmops_dev.operator_process import OperatorProcess
from llmops_dev.services import MilvusLite

from kube import Kube, condition, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.fault]
REPO = Path(__file__).resolve().parents[2]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
NS = "default"


@dataclass
class Stack:
    state: ClusterState
    kube: Kube
    milvus: MilvusLite
    operator: OperatorProcess

    def runner(self) -> dict[str, Any]:
        return dict(json.loads((Path(self.state.root) / "runner" / "runner.json").read_text()))

    def pod_of(self, prefix: str) -> dict[str, Any] | None:
        """The runner's record of the newest running pod whose name starts with prefix."""
        pods = [
            (name, p) for name, p in self.runner()["pods"].items() if name.startswith(f"{NS}/{prefix}") and p["pid"]
        ]
        return pods[-1][1] | {"name": pods[-1][0].split("/", 1)[1]} if pods else None

    def service_url(self, name: str) -> str:
        entry = self.runner()["services"][f"{NS}/{name}"]
        return f"http://{entry['address']}:8080"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(f"fault-run-{os.getpid()}") as state:
        kube = Kube(state)
        kube.run("apply", "--server-side", "-f", str(REPO / "crds"))
        kube.run("wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=llmops")
        quickstart.start_runner(state, quickstart.seed_hub_cache())
        milvus = MilvusLite(tmp_path_factory.mktemp("milvus")).start()
        operator = OperatorProcess(state, tmp_path_factory.mktemp("operator"), resync_seconds=5)
        operator.start()
        kube.apply(
            {
                "apiVersion": "llmops.dev/v1alpha1",
                "kind": "EmbeddingService",
                "metadata": {"name": "minilm"},
                "spec": {"model": {"name": MODEL, "dimension": 384}, "replicas": 1},
            },
            NS,
        )
        try:
            yield Stack(state, kube, milvus, operator)
        finally:
            operator.stop()
            milvus.stop()


def _post(url: str, body: dict[str, Any], timeout: float = 30) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)  # noqa: S310 (loopback, ours)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read()), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), {k.lower(): v for k, v in err.headers.items()}


def _cond(kube: Kube, kind: str, name: str, type_: str) -> dict[str, Any]:
    return condition(kube.get(kind, name, NS), type_) or {}


def _pod_ready(kube: Kube, prefix: str) -> bool | None:
    pods = [p for p in kube.get("pods", namespace=NS)["items"] if p["metadata"]["name"].startswith(prefix)]
    live = [
        p for p in pods
        if not p["metadata"].get("deletionTimestamp") and p.get("status", {}).get("phase") in ("Pending", "Running")
    ]  # fmt: skip
    if not live:
        return None
    return all(condition(p, "Ready") and condition(p, "Ready")["status"] == "True" for p in live)  # type: ignore[index]


DOCS = {
    "kettle.md": "Descale the kettle with citric acid every month.",
    "tea.md": "Green tea steeps at 80 degrees for two minutes.",
    "bread.md": "Sourdough needs a starter fed with flour and water for five days.",
}


def test_milvus_down_during_create_while_serving_and_during_delete(stack: Stack, figures: Figures) -> None:
    kube, milvus = stack.kube, stack.milvus
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kitchen"}, "data": DOCS}, NS)
    wait_for("EmbeddingService minilm Ready", lambda: _cond(kube, "emb", "minilm", "Ready").get("status") == "True",
             timeout=300)  # fmt: skip
    pipeline = {
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "RAGPipeline",
        "metadata": {"name": "kitchen"},
        "spec": {
            "embedding": {"serviceRef": {"name": "minilm"}},
            "vectorStore": {"milvus": {"uri": milvus.uri, "deletionPolicy": "Delete"}},
            "retrieval": {"topK": 2, "chunkSize": 64, "chunkOverlap": 8},
            "sources": [{"configMap": {"name": "kitchen"}}],
            "server": {"replicas": 1},
        },
    }

    # (a) Created while Milvus is down: a clear condition, the operator keeps running and retrying.
    milvus.stop()
    kube.apply(pipeline, NS)
    c = wait_for(
        "CollectionReady=False MilvusUnavailable",
        lambda: (c if (c := _cond(kube, "rag", "kitchen", "CollectionReady")).get("reason") == "MilvusUnavailable"
                 else None),
        timeout=60,
    )  # fmt: skip
    assert "Milvus" in c["message"] and milvus.uri.split("//")[1] in c["message"], c
    time.sleep(10)  # a while down: retried with backoff, never a crash
    assert stack.operator.proc is not None and stack.operator.proc.poll() is None
    assert _cond(kube, "rag", "kitchen", "Ready").get("status") != "True"
    down_at = time.monotonic()
    milvus.start()

    def ingested() -> bool:
        rag = kube.get("rag", "kitchen", NS)
        ready = (condition(rag, "Ready") or {}).get("status") == "True"
        return ready and rag.get("status", {}).get("documentCount") == len(DOCS)

    wait_for("the pipeline Ready with its documents ingested", ingested, timeout=300)
    figures["create_converged_after_milvus_back_s"] = round(time.monotonic() - down_at, 1)

    url = stack.service_url("kitchen")
    status, body, _ = _post(f"{url}/v1/retrieve", {"query": "how long does green tea steep?"})
    assert status == 200 and body["sources"][0]["doc_id"] == "tea.md", body

    # (b) Milvus down while serving: 503 with Retry-After from the server, the pod not ready (no
    # traffic) but never restarted, then back by itself.
    pod = stack.pod_of("kitchen-")
    assert pod is not None
    milvus.stop()
    status, body, headers = _post(f"http://{pod['ip']}:8080/v1/retrieve", {"query": "tea"})
    assert status == 503 and "retry-after" in headers and body["error"]["type"], (status, body)
    wait_for("the RAG pod not ready", lambda: _pod_ready(kube, "kitchen-") is False, timeout=60)
    outage = time.monotonic()
    milvus.start()
    wait_for("the RAG pod ready again", lambda: _pod_ready(kube, "kitchen-") is True, timeout=120)
    figures["serving_recovered_after_milvus_back_s"] = round(time.monotonic() - outage, 1)
    status, body, _ = _post(f"{url}/v1/retrieve", {"query": "how long does green tea steep?"})
    assert status == 200 and body["sources"][0]["doc_id"] == "tea.md"  # the collection was loaded again
    restarts = [
        cs["restartCount"]
        for p in kube.get("pods", namespace=NS)["items"]
        if p["metadata"]["name"].startswith("kitchen-")
        for cs in p["status"].get("containerStatuses", [])
    ]
    assert restarts and set(restarts) == {0}, f"the RAG server restarted: {restarts}"

    # (c) Deleted while Milvus is down: the finalizer waits with a condition, then completes.
    collection = kube.get("rag", "kitchen", NS)["status"]["collection"]
    milvus.stop()
    kube.run("delete", "rag", "kitchen", "-n", NS, "--wait=false")
    deleting = lambda: _cond(kube, "rag", "kitchen", "CollectionReady").get("reason") == "Deleting"  # noqa: E731
    wait_for("deletion waiting for Milvus", deleting, timeout=60)
    back = time.monotonic()
    milvus.start()
    wait_for("RAGPipeline gone", lambda: not kube.exists("rag", "kitchen", NS), timeout=120)
    figures["delete_completed_after_milvus_back_s"] = round(time.monotonic() - back, 1)
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus.uri, timeout=10)
    assert not client.has_collection(collection)
    client.close()
    assert stack.operator.proc is not None and stack.operator.proc.poll() is None


def _pairs(n: int) -> str:
    topics = ["kettle", "tea", "bread", "bike", "garden", "laptop", "camera", "piano", "boots", "tent"]
    rows = []
    for i in range(n):
        t = topics[i % len(topics)]
        rows.append({"anchor": f"question {i} about the {t}", "positive": f"The {t} answer number {i} says {t}s last."})
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def _progress(pod: dict[str, Any]) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{pod['ip']}:8080/progress", timeout=2) as resp:
            return dict(json.loads(resp.read()))
    except (OSError, ValueError):
        return None


def _trainer_at(stack: Stack, step: int, not_pid: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trainer pod (a new one if not_pid is given) once it has trained past ``step``."""

    def probe() -> tuple[dict[str, Any], dict[str, Any]] | None:
        pod = stack.pod_of("tune-")
        if pod is None or pod["pid"] == not_pid or (snap := _progress(pod)) is None:
            return None
        return (pod, snap) if snap.get("state") == "training" and snap.get("step", 0) >= step else None

    return wait_for(f"the trainer past step {step}", probe, timeout=300, interval=0.05)


def test_fine_tune_pod_killed_then_evicted_resumes_from_its_checkpoint(stack: Stack, figures: Figures) -> None:
    kube = stack.kube
    every = 3
    kube.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pairs"},
         "data": {"pairs.jsonl": _pairs(scale(120, 400))}},
        NS,
    )  # fmt: skip
    kube.apply(
        {
            "apiVersion": "llmops.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "tune"},
            "spec": {
                "task": "embedding",
                "baseModel": {"name": MODEL},
                "method": "full",
                "dataset": {"configMap": {"name": "pairs", "key": "pairs.jsonl"}, "format": "pairs",
                            "validationSplit": 0.1},
                "hyperparameters": {"epochs": 2, "batchSize": 4, "maxSeqLength": 32, "learningRate": 2e-5},
                "output": {"pvc": {"claimName": "tune-out", "create": True, "size": "1Gi"}},
                "checkpointEvery": every,
                "backoffLimit": 2,
            },
        },
        NS,
    )  # fmt: skip

    # SIGKILL: no chance to checkpoint; the Job retries (it counts as a failure) and the new pod
    # resumes from the last checkpoint on the output volume.
    pod, snap = _trainer_at(stack, 2 * every + 1)
    os.killpg(pod["pid"], signal.SIGKILL)
    killed_at = int(snap["step"])
    pod2, snap2 = _trainer_at(stack, killed_at, not_pid=pod["pid"])
    resumed_after_kill = int(snap2["resumedFromStep"])
    assert killed_at - every <= resumed_after_kill <= killed_at, (killed_at, resumed_after_kill)

    # SIGTERM, as a preemption does it: an eviction (DisruptionTarget) deletes the pod, the
    # runner sends SIGTERM, the trainer finishes its step, checkpoints and exits 143; the Job
    # does not count it (podFailurePolicy) and the next pod resumes where it stopped.
    _, snap2 = _trainer_at(stack, resumed_after_kill + every + 1)
    evicted_at = int(snap2["step"])
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod2["name"], "namespace": NS}}
    kube.run("create", "--raw", f"/api/v1/namespaces/{NS}/pods/{pod2['name']}/eviction", "-f", "-",
             input=json.dumps(eviction))  # fmt: skip
    _, snap3 = _trainer_at(stack, evicted_at, not_pid=pod2["pid"])
    resumed_after_sigterm = int(snap3["resumedFromStep"])
    assert resumed_after_sigterm >= evicted_at, (evicted_at, resumed_after_sigterm)  # nothing lost

    ftj = wait_for(
        "FineTuneJob Succeeded",
        lambda: ftj if (ftj := kube.get("ftj", "tune", NS)).get("status", {}).get("phase") == "Succeeded" else None,
        timeout=600,
    )
    job = kube.get("job", "tune", NS)
    assert job["status"].get("failed", 0) == 1, job["status"]  # the SIGKILL; the eviction is not counted
    assert ftj["status"]["progress"]["step"] == ftj["status"]["progress"]["totalSteps"]
    figures["sigkill_at_step"] = killed_at
    figures["resumed_from"] = resumed_after_kill
    figures["steps_redone_after_sigkill"] = killed_at - resumed_after_kill
    figures["sigterm_at_step"] = evicted_at
    figures["steps_redone_after_sigterm"] = max(0, evicted_at - resumed_after_sigterm)
    figures["checkpoint_every"] = every
    figures["total_steps"] = ftj["status"]["progress"]["totalSteps"]
