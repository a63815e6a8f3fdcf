"""Sentence pooling as sentence-transformers does it, shared by the embedding server and the
trainer (torch only: the trainer's image has no web-server packages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

Pooling = Literal["mean", "cls", "lasttoken"]


def sentence_transformers_defaults(model_dir: Path) -> tuple[Pooling | None, bool | None, int | None]:
    """(pooling, normalize, max_seq_length) from the model's sentence-transformers files, if any."""
    pooling: Pooling | None = None
    normalize: bool | None = None
    max_len: int | None = None
    modules_file = model_dir / "modules.json"
    if modules_file.exists():
        modules = json.loads(modules_file.read_text())
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                pool_cfg = json.loads((model_dir / m["path"] / "config.json").read_text())
                if pool_cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif pool_cfg.get("pooling_mode_lasttoken"):
                    pooling = "lasttoken"
                elif pool_cfg.get("pooling_mode_mean_tokens"):
                    pooling = "mean"
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.exists():
        max_len = json.loads(st_cfg.read_text()).get("max_seq_length")
    return pooling, normalize, max_len


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "lasttoken":
        last = mask.sum(dim=1) - 1  # right padding: the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
