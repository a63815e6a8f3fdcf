"""Pure builders and status derivation of a FineTuneJob: spec in, the trainer's config file, the
PVC and the Job out; Job and pod states in, phase, reasons and progress out. The config file is
checked against the trainer's own config model: the operator writes what the trainer reads."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from llmops_operator.api import crd
from llmops_operator.api.finetune import FineTuneJobSpec
from llmops_operator.children import finetune
from llmops_operator.children.common import Owner
from llmops_operator.reconcilers.finetune import (
    _keep_running_template,
    conditions_for,
    failure,
    phase_of,
    poll_progress,
    progress_from_snapshot,
    progress_from_summary,
    termination_summary,
)
from llmops_workloads.common.settings import snake_keys
from llmops_workloads.training import errors
from llmops_workloads.training.config import TrainerConfig

OWNER = Owner("llmops.dev/v1alpha1", "FineTuneJob", "minilm-ft", "uid-7", "team-a")
BASE: dict[str, Any] = {
    "task": "embedding",
    "baseModel": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
    "dataset": {"pvc": {"claimName": "corpus", "path": "pairs/train.jsonl"}},
    "output": {"pvc": {"claimName": "models", "create": True, "size": "5Gi"}},
}


def spec(**extra: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({**BASE, **extra})


def trainer_config(s: FineTuneJobSpec) -> TrainerConfig:
    w = finetune.workload(OWNER, s)
    cm = finetune.config_map(w)
    # Not minilm-ft-config: that is the ConfigMap of an EmbeddingService of the same name.
    assert cm["metadata"]["name"] == "minilm-ft-trainer" and cm["metadata"]["ownerReferences"][0]["uid"] == "uid-7"
    return TrainerConfig.model_validate(snake_keys(yaml.safe_load(cm["data"]["config.yaml"])))


def pod_of(s: FineTuneJobSpec) -> dict[str, Any]:
    job = finetune.job(finetune.workload(OWNER, s), s)
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def test_the_config_is_what_the_trainer_reads_and_says_what_the_spec_says() -> None:
    s = spec(
        method="lora",
        dataset={"pvc": {"claimName": "corpus", "path": "p/train.jsonl"}, "format": "pairs", "validationSplit": 0.2},
        hyperparameters={
            "maxSteps": 300, "learningRate": 5e-5, "lrSchedule": "cosine", "warmupRatio": 0.1, "batchSize": 32,
            "gradientAccumulation": 2, "maxSeqLength": 128, "seed": 7, "weightDecay": 0.01,
        },
        lora={"r": 16, "alpha": 32, "dropout": 0.1, "targetModules": ["query", "value"]},
        checkpointEvery=50,
        resources={"cpu": "3500m", "memory": "8Gi"},
    )  # fmt: skip
    cfg = trainer_config(s)
    assert cfg.task == "embedding" and cfg.method == "lora"
    assert cfg.base_model.name == "sentence-transformers/all-MiniLM-L6-v2" and cfg.base_model.revision == "main"
    assert cfg.base_model.path is None  # from the hub (cache under HF_HOME)
    assert cfg.dataset.path == "/data/p/train.jsonl" and cfg.dataset.format == "pairs"
    assert cfg.dataset.validation_split == 0.2
    h = cfg.hyperparameters
    assert (h.max_steps, h.learning_rate, h.lr_schedule, h.warmup_ratio) == (300, 5e-5, "cosine", 0.1)
    assert (h.batch_size, h.gradient_accumulation, h.max_seq_length, h.seed, h.weight_decay) == (32, 2, 128, 7, 0.01)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (16, 32, 0.1, ["query", "value"])
    assert cfg.checkpoint_every == 50
    assert cfg.output.dir == "/output/minilm-ft"  # default path: the FineTuneJob's name
    assert cfg.progress.port == finetune.PROGRESS_PORT and cfg.progress.host == "0.0.0.0"
    assert cfg.device == "cpu" and cfg.cpu_threads == 4  # ceil(3.5): torch sees the node's cores otherwise
    assert cfg.log_format == "json"


def test_unset_hyperparameters_take_the_trainers_defaults() -> None:
    cfg = trainer_config(spec())
    assert cfg.hyperparameters == TrainerConfig.model_fields["hyperparameters"].default
    assert cfg.method == "lora" and cfg.lora.r == 8 and cfg.checkpoint_every == 200
    assert cfg.cpu_threads == 2  # the default CPU request


def test_causal_lm_on_a_gpu_from_a_configmap_and_a_base_model_pvc() -> None:
    s = spec(
        task="causal-lm",
        method="qlora",
        baseModel={"name": "Qwen/Qwen2.5-0.5B", "revision": "v1", "source": {"pvc": {"claimName": "weights",
                                                                                     "path": "qwen"}}},
        dataset={"configMap": {"name": "sft", "key": "train.jsonl"}, "format": "chat"},
        lora={"targetModules": ["all-linear"]},
        resources={"gpu": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
        output={"pvc": {"claimName": "models", "path": "runs/qwen-sft"}},
    )  # fmt: skip
    cfg = trainer_config(s)
    assert cfg.task == "causal-lm" and cfg.method == "qlora" and cfg.device == "cuda" and cfg.cpu_threads is None
    assert cfg.base_model.path == "/models/qwen" and cfg.base_model.revision == "v1"
    assert cfg.dataset.path == "/data/train.jsonl" and cfg.dataset.format == "chat"
    assert cfg.lora.target_modules == "all-linear"
    assert cfg.output.dir == "/output/runs/qwen-sft"

    pod = pod_of(s)
    c = pod["containers"][0]
    assert c["image"].endswith("-cuda")
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"] == "32Gi"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert volumes["data"]["configMap"] == {"name": "sft", "items": [{"key": "train.jsonl", "path": "train.jsonl"}]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert mounts["model"] == {"name": "model", "mountPath": "/models", "readOnly": True}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"  # the weights are local: never reach for the hub


def test_job_shape() -> None:
    s = spec(
        backoffLimit=4,
        activeDeadlineSeconds=7200,
        suspend=True,
        nodeSelector={"pool": "train"},
        priorityClassName="batch-low",
        baseModel={"name": "org/private", "source": {"huggingface": {"tokenSecretRef": {"name": "hf", "key": "t"}}}},
    )
    job = finetune.job(finetune.workload(OWNER, s), s)
    assert job["apiVersion"] == "batch/v1" and job["metadata"]["name"] == "minilm-ft"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-7"
    assert job["metadata"]["labels"]["llmops.dev/fine-tune-job"] == "minilm-ft"
    js = job["spec"]
    assert (js["backoffLimit"], js["activeDeadlineSeconds"], js["suspend"]) == (4, 7200, True)
    assert js["podReplacementPolicy"] == "Failed"  # never two trainers on one output directory
    assert js["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [42]}},
    ]
    pod = js["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["nodeSelector"] == {"pool": "train"} and pod["priorityClassName"] == "batch-low"
    assert "tolerations" not in pod  # no GPU: no GPU toleration
    c = pod["containers"][0]
    assert c["name"] == "trainer"
    assert c["command"] == ["python", "-m", "llmops_workloads.training", "--config", "/etc/llmops/config.yaml"]
    assert c["image"].endswith("-cpu") and "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["ports"] == [{"name": "progress", "containerPort": 8080, "protocol": "TCP"}]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(c)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {"/etc/llmops", "/cache", "/tmp", "/output", "/data"}
    assert mounts["/data"]["readOnly"] and mounts["/etc/llmops"]["readOnly"] and not mounts["/output"].get("readOnly")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["output"]["persistentVolumeClaim"] == {"claimName": "models"}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "corpus", "readOnly": True}
    assert "emptyDir" in volumes["tmp"] and "emptyDir" in volumes["cache"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "t"}}
    assert env["HF_HOME"]["value"] == "/cache/huggingface" and "HF_HUB_OFFLINE" not in env
    assert env["HOME"]["value"] == "/cache"  # a writable home under a read-only root file system
    assert volumes["config"]["configMap"] == {"name": "minilm-ft-trainer"}
    assert "llmops.dev/config-hash" in js["template"]["metadata"]["annotations"]
    assert "activeDeadlineSeconds" not in finetune.job(finetune.workload(OWNER, spec()), spec())["spec"]


def test_the_operator_repeats_the_trainers_exit_code() -> None:
    assert finetune.EXIT_PERMANENT == errors.EXIT_PERMANENT


def test_pvc_creation_and_retention() -> None:
    w = finetune.workload(OWNER, spec())
    retained = finetune.pvc(w, spec())
    assert retained is not None
    assert retained["metadata"]["name"] == "models" and "ownerReferences" not in retained["metadata"]
    assert retained["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}
    assert retained["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "llmops-operator"

    owned_spec = spec(output={"pvc": {"claimName": "scratch", "create": True, "size": "1Gi", "retain": False,
                                      "storageClassName": "fast", "accessMode": "ReadWriteMany"}})  # fmt: skip
    owned = finetune.pvc(finetune.workload(OWNER, owned_spec), owned_spec)
    assert owned is not None and owned["metadata"]["ownerReferences"][0]["uid"] == "uid-7"
    assert owned["spec"]["storageClassName"] == "fast" and owned["spec"]["accessModes"] == ["ReadWriteMany"]

    existing = spec(output={"pvc": {"claimName": "mine"}})
    assert finetune.pvc(finetune.workload(OWNER, existing), existing) is None


def test_output_uri_is_what_the_embedding_service_resolves() -> None:
    from urllib.parse import urlparse

    assert finetune.output_uri(OWNER, spec()) == "pvc://models/minilm-ft/model"
    custom = spec(output={"pvc": {"claimName": "models", "path": "team/v2"}})
    assert finetune.output_uri(OWNER, custom) == "pvc://models/team/v2/model"
    assert finetune.output_uri(OWNER, custom, "adapter") == "pvc://models/team/v2/adapter"
    # reconcilers/embedding.py::_resolve_fine_tune parses it like this:
    parsed = urlparse(finetune.output_uri(OWNER, custom))
    assert (parsed.scheme, parsed.netloc, parsed.path.lstrip("/")) == ("pvc", "models", "team/v2/model")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"dataset": {"huggingface": {"id": "not a repo id"}}}, "String should match pattern"),
        ({"method": "sgd"}, "Input should be"),
        ({"hyperparameters": {"learningRate": 0}}, "greater than 0"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_the_model_refuses_what_the_schema_refuses(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**extra)


def test_crd_carries_the_immutability_rule_and_openapi_bounds() -> None:
    kind = next(k for k in crd.KINDS if k.kind == "FineTuneJob")
    generated = crd.crd(kind)
    root = generated["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema = root["properties"]["spec"]
    immutable = next(r for r in schema["x-kubernetes-validations"] if "immutable" in r["message"])
    assert immutable["message"] == "spec is immutable except suspend: create a new FineTuneJob"
    assert "self.task == oldSelf.task" in immutable["rule"] and "suspend" not in immutable["rule"]
    assert "has(self.activeDeadlineSeconds) == has(oldSelf.activeDeadlineSeconds)" in immutable["rule"]
    assert generated["spec"]["names"]["shortNames"] == ["ftj"] and generated["spec"]["names"]["categories"] == [
        "llmops"
    ]
    lr = schema["properties"]["hyperparameters"]["properties"]["learningRate"]
    assert lr["minimum"] == 0 and lr["exclusiveMinimum"] is True  # OpenAPI v3.0: a boolean
    columns = [c["name"] for c in generated["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Task", "Base", "Phase", "Progress", "Loss", "Age"]
    assert root["x-kubernetes-validations"][0]["rule"] == "self.metadata.name.size() <= 63"


# -- status derivation --------------------------------------------------------------------


def job_with(*conds: tuple[str, str, str], **status: Any) -> dict[str, Any]:
    conditions = [{"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": "T"}
                  for t, r, m in conds]  # fmt: skip
    return {"metadata": {"name": "j"}, "spec": {"suspend": False}, "status": {"conditions": conditions, **status}}


def pod(exit_code: int | None = None, message: str = "", reason: str = "Error", created: str = "1") -> dict[str, Any]:
    state = (
        {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}} if exit_code is not None else {}
    )
    return {
        "metadata": {"name": f"p{created}", "creationTimestamp": created},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": state}]},
    }


@pytest.mark.parametrize(
    ("job", "suspend", "phase", "reason"),
    [
        (None, False, "Pending", "Pending"),
        (job_with(), False, "Pending", "Pending"),
        (job_with(active=1), False, "Pending", "Pending"),
        (job_with(active=1, ready=1), False, "Running", "Running"),
        (job_with(active=1, ready=1), True, "Suspended", "Suspended"),
        (job_with(("Complete", "", "")), True, "Succeeded", "Succeeded"),  # suspending a finished run changes nothing
        (job_with(("SuccessCriteriaMet", "", "")), False, "Succeeded", "Succeeded"),
        (job_with(("FailureTarget", "DeadlineExceeded", "too long")), False, "Failed", "DeadlineExceeded"),
        (job_with(("Failed", "BackoffLimitExceeded", "")), False, "Failed", "BackoffLimitExceeded"),
    ],
)
def test_phase_of_the_job(job: dict[str, Any] | None, suspend: bool, phase: str, reason: str) -> None:
    assert phase_of(job, suspend)[:2] == (phase, reason)


def test_failure_reasons() -> None:
    bad_row = '{"status":"failed","exitCode":42,"permanent":true,"message":"/data/train.jsonl:3: invalid JSON"}'
    reason, message = failure("PodFailurePolicy", "Container trainer ... exit code 42", [pod(42, bad_row)], 2)
    assert reason == "DatasetInvalid" and "/data/train.jsonl:3: invalid JSON" in message
    no_model = '{"status":"failed","exitCode":42,"message":"baseModel org/x@main: RepositoryNotFoundError"}'
    assert failure("PodFailurePolicy", "", [pod(42, no_model)], 2)[0] == "ModelNotFound"
    qlora = '{"status":"failed","exitCode":42,"message":"method qlora needs a CUDA GPU"}'
    assert failure("PodFailurePolicy", "", [pod(42, qlora)], 2)[0] == "PermanentError"
    # The trainer names its error's class: that decides, whatever the message says.
    classed = '{"status":"failed","exitCode":42,"message":"method qlora needs a CUDA GPU","error":"UnsupportedError"}'
    assert failure("PodFailurePolicy", "", [pod(42, classed)], 2)[0] == "Unsupported"
    config = '{"status":"failed","exitCode":42,"message":"/etc/llmops/config.yaml:3: x","error":"ConfigError"}'
    assert failure("PodFailurePolicy", "", [pod(42, config)], 2)[0] == "InvalidConfig"
    # The pods may be gone: the Job's own reason still says it was the permanent exit code.
    assert failure("PodFailurePolicy", "exit code 42", [], 2)[0] == "DatasetInvalid"

    oom = [pod(1, "", created="1"), pod(137, "", reason="OOMKilled", created="2")]
    reason, message = failure("BackoffLimitExceeded", "Job has reached the specified backoff limit", oom, 1)
    assert reason == "OOMKilled" and "resources.memory" in message
    crash = '{"status":"crashed","exitCode":1,"message":"RuntimeError: boom"}'
    reason, message = failure("BackoffLimitExceeded", "backoff", [pod(1, crash)], 1)
    assert reason == "BackoffLimitExceeded" and message.endswith("2 times (backoffLimit 1): RuntimeError: boom")
    reason, message = failure("DeadlineExceeded", "Job was active longer than specified deadline", oom, 1)
    assert reason == "DeadlineExceeded" and "resumes from the last checkpoint" in message


def test_termination_summary_skips_log_tails() -> None:
    pods = [
        pod(1, "Traceback (most recent call last): ...", created="2"),
        pod(143, '{"status":"preempted"}', created="1"),
    ]
    assert termination_summary(pods) == {"status": "preempted"}
    assert termination_summary([]) == {}


def test_progress_from_the_endpoint_and_the_termination_message() -> None:
    snapshot = {
        "state": "training", "step": 40, "totalSteps": 160, "epoch": 0.5, "loss": 0.8123, "learningRate": 4e-5,
        "evalMetric": {"name": "mrr@10", "value": 0.61}, "metrics": {"mrr@10": 0.61}, "baseMetrics": {"mrr@10": 0.5},
        "etaSeconds": 120.5, "stepsPerSecond": 1.2,
    }  # fmt: skip
    running = progress_from_snapshot(snapshot)
    assert running == {
        "step": 40, "totalSteps": 160, "epoch": 0.5, "loss": 0.8123, "learningRate": 4e-5, "etaSeconds": 120.5,
        "evalMetric": {"name": "mrr@10", "value": 0.61, "baseValue": 0.5}, "display": "40/160 (25%)",
    }  # fmt: skip
    summary = {"status": "succeeded", "step": 160, "totalSteps": 160, "metric": "mrr@10",
               "metrics": {"mrr@10": 0.74}, "baseMetrics": {"mrr@10": 0.5}, "exitCode": 0}  # fmt: skip
    done = progress_from_summary(running, summary, succeeded=True)
    assert done["step"] == 160 and done["display"] == "160/160 (100%)" and done["etaSeconds"] == 0
    assert done["evalMetric"] == {"name": "mrr@10", "value": 0.74, "baseValue": 0.5}
    assert done["loss"] == 0.8123  # the last polled loss: this summary has none
    # The trainer's real summary carries the last loss, epoch and learning rate (a run too short
    # to be polled still shows its loss).
    short = progress_from_summary(None, {**summary, "loss": 0.706, "epoch": 2.0, "learningRate": 1e-5}, True)
    assert (short["loss"], short["epoch"], short["learningRate"]) == (0.706, 2.0, 1e-5)
    assert progress_from_summary(None, {}, succeeded=True) == {}  # kwok: no trainer ran, nothing to say


def test_conditions_per_phase() -> None:
    def by_type(phase: str, reason: str) -> dict[str, tuple[str, str]]:
        return {c.type: (c.status, c.reason) for c in conditions_for(phase, reason, "m")}

    assert by_type("Succeeded", "Succeeded") == {
        "Succeeded": ("True", "Succeeded"), "Progressing": ("False", "Succeeded"), "Degraded": ("False", "AsExpected")
    }  # fmt: skip
    assert by_type("Failed", "OOMKilled")["Degraded"] == ("True", "OOMKilled")
    assert by_type("Failed", "OOMKilled")["Succeeded"] == ("False", "OOMKilled")
    assert by_type("Suspended", "Suspended")["Progressing"] == ("False", "Suspended")
    assert by_type("Running", "Running") == {
        "Succeeded": ("Unknown", "Running"), "Progressing": ("True", "Running"), "Degraded": ("False", "AsExpected")
    }  # fmt: skip


def test_a_running_jobs_template_is_kept_after_an_operator_upgrade() -> None:
    s = spec()
    w = finetune.workload(OWNER, s)
    want = finetune.job(w, s)
    live = {"spec": {**want["spec"], "suspend": False}}
    live["spec"]["template"] = {**want["spec"]["template"], "extra": "server defaults"}
    assert _keep_running_template(want, live)["spec"]["template"] == want["spec"]["template"]  # nothing to keep
    upgraded = finetune.job(w.__class__(**{**w.__dict__, "image": "registry/new:2"}), s)
    kept = _keep_running_template(upgraded, live)
    assert kept["spec"]["template"] == live["spec"]["template"]  # immutable: what runs stays
    assert _keep_running_template(upgraded, None) == upgraded


def test_progress_is_polled_from_the_trainers_own_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's poll against the trainer's real progress server (llmops_workloads.training)."""
    from llmops_workloads.training.progress import Progress, ProgressServer

    progress = Progress()
    progress.training_started()
    progress.step, progress.total_steps, progress.loss, progress.metric_name = 7, 20, 1.25, "eval_loss"
    progress.metrics = {"eval_loss": 2.5}
    server = ProgressServer(progress, "127.0.0.1", 0).start()
    monkeypatch.setattr(finetune, "PROGRESS_PORT", server.port)
    running_pod = {"metadata": {"creationTimestamp": "1"}, "status": {"phase": "Running", "podIP": "127.0.0.1"}}
    try:
        snap = asyncio.run(poll_progress([running_pod]))
    finally:
        server.stop()
    assert snap is not None
    status = progress_from_snapshot(snap)
    assert (status["step"], status["totalSteps"], status["loss"]) == (7, 20, 1.25)
    assert status["evalMetric"] == {"name": "eval_loss", "value": 2.5} and status["display"] == "7/20 (35%)"
    # Unreachable (the port is closed now): None, quickly, never an exception.
    assert asyncio.run(poll_progress([running_pod], timeout=1.0)) is None
    pending = {"metadata": {"creationTimestamp": "1"}, "status": {"phase": "Pending"}}
    assert asyncio.run(poll_progress([pending])) is None


