"""EmbeddingService against the real control plane, with the operator running as a subprocess."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops_dev.operator_process import OperatorProcess

from kube import Kube, condition, contains, crd_manifest, wait_for

pytestmark = pytest.mark.cluster
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REPO = Path(__file__).resolve().parents[2]
CHILD_KINDS = ("deployment", "service", "configmap", "networkpolicy", "hpa", "pdb")


def emb(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"name": MODEL}}
    body.update(spec)
    return {"apiVersion": "llmops.dev/v1alpha1", "kind": "EmbeddingService", "metadata": {"name": name}, "spec": body}


def wait_ready(kube: Kube, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    """Ready=True for the current generation."""

    def probe() -> dict[str, Any] | None:
        obj: dict[str, Any] = kube.get("emb", name, ns)
        c = condition(obj, "Ready")
        gen = obj["metadata"]["generation"]
        status = obj.get("status") or {}
        if (
            c
            and c["status"] == "True"
            and c.get("observedGeneration") == gen
            and status.get("observedGeneration") == gen
        ):
            return obj
        return None

    return wait_for(f"EmbeddingService {ns}/{name} Ready", probe, timeout=timeout)


def deployment(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = kube.get("deployment", name, ns, managed=True)
    return result


def test_create_builds_every_child_and_becomes_ready(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    started = time.monotonic()
    kube.apply(emb("minilm", batching={"maxBatchSize": 64}), namespace)
    obj = wait_ready(kube, namespace, "minilm")
    elapsed = time.monotonic() - started
    print(f"apply-to-Ready on kwok: {elapsed:.2f}s")

    status = obj["status"]
    assert status["endpoint"] == f"http://minilm.{namespace}.svc.cluster.local:8080"
    assert status["model"] == f"{MODEL}@main"
    assert status["readyReplicas"] == 1
    assert status["selector"] == "app.kubernetes.io/component=embedding,llmops.dev/embedding-service=minilm"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "Progressing": "False",
        "Degraded": "False",
    }

    dep = deployment(kube, namespace, "minilm")
    uid = obj["metadata"]["uid"]
    assert dep["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "llmops.dev/v1alpha1",
            "kind": "EmbeddingService",
            "name": "minilm",
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "llmops_workloads.embedding", "--config", "/etc/llmops/config.yaml"]
    assert c["image"].endswith("-cpu")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert "llmops.dev/config-hash" in pod["metadata"]["annotations"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert dep["spec"]["replicas"] == 1

    cm = kube.get("configmap", "minilm-config", namespace)
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["model"]["name"] == MODEL
    assert config["batching"]["maxBatchSize"] == 64
    assert config["batching"]["maxConcurrentRequests"] == 512  # the CRD's default

    svc = kube.get("service", "minilm", namespace)
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8080, "metrics": 9090}
    assert kube.exists("networkpolicy", "minilm", namespace)
    assert not kube.exists("hpa", "minilm", namespace)
    assert not kube.exists("pdb", "minilm", namespace), "one replica: a PDB would block every drain"

    pods = kube.get("pods", namespace=namespace)["items"]
    assert len(pods) == 1
    assert condition(pods[0], "Ready")["status"] == "True"  # type: ignore[index]

    # A person reading kubectl sees the same.
    table = kube.run("get", "emb", "minilm", "-n", namespace)
    assert "True" in table
    assert status["endpoint"] in table
    described = kube.run("describe", "emb", "minilm", "-n", namespace)
    assert "Available" in described
    assert "1/1 replicas ready" in described


def test_gpu_variant_lands_on_the_gpu_node(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(emb("gpu", resources={"gpu": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}), namespace)
    wait_ready(kube, namespace, "gpu")
    spec = deployment(kube, namespace, "gpu")["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["containers"][0]["image"].endswith("-cuda")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    pods = kube.get("pods", namespace=namespace)["items"]
    assert [p["spec"]["nodeName"] for p in pods] == ["llmops-gpu-0"]


def _template_hash(kube: Kube, ns: str, name: str) -> str:
    return str(deployment(kube, ns, name)["spec"]["template"]["metadata"]["annotations"]["llmops.dev/config-hash"])


def test_changing_batching_or_image_rolls_the_deployment(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(emb("roll"), namespace)
    wait_ready(kube, namespace, "roll")
    before = _template_hash(kube, namespace, "roll")

    kube.apply(emb("roll", batching={"maxBatchSize": 8, "maxWaitMillis": 20}), namespace)
    obj = wait_ready(kube, namespace, "roll")
    assert obj["metadata"]["generation"] == 2
    wait_for("config hash to change", lambda: _template_hash(kube, namespace, "roll") != before)
    cm = yaml.safe_load(kube.get("configmap", "roll-config", namespace)["data"]["config.yaml"])
    assert cm["batching"]["maxBatchSize"] == 8

    kube.apply(emb("roll", batching={"maxBatchSize": 8, "maxWaitMillis": 20}, image="example.org/emb:2"), namespace)
    wait_ready(kube, namespace, "roll")
    wait_for(
        "new image rolled out",
        lambda: (
            (d := deployment(kube, namespace, "roll"))["spec"]["template"]["spec"]["containers"][0]["image"]
            == "example.org/emb:2"
            and d["status"].get("updatedReplicas") == 1
            and d["status"].get("replicas") == 1
        ),
    )
    replicasets = kube.get("replicasets", namespace=namespace)["items"]
    assert len(replicasets) == 3, "one ReplicaSet per rollout: initial, batching change, image change"


def _managed_by_operator(obj: dict[str, Any]) -> dict[str, Any]:
    for entry in obj["metadata"].get("managedFields", []):
        if entry["manager"] == "llmops-operator" and entry["operation"] == "Apply":
            fields: dict[str, Any] = entry["fieldsV1"]
            return fields
    return {}


def test_switching_to_autoscaling_creates_an_hpa_and_releases_replicas(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(emb("scale", replicas=2), namespace)
    wait_ready(kube, namespace, "scale")
    assert kube.exists("pdb", "scale", namespace)
    assert "f:replicas" in _managed_by_operator(deployment(kube, namespace, "scale"))["f:spec"]

    auto = emb("scale", autoscaling={"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70})
    kube.apply(auto, namespace)
    hpa = wait_for("HPA", lambda: kube.exists("hpa", "scale", namespace) and kube.get("hpa", "scale", namespace))
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["maxReplicas"] == 5
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scale"}
    wait_for(
        "operator to stop managing replicas",
        lambda: "f:replicas" not in _managed_by_operator(deployment(kube, namespace, "scale")).get("f:spec", {}),
    )
    wait_ready(kube, namespace, "scale")

    kube.apply(emb("scale", replicas=1), namespace)
    wait_for("HPA deleted", lambda: not kube.exists("hpa", "scale", namespace))
    wait_for("PDB deleted with one replica", lambda: not kube.exists("pdb", "scale", namespace))
    wait_for("one replica", lambda: deployment(kube, namespace, "scale")["spec"]["replicas"] == 1)


def test_drift_is_corrected_within_seconds(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(emb("drift"), namespace)
    wait_ready(kube, namespace, "drift")
    uid = deployment(kube, namespace, "drift")["metadata"]["uid"]

    kube.run("delete", "deployment", "drift", "-n", namespace, "--wait=false")
    started = time.monotonic()
    wait_for(
        "Deployment recreated",
        lambda: (
            kube.exists("deployment", "drift", namespace)
            and deployment(kube, namespace, "drift")["metadata"]["uid"] != uid
        ),
        timeout=10,
    )
    print(f"deleted Deployment recreated in {time.monotonic() - started:.2f}s")

    kube.run("set", "image", "deployment/drift", "server=evil.example/x:1", "-n", namespace)
    wait_for(
        "image restored",
        lambda: deployment(kube, namespace, "drift")["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
            "-cpu"
        ),
        timeout=10,
    )
    kube.run("scale", "deployment/drift", "--replicas=4", "-n", namespace)
    wait_for("replicas restored", lambda: deployment(kube, namespace, "drift")["spec"]["replicas"] == 1, timeout=10)

    kube.run("delete", "service", "drift", "-n", namespace, "--wait=false")
    wait_for("Service recreated", lambda: kube.exists("service", "drift", namespace), timeout=10)
    kube.run("delete", "configmap", "drift-config", "-n", namespace, "--wait=false")
    wait_for("ConfigMap recreated", lambda: kube.exists("configmap", "drift-config", namespace), timeout=10)


def test_kubectl_scale_works_without_autoscaling(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(emb("scaled"), namespace)
    wait_ready(kube, namespace, "scaled")
    kube.run("scale", "emb/scaled", "--replicas=3", "-n", namespace)
    wait_for("3 replicas", lambda: deployment(kube, namespace, "scaled")["spec"]["replicas"] == 3)
    obj = wait_for(
        "status.replicas 3",
        lambda: (o := kube.get("emb", "scaled", namespace))["status"].get("readyReplicas") == 3 and o,
    )
    assert obj["status"]["replicas"] == 3
    scale = json.loads(
        kube.run("get", "--raw", f"/apis/llmops.dev/v1alpha1/namespaces/{namespace}/embeddingservices/scaled/scale")
    )
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == obj["status"]["selector"]
    assert kube.exists("pdb", "scaled", namespace)


def test_idle_reconciles_write_nothing(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(emb("idle", replicas=2), namespace)
    wait_ready(kube, namespace, "idle")
    wait_for(
        "rollout settled",
        lambda: (o := kube.get("emb", "idle", namespace)) and condition(o, "Progressing")["status"] == "False",  # type: ignore[index]
    )
    time.sleep(2)  # let the last watch events drain
    since = time.time()
    reconciles_before = operator.metric_sum("llmops_operator_reconciles_total", kind="EmbeddingService")
    # Touch the object's metadata (a watch event) and let the 5 s resync fire at least twice.
    kube.run("annotate", "emb", "idle", "example.org/touched=yes", "-n", namespace)
    time.sleep(12)
    reconciles = operator.metric_sum("llmops_operator_reconciles_total", kind="EmbeddingService") - reconciles_before
    writes = operator.writes(since=since, namespace=namespace)
    print(f"idle: {reconciles:.0f} reconciles, {len(writes)} writes")
    assert reconciles >= 2
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]


def test_operator_restart_mid_way_leaves_no_duplicates(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    names = [f"r{i}" for i in range(5)]
    for name in names:
        kube.apply(emb(name), namespace)
    time.sleep(0.5)
    operator.kill()  # SIGKILL mid-way: some children applied, some not
    operator.start()
    for name in names:
        wait_ready(kube, namespace, name)
    deployments = kube.get("deployments", namespace=namespace)["items"]
    assert sorted(d["metadata"]["name"] for d in deployments) == names
    for kind in ("services", "configmaps", "networkpolicies"):
        items = kube.get(kind, namespace=namespace)["items"]
        owned = [i for i in items if i["metadata"].get("ownerReferences")]
        assert len(owned) == len(names), kind
    for obj in kube.get("emb", namespace=namespace)["items"]:
        assert condition(obj, "Degraded")["status"] == "False"  # type: ignore[index]

    # A restart of a converged operator writes nothing: the caches are synced before reconciling.
    time.sleep(2)
    since = time.time()
    operator.restart()
    time.sleep(4)
    writes = operator.writes(since=since, namespace=namespace)
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]


def test_a_failing_rollout_is_reported_as_degraded(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    # A quota that allows no pods: the ReplicaSet cannot create any, the Deployment says why.
    kube.apply(
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}},
        namespace,
    )
    time.sleep(1)
    kube.apply(emb("blocked"), namespace)
    obj = wait_for(
        "Degraded=True",
        lambda: (
            (o := kube.get("emb", "blocked", namespace))
            and (c := condition(o, "Degraded"))
            and c["status"] == "True"
            and o
        ),
        timeout=60,
    )
    degraded = condition(obj, "Degraded")
    assert degraded is not None
    assert degraded["reason"] == "ReplicaFailure"
    assert "exceeded quota" in degraded["message"]
    assert condition(obj, "Ready")["status"] == "False"  # type: ignore[index]
    events = kube.run("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=blocked")
    assert "ReplicaFailure" in events


def test_fine_tune_job_reference_waits_without_deploying(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(
        emb("tuned", model={"name": "my-tuned-minilm", "source": {"fineTuneJobRef": {"name": "ft-1"}}}), namespace
    )
    obj = wait_for(
        "ModelResolved condition",
        lambda: (o := kube.get("emb", "tuned", namespace)) and condition(o, "ModelResolved") and o,
    )
    resolved = condition(obj, "ModelResolved")
    assert resolved is not None
    assert resolved["status"] == "False"
    assert resolved["reason"] == "FineTuneJobNotFound"
    assert condition(obj, "Ready")["status"] == "False"  # type: ignore[index]
    assert not kube.exists("deployment", "tuned", namespace)


def test_the_operator_never_changes_spec_or_metadata(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    manifest = emb("pristine", replicas=2, podLabels={"team": "search"})
    kube.apply(manifest, namespace)
    wait_ready(kube, namespace, "pristine")
    obj = kube.get("emb", "pristine", namespace, managed=True)
    assert obj["metadata"]["generation"] == 1
    assert "finalizers" not in obj["metadata"]
    assert not any(k.startswith("kopf.") for k in obj["metadata"].get("annotations", {}))
    managers = {m["manager"]: m for m in obj["metadata"]["managedFields"]}
    assert set(managers) == {"pytest", "llmops-operator"}
    assert managers["llmops-operator"]["subresource"] == "status"
    assert contains(manifest["spec"], obj["spec"])


SERVICE_MONITOR_CRD = crd_manifest(
    "monitoring.coreos.com",
    "ServiceMonitor",
    "servicemonitors",
    {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
)


def test_service_monitor_only_when_its_crd_is_installed(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(emb("watched", monitoring={"serviceMonitor": {"labels": {"release": "prom"}}}), namespace)
    wait_ready(kube, namespace, "watched")
    assert "servicemonitors" not in kube.run("api-resources", "--api-group=monitoring.coreos.com")
    kube.apply(SERVICE_MONITOR_CRD)
    try:
        sm = wait_for(
            "ServiceMonitor created after the CRD appears (next resync)",
            lambda: (
                kube.exists("servicemonitor", "watched", namespace) and kube.get("servicemonitor", "watched", namespace)
            ),
            timeout=30,
        )
        assert sm["metadata"]["labels"]["release"] == "prom"
        assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
        assert sm["metadata"]["ownerReferences"][0]["kind"] == "EmbeddingService"
    finally:
        kube.run("delete", "crd", "servicemonitors.monitoring.coreos.com", "--wait=true")


@pytest.mark.parametrize("example", ["embedding-service.yaml", "embedding-service-gpu.yaml"])
def test_examples_reach_ready(kube: Kube, operator: OperatorProcess, namespace: str, example: str) -> None:
    kube.run("create", "secret", "generic", "embedding-api-key", "--from-literal=key=not-a-real-key", "-n", namespace)
    docs = list(yaml.safe_load_all((REPO / "examples" / example).read_text()))
    kube.run("apply", "-n", namespace, "-f", str(REPO / "examples" / example))
    for doc in docs:
        obj = wait_ready(kube, namespace, doc["metadata"]["name"])
        assert obj["status"]["dimension"] == doc["spec"]["model"]["dimension"]


def test_namespace_scoping(kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    other = f"{namespace}-other"
    kube.run("create", "namespace", other)
    operator.stop()  # the session's operator watches every namespace
    scoped = OperatorProcess(operator.cluster, tmp_path, extra_args=("--namespace", namespace))
    try:
        scoped.start()
        kube.apply(emb("inside"), namespace)
        kube.apply(emb("outside"), other)
        wait_ready(kube, namespace, "inside")
        time.sleep(3)
        assert not kube.get("emb", "outside", other).get("status")
        assert not kube.exists("deployment", "outside", other)
        assert all(rec["objectRef"].get("namespace") != other for rec in scoped.audit() if "objectRef" in rec)
    finally:
        scoped.stop()
        operator.start()
    wait_ready(kube, other, "outside")  # the cluster-wide operator picks it up
    kube.run("delete", "namespace", other, "--wait=false")
