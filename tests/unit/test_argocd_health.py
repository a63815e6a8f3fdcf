"""The Argo CD health checks in charts/argocd: each health.lua runs in Lua 5.1 (what Argo CD's
gopher-lua speaks) with the standard libraries hidden as Argo CD hides them from argocd-cm scripts,
against every case of its health_test.yaml and against the statuses the operator's own reconcilers
write; argocd-cm.yaml embeds the scripts byte for byte; the Application example points at what
exists in this repository."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from lupa import lua51

from llmops_operator import milvus
from llmops_operator.kube.client import ApiError, Client, ResourceType
from llmops_operator.reconcilers import embedding, finetune, rag
from llmops_operator.reconcilers.base import Context, PermanentError, Result, TemporaryError
from llmops_operator.runtime.events import EventRecorder
from llmops_operator.runtime.store import Key, Store
from llmops_workloads.rag.schema import Mismatch

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "charts" / "argocd"
CUSTOMIZATIONS = ARGOCD / "resource_customizations" / "llmops.dev"
KINDS = ("EmbeddingService", "RAGPipeline", "FineTuneJob")
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Argo CD runs an argocd-cm health script (resource.customizations.useOpenLibs unset) in a gopher-lua
# state opened without the standard libraries, then opens only the base library, `table`, `package`
# and a "safe" `os` (time and date). We give less: the base functions without the loaders, and
# `table`. `string`, `math`, `os`, `io`, `require`, `package`, `debug`, `coroutine` are absent, and
# so are strings' methods (("x"):len()), which only the string library gives them.
KEPT_GLOBALS = (
    "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print", "rawequal", "rawget", "rawset",
    "select", "setmetatable", "tonumber", "tostring", "type", "unpack", "xpcall", "table", "_VERSION",
)  # fmt: skip
HIDDEN = ("os", "io", "require", "dofile", "loadfile", "load", "loadstring", "package", "debug", "string", "math",
          "coroutine", "module", "setfenv", "getfenv", "collectgarbage", "python")  # fmt: skip

# The script runs as a chunk whose environment holds only the kept globals and `obj`. Reading an
# unknown global (a hidden library) or writing one is an error here, so a script that needs a
# library Argo CD does not give it, or leaks globals, fails these tests.
RUNNER = """
function(source, obj, keep)
  local env = {}
  for _, name in ipairs(keep) do env[name] = _G[name] end
  env._G = env
  env.obj = obj
  setmetatable(env, {
    __index = function(_, name) error("undefined global: " .. tostring(name), 2) end,
    __newindex = function(_, name) error("assignment to global: " .. tostring(name), 2) end,
  })
  local chunk, err = loadstring(source, "=health.lua")
  if chunk == nil then error(err, 0) end
  setfenv(chunk, env)
  return chunk()
end
"""


def run_lua(source: str, obj: dict[str, Any] | None = None) -> Any:
    """Run ``source`` in a fresh Lua 5.1 state (Argo CD makes one per health check) as sandboxed above."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute('debug.setmetatable("", nil)')  # strings without methods: no string library
    runner = lua.eval(RUNNER)
    return runner(source, to_lua(lua, obj), to_lua(lua, list(KEPT_GLOBALS)))


def to_lua(lua: Any, value: Any) -> Any:
    """JSON-like data as Argo CD hands it to Lua (its decodeValue): objects and arrays become
    tables, null becomes nil, numbers are Lua numbers."""
    if value is None:
        return None
    if isinstance(value, dict):
        table = lua.table()
        for k, v in value.items():
            if v is not None:
                table[k] = to_lua(lua, v)
        return table
    if isinstance(value, list):
        table = lua.table()
        for i, v in enumerate(value, 1):
            if v is not None:
                table[i] = to_lua(lua, v)
        return table
    if isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"not JSON data: {value!r} ({type(value).__name__})")