@pytest.mark.parametrize("example", ["finetune-embedding.yaml", "finetune-lora.yaml"])
def test_the_examples_build_configs_the_trainer_reads(example: str) -> None:
    from pathlib import Path

    from llmops_workloads.training.data import parse_row

    docs = list(yaml.safe_load_all((Path(__file__).resolve().parents[2] / "examples" / example).read_text()))
    job = next(d for d in docs if d["kind"] == "FineTuneJob")
    s = FineTuneJobSpec.model_validate(job["spec"])
    cfg = trainer_config(s)
    assert cfg.task == job["spec"]["task"] and cfg.base_model.name == job["spec"]["baseModel"]["name"]
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        for n, line in enumerate(cm["data"]["train.jsonl"].splitlines(), start=1):
            parse_row(f"{example}:{n}", json.loads(line), cfg.dataset.format)


def test_a_fine_tune_jobs_result_requeues_the_embedding_services_that_serve_it() -> None:
    from llmops_operator.reconcilers.base import Context
    from llmops_operator.runtime.controller import Controller
    from llmops_operator.runtime.store import Key, Store

    def emb(name: str, ref: str) -> dict[str, Any]:
        spec = {"model": {"name": "m", "source": {"fineTuneJobRef": {"name": ref}}}}
        return {"kind": "EmbeddingService", "metadata": {"name": name, "namespace": "ns"}, "spec": spec}

    def ftj(rv: int, phase: str, output: str | None = None, step: int = 0) -> dict[str, Any]:
        status = {"phase": phase, "progress": {"step": step}, **({"output": output} if output else {})}
        meta = {"name": "ft", "namespace": "ns", "resourceVersion": str(rv)}
        return {"kind": "FineTuneJob", "metadata": meta, "spec": {}, "status": status}

    async def scenario() -> list[set[str]]:
        ctx = Context(client=None, owners=Store(), children=Store(), events=None)  # type: ignore[arg-type]
        controller = Controller(None, ctx, None)  # type: ignore[arg-type]
        ctx.owners.put(emb("serves-it", "ft"))
        ctx.owners.put(emb("serves-another", "other"))
        rounds = []
        events = [
            ftj(1, "Pending"),
            ftj(2, "Running", step=5),
            ftj(3, "Running", step=9),  # progress only: not news for the service
            ftj(4, "Succeeded", "pvc://models/ft/model", step=10),
        ]
        for i, obj in enumerate(events):
            if i == 3:
                ctx.owners.put(obj)  # the reconciler caches its own status write before the event arrives
            await controller._on_owner_event({"type": "MODIFIED" if i else "ADDED", "object": obj})
            keys = set()
            while len(controller.queue):
                key: Key = await controller.queue.get()
                controller.queue.done(key)
                keys.add(key.name)
            rounds.append(keys)
        return rounds

    assert asyncio.run(scenario()) == [{"ft", "serves-it"}, {"ft", "serves-it"}, {"ft"}, {"ft", "serves-it"}]


def test_a_hub_dataset_is_fetched_by_the_trainer_not_mounted() -> None:
    s = spec(
        dataset={"huggingface": {"id": "acme/pairs", "revision": "v1", "path": "data/train.jsonl",
                                 "tokenSecretRef": {"name": "hf", "key": "token"}}, "format": "pairs"},
        baseModel={"name": "sentence-transformers/all-MiniLM-L6-v2", "source": {"pvc": {"claimName": "base"}}},
    )  # fmt: skip
    config = TrainerConfig.model_validate(snake_keys(finetune.trainer_config(OWNER, s, "2")))
    assert config.dataset.hub is not None and (config.dataset.hub.id, config.dataset.hub.revision) == (
        "acme/pairs",
        "v1",
    )
    assert config.dataset.path == "data/train.jsonl"
    pod = finetune.pod_template(finetune.workload(OWNER, s), s)["spec"]
    container = pod["containers"][0]
    assert "/data" not in {m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e for e in container["env"]}
    assert "HF_HUB_OFFLINE" not in env  # the dataset comes from the hub
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
