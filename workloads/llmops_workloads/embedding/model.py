"""Load an embedding model with transformers and turn token vectors into sentence vectors.

The model is found the way sentence-transformers finds it (a local directory, or a Hugging Face
id resolved through the hub cache; ``HF_HUB_OFFLINE=1`` keeps that offline), and pooling and
normalisation default to what the model's own sentence-transformers config says, so the vectors
equal sentence-transformers' for the same model. Tokenisation is separate from the forward pass:
the server tokenises each request once (it needs the counts for limits and batching) and the
batcher pads token ids into batches.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from ..common.pooling import Pooling, pool, sentence_transformers_defaults
from .config import ModelConfig

log = logging.getLogger("llmops.embedding.model")


def resolve_model_dir(cfg: ModelConfig) -> Path:
    """A local directory holding the model: ``path``, a local ``name``, or a hub snapshot."""
    if cfg.path:
        return Path(cfg.path)
    if Path(cfg.name).is_dir():
        return Path(cfg.name)
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            cfg.name,
            revision=cfg.revision,
            token=os.environ.get("HF_TOKEN") or None,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*", "tokenizer*"],
        )
    )


def pick_device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.dtype]


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    revision: str
    dimension: int
    max_input_tokens: int
    pooling: Pooling
    normalize: bool
    device: str
    dtype: str
    quantization: str


class EmbeddingModel:
    """Thread-confined: ``embed`` runs on the batcher's one inference thread."""

    def __init__(self, cfg: ModelConfig) -> None:
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # progress bars are not log lines
        model_dir = resolve_model_dir(cfg)
        st_pooling, st_normalize, st_max_len = sentence_transformers_defaults(model_dir)
        self.device = pick_device(cfg)
        dtype = pick_dtype(cfg, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
        model = AutoModel.from_pretrained(model_dir, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
        model.eval().requires_grad_(False)  # inference only; no global grad switch (a library side effect)
        if cfg.quantization == "int8":
            if self.device.type != "cpu":
                raise ValueError("quantization int8 is CPU-only; use dtype float16 on a GPU")
            model = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
        self.model = model.to(self.device)
        self.pooling: Pooling = cfg.pooling or st_pooling or "mean"
        self.normalize = cfg.normalize if cfg.normalize is not None else bool(st_normalize)
        limits = [
            v for v in (cfg.max_input_tokens, st_max_len, getattr(model.config, "max_position_embeddings", None)) if v
        ]
        self.max_input_tokens = int(min(limits)) if limits else 512
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.info = ModelInfo(
            model_id=cfg.name,
            revision=cfg.revision,
            dimension=int(model.config.hidden_size),
            max_input_tokens=self.max_input_tokens,
            pooling=self.pooling,
            normalize=self.normalize,
            device=self.device.type,
            dtype=str(dtype).removeprefix("torch."),
            quantization=cfg.quantization,
        )
        log.info("model loaded", extra={"model": cfg.name, "dir": str(model_dir), **self.info.__dict__})

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids with special tokens, not truncated (the caller decides what is too long)."""
        encoded: Any = self.tokenizer(texts, add_special_tokens=True, truncation=False, padding=False, verbose=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def truncate(self, ids: list[int]) -> list[int]:
        """Keep the first max_input_tokens-1 tokens and the final special token."""
        if len(ids) <= self.max_input_tokens:
            return ids
        return ids[: self.max_input_tokens - 1] + ids[-1:]

    @torch.inference_mode()
    def embed(self, batch: list[list[int]]) -> np.ndarray:
        """One forward pass over a batch of token-id lists (padded here to the longest); pooled,
        not normalised."""
        longest = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, ids in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.tokenizer.model_input_names:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        hidden = self.model(**kwargs).last_hidden_state
        # Not normalised here: OpenAI callers get the configured normalisation, TEI callers choose.
        pooled = pool(hidden, mask, self.pooling)
        result: np.ndarray = pooled.float().cpu().numpy()
        return result
