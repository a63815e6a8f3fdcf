"""The trainer's step overhead against a bare transformers + peft loop, in one run.

Both train the same tiny causal LM (``llmops_dev.tiny_lm``, built locally) with the same LoRA
config, the same prompt/completion rows in the same batches (``data.BatchOrder``), the same AdamW,
constant schedule and gradient clipping. The bare loop is what one writes by hand: pre-tokenised
rows, pad per batch, ``model(..., labels=...)``, backward, clip, step. The trainer is
``llmops_workloads.training.loop.train`` in-process with its defaults (progress log line and
progress-file rewrite every 10 steps, signal checks, per-step progress updates); checkpoints and
evaluation are off, since they are not per-step work. Its time is the loop's own (``loopSeconds``:
first step to last step), like the bare loop's.

The two alternate (bare, trainer, trainer, bare, ...) so that drift of a shared machine hits both;
the figure is the ratio of median step times, target under 1.05.

    .venv/bin/python benchmarks/trainer_overhead.py [--steps 200] [--repeats 7] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from llmops_dev.tiny_lm import build_tiny_lm
from llmops_workloads.training.config import TrainerConfig
from llmops_workloads.training.data import BatchOrder
from llmops_workloads.training.loop import StopFlag, train
from llmops_workloads.training.progress import Progress

TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"]
LR, BATCH, MAX_LEN, SEED = 0.003, 8, 64, 42


def write_data(path: Path, rows: int = 400) -> list[dict[str, str]]:
    rng = random.Random(0)  # noqa: S311 (seeded test data)
    words = ["model", "server", "operator", "cluster", "queue", "token", "batch", "cache", "request", "stream"]
    data = []
    for _ in range(rows):
        q = " ".join(rng.choices(words, k=rng.randint(3, 8)))
        a = " ".join(rng.choices(words, k=rng.randint(4, 12)))
        data.append({"prompt": f"Question: {q}? Answer:", "completion": f" {a}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return data


def trainer_run(tiny: Path, data: Path, out: Path, steps: int, threads: int) -> float:
    """Seconds per step of the trainer's loop."""
    cfg = TrainerConfig(
        task="causal-lm",
        base_model={"name": "tiny", "path": str(tiny)},
        dataset={"path": str(data), "validation_split": 0.0},
        hyperparameters={
            "max_steps": steps,
            "learning_rate": LR,
            "lr_schedule": "constant",
            "batch_size": BATCH,
            "max_seq_length": MAX_LEN,
            "seed": SEED,
        },
        lora={"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": TARGETS},
        checkpoint_every=10**9,
        eval_at_start=False,
        output={"dir": str(out), "merge": False},
        cpu_threads=threads,
        log_level="WARNING",
    )
    outcome = train(cfg, Progress(cfg.progress_file), StopFlag())
    assert outcome.exit_code == 0, outcome.summary
    return float(outcome.summary["loopSeconds"]) / int(outcome.summary["stepsThisRun"])


def bare_run(tiny: Path, rows: list[dict[str, str]], steps: int, threads: int) -> float:
    """Seconds per step of a hand-written transformers + peft loop over the same batches."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(tiny)
    encoded = []
    for r in rows:
        p = tok(r["prompt"])["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        encoded.append((torch.tensor(p + c), torch.tensor([-100] * len(p) + c)))
    model: Any = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS)
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    order = BatchOrder(len(encoded), BATCH, SEED, drop_last=False)
    batches = [order.rows(k) for k in range(steps)]
    pad = tok.pad_token_id
    started = time.monotonic()
    for rows_k in batches:
        batch = [encoded[i] for i in rows_k]
        longest = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), longest), pad)
        labels = torch.full((len(batch), longest), -100)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = x, y, 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    float(loss.detach())  # the last step done
    return (time.monotonic() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the trainer's log lines are not the output here
    warnings.filterwarnings("ignore")  # library deprecation notices neither

    with tempfile.TemporaryDirectory(prefix="trainer-overhead-") as tmp_dir:
        tmp = Path(tmp_dir)
        tiny = build_tiny_lm(tmp / "lm")
        rows = write_data(tmp / "train.jsonl")
        # Warm-up of both (imports, allocator, first-call paths), not measured.
        bare_run(tiny, rows, 5, args.threads)
        trainer_run(tiny, tmp / "train.jsonl", tmp / "warm", 5, args.threads)
        bare, ours = [], []
        for r in range(args.repeats):
            order = ("bare", "trainer") if r % 2 == 0 else ("trainer", "bare")
            for which in order:
                gc.collect()  # the previous run's model is garbage: not during the next one's timing
                if which == "bare":
                    bare.append(bare_run(tiny, rows, args.steps, args.threads))
                else:
                    ours.append(trainer_run(tiny, tmp / "train.jsonl", tmp / f"out-{r}", args.steps, args.threads))
            print(f"repeat {r + 1}: bare {bare[-1] * 1000:.2f} ms/step, trainer {ours[-1] * 1000:.2f} ms/step")

    b, t = statistics.median(bare), statistics.median(ours)
    result = {
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "batch_size": BATCH,
        "bare_ms_per_step": [round(x * 1000, 3) for x in bare],
        "trainer_ms_per_step": [round(x * 1000, 3) for x in ours],
        "bare_median_ms": round(b * 1000, 3),
        "trainer_median_ms": round(t * 1000, 3),
        "overhead_ratio": round(t / b, 4),
    }
    print(
        f"median step: bare loop {b * 1000:.2f} ms, trainer {t * 1000:.2f} ms: "
        f"overhead ratio {t / b:.3f} ({(t / b - 1) * 100:+.1f}%), target < 1.05"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
