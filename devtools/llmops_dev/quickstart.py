"""The README's main command: a local control plane, the operator, and an EmbeddingService that
the operator turns into a running Deployment, Service and friends.

Later milestones add Milvus Lite, the RAG pipeline, fine-tuning and a streamed answer.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from .cluster import controlplane
from .cluster.controlplane import ClusterState, kubectl

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "embedding-service.yaml"


def _say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def start_operator(state: ClusterState) -> None:
    if controlplane.pid_alive(state.pids.get("llmops-operator", -1)):
        _say("operator already running")
        return
    metrics, health = controlplane.free_port(), controlplane.free_port()
    env = {**os.environ, "KUBECONFIG": state.operator_kubeconfig, "LLMOPS_LOG_FORMAT": "json"}
    controlplane.start_process(
        state,
        "llmops-operator",
        [
            sys.executable,
            "-m",
            "llmops_operator",
            "--bind-address=127.0.0.1",
            f"--metrics-port={metrics}",
            f"--health-port={health}",
        ],
        env,
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as r:
                return bool(json.loads(r.read()).get("synced"))
        except OSError:
            return False

    log = Path(state.root) / "logs" / "llmops-operator.log"
    controlplane.wait_until(
        "the operator's caches to sync", healthy, timeout=90, on_fail=lambda: log.read_text(errors="replace")[-3000:]
    )
    _say(f"operator running (metrics http://127.0.0.1:{metrics}/metrics, logs {state.root}/logs/llmops-operator.log)")


def run(name: str) -> int:
    status = controlplane.status(name)
    if status.get("running") and status.get("apiserverReady"):
        state = controlplane.load_state(name)
        assert state is not None
        _say(f"local cluster {name!r} already running")
    else:
        _say("starting the local control plane (the first run builds it from the Go module proxy)")
        state = controlplane.up(name)
        _say(f"Kubernetes {state.server_version} up in {state.started_seconds:.1f}s at {state.server}")

    _say("installing the llmops CRDs")
    kubectl(state, "apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl(state, "wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=llmops")
    start_operator(state)

    _say(f"applying {EXAMPLE.relative_to(REPO)}")
    started = time.monotonic()
    kubectl(state, "apply", "-f", str(EXAMPLE))
    kubectl(state, "wait", "--for=condition=Ready", "--timeout=90s", "embeddingservice/minilm")
    _say(f"EmbeddingService minilm Ready in {time.monotonic() - started:.1f}s")

    print()
    print("$ kubectl get llmops")
    print(kubectl(state, "get", "llmops").rstrip())
    print()
    print("$ kubectl get deploy,svc,pdb,networkpolicy,pods -l llmops.dev/embedding-service=minilm")
    print(
        kubectl(state, "get", "deploy,svc,pdb,networkpolicy,pods", "-l", "llmops.dev/embedding-service=minilm").rstrip()
    )
    print(
        f"""
Try it:
  export KUBECONFIG={state.kubeconfig}
  export PATH={state.bin_dir}:$PATH
  kubectl describe emb minilm
  kubectl scale emb minilm --replicas=3 && kubectl get emb minilm -w
Tear down:
  make down        (or: llmops-dev quickstart --down)"""
    )
    return 0