def evaluate(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) of ``script`` for ``obj``, checked as Argo CD checks a health result."""
    result = run_lua(script, obj)
    assert lua51.lua_type(result) == "table", f"a health script returns a table, not {result!r}"
    status, message = result["status"], result["message"]
    assert status in HEALTH_STATUSES, f"invalid health status {status!r}"
    assert isinstance(message, str) and message, f"every result says why: message {message!r}"
    return str(status), message


def script(kind: str) -> str:
    return (CUSTOMIZATIONS / kind / "health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    return evaluate(script(obj["kind"]), obj)


# -- the sandbox itself ---------------------------------------------------------------------


def test_sandbox_hides_what_argo_cd_hides() -> None:
    for name in HIDDEN:
        with pytest.raises(lua51.LuaError, match=f"undefined global: {name}"):
            run_lua(f"return {name}")
    with pytest.raises(lua51.LuaError, match="attempt to index a string value"):
        run_lua('return ("abc"):upper()')
    with pytest.raises(lua51.LuaError, match="assignment to global: hs"):
        run_lua("hs = {}")
    assert run_lua('return tostring(obj.step) .. "/" .. tostring(obj.total)', {"step": 40, "total": 100}) == "40/100"
    assert run_lua("return #obj.a, obj.b", {"a": [1, 2], "b": None}) == (2, None)


# -- health_test.yaml, as Argo CD's own test runner reads it ------------------------------------


def _cases() -> list[tuple[str, str, str, str]]:
    out = []
    for kind in KINDS:
        for case in yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())["tests"]:
            out.append((kind, case["inputPath"], case["healthStatus"]["status"], case["healthStatus"]["message"]))
    return out


CASES = _cases()


@pytest.mark.parametrize(("kind", "input_path", "status", "message"), CASES, ids=[f"{c[0]}/{c[1]}" for c in CASES])
def test_health_test_cases(kind: str, input_path: str, status: str, message: str) -> None:
    obj = yaml.safe_load((CUSTOMIZATIONS / kind / input_path).read_text())
    assert obj["apiVersion"] == "llmops.dev/v1alpha1" and obj["kind"] == kind
    assert evaluate(script(kind), obj) == (status, message)


def test_every_kind_has_a_check_and_every_testdata_file_a_case() -> None:
    assert sorted(p.name for p in CUSTOMIZATIONS.iterdir()) == sorted(KINDS)
    for kind in KINDS:
        folder = CUSTOMIZATIONS / kind
        assert sorted(p.name for p in folder.iterdir()) == ["health.lua", "health_test.yaml", "testdata"]
        used = {c[1] for c in CASES if c[0] == kind}
        assert {f"testdata/{p.name}" for p in (folder / "testdata").iterdir()} == used
        # Every outcome the mapping promises is exercised.
        outcomes = {c[2] for c in CASES if c[0] == kind}
        assert {"Healthy", "Progressing", "Degraded"} <= outcomes, kind
    assert {c[2] for c in CASES} >= {"Healthy", "Progressing", "Degraded", "Suspended"}


# -- argocd-cm.yaml and application.yaml ----------------------------------------------------


def test_argocd_cm_embeds_the_scripts_byte_for_byte() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert (cm["apiVersion"], cm["kind"], cm["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")
    data = cm["data"]
    assert set(data) == {f"resource.customizations.health.llmops.dev_{kind}" for kind in KINDS}, (
        "only the health checks: no useOpenLibs (not needed) and no ignoreDifferences (see docs/argocd.md)"
    )
    for kind in KINDS:
        embedded = data[f"resource.customizations.health.llmops.dev_{kind}"].encode()
        assert embedded == (CUSTOMIZATIONS / kind / "health.lua").read_bytes(), (
            f"argocd-cm.yaml's {kind} script differs from resource_customizations/llmops.dev/{kind}/health.lua"
        )


def test_application_example_points_at_this_repository() -> None:
    apps = [d for d in yaml.safe_load_all((ARGOCD / "application.yaml").read_text()) if d]
    by_name = {a["metadata"]["name"]: a for a in apps}
    assert set(by_name) == {"llmops-operator", "llmops-examples"}
    for app in apps:
        assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
        assert (REPO / app["spec"]["source"]["path"]).is_dir()
    operator_app, examples_app = by_name["llmops-operator"], by_name["llmops-examples"]
    assert operator_app["spec"]["source"]["path"] == "charts/llmops-operator"
    assert (REPO / "charts/llmops-operator/crds").is_dir()
    assert "finalizers" not in operator_app["metadata"], "deleting the Application must not delete the CRDs"

    def wave(app: dict[str, Any]) -> int:
        return int(app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])

    assert wave(operator_app) < wave(examples_app)
    assert "SkipDryRunOnMissingResource=true" in examples_app["spec"]["syncPolicy"]["syncOptions"]
    include = examples_app["spec"]["source"]["directory"]["include"]
    docs = list(yaml.safe_load_all((REPO / "examples" / include).read_text()))
    assert any(d["apiVersion"] == "llmops.dev/v1alpha1" for d in docs)


# -- statuses the operator writes for real --------------------------------------------------
#
# The reconcilers run against a fake API (below): children are applied as the server would echo
# them, with the status their controller would have written; status writes go through the
# operator's own write_status and conditions.merge; errors go through report_error as the
# controller does.


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


class FakeApi:
    """Just what the reconcilers call on kube.client.Client."""

    def __init__(self, owners: Store) -> None:
        self.owners = owners
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.controller_status: dict[str, dict[str, Any]] = {}  # kind -> status its controller wrote
        self.reject: dict[str, ApiError] = {}  # kind -> how the API server refuses it
        self.pods: list[dict[str, Any]] = []

    async def apply(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        if rt.kind in self.reject:
            raise self.reject[rt.kind]
        out = copy.deepcopy(obj)
        out["metadata"].setdefault("generation", 1)
        out["metadata"].setdefault("uid", f"uid-{rt.kind}-{out['metadata']['name']}")
        if rt.kind in self.controller_status:
            out["status"] = copy.deepcopy(self.controller_status[rt.kind])
        self.objects[(rt.kind, out["metadata"]["name"])] = out
        return out

    async def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((rt.kind, name)))

    async def delete(self, rt: ResourceType, namespace: str | None, name: str) -> None:
        self.objects.pop((rt.kind, name), None)

    async def patch_status(self, rt: ResourceType, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(self.owners.get(Key(rt.kind, namespace, name)))
        assert body is not None
        body["status"] = _merge_patch(body.get("status") or {}, patch)
        return body

    async def request(self, what: str, method: str, path: str, **_: Any) -> dict[str, Any]:
        assert (what, method) == ("list", "GET") and path.endswith("/pods"), (what, method, path)
        return {"items": copy.deepcopy(self.pods)}


class FakeEvents:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def emit(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.reasons.append(reason)


class Cluster:
    """One namespace, one owner object, and the operator's context around a fake API."""

    def __init__(self, kind: str, name: str, spec: dict[str, Any], generation: int = 1) -> None:
        self.owners = Store()
        self.api = FakeApi(self.owners)
        self.ctx = Context(
            client=cast(Client, self.api),
            owners=self.owners,
            children=Store(),
            events=cast(EventRecorder, FakeEvents()),
        )
        self.key = Key(kind, "ml", name)
        self.owners.put({
            "apiVersion": "llmops.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "generation": generation,
                         "resourceVersion": "1"},
            "spec": spec,
        })  # fmt: skip

    def reconcile(
        self,
        reconcile: Callable[[Context, Key], Awaitable[Result]],
        report_error: Callable[[Context, Key, PermanentError | TemporaryError], Awaitable[None]],
    ) -> dict[str, Any]:
        """One pass as the controller runs it (runtime/controller.py): errors go into status."""

        async def run() -> None:
            try:
                await reconcile(self.ctx, self.key)
            except (PermanentError, TemporaryError) as exc:
                await report_error(self.ctx, self.key, exc)

        asyncio.run(run())
        obj = self.owners.get(self.key)
        assert obj is not None
        return obj


