"""The training loop: AdamW, a warmup + constant/linear/cosine schedule, gradient accumulation,
evaluation, checkpoints, resume and SIGTERM.

It is a few dozen lines on purpose (not HF's Trainer): every step is data → forward → backward →
clip → optimizer → scheduler, plus a handful of attribute assignments for progress, so the
overhead over a bare loop stays in the noise (benchmarks/trainer_overhead.py), and checkpoint,
resume, progress and preemption are exactly what docs/trainer.md says.

Resume: the latest complete checkpoint restores the trainable weights, optimizer, scheduler, RNG
states and the number of micro-batches consumed; the data order is a pure function of the seed
(``data.BatchOrder``), so the run continues with the very next micro-batch. A checkpoint made with
another dataset or training-relevant config is refused (a permanent error), not silently mixed.

SIGTERM (or SIGINT): the current step finishes, a checkpoint is saved, the process exits
``EXIT_PREEMPTED``.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import output
from .checkpoint import CheckpointStore
from .config import CAUSAL_FORMATS, TrainerConfig, camel
from .data import BatchOrder, Record, data_sha256, dataset_files, read_dataset, resolve_dataset, split
from .errors import EXIT_OK, EXIT_PREEMPTED, ConfigError, DatasetError, PermanentError
from .progress import Progress

if TYPE_CHECKING:
    from .base import Task

log = logging.getLogger("llmops.training")


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop looks at it after every optimizer step."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> StopFlag:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.requested = True
            log.warning("stop requested: finishing the current step, then checkpointing", extra={"signal": signum})


@dataclass
class Outcome:
    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Data:
    format: str
    train: list[Record]
    validation: list[Record]
    files: list[Path]
    sha256: str


def load_data(cfg: TrainerConfig) -> Data:
    """Read and validate every row (no model needed: bad data fails within a second)."""
    ds = cfg.dataset
    path = resolve_dataset(ds)
    fmt, rows = read_dataset(path, ds.format, ds.max_rows)
    files = dataset_files(path)
    if ds.validation_path:
        _, validation = read_dataset(ds.validation_path, fmt)
        files += dataset_files(ds.validation_path)
        train = rows
    else:
        train, validation = split(rows, ds.split, cfg.hyperparameters.seed)
    if cfg.task == "embedding" and fmt != "pairs":
        raise DatasetError(f"{rows[0].where}: the embedding task reads anchor/positive pairs, not {fmt} rows")
    if cfg.task == "causal-lm" and fmt not in CAUSAL_FORMATS:
        raise DatasetError(f"{rows[0].where}: {fmt} rows are for the embedding task, not causal-lm")
    return Data(fmt, train, validation, files, data_sha256(files))


def fingerprint(cfg: TrainerConfig, data: Data) -> dict[str, Any]:
    """What a checkpoint's weights and data position depend on: resuming under anything else
    would silently train a different model."""
    h = cfg.hyperparameters
    return {
        "task": cfg.task,
        "method": cfg.method,
        "baseModel": f"{cfg.base_model.name}@{cfg.base_model.revision}",
        "dataSha256": data.sha256,
        "format": data.format,
        "trainRows": len(data.train),
        "batchSize": h.batch_size,
        "gradientAccumulation": h.gradient_accumulation,
        "maxSeqLength": h.max_seq_length,
        "seed": h.seed,
        "lora": cfg.lora.model_dump(mode="json") if cfg.method != "full" else None,
    }


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    done = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - done
    return 0.5 * (1.0 + math.cos(math.pi * done))


def _camel_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {camel(k): v for k, v in d.items()}


def train(cfg: TrainerConfig, progress: Progress, stop: StopFlag) -> Outcome:
    started = time.monotonic()
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg)
    print_ = fingerprint(cfg, data)
    done = output.read_done(out)
    if done is not None and done.get("fingerprint") == print_:
        log.info("already trained: the output is complete", extra={"dir": str(out), "steps": done.get("steps")})
        progress.state, progress.step, progress.total_steps = "succeeded", done["steps"], done["steps"]
        progress.metrics = done.get("metrics", {})
        return Outcome(EXIT_OK, _summary("succeeded", progress, done.get("outputs", {}), data, "already complete"))
    if done is not None:
        raise ConfigError(
            f"output.dir {out} holds a finished run of another config or dataset: use another directory or empty it"
        )
    if stop.requested:
        return Outcome(EXIT_PREEMPTED, _summary("preempted", progress, {}, data, "stopped before training began"))
    return Run(cfg, progress, stop, data, print_, out, started).run()


class Run:
    def __init__(
        self,
        cfg: TrainerConfig,
        progress: Progress,
        stop: StopFlag,
        data: Data,
        print_: dict[str, Any],
        out: Path,
        started: float,
    ) -> None:
        import torch

        from .base import pick_device

        self.cfg, self.progress, self.stop, self.data, self.fingerprint, self.out = (
            cfg,
            progress,
            stop,
            data,
            print_,
            out,
        )
        self.started = started
        h = cfg.hyperparameters
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        random.seed(h.seed)
        torch.manual_seed(h.seed)
        device = pick_device(cfg)
        self.task = self._build_task(device)
        self.order = BatchOrder(self.task.n_train, h.batch_size, h.seed, self.task.drop_last)
        per_step = h.gradient_accumulation
        self.total = h.max_steps or max(1, math.ceil(h.epochs * self.order.per_epoch / per_step))
        progress.total_steps = self.total
        progress.metric_name = self.task.metric_name
        self.params = list(self.task.trainable().values())
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]  # biases and norms: weight decay hurts them
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": h.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=h.learning_rate,
        )
        warmup = h.warmup_steps or round(h.warmup_ratio * self.total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, self.total, h.lr_schedule)
        )
        self.store = CheckpointStore(out / "checkpoints", cfg.keep_checkpoints)
        self.step = 0
        self.micro = 0  # micro-batches consumed: the data position

    def _build_task(self, device: Any) -> Task:
        if self.cfg.task == "embedding":
            from .embedding import EmbeddingTask

            return EmbeddingTask(self.cfg, device, self.data.train, self.data.validation)
        from .causal_lm import CausalLMTask

        return CausalLMTask(self.cfg, device, self.data.train, self.data.validation)

    # -- checkpoints ------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        import torch

        rng: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "micro_batches": self.micro,
        }

    def save_checkpoint(self) -> None:
        self.progress.state = "saving"
        t0 = time.monotonic()
        meta = {
            "epoch": self.progress.epoch,
            "microBatches": self.micro,
            "loss": self.progress.loss,
            "metrics": self.progress.metrics,
            "baseMetrics": self.progress.base_metrics,
            "fingerprint": self.fingerprint,
            "savedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        ckpt = self.store.save(self.step, self.task.trainable(), self._state(), meta)
        self.progress.checkpoint_step = ckpt.step
        log.info("checkpoint saved", extra={"step": self.step, "path": str(ckpt.path), "seconds": _since(t0)})
        self.progress.write_file()

    def resume(self) -> bool:
        """Load the newest checkpoint that loads; False when there is none."""
        import torch

        self.store.remove_leftovers()
        for ckpt in reversed(self.store.complete(warn=True)):
            if ckpt.meta.get("fingerprint") != self.fingerprint:
                diff = sorted(k for k, v in self.fingerprint.items() if ckpt.meta.get("fingerprint", {}).get(k) != v)
                raise ConfigError(
                    f"checkpoint {ckpt.path} was made with another {', '.join(diff)}: "
                    "restore that config or use another output.dir"
                )
            try:
                weights, state = self.store.load(ckpt)
                self.task.load_trainable(weights)
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                random.setstate(state["rng"]["python"])
                torch.set_rng_state(state["rng"]["torch"])
                if "cuda" in state["rng"] and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(state["rng"]["cuda"])
                micro = int(state["micro_batches"])
            except Exception as e:  # a damaged file behind a good marker: try the one before
                log.warning(
                    "cannot load checkpoint; trying an older one", extra={"path": str(ckpt.path), "error": str(e)}
                )
                continue
            self.step, self.micro = ckpt.step, micro
            self.progress.step, self.progress.resumed_from, self.progress.checkpoint_step = (
                ckpt.step,
                ckpt.step,
                ckpt.step,
            )
            self.progress.epoch = micro / self.order.per_epoch
            self.progress.metrics = dict(ckpt.meta.get("metrics") or {})
            self.progress.base_metrics = dict(ckpt.meta.get("baseMetrics") or {})  # the baseline of the first attempt
            log.info(
                "resumed from checkpoint",
                extra={"step": ckpt.step, "micro_batches": micro, "epoch": round(self.progress.epoch, 4)},
            )
            return True
        return False

    # -- the loop -----------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        self.progress.state = "evaluating"
        t0 = time.monotonic()
        metrics = self.task.evaluate()
        log.info("evaluation", extra={"step": self.step, "seconds": _since(t0), **metrics})
        return metrics

    def run(self) -> Outcome:
        import torch

        cfg, progress, task = self.cfg, self.progress, self.task
        h = cfg.hyperparameters
        resumed = self.resume()
        if not resumed and task.has_validation and cfg.eval_at_start and not self.stop.requested:
            progress.base_metrics = self.evaluate()
            progress.metrics = dict(progress.base_metrics)
        log.info(
            "training",
            extra={
                "total_steps": self.total,
                "train_rows": task.n_train,
                "micro_batches_per_epoch": self.order.per_epoch,
                "trainable_parameters": sum(p.numel() for p in self.params),
                "device": str(task.device),
            },
        )
        ga, log_steps, log_seconds = (
            h.gradient_accumulation,
            cfg.progress.log_every_steps,
            cfg.progress.log_every_seconds,
        )
        model, optimizer, scheduler, order, params = task.model, self.optimizer, self.scheduler, self.order, self.params
        model.train()
        progress.training_started()
        progress.write_file()
        interval_loss = torch.zeros((), device=task.device)
        interval_steps = 0
        last_log = time.monotonic()
        loop_started = time.monotonic()
        first_step = self.step
        while self.step < self.total:
            if self.stop.requested:
                return self.preempt(interval_loss, interval_steps)
            micro_batches = [order.rows(self.micro + i) for i in range(ga)]
            norm = task.step_norm(micro_batches)
            for rows in micro_batches:
                loss = task.loss_sum(rows) / norm
                loss.backward()  # type: ignore[no-untyped-call]
                interval_loss += loss.detach()
            self.micro += ga
            if h.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, h.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            self.step += 1
            interval_steps += 1
            progress.step = self.step
            progress.learning_rate = lr
            progress.epoch = self.micro / order.per_epoch
            now = time.monotonic()
            if self.step % log_steps == 0 or now - last_log >= log_seconds or self.step == self.total:
                mean = float(interval_loss) / interval_steps
                if not math.isfinite(mean):
                    raise PermanentError(f"training diverged: loss is {mean} at step {self.step}; lower learningRate")
                progress.loss = round(mean, 6)
                progress.log_line()
                progress.write_file()
                interval_loss.zero_()
                interval_steps, last_log = 0, now
            if cfg.eval_every and self.step % cfg.eval_every == 0 and task.has_validation and not self.stop.requested:
                progress.metrics = self.evaluate()
                progress.state = "training"
            if self.step % cfg.checkpoint_every == 0 and self.step < self.total:
                self.save_checkpoint()
                progress.state = "training"
        loop_seconds = time.monotonic() - loop_started
        return self.finish(loop_seconds, self.step - first_step)

    def preempt(self, interval_loss: Any, interval_steps: int) -> Outcome:
        """Checkpoint (unless nothing was trained since the last one) and report the stop."""
        progress = self.progress
        if interval_steps:
            progress.loss = round(float(interval_loss) / interval_steps, 6)
        if self.step > 0:
            self.save_checkpoint()
        progress.state = "preempted"
        progress.message = f"stopped by signal at step {self.step}; resumable from step {progress.checkpoint_step or 0}"
        progress.write_file()
        log.warning("preempted", extra={"step": self.step, "checkpoint_step": progress.checkpoint_step})
        return Outcome(EXIT_PREEMPTED, _summary("preempted", progress, {}, self.data, progress.message))

    def finish(self, loop_seconds: float, steps_here: int) -> Outcome:
        cfg, progress = self.cfg, self.progress
        if self.task.has_validation:
            progress.metrics = self.evaluate()
        progress.state = "saving"
        progress.write_file()
        t0 = time.monotonic()
        written = output.publish(self.out, self.task.save_output)
        card = {
            "baseModel": _camel_dict(cfg.base_model.model_dump(mode="json")),
            "task": cfg.task,
            "method": cfg.method,
            "data": {
                "sha256": self.data.sha256,
                "files": [str(p) for p in self.data.files],
                "format": self.data.format,
                "trainRows": len(self.data.train),
                "validationRows": len(self.data.validation),
            },
            "hyperparameters": _camel_dict(cfg.hyperparameters.model_dump(mode="json")),
            "lora": _camel_dict(cfg.lora.model_dump(mode="json")) if cfg.method != "full" else None,
            "metric": self.task.metric_name,
            "metrics": progress.metrics,
            "baseMetrics": progress.base_metrics,
            "steps": self.step,
            "epochs": round(progress.epoch, 4),
            "trainSeconds": round(time.monotonic() - self.started, 1),
            "loopSeconds": round(loop_seconds, 3),
            "stepsThisRun": steps_here,
            "outputs": written,
            "fingerprint": self.fingerprint,
            "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        output.write_card(self.out, card)
        log.info("output written", extra={"dir": str(self.out), "seconds": _since(t0), **written})
        if cfg.output.clean_checkpoints:
            import shutil

            shutil.rmtree(self.store.root, ignore_errors=True)
        progress.state = "succeeded"
        progress.message = f"trained {self.step} steps"
        progress.write_file()
        summary = _summary("succeeded", progress, written, self.data, progress.message)
        summary["loopSeconds"], summary["stepsThisRun"] = round(loop_seconds, 3), steps_here
        return Outcome(EXIT_OK, summary)


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 3)


def _summary(
    status: str, progress: Progress, outputs: dict[str, str], data: Data | None, message: str
) -> dict[str, Any]:
    """What the termination message and the last log line say."""
    return {
        "status": status,
        "message": message,
        "step": progress.step,
        "totalSteps": progress.total_steps,
        "checkpointStep": progress.checkpoint_step,
        "metric": progress.metric_name,
        "metrics": progress.metrics,
        "baseMetrics": progress.base_metrics,
        "outputs": outputs,
        "dataSha256": data.sha256 if data else None,
    }
