"""What Argo CD would see, on the real control plane with the operator running: each kind applied
as Argo CD applies it (server-side apply, field manager argocd-controller, its tracking label and
annotation), reconciled, and then

- no drift: spec, labels and annotations are exactly what the apply put there (the server's own
  defaults aside, which Argo CD's diff predicts with the same server-side dry run), and no field
  manager but argocd-controller owns any of them: the operator writes status (and a finalizer) only;
- the children are owned (ownerReferences) and carry nothing of Argo CD's tracking, so Argo CD
  never takes them for resources of the Application (to prune, or to show OutOfSync);
- a second identical sync is a no-op: the resourceVersion does not move;
- the health checks (charts/argocd) say Healthy for the live objects."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmops_dev.operator_process import OperatorProcess
from llmops_dev.services import MilvusLite
from unit.test_argocd_health import health

from kube import Kube, condition, contains, wait_for

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
APP = "llmops-examples"  # the Argo CD Application the objects belong to
ARGOCD_MANAGER = "argocd-controller"  # Argo CD's field manager with ServerSideApply=true
OPERATOR_MANAGER = "llmops-operator"
CHILD_KINDS = ("deployments", "services", "configmaps", "networkpolicies", "horizontalpodautoscalers",
               "poddisruptionbudgets", "jobs", "cronjobs", "persistentvolumeclaims")  # fmt: skip


def from_git(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The manifest as Argo CD applies it: with its tracking annotation (and the instance label
    of annotation+label tracking), and labels and annotations of the user's own."""
    return {
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/instance": APP, "team": "search"},
            "annotations": {
                "argocd.argoproj.io/tracking-id": f"{APP}:llmops.dev/{kind}:{namespace}/{name}",
                "example.com/owner": "search@example.com",
            },
        },
        "spec": spec,
    }


