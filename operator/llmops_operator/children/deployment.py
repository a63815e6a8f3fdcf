"""The serving Deployment: probes for slow model loads, a drain on shutdown, the restricted
security context, GPU placement, and a config hash that rolls pods when the config changes."""

from __future__ import annotations

from typing import Any

from . import configmap
from .common import (
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_HASH,
    HTTP_PORT,
    METRICS_PORT,
    Workload,
    config_hash,
    container_resources,
    container_security_context,
    meta,
    place,
    pod_security_context,
)

PROBE_PERIOD = 10
# Seconds between "not ready" and SIGTERM: endpoints controllers and load balancers need a
# moment to stop sending new requests before the server starts draining.
PRE_STOP_SLEEP = 5


def _probe(path: str, port: str, period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def pod_template(w: Workload) -> dict[str, Any]:
    annotations = {
        **w.placement.pod_annotations,
        CONFIG_HASH: config_hash({"config": configmap.config_file(w)}),
    }
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": w.config_map_name}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
        *w.volumes,
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "cache", "mountPath": "/cache"},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 (an emptyDir, the pod's own /tmp)
        *w.mounts,
    ]
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "LLMOPS_LOG_FORMAT", "value": "json"},
        *w.env,
    ]
    container: dict[str, Any] = {
        "name": "server",
        "image": w.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [*w.command, "--config", CONFIG_FILE],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": container_resources(w),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        # /health answers as soon as the process serves HTTP; the startup probe gives the model
        # load its time before liveness starts counting.
        "startupProbe": _probe("/health", "http", PROBE_PERIOD, max(1, w.startup_seconds // PROBE_PERIOD)),
        "livenessProbe": _probe("/health", "http", PROBE_PERIOD, 3),
        "readinessProbe": _probe("/ready", "http", 5, 2),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP}}},
    }
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the servers never call the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": w.termination_grace_seconds,
        "containers": [container],
        "volumes": volumes,
    }
    place(spec, w)
    return {
        "metadata": {"labels": {**w.placement.pod_labels, **w.labels}, "annotations": annotations},
        "spec": spec,
    }


def build(w: Workload) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(w.selector)},
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": w.startup_seconds + 300,
        # Never fewer ready replicas than asked for during a rollout; one extra pod at a time.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": pod_template(w),
    }
    if w.autoscaling is None:
        spec["replicas"] = w.effective_replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(w), "spec": spec}
