"""FineTuneJob against the real control plane (the Job and garbage-collection controllers, the
scheduler, the PV binder; kwok completes the Job's pods), with the operator as a subprocess; what
the API server refuses; and the generated pod's command and env run for real as a local process
that trains and writes the model an EmbeddingService built by the operator then loads."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops_dev.operator_process import OperatorProcess
from servers import minilm_path

from kube import Kube, condition, wait_for

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
PAIRS = [
    ("how do I reset my password", "open settings, then account, then reset password"),
    ("where is my invoice", "invoices are under billing, then history"),
    ("can I change my plan", "upgrades apply at once, downgrades at renewal"),
    ("how do I add a teammate", "go to team, then invite, and enter their email"),
    ("do you support single sign-on", "saml and oidc on the business plan"),
    ("how do I export my data", "settings, then data, then export"),
    ("is there a rate limit", "600 requests a minute per token"),
    ("how do I delete my account", "settings, then account, then delete account"),
    ("can I get a refund", "within 30 days of a charge, write to billing"),
    ("which browsers work", "the last two versions of chrome, firefox, safari and edge"),
    ("how do I change my email", "settings, then profile, then email address"),
    ("is my data encrypted", "yes, at rest with aes-256 and in transit with tls"),
]
PAIRS_JSONL = "".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in PAIRS)


def ftj(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "embedding",
        "baseModel": {"name": MINILM},
        "dataset": {"configMap": {"name": "pairs", "key": "train.jsonl"}},
        "output": {"pvc": {"claimName": "models"}},
    }
    body.update(spec)
    return {"apiVersion": "llmops.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": body}


def pairs_configmap() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "pairs"},
        "data": {"train.jsonl": PAIRS_JSONL},
    }


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (obj.get("status") or {}).get("conditions", [])}


def wait_phase(kube: Kube, ns: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj: dict[str, Any] = kube.get("ftj", name, ns)
        st = obj.get("status") or {}
        current = st.get("phase") == phase and st.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current else None

    return wait_for(f"FineTuneJob {ns}/{name} {phase}", probe, timeout=timeout)


def wait_emb(kube: Kube, ns: str, name: str, type_: str, status: str, reason: str | None = None,
             timeout: float = 60) -> dict[str, Any]:  # fmt: skip
    def probe() -> dict[str, Any] | None:
        obj: dict[str, Any] = kube.get("emb", name, ns)
        c = condition(obj, type_)
        fits = c and c["status"] == status and (reason is None or c["reason"] == reason)
        return obj if fits and c and c.get("observedGeneration") == obj["metadata"]["generation"] else None

    return wait_for(f"EmbeddingService {ns}/{name} {type_}={status} {reason or ''}", probe, timeout=timeout)


class Volumes:
    """PersistentVolumes (hostPath, pre-bound to one claim each): the local cluster has no
    provisioner, and a pod with an unbound claim is never scheduled."""

    def __init__(self, kube: Kube, root: Path) -> None:
        self.kube, self.root = kube, root
        self.names: list[str] = []

    def pv(self, namespace: str, claim: str, size: str = "5Gi") -> Path:
        name = f"{namespace}-{claim}-{uuid.uuid4().hex[:4]}"
        path = self.root / name
        path.mkdir(parents=True)
        self.kube.apply({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(path)},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        })  # fmt: skip
        self.names.append(name)
        return path

    def claim(self, namespace: str, claim: str, size: str = "5Gi") -> Path:
        """A PV and the claim bound to it (a PVC the user made)."""
        path = self.pv(namespace, claim, size)
        self.kube.apply({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
        }, namespace)  # fmt: skip
        return path


@pytest.fixture
def volumes(kube: Kube, tmp_path: Path) -> Iterator[Volumes]:
    v = Volumes(kube, tmp_path / "pv")
    yield v
    if v.names:
        kube.run("delete", "pv", *v.names, "--wait=false", check=False)


# -- what the API server refuses ------------------------------------------------------------

VALID = ftj("v")


def _with(**fields: Any) -> dict[str, Any]:
    """VALID with spec fields set; keys use __ for dots: _with(dataset__format="text")."""
    obj = copy.deepcopy(VALID)
    for dotted, value in fields.items():
        node = obj["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return obj


CASES = [
    ("bad hub dataset id", _with(dataset={"huggingface": {"id": "a b"}}), "should match"),
    (
        "two datasets",
        _with(dataset={"configMap": {"name": "a", "key": "k"}, "pvc": {"claimName": "b"}}),
        "set exactly one of dataset.pvc, dataset.configMap or dataset.huggingface",
    ),
    ("no dataset", _with(dataset={"format": "pairs"}), "set exactly one of dataset.pvc, dataset.configMap"),
    (
        "qlora on cpu",
        _with(task="causal-lm", method="qlora", dataset__format="text"),
        "method qlora needs a GPU (4-bit kernels): set resources.gpu to 1, or use method lora",
    ),
    (
        "qlora for embedding",
        _with(method="qlora", resources={"gpu": 1}),
        "method qlora is for causal-lm; use lora or full for embedding models",
    ),
    ("embedding reads pairs", _with(dataset__format="chat"), "the embedding task reads anchor/positive pairs"),
    ("pairs for causal-lm", _with(task="causal-lm", dataset__format="pairs"), "dataset.format pairs is for the "),
    ("two gpus", _with(resources={"gpu": 2}), "the trainer uses one GPU: set resources.gpu to 0 or 1"),
    ("lora with full", _with(method="full", lora={"r": 8}), "lora settings apply to method lora or qlora, not full"),
    (
        "epochs and steps",
        _with(hyperparameters={"epochs": 2, "maxSteps": 100}),
        "set hyperparameters.epochs or hyperparameters.maxSteps, not both",
    ),
    (
        "two warmups",
        _with(hyperparameters={"warmupSteps": 10, "warmupRatio": 0.1}),
        "set hyperparameters.warmupSteps or hyperparameters.warmupRatio, not both",
    ),
    ("zero learning rate", _with(hyperparameters={"learningRate": 0}), "should be greater than 0"),
    ("validation split of one", _with(dataset__validationSplit=1), "should be less than 1"),
    ("unknown method", _with(method="sgd"), 'Unsupported value: "sgd"'),
    (
        "create without size",
        _with(output={"pvc": {"claimName": "m", "create": True}}),
        "output.pvc.create needs output.pvc.size",
    ),
    (
        "size without create",
        _with(output={"pvc": {"claimName": "m", "size": "1Gi"}}),
        "output.pvc.size, storageClassName and accessMode are for create: true",
    ),
    (
        "bad size",
        _with(output={"pvc": {"claimName": "m", "create": True, "size": "lots"}}),
        "must be a Kubernetes quantity such as 20Gi",
    ),
    ("absolute output path", _with(output={"pvc": {"claimName": "m", "path": "/abs"}}), "should match"),
    (
        "two base model sources",
        _with(baseModel={"name": "m", "source": {"huggingface": {}, "pvc": {"claimName": "w"}}}),
        "set exactly one of baseModel.source.huggingface or baseModel.source.pvc",
    ),
    ("gpu product without gpu", _with(resources={"gpuProduct": "NVIDIA-H100-80GB-HBM3"}), "gpuProduct needs gpu > 0"),
    ("short deadline", _with(activeDeadlineSeconds=5), "should be greater than or equal to 60"),
    ("missing output", {**VALID, "spec": {k: v for k, v in VALID["spec"].items() if k != "output"}}, "Required value"),
    (
        "long name",
        {**VALID, "metadata": {"name": "x" * 64}},
        "a FineTuneJob's name is at most 63 characters",
    ),
]


@pytest.fixture(scope="module")
def validation_namespace(kube: Kube, crds: list[str]) -> Iterator[str]:
    name = f"ftj-validation-{uuid.uuid4().hex[:6]}"
    kube.run("create", "namespace", name)
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize(("case", "manifest", "message"), CASES, ids=[c[0] for c in CASES])
def test_invalid_spec_is_rejected_with_a_clear_message(
    kube: Kube, validation_namespace: str, case: str, manifest: dict[str, Any], message: str
) -> None:
    manifest = copy.deepcopy(manifest)
    if case != "long name":
        manifest["metadata"]["name"] = case.replace(" ", "-")
    accepted, output = kube.try_apply(manifest, validation_namespace)
    assert not accepted, f"{case}: accepted"
    assert message in output, output


def test_spec_is_immutable_except_suspend(kube: Kube, validation_namespace: str) -> None:
    first = _with(suspend=True, hyperparameters={"maxSteps": 10})
    first["metadata"]["name"] = "immutable"
    assert kube.try_apply(first, validation_namespace)[0]
    changes: list[dict[str, Any]] = [
        {"hyperparameters": {"maxSteps": 20}},  # a changed field
        {"hyperparameters": {"maxSteps": 10}, "checkpointEvery": 5},  # an added one
        {"hyperparameters": {}},  # a removed one
        {"hyperparameters": {"maxSteps": 10}, "nodeSelector": {"pool": "a"}},
    ]
    for change in changes:
        changed = copy.deepcopy(first)
        changed["spec"].update(change)
        accepted, output = kube.try_apply(changed, validation_namespace)
        assert not accepted and "spec is immutable except suspend: create a new FineTuneJob" in output, change
    resumed = copy.deepcopy(first)
    resumed["spec"]["suspend"] = False
    accepted, output = kube.try_apply(resumed, validation_namespace)
    assert accepted, output
    assert kube.get("ftj", "immutable", validation_namespace)["metadata"]["generation"] == 2


# -- the operator -------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["finetune-embedding.yaml", "finetune-lora.yaml"])
def test_the_examples_apply_and_succeed(
    kube: Kube, operator: OperatorProcess, namespace: str, volumes: Volumes, example: str
) -> None:
    """The examples as shipped; the test provides what a cluster would: volumes for the claims
    (the operator creates the output claim), the user's training-data claim."""
    docs = list(yaml.safe_load_all((REPO / "examples" / example).read_text()))
    job = next(d for d in docs if d["kind"] == "FineTuneJob")
    volumes.pv(namespace, job["spec"]["output"]["pvc"]["claimName"], job["spec"]["output"]["pvc"]["size"])
    if "pvc" in job["spec"]["dataset"]:
        volumes.claim(namespace, job["spec"]["dataset"]["pvc"]["claimName"])
    out = kube.run("apply", "-n", namespace, "-f", str(REPO / "examples" / example))
    assert "finetunejob.llmops.dev/" in out
    name = job["metadata"]["name"]
    obj = wait_phase(kube, namespace, name, "Succeeded", timeout=90)
    claim = job["spec"]["output"]["pvc"]["claimName"]
    assert obj["status"]["output"] == f"pvc://{claim}/{name}/model"
    pvc = kube.get("pvc", claim, namespace)
    assert "ownerReferences" not in pvc["metadata"]  # retained: the model outlives the FineTuneJob
    assert pvc["spec"]["resources"]["requests"]["storage"] == job["spec"]["output"]["pvc"]["size"]
    pod = kube.get("job", name, namespace)["spec"]["template"]["spec"]
    gpu = job["spec"]["resources"].get("gpu", 0)
    assert pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") == (str(gpu) if gpu else None)
    for doc in docs:
        if doc["kind"] == "EmbeddingService":
            served = wait_emb(kube, namespace, doc["metadata"]["name"], "Ready", "True", timeout=60)
            assert conditions(served)["ModelResolved"] == ("True", "FineTuneJobSucceeded")
            printed = kube.run("get", "llmops", "-n", namespace)
            assert "Succeeded" in printed and doc["metadata"]["name"] in printed
            # The service and the run share a name; their children do not (no apply war).
            trainer = kube.get("configmap", f"{name}-trainer", namespace)["data"]["config.yaml"]
            server = kube.get("configmap", f"{doc['metadata']['name']}-config", namespace)["data"]["config.yaml"]
            assert "task: embedding" in trainer and "batching:" in server
            time.sleep(1)
            since = time.time()
            time.sleep(6)
            writes = operator.writes(since=since, namespace=namespace)
            assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]


