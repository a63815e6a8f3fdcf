"""The one reconcile of a RAGPipeline.

1. Deletion: with ``deletionPolicy: Delete`` a finalizer holds the object until the collection is
   dropped (retried with backoff while Milvus is down, said in a condition and an Event).
2. Embedding: the referenced EmbeddingService must be Ready and publish its dimension
   (``EmbeddingReady``), or an endpoint and dimension are given.
3. Collection: created with the shared schema, or checked; a mismatch is never dropped, it is
   ``CollectionReady=False`` with what differs (and nothing is deployed against it).
4. Children: the RAG server (and the built-in generation server) by the same builders as an
   EmbeddingService; the ingestion Job for the current sources (at most one running; history
   bounded) and the CronJob when scheduled.
5. Status: counts from Milvus (refreshed every minute), the last ingestion, conditions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

from llmops_workloads.rag.schema import CollectionSpec

from .. import conditions, milvus
from ..api.rag import RAGPipelineSpec
from ..children import autoscaler, configmap, deployment, disruption, networkpolicy, service, servicemonitor
from ..children.common import Workload
from ..children.rag import (
    SOURCES_HASH,
    Resolved,
    generator_workload,
    ingestion_cronjob,
    ingestion_job,
    ingestion_job_name,
    rag_workload,
)
from ..conditions import Cond
from ..kube.client import ApiError
from ..kube.resources import CONFIG_MAP, EMBEDDING_SERVICE, JOB, POD, RAG_PIPELINE, SECRET
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
from .embedding import rollout_conditions

log = logging.getLogger("llmops.reconcile.rag")
FINALIZER = "llmops.dev/drop-collection"
REFRESH_SECONDS = 60.0  # entity counts, source ConfigMap changes
WAIT_SECONDS = 15.0  # an EmbeddingService or an ingestion Job we wait for
OUR_CONDITIONS = ("EmbeddingReady", "CollectionReady", "IngestionSucceeded")


def default_collection(namespace: str, name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", f"llmops_{namespace}_{name}")[:255]


async def _secret_value(ctx: Context, namespace: str, name: str, key: str) -> str:
    import base64

    secret = await ctx.client.get(SECRET, namespace, name)
    data = (secret or {}).get("data") or {}
    if key not in data:
        raise TemporaryError("SecretNotFound", f"Secret {name} has no key {key} (yet)", delay=WAIT_SECONDS)
    return base64.b64decode(data[key]).decode().strip()


async def _connection(ctx: Context, spec: RAGPipelineSpec, namespace: str) -> milvus.Connection:
    m = spec.vector_store.milvus
    token = await _secret_value(ctx, namespace, m.secret_ref.name, m.secret_ref.key) if m.secret_ref else ""
    return milvus.Connection(uri=m.uri, token=token, database=m.database)


# -- deletion -------------------------------------------------------------------------------


async def _set_finalizer(ctx: Context, body: dict[str, Any], present: bool) -> None:
    meta = body["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if (FINALIZER in finalizers) == present:
        return
    finalizers = [*finalizers, FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
    # A merge patch with the resourceVersion: a concurrent change to the list is a conflict, not a loss.
    patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
    updated = await ctx.client.request(
        "patch",
        "PATCH",
        RAG_PIPELINE.path(meta["namespace"], meta["name"]),
        body=patch,
        content_type="application/merge-patch+json",
    )
    ctx.owners.put(updated)


async def _delete(ctx: Context, body: dict[str, Any], spec: RAGPipelineSpec | None) -> Result:
    meta = body["metadata"]
    if FINALIZER not in (meta.get("finalizers") or []):
        return Result()
    name = (body.get("status") or {}).get("collection")
    if spec is not None and spec.vector_store.milvus.deletion_policy == "Delete" and name:
        conn = await _connection(ctx, spec, meta["namespace"])
        try:
            dropped = await milvus.drop(conn, name)
        except milvus.MilvusUnavailable as exc:
            message = f"cannot drop collection {name}: {exc}; retrying (to keep the collection instead, remove the "
            message += f"finalizer: kubectl patch rag {meta['name']} --type=json "
            message += '-p \'[{"op":"remove","path":"/metadata/finalizers"}]\')'
            await ctx.events.emit(body, "Warning", "CollectionDropFailed", message)
            raise TemporaryError(
                "DeletingCollection", message, conditions=[Cond("CollectionReady", "False", "Deleting", message)]
            ) from exc
        await ctx.events.emit(body, "Normal", "CollectionDropped", f"collection {name} dropped" if dropped else
                              f"collection {name} was already gone")  # fmt: skip
    await _set_finalizer(ctx, body, present=False)
    return Result()


# -- embedding ------------------------------------------------------------------------------


def _embedding(ctx: Context, spec: RAGPipelineSpec, namespace: str) -> tuple[str, int, str | None, str] | Cond:
    """(endpoint, dimension, tokenizer, display name), or the condition saying what is missing."""
    e = spec.embedding
    if e.endpoint:
        assert e.dimension is not None  # the CRD's CEL rule
        return e.endpoint, e.dimension, spec.retrieval.tokenizer, e.endpoint
    assert e.service_ref is not None
    name = e.service_ref.name
    es = ctx.owners.get(Key(EMBEDDING_SERVICE.kind, namespace, name))
    if es is None:
        return Cond("EmbeddingReady", "False", "EmbeddingServiceNotFound", f"EmbeddingService {name} does not exist")
    status = es.get("status") or {}
    if not conditions.is_true(status.get("conditions"), "Ready"):
        return Cond("EmbeddingReady", "False", "EmbeddingServiceNotReady", f"EmbeddingService {name} is not Ready yet")
    dimension = e.dimension or status.get("dimension")
    endpoint = status.get("endpoint")
    if not dimension or not endpoint:
        return Cond(
            "EmbeddingReady",
            "False",
            "DimensionUnknown",
            f"EmbeddingService {name} publishes no dimension: set its spec.model.dimension "
            "(or this pipeline's embedding.dimension)",
        )
    tokenizer = spec.retrieval.tokenizer or es["spec"]["model"]["name"]
    return str(endpoint), int(dimension), tokenizer, f"emb/{name}"


# -- sources and ingestion ------------------------------------------------------------------


async def _sources_hash(ctx: Context, spec: RAGPipelineSpec, namespace: str, config: dict[str, Any]) -> str:
    """Changes when what ingestion would read or write changes: the sources (ConfigMap contents
    included), the chunking, the collection and the embedding endpoint."""
    h = hashlib.sha256()
    h.update(
        json.dumps([s.model_dump(by_alias=True, exclude_none=True) for s in spec.sources], sort_keys=True).encode()
    )
    for key in ("chunking", "embedding", "milvus"):
        h.update(json.dumps(config.get(key), sort_keys=True).encode())
    for src in spec.sources:
        if src.config_map is not None:
            cm = await ctx.client.get(CONFIG_MAP, namespace, src.config_map.name)
            if cm is None:
                raise TemporaryError(
                    "SourceNotFound", f"source ConfigMap {src.config_map.name} does not exist", delay=WAIT_SECONDS
                )
            h.update(json.dumps([cm.get("data"), cm.get("binaryData")], sort_keys=True).encode())
    return h.hexdigest()[:16]


def _job_state(job: dict[str, Any]) -> str:
    st = job.get("status") or {}
    for c in st.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Succeeded"
        if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget"):
            return "Failed"
    return "Running"


async def _termination_summary(ctx: Context, job: dict[str, Any]) -> dict[str, Any]:
    """The ingest command's summary, from its pod's termination message (no logs access needed)."""
    meta = job["metadata"]
    try:
        pods = await ctx.client.request(
            "list", "GET", POD.path(meta["namespace"]), params={"labelSelector": f"job-name={meta['name']}"}
        )
    except ApiError:
        return {}
    for pod in sorted(pods.get("items", []), key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((cs.get("state") or {}).get("terminated") or {}).get("message")
            if message:
                try:
                    summary = json.loads(message)
                except ValueError:
                    continue
                if isinstance(summary, dict):
                    return summary
    return {}


async def _ingestion(
    ctx: Context, body: dict[str, Any], spec: RAGPipelineSpec, w: Workload, sources_hash: str
) -> tuple[dict[str, Any] | None, Cond, bool]:
    """Run ingestion for the current sources: (lastIngestion, IngestionSucceeded, waiting)."""
    owner = w.owner
    old = body.get("status") or {}
    ours = [
        j
        for j in ctx.children.items_of(JOB.kind)
        if j["metadata"]["namespace"] == owner.namespace
        and any(r.get("uid") == owner.uid for r in j["metadata"].get("ownerReferences", []))
    ]
    ours.sort(key=lambda j: j["metadata"].get("creationTimestamp", ""))
    if not spec.sources:
        return None, Cond("IngestionSucceeded", "True", "NoSources", "no sources to ingest"), False
    wanted = ingestion_job_name(owner, sources_hash)
    running = [j for j in ours if _job_state(j) == "Running"]
    waiting = False
    if not any(j["metadata"]["name"] == wanted for j in ours):
        if running:
            # At most one ingestion at a time: the new sources wait for the running Job.
            waiting = True
        else:
            job = await ctx.client.apply(JOB, ingestion_job(w, spec, sources_hash))
            ctx.children.put(job)
            ours.append(job)
            await ctx.events.emit(body, "Normal", "IngestionStarted", f"Job {wanted} ingests the sources")
    # Bounded history: the newest finished Jobs are kept.
    finished = [j for j in ours if _job_state(j) != "Running"]
    for job in finished[: max(0, len(finished) - spec.ingestion.history_limit)]:
        await ctx.client.delete(JOB, owner.namespace, job["metadata"]["name"])
        ctx.children.remove(Key(JOB.kind, owner.namespace, job["metadata"]["name"]))
    latest = next((j for j in reversed(ours) if j["metadata"]["name"] == wanted), None)
    if latest is None:
        name = running[0]["metadata"]["name"] if running else "?"
        message = f"sources changed; waiting for ingestion Job {name} to finish first"
        return old.get("lastIngestion"), Cond("IngestionSucceeded", "Unknown", "Waiting", message), waiting
    state = _job_state(latest)
    st = latest.get("status") or {}
    last: dict[str, Any] = {
        "jobName": latest["metadata"]["name"],
        "sourcesHash": latest["metadata"].get("annotations", {}).get(SOURCES_HASH, sources_hash),
        "outcome": state,
        "time": st.get("completionTime") or st.get("startTime") or latest["metadata"].get("creationTimestamp"),
    }
    previous = old.get("lastIngestion") or {}
    if state != "Running":
        if previous.get("jobName") == last["jobName"] and previous.get("outcome") == state:
            summary = {k: previous[k] for k in ("documents", "chunks", "message") if k in previous}
        else:
            raw = await _termination_summary(ctx, latest)
            summary = {k: raw[k] for k in ("documents", "chunks") if isinstance(raw.get(k), int)}
            if state == "Failed":
                reason = next((c.get("message") for c in st.get("conditions") or [] if c.get("type") == "Failed"), "")
                summary["message"] = str(reason or "the ingestion Job failed")[:1024]
        last.update(summary)
    if state == "Succeeded":
        cond = Cond("IngestionSucceeded", "True", "Succeeded", f"Job {last['jobName']} ingested the sources")
    elif state == "Failed":
        cond = Cond(
            "IngestionSucceeded", "False", "JobFailed", f"Job {last['jobName']} failed: {last.get('message', '')}"
        )
    else:
        cond = Cond("IngestionSucceeded", "Unknown", "Running", f"Job {last['jobName']} is ingesting the sources")
    return last, cond, waiting or state == "Running"


# -- the reconcile --------------------------------------------------------------------------


async def reconcile(ctx: Context, key: Key) -> Result:
    body = ctx.owners.get(key)
    if body is None:
        return Result()
    meta = body["metadata"]
    try:
        spec: RAGPipelineSpec | None = RAGPipelineSpec.model_validate(body["spec"])
    except Exception as exc:
        spec = None
        validation_error = exc
    if meta.get("deletionTimestamp"):
        return await _delete(ctx, body, spec)
    if spec is None:
        raise PermanentError("InvalidSpec", readable_validation_error(validation_error))  # type: ignore[arg-type]
    await _set_finalizer(ctx, body, present=spec.vector_store.milvus.deletion_policy == "Delete")
    body = ctx.owners.get(key) or body
    owner = owner_of(body)
    generation = meta.get("generation")
    old = body.get("status") or {}
    collection = spec.vector_store.milvus.collection or default_collection(owner.namespace, owner.name)
    status: dict[str, Any] = {"observedGeneration": generation, "collection": collection}
    for field in ("entityCount", "documentCount", "lastIngestion", "dimension"):
        if field in old:
            status[field] = old[field]

    resolved = _embedding(ctx, spec, owner.namespace)
    if isinstance(resolved, Cond):
        wanted = [
            Cond("Ready", "False", resolved.reason, resolved.message),
            Cond("Progressing", "True", resolved.reason, resolved.message),
            Cond("Degraded", "False", "AsExpected"),
            resolved,
        ]
        await _write(ctx, body, status, wanted)
        return Result(requeue_after=WAIT_SECONDS)
    endpoint, dimension, tokenizer, display = resolved
    status.update(dimension=dimension, embedding=display, embeddingEndpoint=endpoint)
    embedding_ready = Cond("EmbeddingReady", "True", "Resolved", f"{display} ({dimension} dimensions)")

    conn = await _connection(ctx, spec, owner.namespace)
    m = spec.vector_store.milvus
    wanted_collection = CollectionSpec(
        name=collection,
        dimension=dimension,
        index_type=m.index.type,
        metric=m.index.metric,
        index_params=dict(m.index.params),
        consistency_level=m.consistency_level,
    )
    try:
        created, mismatch = await milvus.ensure(conn, wanted_collection)
    except milvus.MilvusUnavailable as exc:
        message = f"Milvus is unreachable: {exc}"
        raise TemporaryError(
            "MilvusUnavailable",
            message,
            conditions=[embedding_ready, Cond("CollectionReady", "False", "MilvusUnavailable", message)],
        ) from exc
    if mismatch is not None:
        raise PermanentError(
            "CollectionMismatch",
            mismatch.message,
            conditions=[embedding_ready, Cond("CollectionReady", "False", "CollectionMismatch", mismatch.message)],
        )
    if created:
        await ctx.events.emit(body, "Normal", "CollectionCreated", f"collection {collection} ({dimension} dimensions)")
    collection_ready = Cond("CollectionReady", "True", "Loaded", f"{collection}: {m.index.type}, {m.index.metric}")

    prompt_template = spec.retrieval.prompt_template
    if ref := spec.retrieval.prompt_template_ref:
        cm = await ctx.client.get(CONFIG_MAP, owner.namespace, ref.name)
        prompt_template = ((cm or {}).get("data") or {}).get(ref.key)
        if prompt_template is None:
            raise TemporaryError("PromptTemplateNotFound", f"ConfigMap {ref.name} has no key {ref.key}")
    gen = generator_workload(owner, spec)
    generator_url = None
    if spec.generator is not None:
        generator_url = service.endpoint(gen) if gen is not None else spec.generator.endpoint
    w = rag_workload(
        owner,
        spec,
        Resolved(
            collection=collection,
            dimension=dimension,
            embedding_url=endpoint,
            embedding_model=spec.embedding.model,
            tokenizer=tokenizer,
            prompt_template=prompt_template,
            generator_url=generator_url,
        ),
    )
    live = await sync_children(ctx, owner, _serving_children(ctx, w) | {"CronJob": ingestion_cronjob(w, spec)}, w.name)
    gen_name = f"{owner.name}-generator"
    if gen is not None:
        await sync_children(ctx, owner, _serving_children(ctx, gen), gen.name)
    else:
        await sync_children(ctx, owner, {k: None for k in _serving_children(ctx, w)}, gen_name)

    sources_hash = await _sources_hash(ctx, spec, owner.namespace, w.config)
    last, ingestion_cond, ingesting = await _ingestion(ctx, body, spec, w, sources_hash)
    if last is not None:
        status["lastIngestion"] = last
    try:
        counts = await milvus.counts(conn, collection)
        status.update(entityCount=counts.entities, documentCount=counts.documents)
    except milvus.MilvusUnavailable as exc:
        log.warning("could not count the collection", extra={"collection": collection, "error": str(exc)})

    rollout, _, _ = rollout_conditions(live.get("Deployment"))
    status["endpoint"] = service.endpoint(w)
    wanted = [*rollout, embedding_ready, collection_ready, ingestion_cond]
    if ingestion_cond.status == "False":
        wanted = [c for c in wanted if c.type != "Degraded"] + [
            Cond("Degraded", "True", "IngestionFailed", ingestion_cond.message)
        ]
    await _write(ctx, body, status, wanted)
    return Result(requeue_after=WAIT_SECONDS if ingesting else REFRESH_SECONDS)


def _serving_children(ctx: Context, w: Workload) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {
        "ConfigMap": configmap.build(w),
        "Deployment": deployment.build(w),
        "Service": service.build(w),
        "HorizontalPodAutoscaler": autoscaler.build(w),
        "PodDisruptionBudget": disruption.build(w),
        "NetworkPolicy": networkpolicy.build(w),
    }
    if "ServiceMonitor" in ctx.optional_kinds:
        out["ServiceMonitor"] = servicemonitor.build(w, crd_installed=True)
    return out


async def _write(ctx: Context, body: dict[str, Any], status: dict[str, Any], wanted: list[Cond]) -> None:
    # Conditions of ours not in this round keep their last value (e.g. IngestionSucceeded while waiting).
    types = {c.type for c in wanted}
    old = (body.get("status") or {}).get("conditions") or []
    kept = [Cond(c["type"], c["status"], c["reason"], c.get("message", "")) for c in old
            if c["type"] in OUR_CONDITIONS and c["type"] not in types]  # fmt: skip
    await base.write_status(ctx, RAG_PIPELINE, body, status, wanted + kept)


async def report_error(ctx: Context, key: Key, exc: PermanentError | TemporaryError) -> None:
    await base.report_error(ctx, RAG_PIPELINE, key, exc)
