"""FineTuneJob -> the trainer's ConfigMap, the optional output PVC and the batch/v1 Job.

The config keys, the command, the exit codes and the output layout are the trainer's documented
contract (docs/trainer.md, ``llmops_workloads.training.config``/``errors``); the operator does not
import the trainer (it installs without torch), so the few constants it needs are repeated here
and a unit test keeps them equal.
"""

from __future__ import annotations

import math
from typing import Any

from ..api.common import MonitoringSpec, NetworkPolicySpec
from ..api.finetune import FineTuneJobSpec
from ..images import workload_image
from ..kube.quantity import parse_quantity
from . import configmap
from .common import (
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_HASH,
    TERMINATION_LOG,
    Owner,
    Workload,
    config_hash,
    container_resources,
    container_security_context,
    meta,
    place,
    pod_security_context,
)

COMMAND = ("python", "-m", "llmops_workloads.training")
OWNER_LABEL = "llmops.dev/fine-tune-job"
CONTAINER = "trainer"
DATA_DIR = "/data"
OUTPUT_DIR = "/output"
MODELS_DIR = "/models"
PROGRESS_PORT = 8080  # the trainer's GET /progress and /metrics (progress.port)
EXIT_PERMANENT = 42  # llmops_workloads.training.errors.EXIT_PERMANENT: bad data, config or model
# Seconds between SIGTERM and SIGKILL: the trainer finishes its step and writes a checkpoint.
TERMINATION_GRACE_SECONDS = 300


def output_path(owner: Owner, spec: FineTuneJobSpec) -> str:
    """The run's directory inside the output volume (default: the FineTuneJob's name)."""
    return (spec.output.pvc.path or owner.name).strip("/")


def output_uri(owner: Owner, spec: FineTuneJobSpec, what: str = "model") -> str:
    """``pvc://<claim>/<path>/<what>``: ``model`` is what the servers load as model.path."""
    return f"pvc://{spec.output.pvc.claim_name}/{output_path(owner, spec)}/{what}"


def _cpu_threads(cpu: str) -> int:
    """torch sees the node's cores, not the pod's share: the trainer is told its CPU request."""
    return max(1, math.ceil(parse_quantity(cpu)))


def _dataset(spec: FineTuneJobSpec) -> dict[str, Any]:
    ds = spec.dataset
    if ds.huggingface is not None:
        return {"hub": {"id": ds.huggingface.id, "revision": ds.huggingface.revision}, "path": ds.huggingface.path}
    if ds.config_map is not None:
        return {"path": f"{DATA_DIR}/{ds.config_map.key}"}
    assert ds.pvc is not None  # exactly one (CEL rule)
    return {"path": f"{DATA_DIR}/{ds.pvc.path}".rstrip("/")}


def trainer_config(owner: Owner, spec: FineTuneJobSpec, cpu: str) -> dict[str, Any]:
    """The trainer's config file (camelCase keys, as ``TrainerConfig`` reads them). Unset
    hyperparameters are left out: the trainer's defaults apply."""
    base: dict[str, Any] = {"name": spec.base_model.name, "revision": spec.base_model.revision}
    if spec.base_model.source.pvc is not None:
        base["path"] = f"{MODELS_DIR}/{spec.base_model.source.pvc.path}".rstrip("/")
    dataset: dict[str, Any] = {**_dataset(spec), "format": spec.dataset.format}
    if spec.dataset.validation_split is not None:
        dataset["validationSplit"] = spec.dataset.validation_split
    gpu = spec.resources.gpu > 0
    config: dict[str, Any] = {
        "task": spec.task,
        "baseModel": base,
        "method": spec.method,
        "dataset": dataset,
        "hyperparameters": spec.hyperparameters.model_dump(by_alias=True, exclude_none=True),
        "output": {"dir": f"{OUTPUT_DIR}/{output_path(owner, spec)}"},
        "progress": {"port": PROGRESS_PORT, "terminationMessagePath": TERMINATION_LOG},
        "device": "cuda" if gpu else "cpu",
        "logFormat": "json",
    }
    if spec.lora is not None:
        lora = spec.lora.model_dump(by_alias=True, exclude_none=True)
        if lora.get("targetModules") == ["all-linear"]:
            lora["targetModules"] = "all-linear"
        config["lora"] = lora
    if spec.checkpoint_every is not None:
        config["checkpointEvery"] = spec.checkpoint_every
    if not gpu:
        config["cpuThreads"] = _cpu_threads(cpu)
    return config


