"""The README's main command, run the way a newcomer runs it (on a cluster of its own): the
control plane, Milvus Lite, the operator and the pod runner; the quickstart's resources become
real processes that ingest the sample corpus and answer a question with its sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_dev.cluster import controlplane

pytestmark = pytest.mark.cluster


def test_quickstart_serves_a_streamed_answer_then_down_stops_everything() -> None:
    name = f"qs-{os.getpid()}"
    cli = [sys.executable, "-m", "llmops_dev.cli", "quickstart", "--name", name]
    pids: dict[str, int] = {}
    pod_pids: list[int] = []
    try:
        run = subprocess.run(cli, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
        out = run.stdout
        for step in (
            "EmbeddingService minilm Ready",
            "RAGPipeline handbook Ready and its documents ingested",
            "FineTuneJob minilm-handbook Succeeded",
            "EmbeddingService minilm-handbook (the fine-tuned model) Ready",
        ):
            assert step in out
        answer = out.split("\nA: ", 1)[1].split("\nSources:", 1)[0]
        assert answer.strip(), "the streamed answer is empty"
        sources = out.split("Sources:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert sources[0].startswith("  [1] rollback.md"), sources  # the question is about rolling back
        tables = out.split("$ kubectl get llmops", 1)[1]
        assert " Succeeded " in tables and "ragpipeline.llmops.dev/handbook" in tables
        pods = tables.split("$ kubectl get pods -o wide", 1)[1]
        running = [line for line in pods.splitlines() if " Running " in line]
        assert len(running) >= 4 and all("llmops-local-0" in line for line in running), pods

        state = controlplane.load_state(name)
        assert state is not None
        pids = dict(state.pids)
        runner = json.loads((Path(state.root) / "runner" / "runner.json").read_text())
        pod_pids = [p["pid"] for p in runner["pods"].values() if p["pid"]]
        assert pod_pids and all(controlplane.pid_alive(p) for p in pod_pids)
        # kubectl logs goes API server -> the runner's kubelet endpoint -> the process's output.
        logs = controlplane.kubectl(state, "logs", "deploy/minilm", "--tail=3").splitlines()
        assert len(logs) == 3 and all(json.loads(line)["level"] for line in logs), logs
        job_logs = controlplane.kubectl(state, "logs", "job/minilm-handbook")
        assert "resumed from checkpoint" not in job_logs and '"output written"' in job_logs, job_logs[-2000:]

        again = subprocess.run(cli, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "already running" in again.stdout and "Sources:" in again.stdout
    finally:
        down = subprocess.run([*cli, "--down"], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert "llmops-pod-runner" in down.stdout and "milvus-lite" in down.stdout
    assert not [n for n, p in pids.items() if controlplane.pid_alive(p)]
    assert not [p for p in pod_pids if controlplane.pid_alive(p)], "a pod's process outlived the runner"
