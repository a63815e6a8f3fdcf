"""Load a causal language model with transformers, and the few calls the engine makes into it.

The weights come from ``path`` (a PVC, a fine-tune's output), a local directory given as ``name``,
or the Hugging Face hub through ``huggingface_hub.snapshot_download`` (the hub cache layout;
``HF_HUB_OFFLINE=1`` keeps that offline). Tokenisation happens on the event loop (the server
needs the counts to validate a request); the forward passes and detokenisation happen on the
engine's one inference thread.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.utils import logging as hf_logging

from .config import ModelConfig

log = logging.getLogger("llmops.generation.model")


def resolve_model_dir(cfg: ModelConfig) -> tuple[Path, str | None]:
    """A local directory holding the model, and the hub commit it came from (None if local)."""
    if cfg.path:
        return Path(cfg.path), None
    if Path(cfg.name).is_dir():
        return Path(cfg.name), None
    from huggingface_hub import snapshot_download

    snapshot = Path(
        snapshot_download(
            cfg.name,
            revision=cfg.revision,
            token=os.environ.get("HF_TOKEN") or None,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py", "tokenizer*"],
        )
    )
    return snapshot, snapshot.name  # snapshots/<commit>


def pick_device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.dtype]


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    model_sha: str | None
    dtype: str
    device: str
    max_position_embeddings: int | None


class GenerationModel:
    """A tokenizer and a causal LM. ``forward`` and ``decode`` belong to the inference thread."""

    def __init__(self, cfg: ModelConfig) -> None:
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # progress bars are not log lines
        model_dir, sha = resolve_model_dir(cfg)
        self.device = pick_device(cfg)
        dtype = pick_dtype(cfg, self.device)
        if cfg.cpu_threads and self.device.type == "cpu":
            # torch sizes its thread pool by the node's cores, not the pod's CPU limit: more
            # threads than CPUs make every decode step wait on descheduled threads.
            torch.set_num_threads(cfg.cpu_threads)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, trust_remote_code=cfg.trust_remote_code
        )
        model.eval().requires_grad_(False)  # inference only; no global grad switch (a library side effect)
        self.model: Any = model.to(self.device)
        self.config: Any = model.config

        eos: set[int] = set()
        for source in (getattr(model, "generation_config", None), self.config):
            value = getattr(source, "eos_token_id", None)
            eos.update([value] if isinstance(value, int) else (value or []))
        if self.tokenizer.eos_token_id is not None:
            eos.add(int(self.tokenizer.eos_token_id))
        self.eos_ids = frozenset(eos)
        self.special_ids = frozenset(int(i) for i in self.tokenizer.all_special_ids) | self.eos_ids
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        # The first encode may switch off truncation or padding that tokenizer.json enables (a
        # write to the Rust tokenizer); do it now, before the event loop encodes while the
        # inference thread decodes.
        self.encode("warm up")

        # transformers 5 calls the KV cache argument ``cache``; remote code may still say past_key_values.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        max_pos = getattr(self.config, "max_position_embeddings", None)
        self.info = ModelInfo(
            model_id=cfg.name,
            model_sha=sha,
            dtype=str(dtype),  # "torch.float32", as TGI's /info writes it
            device=self.device.type,
            max_position_embeddings=int(max_pos) if max_pos else None,
        )
        log.info("model loaded", extra={"model": cfg.name, "dir": str(model_dir), **self.info.__dict__})

    # -- event loop side ---------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids, not truncated (the caller decides what is too long)."""
        encoded: Any = self.tokenizer(text, add_special_tokens=add_special_tokens, truncation=False, verbose=False)
        return list(encoded["input_ids"])

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The prompt for a conversation, by the model's own chat template."""
        text: Any = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text)

    # -- inference thread side ---------------------------------------------------------------

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        # No clean-up of spaces before punctuation: incremental decoding compares prefixes.
        text = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
        return str(text)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache,
        last_only: bool,
    ) -> torch.Tensor:
        """Float32 logits: [batch, vocab] for each row's last position when ``last_only``, else
        [batch, length, vocab]. ``cache`` grows by the input's length, in place (as every
        transformers model updates a ``DynamicCache``)."""
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            self._cache_arg: cache,
            "use_cache": True,
        }
        if last_only and self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        logits: torch.Tensor = self.model(**kwargs).logits
        return (logits[:, -1] if last_only else logits).float()
