"""RAGPipeline against the real control plane and a real Milvus Lite server, with the operator
running as a subprocess; the ingestion Job's pod spec executed for real as a local process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops_dev.operator_process import OperatorProcess
from llmops_dev.services import MilvusLite, ServerProcess
from servers import minilm_path

from kube import Kube, condition, wait_for

pytestmark = pytest.mark.cluster
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REPO = Path(__file__).resolve().parents[2]
DOCS = {
    "kettle.md": "# Kettle\n\nDescale the kettle with citric acid every month.",
    "bread.txt": "Sourdough bread needs a starter fed with flour and water.",
    "tea.html": "<html><title>Tea</title><body><p>Green tea steeps at 80 degrees.</p></body></html>",
}


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusLite]:
    m = MilvusLite(tmp_path_factory.mktemp("rag-milvus")).start()
    yield m
    m.stop()


def client(m: MilvusLite) -> Any:
    from pymilvus import MilvusClient

    return MilvusClient(uri=m.uri, timeout=10)


def emb(name: str) -> dict[str, Any]:
    spec = {"model": {"name": MODEL, "dimension": 384}}
    return {"apiVersion": "llmops.dev/v1alpha1", "kind": "EmbeddingService", "metadata": {"name": name}, "spec": spec}


def rag(name: str, milvus_uri: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "embedding": {"serviceRef": {"name": "minilm"}},
        "vectorStore": {"milvus": {"uri": milvus_uri}},
    }
    for key, value in spec.items():
        if key == "milvus":
            body["vectorStore"]["milvus"].update(value)
        else:
            body[key] = value
    return {"apiVersion": "llmops.dev/v1alpha1", "kind": "RAGPipeline", "metadata": {"name": name}, "spec": body}


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (obj.get("status") or {}).get("conditions", [])}


def wait_condition(kube: Kube, ns: str, name: str, type_: str, status: str, reason: str | None = None,
                   timeout: float = 60) -> dict[str, Any]:  # fmt: skip
    def probe() -> dict[str, Any] | None:
        obj: dict[str, Any] = kube.get("rag", name, ns)
        c = condition(obj, type_)
        fits = c and c["status"] == status and (reason is None or c["reason"] == reason)
        return obj if fits and c and c.get("observedGeneration") == obj["metadata"]["generation"] else None

    return wait_for(f"RAGPipeline {ns}/{name} {type_}={status} {reason or ''}", probe, timeout=timeout)


def ingestion_jobs(kube: Kube, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.get("jobs", namespace=ns)["items"]
    return [j for j in items if j["metadata"]["labels"].get("app.kubernetes.io/component") == "ingestion"]


def test_pipeline_creates_its_collection_and_server(
    kube: Kube, operator: OperatorProcess, namespace: str, milvus: MilvusLite
) -> None:
    kube.apply(emb("minilm"), namespace)
    started = time.monotonic()
    kube.apply(rag("docs", milvus.uri, milvus={"index": {"type": "HNSW", "metric": "COSINE", "params": {"M": 8}}}),
               namespace)  # fmt: skip
    obj = wait_condition(kube, namespace, "docs", "Ready", "True", timeout=90)
    print(
        f"RAGPipeline apply-to-Ready on kwok (EmbeddingService created just before): {time.monotonic() - started:.2f}s"
    )
    status = obj["status"]
    collection = f"llmops_{namespace.replace('-', '_')}_docs"
    assert status["collection"] == collection and status["dimension"] == 384
    assert status["endpoint"] == f"http://docs.{namespace}.svc.cluster.local:8080"
    assert status["embedding"] == "emb/minilm"
    assert conditions(obj)["EmbeddingReady"] == ("True", "Resolved")
    assert conditions(obj)["CollectionReady"] == ("True", "Loaded")
    assert conditions(obj)["IngestionSucceeded"] == ("True", "NoSources")
    assert status["entityCount"] == 0 and status["documentCount"] == 0
    assert "finalizers" not in obj["metadata"]  # Retain: nothing to clean up outside Kubernetes

    c = client(milvus)
    desc = c.describe_collection(collection)
    vector = next(f for f in desc["fields"] if f["name"] == "vector")
    assert int(vector["params"]["dim"]) == 384
    index = c.describe_index(collection, "vector")
    assert (index["index_type"], index["metric_type"]) == ("HNSW", "COSINE")
    assert str(c.get_load_state(collection)["state"]).endswith("Loaded")

    dep = kube.get("deployment", "docs", namespace)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "llmops_workloads.rag", "--config", "/etc/llmops/config.yaml"]
    config = kube.get("configmap", "docs-config", namespace)["data"]["config.yaml"]
    assert f"collection: {collection}" in config and f"http://minilm.{namespace}.svc.cluster.local:8080" in config
    assert kube.get("rag", namespace=namespace)["items"][0]["metadata"]["name"] == "docs"
    printed = kube.run("get", "rag", "-n", namespace)
    assert "emb/minilm" in printed and collection in printed


def test_missing_embedding_service_waits_then_proceeds(
    kube: Kube, operator: OperatorProcess, namespace: str, milvus: MilvusLite
) -> None:
    kube.apply(rag("early", milvus.uri, embedding={"serviceRef": {"name": "later"}}), namespace)
    obj = wait_condition(kube, namespace, "early", "EmbeddingReady", "False", "EmbeddingServiceNotFound")
    assert conditions(obj)["Ready"][0] == "False"
    assert not kube.exists("deployment", "early", namespace)
    kube.apply(emb("later"), namespace)
    obj = wait_condition(kube, namespace, "early", "Ready", "True", timeout=90)
    assert obj["status"]["embedding"] == "emb/later"
    # The pipeline follows its EmbeddingService: gone again, the pipeline says so.
    kube.run("delete", "emb", "later", "-n", namespace)
    wait_condition(kube, namespace, "early", "EmbeddingReady", "False", "EmbeddingServiceNotFound")


def test_dimension_mismatch_is_reported_and_the_data_kept(
    kube: Kube, operator: OperatorProcess, namespace: str, milvus: MilvusLite
) -> None:
    from llmops_workloads.rag.schema import CollectionSpec, create

    c = client(milvus)
    name = f"mismatch_{namespace.replace('-', '_')}"
    create(c, CollectionSpec(name=name, dimension=8))
    c.insert(name, [{"id": "a-0", "doc_id": "a", "chunk_index": 0, "content_hash": "h", "text": "kept",
                     "metadata": {}, "vector": [0.1] * 8}])  # fmt: skip
    kube.apply(emb("minilm"), namespace)
    kube.apply(rag("wrong", milvus.uri, milvus={"collection": name}), namespace)
    obj = wait_condition(kube, namespace, "wrong", "CollectionReady", "False", "CollectionMismatch", timeout=90)
    message = condition(obj, "CollectionReady")["message"]  # type: ignore[index]
    assert "8-dimensional vectors but the embedding model gives 384" in message
    assert conditions(obj)["Degraded"] == ("True", "CollectionMismatch")
    assert not kube.exists("deployment", "wrong", namespace)  # nothing runs against a wrong collection
    assert c.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == 1


def test_deletion_policy_delete_drops_retain_keeps(
    kube: Kube, operator: OperatorProcess, namespace: str, milvus: MilvusLite
) -> None:
    kube.apply(emb("minilm"), namespace)
    kube.apply(rag("dropme", milvus.uri, milvus={"deletionPolicy": "Delete"}), namespace)
    kube.apply(rag("keepme", milvus.uri), namespace)
    dropme = wait_condition(kube, namespace, "dropme", "Ready", "True", timeout=90)
    keepme = wait_condition(kube, namespace, "keepme", "Ready", "True", timeout=90)
    assert dropme["metadata"]["finalizers"] == ["llmops.dev/drop-collection"]
    assert "finalizers" not in keepme["metadata"]
    c = client(milvus)
    assert c.has_collection(dropme["status"]["collection"]) and c.has_collection(keepme["status"]["collection"])
    kube.run("delete", "rag", "dropme", "keepme", "-n", namespace, "--wait=true", timeout=60)
    assert not c.has_collection(dropme["status"]["collection"])
    assert c.has_collection(keepme["status"]["collection"])


def test_milvus_down_during_delete_waits_then_goes(
    kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    own = MilvusLite(tmp_path / "milvus").start()
    try:
        kube.apply(emb("minilm"), namespace)
        kube.apply(rag("fragile", own.uri, milvus={"deletionPolicy": "Delete"}), namespace)
        collection = wait_condition(kube, namespace, "fragile", "Ready", "True", timeout=90)["status"]["collection"]
        own.stop()
        kube.run("delete", "rag", "fragile", "-n", namespace, "--wait=false")

        def stuck() -> dict[str, Any] | None:
            obj: dict[str, Any] = kube.get("rag", "fragile", namespace)
            c = condition(obj, "CollectionReady")
            return obj if c and c["reason"] == "Deleting" else None

        obj = wait_for("deletion waiting for Milvus", stuck, timeout=60)
        assert "kubectl patch rag fragile" in condition(obj, "CollectionReady")["message"]  # type: ignore[index]
        events = kube.run("get", "events", "-n", namespace, "--field-selector", "reason=CollectionDropFailed")
        assert "CollectionDropFailed" in events
        own = MilvusLite(own.workdir, port=own.port).start()
        wait_for("RAGPipeline gone", lambda: not kube.exists("rag", "fragile", namespace), timeout=90)
        assert not client(own).has_collection(collection)
    finally:
        own.stop()


def test_sources_change_creates_a_new_job_one_at_a_time(
    kube: Kube, operator: OperatorProcess, namespace: str, milvus: MilvusLite
) -> None:
    kube.apply(emb("minilm"), namespace)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "docs"}, "data": dict(DOCS)}
    kube.apply(cm, namespace)
    # Ingestion pods pinned to a node that does not exist: the first Job stays running.
    spec = {"sources": [{"configMap": {"name": "docs"}}], "ingestion": {"nodeSelector": {"llmops.dev/nowhere": "x"}}}
    kube.apply(rag("stream", milvus.uri, **spec), namespace)
    first = wait_for("first ingestion Job", lambda: ingestion_jobs(kube, namespace) or None, timeout=90)[0]
    first_name = first["metadata"]["name"]
    assert first_name.startswith("stream-ingest-")

    kube.apply({**cm, "data": {**DOCS, "new.txt": "A new document about bicycles."}}, namespace)
    obj = wait_condition(kube, namespace, "stream", "IngestionSucceeded", "Unknown", "Waiting", timeout=60)
    assert first_name in condition(obj, "IngestionSucceeded")["message"]  # type: ignore[index]
    assert [j["metadata"]["name"] for j in ingestion_jobs(kube, namespace)] == [first_name]

    kube.run("delete", "job", first_name, "-n", namespace, "--wait=true")
    second = wait_for(
        "the new sources' Job",
        lambda: [j for j in ingestion_jobs(kube, namespace) if j["metadata"]["name"] != first_name] or None,
        timeout=60,
    )
    assert len(second) == 1 and len(ingestion_jobs(kube, namespace)) == 1
    assert (
        second[0]["metadata"]["annotations"]["llmops.dev/sources-hash"]
        != first["metadata"]["annotations"]["llmops.dev/sources-hash"]
    )


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cfg = {"model": {"name": MODEL, "path": minilm_path()}, "logLevel": "WARNING"}
    proc = ServerProcess("llmops_workloads.embedding", cfg, tmp_path_factory.mktemp("rag-emb")).start()
    yield proc
    proc.stop()


def test_the_ingestion_jobs_pod_spec_ingests_for_real(
    kube: Kube, operator: OperatorProcess, namespace: str, milvus: MilvusLite, embedding_server: ServerProcess,
    tmp_path: Path,
) -> None:  # fmt: skip
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "docs"}, "data": dict(DOCS)}, namespace)
    spec = {
        "embedding": {"endpoint": embedding_server.url, "dimension": 384},
        "retrieval": {"tokenizer": minilm_path(), "chunkSize": 128, "chunkOverlap": 16},
        "sources": [{"configMap": {"name": "docs"}}],
    }
    kube.apply(rag("real", milvus.uri, **spec), namespace)
    obj = wait_condition(kube, namespace, "real", "IngestionSucceeded", "True", "Succeeded", timeout=90)
    assert obj["status"]["lastIngestion"]["outcome"] == "Succeeded"  # kwok completed the pod; nothing ran yet
    collection = obj["status"]["collection"]
    job = ingestion_jobs(kube, namespace)[0]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # Materialise the pod's volumes on disk, map its mount paths there, and run its command and env.
    root = tmp_path / "pod"
    volumes = {v["name"]: v for v in pod["volumes"]}
    paths: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        directory = root / mount["mountPath"].lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        paths[mount["mountPath"]] = directory
        source = volumes[mount["name"]]
        if "configMap" in source:
            data = kube.get("configmap", source["configMap"]["name"], namespace)["data"]
            for key, value in data.items():
                (directory / key).write_text(value)

    def local(arg: str) -> str:
        for mount_path, path in sorted(paths.items(), key=lambda kv: -len(kv[0])):
            if arg == mount_path or arg.startswith(mount_path + "/"):
                return str(path) + arg[len(mount_path) :]
        return arg

    command = [local(a) for a in container["command"] + container.get("args", [])]
    assert command[:4] == ["python", "-m", "llmops_workloads.rag", "ingest"]
    env = {e["name"]: local(e["value"]) for e in container.get("env", []) if "value" in e}
    env = {**os.environ, **env, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, env=env, timeout=180,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads([line for line in out.stdout.splitlines() if "ingest summary" in line][-1])
    assert (summary["documents"], summary["ingested"], summary["failed"]) == (3, 3, 0)
    assert summary["collection"] == collection

    c = client(milvus)
    assert c.query(collection, filter="chunk_index == 0", output_fields=["count(*)"])[0]["count(*)"] == 3
    # The operator reports what is in the collection now.
    wait_for("documentCount 3", lambda: kube.get("rag", "real", namespace)["status"].get("documentCount") == 3,
             timeout=60)  # fmt: skip


def test_the_example_reaches_ready(kube: Kube, operator: OperatorProcess, namespace: str, milvus: MilvusLite) -> None:
    """examples/rag-pipeline.yaml as shipped, except the Milvus address (this test's Milvus Lite)."""
    docs = list(yaml.safe_load_all((REPO / "examples" / "rag-pipeline.yaml").read_text()))
    pipeline = next(d for d in docs if d["kind"] == "RAGPipeline")
    pipeline["spec"]["vectorStore"]["milvus"]["uri"] = milvus.uri
    started = time.monotonic()
    kube.apply(docs, namespace)
    obj = wait_condition(kube, namespace, "handbook", "Ready", "True", timeout=90)
    print(f"examples/rag-pipeline.yaml apply-to-Ready on kwok: {time.monotonic() - started:.2f}s")
    wait_condition(kube, namespace, "handbook", "IngestionSucceeded", "True", "Succeeded", timeout=90)
    assert kube.exists("cronjob", "handbook-ingest", namespace)
    assert obj["status"]["dimension"] == 384