def deployment_status(replicas: int, ready: int, updated: int, conditions: list[dict[str, Any]] | None = None,
                      total: int | None = None) -> dict[str, Any]:  # fmt: skip
    return {"observedGeneration": 1, "replicas": replicas if total is None else total, "readyReplicas": ready,
            "updatedReplicas": updated, "availableReplicas": ready, "conditions": conditions or []}  # fmt: skip


ROLLED_OUT = deployment_status(2, 2, 2)


def embedding_service(deployment: dict[str, Any] | None, **spec: Any) -> dict[str, Any]:
    c = Cluster("EmbeddingService", "minilm", {"model": {"name": MODEL, "dimension": 384}, "replicas": 2, **spec})
    if deployment is not None:
        c.api.controller_status["Deployment"] = deployment
    return c.reconcile(embedding.reconcile, embedding.report_error)


@pytest.mark.parametrize(
    ("deployment", "spec", "status", "message"),
    [
        (ROLLED_OUT, {}, "Healthy", f"2/2 replicas ready; serving {MODEL}@main"),
        (deployment_status(2, 0, 2), {}, "Progressing", "2/2 replicas updated, 0 ready, 2 running in total"),
        (deployment_status(2, 2, 1, total=3), {}, "Progressing", "1/2 replicas updated, 2 ready, 3 running in total"),
        (None, {}, "Progressing", "0/2 replicas updated, 0 ready, 0 running in total"),
        (
            deployment_status(1, 1, 1, [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                         "message": 'pods "minilm-1" is forbidden: exceeded quota: compute'}]),
            {},
            "Degraded",
            'pods "minilm-1" is forbidden: exceeded quota: compute',
        ),
        (
            deployment_status(2, 0, 2, [{"type": "Progressing", "status": "False",
                                         "reason": "ProgressDeadlineExceeded",
                                         "message": 'ReplicaSet "minilm-1" has timed out progressing.'}]),
            {},
            "Degraded",
            'the rollout made no progress: ReplicaSet "minilm-1" has timed out progressing.; check the pods\' '
            "events and logs",
        ),
        (deployment_status(0, 0, 0), {"replicas": 0}, "Suspended", "scaled to zero: replicas is 0"),
    ],
    ids=["rolled-out", "pods-starting", "rolling-out", "no-deployment-status", "quota", "deadline", "scaled-to-zero"],
)  # fmt: skip
def test_embedding_service_statuses_from_the_reconciler(
    deployment: dict[str, Any], spec: dict[str, Any], status: str, message: str
) -> None:
    obj = embedding_service(deployment, **spec)
    assert obj["status"]["observedGeneration"] == 1
    assert health(obj) == (status, message)
    # The next spec change is not observed yet: Progressing, whatever the old status said.
    obj["metadata"]["generation"] = 2
    assert health(obj) == ("Progressing", "Waiting for the operator to observe generation 2")


