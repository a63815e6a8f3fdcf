"""The one reconcile of a FineTuneJob.

1. Children: the trainer's ConfigMap, the output PVC (when ``output.pvc.create``) and the Job, by
   server-side apply like every other child. A Job's pod template is immutable: once the Job
   exists, what it runs is kept (an operator upgrade never restarts or breaks a run); only
   ``suspend`` follows the spec. A finished run whose Job was deleted is not run again.
2. Phase from the Job: Pending, Running, Suspended, Succeeded, Failed; why it failed from the Job's
   condition and its pods (the trainer's exit code 42 = a permanent error, OOMKilled, the
   deadline, the backoff limit).
3. Progress: while running, ``GET /progress`` on the trainer pod's IP (2 s timeout; a failure
   keeps the last value and never fails the reconcile), refreshed every 15 s; at the end, the
   trainer's termination message in the pod's status (no RBAC in the pod, no logs access here).
4. Status: phase, progress, start/completion time, ``output`` (``pvc://<claim>/<path>/model``,
   what an EmbeddingService's ``fineTuneJobRef`` serves), conditions ``Succeeded``,
   ``Progressing``, ``Degraded``, written only when something changed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
from pydantic import ValidationError

from ..api.finetune import FineTuneJobSpec
from ..children import finetune
from ..conditions import Cond
from ..kube import compare
from ..kube.client import ApiError
from ..kube.resources import FINE_TUNE_JOB, JOB, POD
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

log = logging.getLogger("llmops.reconcile.finetune")
REFRESH_SECONDS = 15.0  # progress of a running (or starting) trainer
PROGRESS_TIMEOUT = 2.0
FINISHED = ("Succeeded", "Failed")
CARRIED = ("progress", "startTime", "completionTime", "output", "adapter", "message")


# -- the Job's state (pure) -------------------------------------------------------------------


def _true(job: dict[str, Any], *types: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in types:
            return dict(c)
    return None


def phase_of(job: dict[str, Any] | None, suspend: bool) -> tuple[str, str, str]:
    """(phase, reason, message) read from the Job alone."""
    if job is None:
        return "Pending", "Pending", "creating the trainer's Job"
    if _true(job, "Complete", "SuccessCriteriaMet"):
        return "Succeeded", "Succeeded", "the trainer finished"
    if failed := _true(job, "Failed", "FailureTarget"):
        return "Failed", str(failed.get("reason") or "Failed"), str(failed.get("message") or "the Job failed")
    if suspend or (job.get("spec") or {}).get("suspend"):
        message = "suspended: the trainer checkpoints and stops; set suspend to false to resume from the checkpoint"
        return "Suspended", "Suspended", message
    st = job.get("status") or {}
    ready, active = int(st.get("ready") or 0), int(st.get("active") or 0)
    if ready > 0:
        return "Running", "Running", "the trainer is running"
    if active > 0:
        return "Pending", "Pending", "the trainer pod is being scheduled or is starting"
    return "Pending", "Pending", "waiting for the Job controller to start the trainer pod"


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer container's last termination, if any."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != finetune.CONTAINER:
            continue
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            if "terminated" in state:
                return dict(state["terminated"])
    return None


def _newest_first(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)


def termination_summary(pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The trainer's JSON summary from the newest pod that wrote one (docs/trainer.md)."""
    for pod in _newest_first(pods):
        term = _terminated(pod)
        if not term or not term.get("message"):
            continue
        try:
            summary = json.loads(term["message"])
        except ValueError:
            continue  # FallbackToLogsOnError: the log's tail, not a summary
        if isinstance(summary, dict):
            return summary
    return {}


ERROR_REASONS = {
    "DatasetError": "DatasetInvalid",
    "ConfigError": "InvalidConfig",
    "ModelNotFoundError": "ModelNotFound",
    "UnsupportedError": "Unsupported",
}


def failure(job_reason: str, job_message: str, pods: list[dict[str, Any]], backoff_limit: int) -> tuple[str, str]:
    """(reason, message) of a failed run, the most specific first."""
    terms = [t for p in _newest_first(pods) if (t := _terminated(p))]
    summary = termination_summary(pods)
    said = str(summary.get("message") or "")
    permanent = [t for t in terms if t.get("exitCode") == finetune.EXIT_PERMANENT]
    if permanent or job_reason == "PodFailurePolicy":
        text = said or job_message
        error = str(summary.get("error") or "")
        if error in ERROR_REASONS:  # the trainer names the class of its permanent error
            reason = ERROR_REASONS[error]
            return reason, f"the trainer failed permanently ({reason}, not retried): {text}"
        if text.startswith(finetune.DATA_DIR + "/") or not said:
            return "DatasetInvalid", f"the trainer rejected its input (not retried): {text}"
        if text.startswith("baseModel"):
            return "ModelNotFound", f"the trainer cannot find the base model (not retried): {text}"
        return "PermanentError", f"the trainer failed permanently (not retried): {text}"
    if job_reason == "DeadlineExceeded":
        return "DeadlineExceeded", (
            f"{job_message}: the run took longer than activeDeadlineSeconds; a new FineTuneJob writing to the same "
            "output.pvc path resumes from the last checkpoint"
        )
    if terms and terms[0].get("reason") == "OOMKilled":
        return "OOMKilled", (
            "the trainer ran out of memory (OOMKilled): raise resources.memory, or lower hyperparameters.batchSize "
            "or maxSeqLength"
        )
    if job_reason == "BackoffLimitExceeded":
        last = said or (terms[0].get("message") if terms else "") or ""
        tail = f": {str(last).strip().splitlines()[-1]}" if last and str(last).strip() else ""
        times = f"{backoff_limit + 1} times (backoffLimit {backoff_limit})"
        return "BackoffLimitExceeded", f"the trainer failed {times}{tail}"
    return job_reason or "Failed", job_message


