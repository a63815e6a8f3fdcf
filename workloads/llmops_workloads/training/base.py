"""What both tasks share: finding the base model, the device and precision, LoRA, and the
interface the training loop drives (``Task``).

The base model is found the way the servers find theirs: ``path`` (a PVC), a local directory given
as ``name``, or a Hugging Face id through ``huggingface_hub.snapshot_download`` (the hub cache;
``HF_HUB_OFFLINE=1`` keeps it offline). A model that cannot be found is a permanent error unless the
cause may pass (the hub unreachable while online).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from .config import BaseModelConfig, TrainerConfig
from .errors import ModelNotFoundError, UnsupportedError

log = logging.getLogger("llmops.training")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py", "tokenizer*", "1_Pooling/*"]


def resolve_model_dir(cfg: BaseModelConfig) -> Path:
    """A local directory holding the base model."""
    if cfg.path:
        if not Path(cfg.path).is_dir():
            raise ModelNotFoundError(f"baseModel.path {cfg.path}: no such directory")
        return Path(cfg.path)
    if Path(cfg.name).is_dir():
        return Path(cfg.name)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(
                cfg.name, revision=cfg.revision, token=os.environ.get("HF_TOKEN") or None, allow_patterns=HUB_PATTERNS
            )
        )
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as e:
        raise ModelNotFoundError(f"baseModel {cfg.name}@{cfg.revision}: {type(e).__name__}") from None
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise ModelNotFoundError(
                f"baseModel {cfg.name}@{cfg.revision}: not in the hub cache ({os.environ.get('HF_HOME', '~/.cache')}) "
                "and HF_HUB_OFFLINE is set"
            ) from None
        raise  # online but unreachable: worth a retry


def pick_device(cfg: TrainerConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UnsupportedError("device cuda: this pod has no CUDA GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_dtype(cfg: TrainerConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where asked for, or by default on a GPU that has it; else full fp32."""
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def check_qlora(device: torch.device) -> None:
    if device.type != "cuda":
        raise UnsupportedError("method qlora needs a CUDA GPU (4-bit bitsandbytes kernels); use method lora on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UnsupportedError("method qlora needs the bitsandbytes package, which this image does not have")


def lora_config(cfg: TrainerConfig, task_type: str) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
    )


def apply_lora(model: torch.nn.Module, cfg: TrainerConfig, task_type: str) -> torch.nn.Module:
    from peft import get_peft_model

    try:
        peft_model: Any = get_peft_model(model, lora_config(cfg, task_type))
    except ValueError as e:  # target modules that the model does not have
        raise UnsupportedError(f"lora: {str(e).splitlines()[0]}") from None
    # Where the adapter says its base is: the configured id, not a pod-local cache path.
    peft_model.peft_config["default"].base_model_name_or_path = cfg.base_model.name
    result: torch.nn.Module = peft_model
    return result


class Task(ABC):
    """What the loop needs from a task. ``loss_sum(rows) / step_norm(step's micro-batches)`` summed
    over a step's micro-batches is the step's loss, so gradient accumulation gives the same
    gradient as one big batch."""

    metric_name: str
    higher_is_better: bool
    drop_last: bool
    model: torch.nn.Module
    n_train: int
    has_validation: bool

    def __init__(self, cfg: TrainerConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        dtype = autocast_dtype(cfg, device)
        self._autocast_dtype = dtype

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def load_trainable(self, weights: dict[str, torch.Tensor]) -> None:
        params = self.trainable()
        if set(weights) != set(params):
            missing, extra = sorted(set(params) - set(weights))[:3], sorted(set(weights) - set(params))[:3]
            raise ValueError(f"checkpoint weights do not match the model (missing {missing}, unexpected {extra})")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name].to(p.device, p.dtype))

    @abstractmethod
    def step_norm(self, micro_batches: list[list[int]]) -> float: ...

    @abstractmethod
    def loss_sum(self, rows: list[int]) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self) -> dict[str, float]: ...

    @abstractmethod
    def save_output(self, out: Path) -> dict[str, str]:
        """Write the final model into ``out``; return {kind: directory name} of what was written."""