def argo_apply(kube: Kube, manifest: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    args = ["apply", "--server-side", f"--field-manager={ARGOCD_MANAGER}", "-o", "json", "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    result: dict[str, Any] = json.loads(kube.run(*args, input=json.dumps(manifest)))
    return result


def get(kube: Kube, manifest: dict[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    obj: dict[str, Any] = kube.get(f"{manifest['kind'].lower()}.llmops.dev", meta["name"], meta["namespace"], True)
    return obj


def quiet(kube: Kube, manifest: dict[str, Any]) -> dict[str, Any]:
    """The object once nobody has written it for a second (the operator converged)."""
    last: dict[str, str] = {}

    def probe() -> dict[str, Any] | None:
        obj = get(kube, manifest)
        rv = obj["metadata"]["resourceVersion"]
        if last.get("rv") == rv:
            return obj
        last["rv"] = rv
        return None

    return wait_for(f"{manifest['kind']} {manifest['metadata']['name']} quiet", probe, timeout=30, interval=1.0)


def field_owners(obj: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(manager, subresource) -> the top-level field groups it owns: spec, labels, annotations, ..."""
    out: dict[tuple[str, str], set[str]] = {}
    for entry in obj["metadata"].get("managedFields", []):
        fields = entry.get("fieldsV1", {})
        owned = {k[2:] for k in fields if k.startswith("f:") and k != "f:metadata"}
        owned |= {f"metadata.{k[2:]}" for k in fields.get("f:metadata", {}) if k.startswith("f:")}
        out.setdefault((entry["manager"], entry.get("subresource", "")), set()).update(owned)
    return out


def check_no_drift(kube: Kube, manifest: dict[str, Any], finalizer: str | None = None) -> dict[str, Any]:
    live = quiet(kube, manifest)
    meta = live["metadata"]

    # Exactly what was applied, byte for byte, where Argo CD compares.
    assert meta["labels"] == manifest["metadata"]["labels"]
    assert meta["annotations"] == manifest["metadata"]["annotations"]
    assert contains(manifest["spec"], live["spec"]), (manifest["spec"], live["spec"])
    # The rest of spec is the CRD's defaults: the server-side dry run of the same manifest (what
    # Argo CD's server-side diff compares with) predicts the live object exactly.
    predicted = argo_apply(kube, manifest, dry_run=True)
    for path in (("spec",), ("metadata", "labels"), ("metadata", "annotations")):
        want, have = predicted, live
        for p in path:
            want, have = want[p], have[p]
        assert json.dumps(want) == json.dumps(have), f"{'.'.join(path)} would show as drift"

    # Who owns what: Argo CD the fields it applied, the operator status (and its finalizer).
    owners = field_owners(live)
    assert {"spec", "metadata.labels", "metadata.annotations"} <= owners[(ARGOCD_MANAGER, "")]
    for (manager, subresource), fields in owners.items():
        if manager == ARGOCD_MANAGER:
            continue
        if subresource == "status":
            assert fields <= {"status"}, (manager, fields)
            continue
        assert manager == OPERATOR_MANAGER and fields == {"metadata.finalizers"}, (manager, subresource, fields)
    assert meta.get("finalizers", []) == ([finalizer] if finalizer else [])

    # Its children: owned by it, and nothing Argo CD would take for its own.
    uid, namespace = meta["uid"], meta["namespace"]
    children = []
    for kind in CHILD_KINDS:
        for child in kube.get(kind, namespace=namespace)["items"]:
            if any(ref.get("uid") == uid for ref in child["metadata"].get("ownerReferences", [])):
                children.append(child)
    assert children, f"{manifest['kind']} has no children"
    for child in children:
        cmeta = child["metadata"]
        where = f"{child['kind']} {cmeta['name']}"
        ref = next(r for r in cmeta["ownerReferences"] if r["uid"] == uid)
        assert (ref["kind"], ref["name"], ref.get("controller")) == (manifest["kind"], meta["name"], True), where
        labels, annotations = cmeta.get("labels") or {}, cmeta.get("annotations") or {}
        assert labels.get("app.kubernetes.io/managed-by") == "llmops-operator", where
        assert labels.get("app.kubernetes.io/instance") != APP, f"{where} copies the Application's instance label"
        assert not [k for k in (*labels, *annotations) if k.startswith("argocd.argoproj.io/")], where
        assert labels.get("team") is None and "example.com/owner" not in annotations, f"{where} copies its owner's"
    for pod in kube.get("pods", namespace=namespace)["items"]:
        pmeta = pod["metadata"]
        assert pmeta.get("labels", {}).get("app.kubernetes.io/instance") != APP, pmeta["name"]
        assert not [k for k in pmeta.get("annotations") or {} if k.startswith("argocd.argoproj.io/")], pmeta["name"]

    # A second sync of the same manifest changes nothing.
    before = meta["resourceVersion"]
    again = argo_apply(kube, manifest)
    assert again["metadata"]["resourceVersion"] == before, "a repeated identical apply wrote the object"
    assert get(kube, manifest)["metadata"]["resourceVersion"] == before
    return live


def reconciled(kube: Kube, manifest: dict[str, Any], *conditions: tuple[str, str]) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(kube, manifest)
        gen = obj["metadata"]["generation"]
        if (obj.get("status") or {}).get("observedGeneration") != gen:
            return None
        for type_, status in conditions:
            c = condition(obj, type_)
            if not c or c["status"] != status or c.get("observedGeneration") != gen:
                return None
        return obj

    return wait_for(f"{manifest['kind']} {manifest['metadata']['name']} reconciled", probe, timeout=60)


def test_embedding_service_under_argo_cd(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    spec = {
        "model": {"name": MODEL, "dimension": 384},
        "replicas": 2,
        "batching": {"maxBatchSize": 64},
        "resources": {"cpu": "500m", "memory": "1Gi"},
    }
    manifest = from_git("EmbeddingService", "minilm", namespace, spec)
    argo_apply(kube, manifest)
    reconciled(kube, manifest, ("Ready", "True"), ("Progressing", "False"))
    live = check_no_drift(kube, manifest)
    assert health(live) == ("Healthy", f"2/2 replicas ready; serving {MODEL}@main")

    # A change in git: the next health is Progressing until the operator has caught up, then Healthy.
    changed = copy.deepcopy(manifest)
    changed["spec"]["replicas"] = 1
    applied = argo_apply(kube, changed)
    if (applied.get("status") or {}).get("observedGeneration") != applied["metadata"]["generation"]:
        assert health(applied) == ("Progressing", "Waiting for the operator to observe generation 2")
    reconciled(kube, changed, ("Ready", "True"), ("Progressing", "False"))
    live = check_no_drift(kube, changed)
    assert health(live) == ("Healthy", f"1/1 replicas ready; serving {MODEL}@main")


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusLite]:
    m = MilvusLite(tmp_path_factory.mktemp("argocd-milvus")).start()
    yield m
    m.stop()


def test_rag_pipeline_under_argo_cd(kube: Kube, operator: OperatorProcess, namespace: str, milvus: MilvusLite) -> None:
    es = from_git("EmbeddingService", "minilm", namespace, {"model": {"name": MODEL, "dimension": 384}})
    spec = {
        "embedding": {"serviceRef": {"name": "minilm"}},
        # With Delete, the operator adds its finalizer: the one write it makes outside status.
        "vectorStore": {"milvus": {"uri": milvus.uri, "deletionPolicy": "Delete",
                                   "index": {"type": "HNSW", "metric": "COSINE", "params": {"M": 8}}}},
        "retrieval": {"topK": 3},
    }  # fmt: skip
    manifest = from_git("RAGPipeline", "handbook", namespace, spec)
    argo_apply(kube, es)
    argo_apply(kube, manifest)
    try:
        reconciled(kube, manifest, ("Ready", "True"), ("Progressing", "False"), ("IngestionSucceeded", "True"))
        live = check_no_drift(kube, manifest, finalizer="llmops.dev/drop-collection")
        collection = f"llmops_{namespace.replace('-', '_')}_handbook"
        assert health(live) == ("Healthy", f"serving collection {collection}: 0 documents, 0 chunks")
        assert health(get(kube, es))[0] == "Healthy"
    finally:
        kube.run("delete", "rag", "handbook", "-n", namespace, "--wait=true", timeout=60)


def test_fine_tune_job_under_argo_cd(kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    # What the cluster provides: a volume for the output claim (no provisioner here), the dataset.
    pv = f"{namespace}-models-{uuid.uuid4().hex[:4]}"
    kube.apply({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(tmp_path / "pv")},
                 "claimRef": {"namespace": namespace, "name": "models"}},
    })  # fmt: skip
    try:
        kube.apply({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }, namespace)  # fmt: skip
        pairs = "".join(json.dumps({"anchor": f"q{i}", "positive": f"a{i}"}) + "\n" for i in range(8))
        kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pairs"},
                    "data": {"train.jsonl": pairs}}, namespace)  # fmt: skip
        spec = {
            "task": "embedding",
            "baseModel": {"name": MODEL},
            "dataset": {"configMap": {"name": "pairs", "key": "train.jsonl"}},
            "hyperparameters": {"maxSteps": 10},
            "output": {"pvc": {"claimName": "models"}},
        }
        manifest = from_git("FineTuneJob", "support", namespace, spec)
        argo_apply(kube, manifest)

        def succeeded() -> dict[str, Any] | None:
            obj = get(kube, manifest)
            st = obj.get("status") or {}
            done = st.get("phase") == "Succeeded" and st.get("observedGeneration") == obj["metadata"]["generation"]
            return obj if done else None

        wait_for("FineTuneJob support Succeeded", succeeded, timeout=60)
        live = check_no_drift(kube, manifest)
        assert health(live) == ("Healthy", "trained; the model is at pvc://models/support/model")
    finally:
        kube.run("delete", "pv", pv, "--wait=false", check=False)


def test_argocd_cm_patch_as_documented(kube: Kube) -> None:
    """docs/argocd.md's command merges the health checks into an existing argocd-cm, keeping its keys."""
    kube.run("create", "namespace", "argocd")
    try:
        kube.run("create", "configmap", "argocd-cm", "-n", "argocd", "--from-literal=url=https://argocd.example.com")
        kube.run("-n", "argocd", "patch", "configmap", "argocd-cm", "--type", "merge",
                 "--patch-file", str(REPO / "charts/argocd/argocd-cm.yaml"))  # fmt: skip
        data = kube.get("configmap", "argocd-cm", "argocd")["data"]
        assert data.pop("url") == "https://argocd.example.com"
        scripts = REPO / "charts/argocd/resource_customizations/llmops.dev"
        assert data == {f"resource.customizations.health.llmops.dev_{p.name}": (p / "health.lua").read_text()
                        for p in scripts.iterdir()}  # fmt: skip
    finally:
        kube.run("delete", "namespace", "argocd", "--wait=false", check=False)
