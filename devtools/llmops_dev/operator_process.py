"""The operator under test, run as a real subprocess (``python -m llmops_operator``) with its own
identity, so that tests can kill and restart it and count its requests in the audit log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .cluster import ClusterState
from .cluster.controlplane import free_port

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


class OperatorProcess:
    def __init__(
        self,
        cluster: ClusterState,
        log_dir: Path,
        resync_seconds: float = 600,
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.extra_args = extra_args
        self.extra_env = extra_env or {}
        self.cluster = cluster
        self.log_dir = log_dir
        self.resync_seconds = resync_seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.health_port = 0
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self, wait: bool = True) -> None:
        """Start the operator; with ``wait``, until its caches are synced (``/healthz`` says so).
        Without, return at once (a fault test that kills it again at any point of its start-up)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.metrics_port, self.health_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": self.cluster.operator_kubeconfig, **self.extra_env}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "llmops_operator",
                    "--bind-address=127.0.0.1",
                    f"--metrics-port={self.metrics_port}",
                    f"--health-port={self.health_port}",
                    f"--resync-seconds={self.resync_seconds}",
                    *self.extra_args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_healthy()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until ``/healthz`` says the caches are synced; fails if the operator exits."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"operator exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
                )
            try:
                health = json.loads(self._get(self.health_port, "/healthz"))
                if health.get("synced"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"operator did not become healthy:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    @staticmethod
    def _get(port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return str(resp.read().decode())

    def metrics(self) -> dict[str, float]:
        """Every sample of the operator's /metrics, keyed by 'name{labels}'."""
        out: dict[str, float] = {}
        for line in self._get(self.metrics_port, "/metrics").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric_sum(self, prefix: str, **labels: str) -> float:
        total = 0.0
        for name, value in self.metrics().items():
            if not name.startswith(prefix):
                continue
            if all(f'{k}="{v}"' in name for k, v in labels.items()):
                total += value
        return total

    def audit(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The operator's requests as the API server recorded them (after ``since``, epoch seconds)."""
        records: list[dict[str, Any]] = []
        if not self.cluster.audit_log.exists():
            return records
        for line in self.cluster.audit_log.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("stage") != "ResponseComplete":
                continue
            stamp = rec.get("requestReceivedTimestamp", "")
            if since and _epoch(stamp) < since:
                continue
            records.append(rec)
        return records

    def writes(self, since: float = 0.0, namespace: str | None = None) -> list[dict[str, Any]]:
        out = []
        for rec in self.audit(since):
            if rec["verb"] not in WRITE_VERBS:
                continue
            if namespace and rec.get("objectRef", {}).get("namespace") != namespace:
                continue
            out.append(rec)
        return out


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