def test_embedding_service_errors_from_the_reconciler() -> None:
    invalid = Cluster("EmbeddingService", "bad", {"model": {"name": MODEL}, "replicas": 2, "autoscaling": {}})
    status, message = health(invalid.reconcile(embedding.reconcile, embedding.report_error))
    assert status == "Degraded" and message.startswith("spec."), message

    rejected = Cluster("EmbeddingService", "minilm", {"model": {"name": MODEL}})
    rejected.api.reject["Deployment"] = ApiError(422, "Invalid", "admission webhook denied the request")
    obj = rejected.reconcile(embedding.reconcile, embedding.report_error)
    assert health(obj) == ("Degraded", "Deployment minilm was rejected: admission webhook denied the request")


def test_embedding_service_serving_a_fine_tune_job_from_the_reconciler() -> None:
    c = Cluster("EmbeddingService", "support", {"model": {"name": MODEL, "source": {"fineTuneJobRef": {"name": "ft"}}}})
    c.api.objects[("FineTuneJob", "ft")] = {"metadata": {"name": "ft", "uid": "uid-ft"}, "status": {"phase": "Running"}}
    obj = c.reconcile(embedding.reconcile, embedding.report_error)
    assert health(obj) == ("Progressing", "FineTuneJob ft is Running; serving starts on success")

    c.api.objects[("FineTuneJob", "ft")]["status"] = {
        "phase": "Succeeded", "output": "pvc://models/ft/model", "completionTime": "2025-01-10T09:05:00Z"
    }  # fmt: skip
    c.api.controller_status["Deployment"] = deployment_status(1, 1, 1)
    obj = c.reconcile(embedding.reconcile, embedding.report_error)
    status, message = health(obj)
    assert status == "Healthy" and message.startswith(f"1/1 replicas ready; serving {MODEL}@finetune:ft:"), message


