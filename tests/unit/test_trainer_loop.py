"""The loop's arithmetic on the tiny local model: gradient accumulation gives the gradient of the
whole batch (token-weighted), and a checkpoint's weights load back into a fresh task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from llmops_dev.tiny_lm import build_tiny_lm
from llmops_workloads.training.causal_lm import CausalLMTask
from llmops_workloads.training.config import TrainerConfig
from llmops_workloads.training.data import read_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainerConfig, list[Any]]:
    tmp = tmp_path_factory.mktemp("loop")
    tiny = build_tiny_lm(tmp / "lm")
    data = tmp / "train.jsonl"
    # Rows of very different lengths: per-batch means would weigh their tokens differently.
    rows = [{"prompt": "Question " + "word " * (i * 3), "completion": " answer" * (1 + i % 4)} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainerConfig(
        task="causal-lm",
        base_model={"name": "tiny", "path": str(tiny)},
        dataset={"path": str(data)},
        lora={"dropout": 0.0, "target_modules": ["q_proj", "v_proj", "lm_head"]},
        output={"dir": str(tmp / "out")},
    )
    _, records = read_dataset(data)
    return cfg, records


def _grads(task: CausalLMTask, micro_batches: list[list[int]]) -> dict[str, torch.Tensor]:
    task.model.zero_grad(set_to_none=True)
    norm = task.step_norm(micro_batches)
    for rows in micro_batches:
        (task.loss_sum(rows) / norm).backward()  # type: ignore[no-untyped-call]
    return {n: p.grad.clone() for n, p in task.trainable().items() if p.grad is not None}


def test_gradient_accumulation_gives_the_whole_batch_gradient(setup: tuple[TrainerConfig, list[Any]]) -> None:
    cfg, records = setup
    torch.manual_seed(0)
    task = CausalLMTask(cfg, torch.device("cpu"), records, [])
    with torch.no_grad():  # LoRA starts with B = 0: move it so that every adapter matrix gets a gradient
        for name, p in task.trainable().items():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    whole = _grads(task, [list(range(8))])
    accumulated = _grads(task, [[0, 1, 2], [3, 4], [5, 6, 7]])
    assert whole.keys() == accumulated.keys() and len(whole) > 0
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-6)


def test_checkpoint_weights_load_into_a_fresh_task(setup: tuple[TrainerConfig, list[Any]], tmp_path: Path) -> None:
    from llmops_workloads.training.checkpoint import CheckpointStore

    cfg, records = setup
    torch.manual_seed(0)
    trained = CausalLMTask(cfg, torch.device("cpu"), records, [])
    with torch.no_grad():
        for p in trained.trainable().values():
            p.add_(0.01)
    store = CheckpointStore(tmp_path, keep=1)
    store.save(3, trained.trainable(), {"micro_batches": 3}, {})
    ckpt = store.latest()
    assert ckpt is not None
    weights, _ = store.load(ckpt)
    torch.manual_seed(1)
    fresh = CausalLMTask(cfg, torch.device("cpu"), records, [])
    fresh.load_trainable(weights)
    for name, p in fresh.trainable().items():
        torch.testing.assert_close(p, trained.trainable()[name])
    with pytest.raises(ValueError, match="do not match the model"):
        fresh.load_trainable({"nope": torch.zeros(1)})
