"""The trainer's config contract (bad config: one line naming file and line), the learning-rate
schedule, and the progress reporting (endpoint, file, termination message)."""

from __future__ import annotations

import itertools
import json
import urllib.request
from pathlib import Path

import pytest
import torch

from llmops_workloads.training.config import TrainerConfig, load_config
from llmops_workloads.training.errors import ConfigError
from llmops_workloads.training.loop import lr_factor
from llmops_workloads.training.progress import Progress, ProgressServer, write_termination_message

GOOD = """\
task: causal-lm
baseModel:
  name: Qwen/Qwen2.5-0.5B
  revision: main
method: lora
dataset:
  path: /data/train.jsonl
  format: prompt-completion
  validationSplit: 0.05
hyperparameters:
  maxSteps: 1000
  learningRate: 2.0e-4
  lrSchedule: cosine
  warmupRatio: 0.03
  batchSize: 4
  gradientAccumulation: 8
  maxSeqLength: 1024
lora:
  r: 16
  alpha: 32
  targetModules: all-linear
checkpointEvery: 100
keepCheckpoints: 3
evalEvery: 200
output:
  dir: /output
  merge: true
progress:
  port: 8081
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_documented_config_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.task == "causal-lm"
    assert cfg.base_model.name == "Qwen/Qwen2.5-0.5B"
    assert cfg.hyperparameters.gradient_accumulation == 8
    assert cfg.lora.target_modules == "all-linear"
    assert cfg.dataset.split == 0.05
    assert cfg.progress.port == 8081
    assert cfg.progress_file == Path("/output/progress.json")
    assert cfg.progress.termination_message_path == "/dev/termination-log"


def test_validation_defaults(tmp_path: Path) -> None:
    base = "task: embedding\nbaseModel: {name: m}\ndataset: {path: d}\noutput: {dir: o}\n"
    assert load_config(write(tmp_path, base)).dataset.split == 0.1
    cfg = load_config(write(tmp_path, base.replace("{path: d}", "{path: d, validationPath: v}")))
    assert cfg.dataset.split == 0.0


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_OUTPUT__DIR", "/elsewhere")
    monkeypatch.setenv("LLMOPS_HYPERPARAMETERS__LEARNING_RATE", "0.001")
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.output.dir == "/elsewhere"
    assert cfg.hyperparameters.learning_rate == 0.001
    assert cfg.hyperparameters.batch_size == 4  # the rest of the section still comes from the file


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  learningRate: 2.0e-4", "  learningRate: -1", ":12: hyperparameters.learningRate: Input should be greater"),
        ("  r: 16", "  rank: 16", ":19: lora.rank: Extra inputs are not permitted"),
        ("method: lora", "method: dora", ":5: method: Input should be 'lora', 'qlora' or 'full'"),
        ("  format: prompt-completion", "  format: pairs", ":8: dataset.format pairs is for the embedding"),
        ("  warmupRatio: 0.03", "  warmupRatio: 0.03\n  warmupSteps: 5", ":10: hyperparameters: set warmupSteps or"),
        ("  name: Qwen/Qwen2.5-0.5B\n", "", ":2: baseModel.name: required"),
        ("  batchSize: 4", "  batchSize: four", ":15: hyperparameters.batchSize: Input should be a valid integer"),
        (
            "  port: 8081",
            "  port: [8081",
            ":30: invalid YAML: expected ',' or ']', but got '<stream end>' (a flow sequence started at line 29)",
        ),
    ],
)
def test_bad_config_is_one_line_naming_file_and_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path) + expected), message
    assert "\n" not in message


def test_a_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_embedding_rejects_causal_formats_and_qlora() -> None:
    base = {"task": "embedding", "base_model": {"name": "m"}, "output": {"dir": "o"}}
    with pytest.raises(ValueError, match="embedding task reads pairs"):
        TrainerConfig(**base, dataset={"path": "d", "format": "chat"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="qlora is for causal-lm"):
        TrainerConfig(**base, dataset={"path": "d"}, method="qlora")  # type: ignore[arg-type]


def test_learning_rate_schedules() -> None:
    assert [lr_factor(s, 4, 10, "constant") for s in range(6)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    assert [round(lr_factor(s, 0, 4, "linear"), 3) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    cosine = [lr_factor(s, 0, 10, "cosine") for s in range(11)]
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5) and cosine[10] == pytest.approx(0.0)
    assert all(a >= b for a, b in itertools.pairwise(cosine))


def test_the_scheduler_drives_the_optimizer_as_lr_factor_says() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 2, 6, "linear"))
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_factor(s, 2, 6, "linear") for s in range(6)])


def test_progress_endpoint_and_file(tmp_path: Path) -> None:
    progress = Progress(tmp_path / "progress.json")
    progress.total_steps, progress.metric_name = 100, "eval_loss"
    progress.training_started()
    progress.step, progress.loss, progress.learning_rate, progress.epoch = 25, 1.5, 1e-4, 0.25
    progress.metrics = {"eval_loss": 1.7, "perplexity": 5.47}
    server = ProgressServer(progress, "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/progress", timeout=5) as r:
            snap = json.loads(r.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        server.stop()
    assert snap["state"] == "training"
    assert (snap["step"], snap["totalSteps"], snap["loss"], snap["epoch"]) == (25, 100, 1.5, 0.25)
    assert snap["evalMetric"] == {"name": "eval_loss", "value": 1.7}
    assert snap["etaSeconds"] is not None and snap["etaSeconds"] >= 0
    assert "llmops_train_step 25.0" in metrics
    assert "llmops_train_total_steps 100.0" in metrics
    assert 'llmops_train_eval_metric{metric="perplexity"} 5.47' in metrics
    assert 'llmops_train_state{state="training"} 1.0' in metrics
    progress.write_file()
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 25


def test_termination_message_is_written_only_where_kubernetes_would_have_it(tmp_path: Path) -> None:
    default = str(tmp_path / "termination-log")
    assert not write_termination_message(default, {"status": "succeeded"}, default)  # not in a pod: skipped
    assert not (tmp_path / "termination-log").exists()
    (tmp_path / "termination-log").write_text("")  # the kubelet creates the file
    assert write_termination_message(default, {"status": "succeeded"}, default)
    assert json.loads((tmp_path / "termination-log").read_text()) == {"status": "succeeded"}
    configured = tmp_path / "custom" / "msg"
    assert not write_termination_message(str(configured), {"status": "x"}, default)  # no directory
    configured.parent.mkdir()
    assert write_termination_message(str(configured), {"status": "x", "metrics": {"m": 1}}, default)
    huge = {"status": "succeeded", "metrics": {f"m{i}": i for i in range(1000)}}
    assert write_termination_message(str(configured), huge, default)
    assert len(configured.read_bytes()) <= 4096
    assert json.loads(configured.read_text()) == {"status": "succeeded"}