class FakeMilvus:
    def __init__(self) -> None:
        self.mismatch: str | None = None
        self.down: str | None = None

    async def ensure(self, conn: milvus.Connection, spec: Any) -> tuple[bool, Mismatch | None]:
        if self.down:
            raise milvus.MilvusUnavailable(self.down)
        return False, Mismatch(self.mismatch) if self.mismatch else None

    async def counts(self, conn: milvus.Connection, name: str) -> milvus.Counts:
        if self.down:
            raise milvus.MilvusUnavailable(self.down)
        return milvus.Counts(entities=7, documents=3)


@pytest.fixture
def fake_milvus(monkeypatch: pytest.MonkeyPatch) -> FakeMilvus:
    fake = FakeMilvus()
    monkeypatch.setattr(milvus, "ensure", fake.ensure)
    monkeypatch.setattr(milvus, "counts", fake.counts)
    return fake


def rag_pipeline(sources: list[dict[str, Any]] | None = None) -> Cluster:
    spec: dict[str, Any] = {
        "embedding": {"serviceRef": {"name": "minilm"}},
        "vectorStore": {"milvus": {"uri": "http://milvus:19530"}},
        "sources": sources or [],
    }
    c = Cluster("RAGPipeline", "handbook", spec)
    c.owners.put({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": "minilm", "namespace": "ml", "uid": "uid-minilm", "generation": 1},
        "spec": {"model": {"name": MODEL, "dimension": 384}},
        "status": {"observedGeneration": 1, "dimension": 384, "endpoint": "http://minilm.ml.svc.cluster.local:8080",
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Available"}]},
    })  # fmt: skip
    c.api.controller_status["Deployment"] = deployment_status(1, 1, 1)
    return c


def test_rag_pipeline_statuses_from_the_reconciler(fake_milvus: FakeMilvus) -> None:
    c = rag_pipeline([{"configMap": {"name": "handbook"}}])
    c.api.objects[("ConfigMap", "handbook")] = {"metadata": {"name": "handbook"}, "data": {"tea.md": "# Tea"}}

    obj = c.reconcile(rag.reconcile, rag.report_error)  # the ingestion Job starts
    job = obj["status"]["lastIngestion"]["jobName"]
    assert health(obj) == ("Progressing", f"Job {job} is ingesting the sources")

    done = c.ctx.children.get(Key("Job", "ml", job))
    assert done is not None
    done["status"] = {"completionTime": "2025-01-10T09:05:00Z",
                      "conditions": [{"type": "Complete", "status": "True"}]}  # fmt: skip
    c.api.pods = [{"metadata": {"name": f"{job}-x", "creationTimestamp": "2025-01-10T09:04:00Z"},
                   "status": {"containerStatuses": [{"name": "ingest", "state": {"terminated": {
                       "exitCode": 0, "message": '{"documents": 3, "chunks": 7}'}}}]}}]  # fmt: skip
    obj = c.reconcile(rag.reconcile, rag.report_error)
    assert obj["status"]["lastIngestion"]["outcome"] == "Succeeded"
    assert health(obj) == ("Healthy", "serving collection llmops_ml_handbook: 3 documents, 7 chunks")

    fake_milvus.down = "create or check collection llmops_ml_handbook: Milvus at http://milvus:19530 did not answer"
    obj = c.reconcile(rag.reconcile, rag.report_error)
    assert health(obj) == ("Progressing", f"Milvus is unreachable: {fake_milvus.down}")

    fake_milvus.down = None
    obj = c.reconcile(rag.reconcile, rag.report_error)  # back to normal by itself
    assert health(obj)[0] == "Healthy"


def test_rag_pipeline_mismatch_waiting_and_failed_ingestion_from_the_reconciler(fake_milvus: FakeMilvus) -> None:
    c = rag_pipeline()
    es = c.owners.get(Key("EmbeddingService", "ml", "minilm"))
    assert es is not None
    c.owners.remove(Key("EmbeddingService", "ml", "minilm"))
    obj = c.reconcile(rag.reconcile, rag.report_error)
    assert health(obj) == ("Progressing", "EmbeddingService minilm does not exist")

    c.owners.put(es)
    fake_milvus.mismatch = "collection 'llmops_ml_handbook' does not fit: it holds 768-dimensional vectors"
    obj = c.reconcile(rag.reconcile, rag.report_error)
    assert health(obj) == ("Degraded", fake_milvus.mismatch)

    fake_milvus.mismatch = None
    obj = c.reconcile(rag.reconcile, rag.report_error)
    assert health(obj) == ("Healthy", "serving collection llmops_ml_handbook: 3 documents, 7 chunks")

    failing = rag_pipeline([{"url": "https://example.com/handbook.html"}])
    obj = failing.reconcile(rag.reconcile, rag.report_error)
    job = failing.ctx.children.get(Key("Job", "ml", obj["status"]["lastIngestion"]["jobName"]))
    assert job is not None
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                     "message": "Job has reached the specified backoff limit"}]}  # fmt: skip
    obj = failing.reconcile(rag.reconcile, rag.report_error)
    name = job["metadata"]["name"]
    assert health(obj) == ("Degraded", f"Job {name} failed: Job has reached the specified backoff limit")