def test_job_pvc_and_failure_policy_as_created(
    kube: Kube, operator: OperatorProcess, namespace: str, volumes: Volumes
) -> None:
    kube.apply(pairs_configmap(), namespace)
    volumes.pv(namespace, "owned-out", "1Gi")
    spec = {
        "output": {"pvc": {"claimName": "owned-out", "create": True, "size": "1Gi", "retain": False}},
        "resources": {"gpu": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "memory": "24Gi"},
        "method": "full",
        "backoffLimit": 1,
        "activeDeadlineSeconds": 3600,
    }
    kube.apply(ftj("shape", **spec), namespace)
    obj = wait_phase(kube, namespace, "shape", "Succeeded", timeout=90)
    uid = obj["metadata"]["uid"]

    job = kube.get("job", "shape", namespace)
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    js = job["spec"]
    assert (js["backoffLimit"], js["activeDeadlineSeconds"], js["suspend"]) == (1, 3600, False)
    assert js["podReplacementPolicy"] == "Failed"
    rules = js["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [42]
    pod = js["template"]["spec"]
    c = pod["containers"][0]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "24Gi"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["runAsNonRoot"] is True
    assert c["image"].endswith("-cuda")
    ran = kube.get("pods", namespace=namespace)["items"]
    assert [p["spec"]["nodeName"] for p in ran] == ["llmops-gpu-0"]  # the GPU node: its taint is tolerated

    pvc = kube.get("pvc", "owned-out", namespace)
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == uid  # retain: false
    assert pvc["status"]["phase"] == "Bound"
    config = yaml.safe_load(kube.get("configmap", "shape-trainer", namespace)["data"]["config.yaml"])
    assert config["output"] == {"dir": "/output/shape"} and config["device"] == "cuda"

    st = obj["status"]
    assert st["output"] == "pvc://owned-out/shape/model" and "adapter" not in st  # full: no adapter
    assert st["jobName"] == "shape" and st["startTime"] and st["completionTime"]
    assert conditions(obj) == {
        "Succeeded": ("True", "Succeeded"),
        "Progressing": ("False", "Succeeded"),
        "Degraded": ("False", "AsExpected"),
    }
    assert "Succeeded" in kube.run("get", "ftj", "shape", "-n", namespace)
    assert "Succeeded" in kube.run("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=shape")


def test_a_finished_run_is_final_and_its_retained_output_outlives_it(
    kube: Kube, operator: OperatorProcess, namespace: str, volumes: Volumes
) -> None:
    kube.apply(pairs_configmap(), namespace)
    volumes.pv(namespace, "kept", "1Gi")
    volumes.pv(namespace, "scratch", "1Gi")
    kube.apply(ftj("keeper", output={"pvc": {"claimName": "kept", "create": True, "size": "1Gi"}}), namespace)
    scratch = {"pvc": {"claimName": "scratch", "create": True, "size": "1Gi", "retain": False}}
    kube.apply(ftj("scratch", output=scratch), namespace)
    wait_phase(kube, namespace, "keeper", "Succeeded", timeout=90)
    wait_phase(kube, namespace, "scratch", "Succeeded", timeout=90)
    # Its Job deleted, a succeeded run is not trained again; converged, the operator writes nothing
    # (the 5 s resync reconciles it at least once here).
    kube.run("delete", "job", "keeper", "-n", namespace)
    time.sleep(1)
    since = time.time()
    time.sleep(7)
    assert not kube.exists("job", "keeper", namespace)
    assert kube.get("ftj", "keeper", namespace)["status"]["phase"] == "Succeeded"
    writes = operator.writes(since=since, namespace=namespace)
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]

    # Deleted, a FineTuneJob takes its Job, ConfigMap and owned PVC with it; a retained PVC stays.
    # (The first garbage collection of a new CRD's objects waits for the collector's discovery.)
    kube.run("delete", "ftj", "keeper", "scratch", "-n", namespace)
    wait_for("children garbage-collected", lambda: not kube.exists("configmap", "keeper-trainer", namespace)
             and not kube.exists("job", "scratch", namespace) and not kube.exists("pvc", "scratch", namespace),
             timeout=90)  # fmt: skip
    assert kube.get("pvc", "kept", namespace)["status"]["phase"] == "Bound"


