"""EmbeddingService -> Workload: the embedding server's config file and pod wiring.

The config keys and the command are the embedding server's documented contract
(docs/embedding-server.md); keep the two in step.
"""

from __future__ import annotations

from typing import Any

from ..api.embedding import EmbeddingServiceSpec
from ..images import workload_image
from .common import HTTP_PORT, METRICS_PORT, SECRETS_DIR, Owner, Workload, security_config

COMMAND = ("python", "-m", "llmops_workloads.embedding")
MODELS_DIR = "/models"
API_KEY_FILE = f"{SECRETS_DIR}/api-key"


def server_config(spec: EmbeddingServiceSpec, model_path: str | None, revision: str | None = None) -> dict[str, Any]:
    """``revision`` overrides the spec's for weights that do not come from the hub (a fine-tune run):
    /info reports it, and a new run changes the config, which rolls the pods."""
    m = spec.model
    model: dict[str, Any] = {
        "name": m.name,
        "revision": revision or m.revision,
        "normalize": m.normalize,
        "dtype": m.dtype,
        "quantization": m.quantization,
    }
    if model_path:
        model["path"] = model_path
    if m.pooling:
        model["pooling"] = m.pooling
    if m.max_input_tokens:
        model["maxInputTokens"] = m.max_input_tokens
    config: dict[str, Any] = {
        "model": model,
        "batching": spec.batching.model_dump(by_alias=True),
        "server": {"host": "0.0.0.0", "port": HTTP_PORT, "metricsPort": METRICS_PORT},  # noqa: S104 (in a pod)
    }
    if spec.auth.api_key_secret_ref:
        config["auth"] = {"apiKeyFile": API_KEY_FILE}
    config.update(security_config(spec.rate_limits, spec.audit, spec.redaction)[0])
    return config


def workload(
    owner: Owner, spec: EmbeddingServiceSpec, pvc: tuple[str, str] | None = None, revision: str | None = None
) -> Workload:
    """``pvc`` is (claim, path inside it) where the weights live, from spec.model.source or a FineTuneJob."""
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    model_path = None
    if pvc is not None:
        claim, path = pvc
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
        model_path = f"{MODELS_DIR}/{path}".rstrip("/")
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    hf = spec.model.source.huggingface
    if hf and hf.token_secret_ref:
        ref = hf.token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if spec.auth.api_key_secret_ref:
        ref = spec.auth.api_key_secret_ref
        volumes.append(
            {
                "name": "api-key",
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": "api-key"}],
                    "defaultMode": 0o440,
                },
            }
        )
        mounts.append({"name": "api-key", "mountPath": SECRETS_DIR, "readOnly": True})
    _, security_volumes, security_mounts = security_config(spec.rate_limits, spec.audit)
    volumes += security_volumes
    mounts += security_mounts
    gpu = spec.resources.gpu > 0
    return Workload(
        owner=owner,
        name=owner.name,
        app="embedding-server",
        component="embedding",
        owner_label="llmops.dev/embedding-service",
        image=spec.image or workload_image(gpu),
        command=COMMAND,
        config=server_config(spec, model_path, revision),
        placement=spec,
        resources=spec.resources,
        replicas=spec.replicas,
        autoscaling=spec.autoscaling,
        monitoring=spec.monitoring,
        network_policy=spec.network_policy,
        env=tuple(env),
        volumes=tuple(volumes),
        mounts=tuple(mounts),
        default_cpu="2" if not gpu else "4",
        default_memory="4Gi" if not gpu else "16Gi",
    )
