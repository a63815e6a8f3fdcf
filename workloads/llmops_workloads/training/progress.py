"""How a run reports progress, four ways, none of which needs RBAC for the pod (docs/trainer.md):

1. ``GET /progress`` (JSON) and ``GET /metrics`` (Prometheus) on ``progress.port``, which the
   operator polls over the pod network;
2. the same JSON, rewritten atomically to ``progress.file`` at each logging interval, checkpoint
   and end (it survives the pod, on the output volume);
3. a JSON log line per logging interval (``kubectl logs``, any log pipeline);
4. a final summary in the Kubernetes termination message file, so the outcome is in the pod's
   status even when nothing else can be reached.

The training loop only assigns attributes here on each step (no lock, no I/O); readers build a
snapshot when they ask, so step overhead stays negligible.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .checkpoint import write_atomic

log = logging.getLogger("llmops.training.progress")
STATES = ("loading", "evaluating", "training", "saving", "succeeded", "failed", "preempted")
TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Progress:
    """The live state of a run."""

    def __init__(self, file: Path | None = None) -> None:
        self.file = file
        self.state = "loading"
        self.step = 0
        self.total_steps = 0
        self.epoch = 0.0
        self.loss: float | None = None
        self.learning_rate: float | None = None
        self.metric_name: str | None = None
        self.metrics: dict[str, float] = {}
        self.base_metrics: dict[str, float] = {}
        self.checkpoint_step: int | None = None
        self.resumed_from: int | None = None
        self.message = ""
        self.started_at = _now()
        self._origin: tuple[float, int] | None = None  # (monotonic, step) when training began here

    def training_started(self) -> None:
        self.state = "training"
        self._origin = (time.monotonic(), self.step)

    def steps_per_second(self) -> float | None:
        if self._origin is None:
            return None
        elapsed, done = time.monotonic() - self._origin[0], self.step - self._origin[1]
        return done / elapsed if done > 0 and elapsed > 0 else None

    def eta_seconds(self) -> float | None:
        rate = self.steps_per_second()
        if rate is None or self.state not in ("training", "evaluating"):
            return 0.0 if self.state == "succeeded" else None
        return round(max(0, self.total_steps - self.step) / rate, 1)

    def snapshot(self) -> dict[str, Any]:
        rate = self.steps_per_second()
        metric = self.metrics.get(self.metric_name) if self.metric_name else None
        return {
            "state": self.state,
            "step": self.step,
            "totalSteps": self.total_steps,
            "epoch": round(self.epoch, 4),
            "loss": self.loss,
            "learningRate": self.learning_rate,
            "evalMetric": {"name": self.metric_name, "value": metric} if self.metric_name else None,
            "metrics": self.metrics,
            "baseMetrics": self.base_metrics,
            "stepsPerSecond": round(rate, 4) if rate else None,
            "etaSeconds": self.eta_seconds(),
            "checkpointStep": self.checkpoint_step,
            "resumedFromStep": self.resumed_from,
            "message": self.message,
            "startedAt": self.started_at,
            "updatedAt": _now(),
        }

    def write_file(self) -> None:
        """Rewrite the progress file (atomically, not fsynced: it is refreshed often)."""
        if self.file is None:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.file, json.dumps(self.snapshot(), indent=2).encode(), durable=False)
        except OSError as e:
            log.warning("cannot write the progress file", extra={"path": str(self.file), "error": str(e)})

    def log_line(self) -> None:
        snap = self.snapshot()
        fields = ("step", "totalSteps", "epoch", "loss", "learningRate", "etaSeconds", "stepsPerSecond")
        extra: dict[str, Any] = {k: snap[k] for k in fields}
        extra.update({k if k.startswith("eval_") else f"eval_{k}": v for k, v in self.metrics.items()})
        log.info("progress", extra=extra)


def write_termination_message(path: str, summary: dict[str, Any], default_path: str) -> bool:
    """The final summary for the pod's status (``terminationMessagePath``). Kubernetes creates the
    file; where it does not exist (not in a pod) the default path is skipped rather than created,
    an explicitly configured one is created. Never fails the run."""
    target = Path(path)
    if not target.exists() and (path == default_path or not target.parent.is_dir()):
        return False
    body = json.dumps(summary, separators=(",", ":"))
    if len(body.encode()) > TERMINATION_LIMIT:
        summary = {k: v for k, v in summary.items() if k not in ("metrics", "baseMetrics", "hyperparameters")}
        body = json.dumps(summary, separators=(",", ":"))[:TERMINATION_LIMIT]
    try:
        target.write_text(body)
    except OSError as e:
        log.warning("cannot write the termination message", extra={"path": path, "error": str(e)})
        return False
    return True


class _ProgressCollector(Collector):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def collect(self) -> Iterator[GaugeMetricFamily]:
        p = self.progress
        yield GaugeMetricFamily("llmops_train_step", "Optimizer steps done", value=p.step)
        yield GaugeMetricFamily("llmops_train_total_steps", "Optimizer steps in the run", value=p.total_steps)
        yield GaugeMetricFamily("llmops_train_epoch", "Epochs done (fractional)", value=p.epoch)
        if p.loss is not None:
            yield GaugeMetricFamily("llmops_train_loss", "Mean loss over the last logging interval", value=p.loss)
        if p.learning_rate is not None:
            yield GaugeMetricFamily("llmops_train_learning_rate", "Current learning rate", value=p.learning_rate)
        eta = p.eta_seconds()
        if eta is not None:
            yield GaugeMetricFamily("llmops_train_eta_seconds", "Estimated seconds to the last step", value=eta)
        evals = GaugeMetricFamily("llmops_train_eval_metric", "Latest evaluation metrics", labels=["metric"])
        for name, value in p.metrics.items():
            evals.add_metric([name], value)
        yield evals
        state = GaugeMetricFamily("llmops_train_state", "1 for the run's current state", labels=["state"])
        for s in STATES:
            state.add_metric([s], 1.0 if s == p.state else 0.0)
        yield state


class ProgressServer:
    """``GET /progress``, ``/metrics`` and ``/health`` on a daemon thread (standard library HTTP:
    a few requests a minute need no event loop, and the trainer image needs no web framework)."""

    def __init__(self, progress: Progress, host: str, port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ProgressCollector(progress))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/progress":
                    self._send(200, "application/json", json.dumps(progress.snapshot()).encode())
                elif self.path.split("?")[0] == "/metrics":
                    self._send(200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry))
                elif self.path == "/health":
                    self._send(200, "text/plain", b"ok")
                else:
                    self._send(404, "application/json", b'{"error":"not found"}')

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the operator polls: no access log

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="progress-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> ProgressServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