def retry_note(job: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    """For a running or pending Job that has failed attempts behind it."""
    failed = int((job.get("status") or {}).get("failed") or 0)
    if not failed:
        return ""
    terms = [t for p in _newest_first(pods) if (t := _terminated(p)) and t.get("exitCode")]
    why = ""
    if terms:
        t = terms[0]
        why = " (OOMKilled)" if t.get("reason") == "OOMKilled" else f" (exit code {t.get('exitCode')})"
    return f"; {failed} failed attempt(s) so far, the last{why}: retrying from the last checkpoint"


def _display(step: Any, total: Any) -> str | None:
    if not isinstance(step, int) or not isinstance(total, int) or total <= 0:
        return None
    return f"{step}/{total} ({100 * step // total}%)"


def _eval_metric(name: Any, metrics: Any, base_metrics: Any) -> dict[str, Any] | None:
    if not isinstance(name, str) or not name:
        return None
    out: dict[str, Any] = {"name": name}
    for key, source in (("value", metrics), ("baseValue", base_metrics)):
        value = source.get(name) if isinstance(source, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value
    return out


def _numbers(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: d[k] for k in keys if isinstance(d.get(k), int | float) and not isinstance(d.get(k), bool)}


def progress_from_snapshot(snap: dict[str, Any]) -> dict[str, Any]:
    """status.progress from the trainer's ``GET /progress``."""
    out = _numbers(snap, ("step", "totalSteps", "epoch", "loss", "learningRate", "etaSeconds"))
    metric = snap.get("evalMetric") if isinstance(snap.get("evalMetric"), dict) else {}
    if em := _eval_metric((metric or {}).get("name"), snap.get("metrics"), snap.get("baseMetrics")):
        out["evalMetric"] = em
    if display := _display(out.get("step"), out.get("totalSteps")):
        out["display"] = display
    return out


def progress_from_summary(old: dict[str, Any] | None, summary: dict[str, Any], succeeded: bool) -> dict[str, Any]:
    """status.progress at the end: the last polled values, updated by the termination message
    (the steps, the last loss, epoch and learning rate, and the final metrics)."""
    out = dict(old or {})
    out.update(_numbers(summary, ("step", "totalSteps", "epoch", "loss", "learningRate")))
    if em := _eval_metric(summary.get("metric"), summary.get("metrics"), summary.get("baseMetrics")):
        out["evalMetric"] = em
    if succeeded and out:
        out["etaSeconds"] = 0
    if display := _display(out.get("step"), out.get("totalSteps")):
        out["display"] = display
    return out


def conditions_for(phase: str, reason: str, message: str) -> list[Cond]:
    if phase == "Succeeded":
        return [
            Cond("Succeeded", "True", "Succeeded", message),
            Cond("Progressing", "False", "Succeeded", message),
            Cond("Degraded", "False", "AsExpected"),
        ]
    if phase == "Failed":
        return [
            Cond("Succeeded", "False", reason, message),
            Cond("Progressing", "False", reason, message),
            Cond("Degraded", "True", reason, message),
        ]
    return [
        Cond("Succeeded", "Unknown", reason, message),
        Cond("Progressing", "False" if phase == "Suspended" else "True", reason, message),
        Cond("Degraded", "False", "AsExpected"),
    ]


# -- talking to the cluster and the pod ----------------------------------------------------


async def _pods(ctx: Context, job: dict[str, Any]) -> list[dict[str, Any]]:
    meta = job["metadata"]
    try:
        data = await ctx.client.request(
            "list", "GET", POD.path(meta["namespace"]), params={"labelSelector": f"job-name={meta['name']}"}
        )
    except ApiError as exc:
        log.warning("cannot list the trainer's pods", extra={"job": meta["name"], "error": exc.message})
        return []
    uid = meta.get("uid")
    return [
        p
        for p in data.get("items", [])
        if not uid or any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences", []))
    ]


async def poll_progress(pods: list[dict[str, Any]], timeout: float = PROGRESS_TIMEOUT) -> dict[str, Any] | None:
    """The running trainer's ``GET /progress``, or None when it cannot be reached (a network
    policy, a pod that just started): never an error."""
    for pod in _newest_first(pods):
        st = pod.get("status") or {}
        ip = st.get("podIP")
        if st.get("phase") != "Running" or not ip:
            continue
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{finetune.PROGRESS_PORT}/progress"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                session.get(url) as resp,
            ):
                if resp.status != 200:
                    return None
                snap = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.debug("progress endpoint not reachable", extra={"url": url, "error": str(exc)})
            return None
        return snap if isinstance(snap, dict) else None
    return None


def _keep_running_template(want: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    """A Job's template and failure policy cannot change; when ours differ from what the live Job
    runs (an operator upgrade: another image tag), the live ones are kept, so the apply changes
    only what may change (suspend) instead of being rejected."""
    if live is None:
        return want
    spec = dict(want["spec"])
    for key in ("template", "podFailurePolicy"):
        live_value = (live.get("spec") or {}).get(key)
        if live_value is not None and not compare.contains(spec.get(key), live_value):
            spec[key] = live_value
    return {**want, "spec": spec}


# -- the reconcile --------------------------------------------------------------------------


async def reconcile(ctx: Context, key: Key) -> Result:
    body = ctx.owners.get(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return Result()  # garbage collection removes the Job and ConfigMap (a retained PVC stays)
    try:
        spec = FineTuneJobSpec.model_validate(body["spec"])
    except ValidationError as exc:
        raise PermanentError("InvalidSpec", readable_validation_error(exc)) from exc
    owner = owner_of(body)
    old = body.get("status") or {}
    w = finetune.workload(owner, spec)
    name = finetune.job_name(owner)
    live_job = ctx.children.get(Key(JOB.kind, owner.namespace, name))
    gone = old.get("phase") in FINISHED and live_job is None

    desired: dict[str, dict[str, Any] | None] = {
        "ConfigMap": finetune.config_map(w),
        "PersistentVolumeClaim": finetune.pvc(w, spec),
    }
    if not gone:  # a finished run whose Job was deleted stays finished: it is not trained again
        desired["Job"] = _keep_running_template(finetune.job(w, spec), live_job)
    live = await sync_children(ctx, owner, desired, w.name)

    status: dict[str, Any] = {"observedGeneration": body["metadata"].get("generation"), "jobName": name}
    status.update({k: old[k] for k in CARRIED if k in old})
    if gone:
        status["phase"] = old["phase"]
        kept = [Cond(c["type"], c["status"], c["reason"], c.get("message", "")) for c in old.get("conditions", [])]
        await _write(ctx, body, status, kept)
        return Result()

    job = live.get("Job") or live_job
    phase, reason, message = phase_of(job, spec.suspend)
    status["phase"] = phase
    if job is not None:
        st = job.get("status") or {}
        if st.get("startTime"):
            status.setdefault("startTime", st["startTime"])
        if phase == "Succeeded" and st.get("completionTime"):
            status["completionTime"] = st["completionTime"]

    changed = old.get("phase") != phase
    pods: list[dict[str, Any]] = []
    retried = job is not None and (job.get("status") or {}).get("failed")
    if job is not None and (phase == "Running" or (phase in FINISHED and changed) or retried):
        pods = await _pods(ctx, job)

    if phase == "Running":
        snap = await poll_progress(pods)
        if snap is not None:
            status["progress"] = progress_from_snapshot(snap)
    if job is not None and phase in ("Running", "Pending"):
        message += retry_note(job, pods)
    if phase in FINISHED:
        if changed:
            summary = termination_summary(pods)
            progress = progress_from_summary(status.get("progress"), summary, phase == "Succeeded")
            if progress:
                status["progress"] = progress
            if summary.get("message"):
                status["message"] = str(summary["message"])[:1024]
        if phase == "Failed":
            if changed:
                reason, message = failure(reason, message, pods, spec.backoff_limit)
            else:  # the pods may be gone by now: the first diagnosis stands
                previous: dict[str, Any] = next(
                    (c for c in old.get("conditions", []) if c.get("type") == "Degraded"), {}
                )
                reason, message = previous.get("reason", reason), previous.get("message", message)
            status["completionTime"] = status.get("completionTime") or (
                (_true(job, "Failed", "FailureTarget") or {}).get("lastTransitionTime") if job else None
            )
        else:
            status["output"] = finetune.output_uri(owner, spec)
            if spec.method != "full":
                status["adapter"] = finetune.output_uri(owner, spec, "adapter")
            steps = (status.get("progress") or {}).get("step")
            message = f"trained{f' {steps} steps' if steps else ''}; the model is at {status['output']}"
    status = {k: v for k, v in status.items() if v is not None}

    await _write(ctx, body, status, conditions_for(phase, reason, message))
    if changed and phase in ("Running", "Suspended", "Succeeded"):
        await ctx.events.emit(body, "Normal", phase, message)
    return Result(requeue_after=REFRESH_SECONDS if phase in ("Running", "Pending") else None)


async def _write(ctx: Context, body: dict[str, Any], status: dict[str, Any], wanted: list[Cond]) -> None:
    await base.write_status(ctx, FINE_TUNE_JOB, body, status, wanted)


async def report_error(ctx: Context, key: Key, exc: PermanentError | TemporaryError) -> None:
    await base.report_error(ctx, FINE_TUNE_JOB, key, exc)
