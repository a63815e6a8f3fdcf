"""The audit log: one JSON record per request (time, key name, client, route, status, sizes,
latency, request id, the model and revision served), to stdout or a file, for a log pipeline to
collect. Request and response bodies are never in it: it is written from the HTTP layer, which
only counts their bytes."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from pydantic import Field

from .settings import Section


class AuditConfig(Section):
    enabled: bool = False
    file: str | None = Field(None, description="Append here; unset: stdout (next to the JSON logs).")


class AuditLog:
    def __init__(self, cfg: AuditConfig, identity: dict[str, str]) -> None:
        self.enabled = cfg.enabled
        self.identity = identity  # e.g. {"model": ..., "revision": ...}
        self._lock = threading.Lock()
        self._out: TextIO = sys.stdout
        if cfg.enabled and cfg.file:
            Path(cfg.file).parent.mkdir(parents=True, exist_ok=True)
            self._out = open(cfg.file, "a", buffering=1)  # noqa: SIM115 (kept open for the process's life)

    def record(self, **fields: Any) -> None:
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = json.dumps({"time": stamp + "Z", "audit": True, **self.identity, **fields}, default=str)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()
