"""The README's main command, run the way a newcomer runs it (on a cluster of its own)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmops_dev.cluster import controlplane

pytestmark = pytest.mark.cluster


def test_quickstart_then_down() -> None:
    name = f"qs-{os.getpid()}"
    cli = [sys.executable, "-m", "llmops_dev.cli", "quickstart", "--name", name]
    try:
        run = subprocess.run(cli, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "EmbeddingService minilm Ready" in run.stdout
        table = run.stdout.split("$ kubectl get llmops", 1)[1]
        assert "minilm" in table.splitlines()[2] and " True " in table.splitlines()[2]
        state = controlplane.load_state(name)
        assert state is not None
        assert controlplane.pid_alive(state.pids["llmops-operator"])
        pids = dict(state.pids)
        again = subprocess.run(cli, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout
    finally:
        down = subprocess.run([*cli, "--down"], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert "llmops-operator" in down.stdout
    assert not [n for n, p in pids.items() if controlplane.pid_alive(p)]
