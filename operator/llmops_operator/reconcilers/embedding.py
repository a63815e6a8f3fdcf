"""The one reconcile of an EmbeddingService: resolve the model, apply the children that differ,
delete the ones no longer wanted, and write status only when it changed."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from .. import conditions
from ..api.embedding import EmbeddingServiceSpec
from ..children import autoscaler, configmap, deployment, disruption, networkpolicy, service, servicemonitor
from ..children.embedding import workload
from ..conditions import Cond
from ..kube.resources import EMBEDDING_SERVICE, FINE_TUNE_JOB
from ..runtime.store import Key
from . import base
from .base import (
    Context,
    PermanentError,
    Result,
    TemporaryError,
    owner_of,
    readable_validation_error,
    sync_children,
)

log = logging.getLogger("llmops.reconcile.embedding")
WAIT_FOR_FINE_TUNE = 30.0


async def _resolve_fine_tune(ctx: Context, namespace: str, name: str) -> tuple[str, str, str] | Cond:
    """(claim, path, run) of what a succeeded FineTuneJob wrote, or the condition saying what we
    wait for. ``run`` names the run: the FineTuneJob's uid, since its spec is immutable and a new
    run under the same name is a new object. It changes the served config, so the Deployment
    rolls. (Not the completion time: the Job reports success (SuccessCriteriaMet) before it sets
    completionTime, and a run id that changes a second later rolled every service twice.)"""
    job = await ctx.client.get(FINE_TUNE_JOB, namespace, name)
    if job is None:
        return Cond("ModelResolved", "False", "FineTuneJobNotFound", f"FineTuneJob {name} does not exist (yet)")
    status = job.get("status") or {}
    phase = status.get("phase", "Pending")
    if phase != "Succeeded":
        return Cond(
            "ModelResolved",
            "False",
            "WaitingForFineTuneJob",
            f"FineTuneJob {name} is {phase}; serving starts on success",
        )
    output = urlparse(str(status.get("output", "")))
    if output.scheme != "pvc" or not output.netloc:
        return Cond("ModelResolved", "False", "FineTuneOutputInvalid", f"FineTuneJob {name} has no pvc:// output")
    run = str(job["metadata"].get("uid", ""))[:8]
    return output.netloc, output.path.lstrip("/"), run


def rollout_conditions(dep: dict[str, Any] | None) -> tuple[list[Cond], int, int]:
    """Ready / Progressing / Degraded read from the Deployment, plus (replicas, readyReplicas)."""
    if dep is None:
        return (
            [
                Cond("Ready", "False", "Creating", "the Deployment is being created"),
                Cond("Progressing", "True", "Creating", "the Deployment is being created"),
                Cond("Degraded", "False", "AsExpected"),
            ],
            0,
            0,
        )
    spec_replicas = int(dep.get("spec", {}).get("replicas", 1))
    st = dep.get("status") or {}
    dep_conds = st.get("conditions") or []
    replicas, ready = int(st.get("replicas", 0)), int(st.get("readyReplicas", 0))
    updated, available = int(st.get("updatedReplicas", 0)), int(st.get("availableReplicas", 0))
    observed = int(st.get("observedGeneration", 0)) >= int(dep["metadata"].get("generation", 0))
    rolled_out = observed and updated == spec_replicas and replicas == spec_replicas and ready == spec_replicas
    out: list[Cond] = []

    # Ready means "serving": at least one replica answers. A scale-up or a rollout in progress
    # is Progressing, not un-Ready.
    if spec_replicas == 0:
        out.append(Cond("Ready", "False", "ScaledToZero", "replicas is 0"))
    elif available > 0:
        out.append(Cond("Ready", "True", "Available", f"{ready}/{spec_replicas} replicas ready"))
    else:
        out.append(
            Cond(
                "Ready",
                "False",
                "NoReplicasReady",
                f"0/{spec_replicas} replicas ready: pods are scheduling, pulling the image or loading the model",
            )
        )

    if rolled_out:
        out.append(Cond("Progressing", "False", "RolloutComplete", f"{ready}/{spec_replicas} replicas up to date"))
    else:
        out.append(
            Cond(
                "Progressing",
                "True",
                "RollingOut",
                f"{updated}/{spec_replicas} replicas updated, {ready} ready, {replicas} running in total",
            )
        )

    failure = conditions.get(dep_conds, "ReplicaFailure")
    progressing = conditions.get(dep_conds, "Progressing")
    if failure and failure.get("status") == "True":
        out.append(Cond("Degraded", "True", "ReplicaFailure", str(failure.get("message", ""))))
    elif progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        out.append(
            Cond(
                "Degraded",
                "True",
                "ProgressDeadlineExceeded",
                f"the rollout made no progress: {progressing.get('message', '')}; check the pods' events and logs",
            )
        )
    else:
        out.append(Cond("Degraded", "False", "AsExpected"))
    return out, replicas, ready


async def reconcile(ctx: Context, key: Key) -> Result:
    body = ctx.owners.get(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return Result()  # garbage collection removes the children (ownerReferences)
    generation = body["metadata"].get("generation")
    owner = owner_of(body)
    base_status: dict[str, Any] = {"observedGeneration": generation}

    try:
        spec = EmbeddingServiceSpec.model_validate(body["spec"])
    except ValidationError as exc:
        raise PermanentError("InvalidSpec", readable_validation_error(exc)) from exc

    extra: list[Cond] = []
    pvc: tuple[str, str] | None = None
    revision: str | None = None
    source = spec.model.source
    if source.pvc:
        pvc = (source.pvc.claim_name, source.pvc.path)
    elif source.fine_tune_job_ref:
        resolved = await _resolve_fine_tune(ctx, owner.namespace, source.fine_tune_job_ref.name)
        if isinstance(resolved, Cond):
            wanted = [
                Cond("Ready", "False", resolved.reason, resolved.message),
                Cond("Progressing", "True", resolved.reason, resolved.message),
                Cond("Degraded", "False", "AsExpected"),
                resolved,
            ]
            await write_status(ctx, body, base_status, wanted)
            return Result(requeue_after=WAIT_FOR_FINE_TUNE)
        claim, path, run = resolved
        pvc = (claim, path)
        revision = f"finetune:{source.fine_tune_job_ref.name}:{run}"
        extra.append(Cond("ModelResolved", "True", "FineTuneJobSucceeded", f"serving pvc://{claim}/{path} ({run})"))

    w = workload(owner, spec, pvc, revision)
    desired = {
        "ConfigMap": configmap.build(w),
        "Deployment": deployment.build(w),
        "Service": service.build(w),
        "HorizontalPodAutoscaler": autoscaler.build(w),
        "PodDisruptionBudget": disruption.build(w),
        "NetworkPolicy": networkpolicy.build(w),
    }
    if "ServiceMonitor" in ctx.optional_kinds:
        desired["ServiceMonitor"] = servicemonitor.build(w, crd_installed=True)
    live = await sync_children(ctx, owner, desired, w.name)

    conds, replicas, ready = rollout_conditions(live.get("Deployment"))
    status = {
        **base_status,
        "replicas": replicas,
        "readyReplicas": ready,
        "endpoint": service.endpoint(w),
        "model": f"{spec.model.name}@{revision or spec.model.revision}",
        "selector": w.selector_string,
    }
    if spec.model.dimension:
        status["dimension"] = spec.model.dimension
    await write_status(ctx, body, status, conds + extra)
    return Result()


async def write_status(ctx: Context, body: dict[str, Any], status: dict[str, Any], wanted: list[Cond]) -> None:
    await base.write_status(ctx, EMBEDDING_SERVICE, body, status, wanted)


async def report_error(ctx: Context, key: Key, exc: PermanentError | TemporaryError) -> None:
    await base.report_error(ctx, EMBEDDING_SERVICE, key, exc)