def workload(owner: Owner, spec: FineTuneJobSpec) -> Workload:
    gpu = spec.resources.gpu > 0
    default_cpu, default_memory = ("8", "32Gi") if gpu else ("2", "8Gi")
    return Workload(
        owner=owner,
        name=owner.name,
        app="trainer",
        component="fine-tune",
        owner_label=OWNER_LABEL,
        image=spec.image or workload_image(gpu),
        command=COMMAND,
        config=trainer_config(owner, spec, spec.resources.cpu or default_cpu),
        placement=spec,
        resources=spec.resources,
        replicas=None,
        autoscaling=None,
        monitoring=MonitoringSpec(),
        network_policy=NetworkPolicySpec(enabled=False),
        default_cpu=default_cpu,
        default_memory=default_memory,
        termination_grace_seconds=TERMINATION_GRACE_SECONDS,
    )


def config_map_name(owner: Owner) -> str:
    """Not ``<name>-config``: an EmbeddingService serving this run often has the same name."""
    return f"{owner.name}-trainer"


def config_map(w: Workload) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(w, config_map_name(w.owner)),
        "data": {"config.yaml": configmap.config_file(w)},
    }


def pvc(w: Workload, spec: FineTuneJobSpec) -> dict[str, Any] | None:
    """The output claim, when the operator is asked to create it. Retained (the default) means no
    owner reference: the model outlives the FineTuneJob."""
    out = spec.output.pvc
    if not out.create:
        return None
    assert out.size is not None  # CEL rule
    metadata = meta(w, out.claim_name)
    if out.retain:
        del metadata["ownerReferences"]
    body: dict[str, Any] = {
        "accessModes": [out.access_mode or "ReadWriteOnce"],
        "resources": {"requests": {"storage": out.size}},
    }
    if out.storage_class_name is not None:
        body["storageClassName"] = out.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": body}


def _volumes(w: Workload, spec: FineTuneJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(w.owner)}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "output", "persistentVolumeClaim": {"claimName": spec.output.pvc.claim_name}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "cache", "mountPath": "/cache"},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 (an emptyDir, the pod's own /tmp)
        {"name": "output", "mountPath": OUTPUT_DIR},
    ]
    ds = spec.dataset
    if ds.config_map is not None:
        items = [{"key": ds.config_map.key, "path": ds.config_map.key}]
        volumes.append({"name": "data", "configMap": {"name": ds.config_map.name, "items": items}})
    elif ds.pvc is not None:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": ds.pvc.claim_name, "readOnly": True}})
    if ds.huggingface is None:  # a hub dataset is downloaded into the cache instead
        mounts.append({"name": "data", "mountPath": DATA_DIR, "readOnly": True})
    if (src := spec.base_model.source.pvc) is not None:
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": src.claim_name, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
    return volumes, mounts


def _env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/cache"},  # the root file system is read-only: caches go here
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "LLMOPS_LOG_FORMAT", "value": "json"},
    ]
    source = spec.base_model.source
    hub_data = spec.dataset.huggingface
    if source.pvc is not None and hub_data is None:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})  # nothing to fetch: fail fast, never call out
    ref = source.huggingface.token_secret_ref if source.huggingface is not None else None
    ref = ref or (hub_data.token_secret_ref if hub_data is not None else None)
    if ref is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def pod_template(w: Workload, spec: FineTuneJobSpec) -> dict[str, Any]:
    volumes, mounts = _volumes(w, spec)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": w.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [*w.command, "--config", CONFIG_FILE],
        "ports": [{"name": "progress", "containerPort": PROGRESS_PORT, "protocol": "TCP"}],
        "env": _env(spec),
        "resources": container_resources(w),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        # The trainer writes its JSON summary here; a hard crash leaves the log's tail instead.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # podFailurePolicy needs it; the Job makes the next attempt
        "automountServiceAccountToken": False,  # the trainer never calls the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": w.termination_grace_seconds,
        "containers": [container],
        "volumes": volumes,
    }
    place(pod, w)
    annotations = {**w.placement.pod_annotations, CONFIG_HASH: config_hash({"config": configmap.config_file(w)})}
    return {
        "metadata": {"labels": {**w.placement.pod_labels, **w.labels}, "annotations": annotations},
        "spec": pod,
    }


def pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            # Preemption, eviction, a node drain: not the trainer's fault, and it resumes from its
            # checkpoint; this does not count against backoffLimit.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            # Bad data, bad config, a model that does not exist: retrying only burns GPU hours.
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]},
            },
        ]
    }


def job_name(owner: Owner) -> str:
    return owner.name


def job(w: Workload, spec: FineTuneJobSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        # Never two trainers on one output directory: a replacement starts only once the old pod
        # has fully terminated (its checkpoint written).
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "suspend": spec.suspend,
        "template": pod_template(w, spec),
    }
    if spec.active_deadline_seconds is not None:
        body["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(w, job_name(w.owner)), "spec": body}