FTJ_SPEC = {
    "task": "embedding",
    "baseModel": {"name": MODEL},
    "dataset": {"configMap": {"name": "pairs", "key": "train.jsonl"}},
    "output": {"pvc": {"claimName": "models"}},
}


def test_fine_tune_job_statuses_from_the_reconciler(monkeypatch: pytest.MonkeyPatch) -> None:
    async def progress(pods: list[dict[str, Any]], timeout: float = 2.0) -> dict[str, Any]:
        return {"step": 40, "totalSteps": 100, "epoch": 0.8, "loss": 0.42}

    monkeypatch.setattr(finetune, "poll_progress", progress)
    c = Cluster("FineTuneJob", "support", FTJ_SPEC)
    obj = c.reconcile(finetune.reconcile, finetune.report_error)
    assert health(obj) == ("Progressing", "Pending: waiting for the Job controller to start the trainer pod")

    job = c.ctx.children.get(Key("Job", "ml", "support"))
    assert job is not None
    job["status"] = {"startTime": "2025-01-10T09:00:00Z", "active": 1, "ready": 1}
    obj = c.reconcile(finetune.reconcile, finetune.report_error)
    assert health(obj) == ("Progressing", "Running, step 40/100: the trainer is running")

    job["status"] = {"startTime": "2025-01-10T09:00:00Z", "completionTime": "2025-01-10T09:30:00Z",
                     "conditions": [{"type": "Complete", "status": "True"}]}  # fmt: skip
    obj = c.reconcile(finetune.reconcile, finetune.report_error)
    assert health(obj) == ("Healthy", "trained 40 steps; the model is at pvc://models/support/model")


def test_fine_tune_job_suspended_and_failed_from_the_reconciler() -> None:
    suspended = Cluster("FineTuneJob", "paused", {**FTJ_SPEC, "suspend": True})
    obj = suspended.reconcile(finetune.reconcile, finetune.report_error)
    assert health(obj) == (
        "Suspended",
        "suspended: the trainer checkpoints and stops; set suspend to false to resume from the checkpoint",
    )

    failed = Cluster("FineTuneJob", "oom", FTJ_SPEC)
    failed.api.controller_status["Job"] = {
        "failed": 3,
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit"}],
    }  # fmt: skip
    failed.api.pods = [{"metadata": {"name": "oom-1", "creationTimestamp": "2025-01-10T09:04:00Z",
                                     "ownerReferences": [{"uid": "uid-Job-oom"}]},
                        "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": {
                            "exitCode": 137, "reason": "OOMKilled"}}}]}}]  # fmt: skip
    obj = failed.reconcile(finetune.reconcile, finetune.report_error)
    assert obj["status"]["phase"] == "Failed"
    status, message = health(obj)
    assert status == "Degraded" and message.startswith("the trainer ran out of memory (OOMKilled)"), message

    invalid = Cluster("FineTuneJob", "invalid", {**FTJ_SPEC, "method": "sgd"})
    status, message = health(invalid.reconcile(finetune.reconcile, finetune.report_error))
    assert status == "Degraded" and message.startswith("spec"), message
