"""`llmops-dev cluster up|status|env|down` as a user runs it: warm start, refusal to double-start,
and nothing of ours left running after `down`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_dev.cluster import build, controlplane

pytestmark = pytest.mark.cluster


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmops_dev.cli", *args], capture_output=True, text=True, timeout=300)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_status_down_leaves_nothing_running() -> None:
    name = f"cli-{os.getpid()}"
    stamps = {
        c.key: (build.cache_dir() / "bin" / c.key / build.STAMP).stat().st_mtime
        for c in build.components(build.load_versions())
    }
    try:
        for _ in range(2):  # the second `up` after a `down` is as warm as the first
            up = _cli("cluster", "up", "--name", name)
            assert up.returncode == 0, up.stderr
            assert "export KUBECONFIG=" in up.stdout

            status = json.loads(_cli("cluster", "status", "--name", name).stdout)
            assert status["running"] and status["apiserverReady"]
            state = controlplane.load_state(name)
            assert state is not None
            pids, ports = dict(state.pids), dict(state.ports)

            again = _cli("cluster", "up", "--name", name)
            assert again.returncode == 1
            assert "already running" in again.stderr

            env = _cli("cluster", "env", "--name", name)
            assert f"export KUBECONFIG={state.kubeconfig}" in env.stdout

            down = _cli("cluster", "down", "--name", name)
            assert down.returncode == 0, down.stderr
            assert not any(controlplane.pid_alive(p) for p in pids.values()), down.stdout
            assert not [n for n, p in ports.items() if _listening(p)]
            assert not Path(state.root).exists()
    finally:
        controlplane.down(name)
    # Neither start rebuilt a binary.
    for key, mtime in stamps.items():
        assert (build.cache_dir() / "bin" / key / build.STAMP).stat().st_mtime == mtime