def test_suspend_then_resume(kube: Kube, operator: OperatorProcess, namespace: str, volumes: Volumes) -> None:
    kube.apply(pairs_configmap(), namespace)
    volumes.claim(namespace, "models")
    kube.apply(ftj("paused", suspend=True), namespace)
    obj = wait_phase(kube, namespace, "paused", "Suspended")
    assert conditions(obj)["Succeeded"] == ("Unknown", "Suspended")
    assert conditions(obj)["Progressing"] == ("False", "Suspended")
    assert kube.get("job", "paused", namespace)["spec"]["suspend"] is True
    assert not kube.get("pods", namespace=namespace)["items"]
    assert "output" not in obj["status"]

    kube.run("patch", "ftj", "paused", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    obj = wait_phase(kube, namespace, "paused", "Succeeded", timeout=60)
    assert obj["metadata"]["generation"] == 2 and obj["status"]["observedGeneration"] == 2
    assert kube.get("job", "paused", namespace)["spec"]["suspend"] is False
    # Suspending a finished run changes nothing.
    kube.run("patch", "ftj", "paused", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for("observed", lambda: kube.get("ftj", "paused", namespace)["status"]["observedGeneration"] == 3)
    assert kube.get("ftj", "paused", namespace)["status"]["phase"] == "Succeeded"


def _fail_pod(kube: Kube, ns: str, pod: str, status: dict[str, Any]) -> None:
    """What a kubelet would report (the pod never reached a node, so nothing else writes it)."""
    patch = json.dumps({"status": status})
    kube.run("patch", "pod", pod, "-n", ns, "--subresource=status", "--type=merge", "-p", patch)


def test_preemption_is_retried_and_the_permanent_exit_code_fails_at_once(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """The real Job controller applying the generated podFailurePolicy: a preempted pod is
    replaced without counting against backoffLimit 0; exit code 42 fails the Job at once."""
    kube.apply(pairs_configmap(), namespace)
    kube.apply(ftj("bad-data", backoffLimit=0, nodeSelector={"llmops.dev/nowhere": "x"}), namespace)

    def pods() -> list[str]:
        items = kube.get("pods", namespace=namespace)["items"]
        return [p["metadata"]["name"] for p in sorted(items, key=lambda p: p["metadata"]["creationTimestamp"])]

    first = wait_for("the trainer pod", pods)[0]
    assert wait_phase(kube, namespace, "bad-data", "Pending")["status"]["jobName"] == "bad-data"
    preempted = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "x"}
    _fail_pod(kube, namespace, first, {"phase": "Failed", "conditions": [preempted]})
    second = wait_for("a replacement pod", lambda: [p for p in pods() if p != first] or None, timeout=60)[0]
    assert int(kube.get("job", "bad-data", namespace)["status"].get("failed", 0)) == 0
    assert kube.get("ftj", "bad-data", namespace)["status"]["phase"] == "Pending"

    said = {"status": "failed", "exitCode": 42, "permanent": True,
            "message": "/data/train.jsonl:3: invalid JSON: Expecting value (column 1)"}  # fmt: skip
    terminated = {"exitCode": 42, "reason": "Error", "message": json.dumps(said),
                  "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}  # fmt: skip
    _fail_pod(kube, namespace, second, {
        "phase": "Failed",
        "containerStatuses": [{"name": "trainer", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
                               "state": {"terminated": terminated}}],
    })  # fmt: skip
    obj = wait_phase(kube, namespace, "bad-data", "Failed", timeout=60)
    assert conditions(obj)["Degraded"] == ("True", "DatasetInvalid")
    assert conditions(obj)["Succeeded"] == ("False", "DatasetInvalid")
    message = condition(obj, "Degraded")["message"]  # type: ignore[index]
    assert "/data/train.jsonl:3: invalid JSON" in message and "not retried" in message
    assert obj["status"]["message"] == said["message"] and "output" not in obj["status"]
    events = kube.run("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=bad-data")
    assert "DatasetInvalid" in events
    assert kube.get("job", "bad-data", namespace)["status"]["conditions"][-1]["reason"] == "PodFailurePolicy"


def test_an_embedding_service_serves_the_fine_tune_once_it_succeeded(
    kube: Kube, operator: OperatorProcess, namespace: str, volumes: Volumes
) -> None:
    kube.apply(pairs_configmap(), namespace)
    # The output claim exists but no volume yet: the trainer pod cannot be scheduled.
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
               namespace)  # fmt: skip
    kube.apply(ftj("tune", output={"pvc": {"claimName": "models", "path": "minilm/v1"}}), namespace)
    emb = {
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": "tuned"},
        "spec": {"model": {"name": "minilm-tuned", "dimension": 384, "source": {"fineTuneJobRef": {"name": "tune"}}}},
    }
    kube.apply(emb, namespace)
    waiting = wait_emb(kube, namespace, "tuned", "ModelResolved", "False", "WaitingForFineTuneJob")
    assert "FineTuneJob tune is Pending" in condition(waiting, "ModelResolved")["message"]  # type: ignore[index]
    assert conditions(waiting)["Ready"] == ("False", "WaitingForFineTuneJob")
    wait_for("the run under way", lambda: kube.get("job", "tune", namespace)["status"].get("active") == 1)
    time.sleep(2)
    assert not kube.exists("deployment", "tuned", namespace)

    volumes.pv(namespace, "models", "1Gi")  # the claim binds, the pod runs, kwok completes it
    done = wait_phase(kube, namespace, "tune", "Succeeded", timeout=90)
    assert done["status"]["output"] == "pvc://models/minilm/v1/model"
    assert done["status"]["adapter"] == "pvc://models/minilm/v1/adapter"
    ready = wait_emb(kube, namespace, "tuned", "Ready", "True", timeout=30)
    assert conditions(ready)["ModelResolved"] == ("True", "FineTuneJobSucceeded")
    pod = kube.get("deployment", "tuned", namespace)["spec"]["template"]["spec"]
    volumes_by_name = {v["name"]: v for v in pod["volumes"]}
    assert volumes_by_name["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    config = yaml.safe_load(kube.get("configmap", "tuned-config", namespace)["data"]["config.yaml"])
    assert config["model"]["path"] == "/models/minilm/v1/model"
    assert config["model"]["revision"].startswith("finetune:tune:")  # /info names the run served

    # A new successful run under the same name rolls the service (same path, new run).
    hash_key = "llmops.dev/config-hash"
    first_hash = kube.get("deployment", "tuned", namespace)["spec"]["template"]["metadata"]["annotations"][hash_key]
    kube.run("delete", "ftj", "tune", "-n", namespace, "--wait=true", timeout=60)
    kube.apply(ftj("tune", output={"pvc": {"claimName": "models", "path": "minilm/v1"}}), namespace)
    wait_phase(kube, namespace, "tune", "Succeeded", timeout=90)
    wait_for(
        "the service rolled to the new run",
        lambda: (
            kube.get("deployment", "tuned", namespace)["spec"]["template"]["metadata"]["annotations"][hash_key]
            != first_hash
        ),
        timeout=60,
    )


# -- the generated pod, for real --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _remap(value: Any, local: Any) -> Any:
    if isinstance(value, dict):
        return {k: _remap(v, local) for k, v in value.items()}
    if isinstance(value, list):
        return [_remap(v, local) for v in value]
    return local(value) if isinstance(value, str) else value


def test_the_trainer_pod_spec_trains_for_real_and_the_service_loads_the_output(
    kube: Kube, operator: OperatorProcess, namespace: str, volumes: Volumes, tmp_path: Path
) -> None:
    kube.apply(pairs_configmap(), namespace)
    base_dir = volumes.claim(namespace, "base-models")
    (base_dir / "minilm").symlink_to(minilm_path())  # the PVC holding the base model
    out_dir = volumes.claim(namespace, "models")
    spec = {
        "baseModel": {"name": MINILM, "source": {"pvc": {"claimName": "base-models", "path": "minilm"}}},
        "dataset": {"configMap": {"name": "pairs", "key": "train.jsonl"}, "format": "pairs", "validationSplit": 0.25},
        "output": {"pvc": {"claimName": "models", "path": "runs/minilm"}},
        "hyperparameters": {"maxSteps": 3, "batchSize": 4, "maxSeqLength": 32, "learningRate": 1e-3},
        "checkpointEvery": 2,
    }
    kube.apply(ftj("real", **spec), namespace)
    emb = {
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": "real"},  # the same name as the FineTuneJob: their children do not collide
        "spec": {"model": {"name": "minilm-real", "source": {"fineTuneJobRef": {"name": "real"}}}},
    }
    kube.apply(emb, namespace)
    wait_phase(kube, namespace, "real", "Succeeded", timeout=90)  # kwok completed the pod; nothing ran yet
    wait_emb(kube, namespace, "real", "Ready", "True", timeout=30)

    # Materialise the trainer pod's volumes on disk (the PVCs are the PVs' directories), map its
    # mount paths there, and run its command with its env.
    job = kube.get("job", "real", namespace)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    claims = {"base-models": base_dir, "models": out_dir}
    volumes_by_name = {v["name"]: v for v in pod["volumes"]}
    paths: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        source = volumes_by_name[mount["name"]]
        if "persistentVolumeClaim" in source:
            directory = claims[source["persistentVolumeClaim"]["claimName"]]
        else:
            directory = tmp_path / "pod" / mount["mountPath"].lstrip("/")
            directory.mkdir(parents=True, exist_ok=True)
        if "configMap" in source:
            data = kube.get("configmap", source["configMap"]["name"], namespace)["data"]
            items = source["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (directory / item["path"]).write_text(data[item["key"]])
        paths[mount["mountPath"]] = directory

    def local(arg: str) -> str:
        for mount_path, path in sorted(paths.items(), key=lambda kv: -len(kv[0])):
            if arg == mount_path or arg.startswith(mount_path + "/"):
                return str(path) + arg[len(mount_path) :]
        return arg

    command = [local(a) for a in container["command"] + container.get("args", [])]
    assert command[:3] == ["python", "-m", "llmops_workloads.training"]
    config_path = Path(command[command.index("--config") + 1])
    config = _remap(yaml.safe_load(config_path.read_text()), local)
    config["progress"]["port"] = _free_port()  # the pod's port may be taken on this machine
    config_path.write_text(yaml.safe_dump(config))
    termination = tmp_path / "termination-log"  # the kubelet creates terminationMessagePath
    termination.touch()
    env = {e["name"]: local(e["value"]) for e in container.get("env", []) if "value" in e}
    assert env["HF_HUB_OFFLINE"] == "1"
    env = {**os.environ, **env, "LLMOPS_PROGRESS__TERMINATION_MESSAGE_PATH": str(termination)}
    started = time.monotonic()
    out = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, env=env, timeout=240,
                         check=False)  # fmt: skip
    print(f"trainer run: {time.monotonic() - started:.1f}s")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    # The termination message is what the operator reads from the pod's status.
    from llmops_operator.reconcilers.finetune import progress_from_summary, termination_summary

    said = {"exitCode": 0, "message": termination.read_text()}
    fake_pod = {
        "metadata": {"creationTimestamp": "1"},
        "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": said}}]},
    }
    summary = termination_summary([fake_pod])
    assert summary["status"] == "succeeded" and summary["exitCode"] == 0 and summary["outputs"]["model"] == "model"
    progress = progress_from_summary(None, summary, succeeded=True)
    assert progress["step"] == progress["totalSteps"] == 3 and progress["display"] == "3/3 (100%)"
    assert progress["evalMetric"]["name"] == "mrr@10" and "baseValue" in progress["evalMetric"]
    run_dir = out_dir / "runs" / "minilm"
    card = json.loads((run_dir / "training.json").read_text())
    assert card["steps"] == 3 and card["data"]["trainRows"] == 9 and card["data"]["validationRows"] == 3

    # The EmbeddingService's own config and volumes, materialised the same way, load the output.
    from llmops_workloads.common.settings import snake_keys
    from llmops_workloads.embedding.config import EmbeddingServerConfig
    from llmops_workloads.embedding.model import EmbeddingModel

    served = yaml.safe_load(kube.get("configmap", "real-config", namespace)["data"]["config.yaml"])
    dep = kube.get("deployment", "real", namespace)["spec"]["template"]["spec"]
    model_claim = next(v for v in dep["volumes"] if v["name"] == "model")["persistentVolumeClaim"]["claimName"]
    mount = next(m for m in dep["containers"][0]["volumeMounts"] if m["name"] == "model")["mountPath"]
    served["model"]["path"] = str(claims[model_claim]) + served["model"]["path"][len(mount) :]
    cfg = EmbeddingServerConfig.model_validate(snake_keys(served))
    model = EmbeddingModel(cfg.model)
    assert model.info.dimension == 384 and model.pooling == "mean"
    vectors = model.embed(model.tokenize(["how do I reset my password"]))
    assert vectors.shape == (1, 384)
    base = EmbeddingModel(cfg.model.model_copy(update={"path": minilm_path()}))
    moved = float(abs(vectors - base.embed(base.tokenize(["how do I reset my password"]))).max())
    assert moved > 1e-4, "the served weights are the base model's: nothing was trained"
