"""The trainer for real, as the Job runs it (``python -m llmops_workloads.training --config``): LoRA
on the tiny local causal LM, kill -9 and SIGTERM with resume, contrastive fine-tuning of
all-MiniLM-L6-v2 on SciFact pairs served by the real embedding server, permanent errors.

Everything runs on CPU with one torch thread per trainer (steady step times on a shared machine),
short sequences and a few dozen steps."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from llmops_dev.cluster.controlplane import free_port
from llmops_dev.tiny_lm import build_tiny_lm
from llmops_workloads.training.checkpoint import CheckpointStore
from llmops_workloads.training.errors import EXIT_PERMANENT, EXIT_PREEMPTED
from servers import ServerProcess, minilm_path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LLMOPS_SHARED_DIR", REPO.parent / "shared"))
SCIFACT = SHARED / "data" / "scifact"
MODULE = "llmops_workloads.training"
# The tiny model's output layer is random and frozen unless LoRA targets it too; its final norm
# bounds what the other layers can do to the logits, so lm_head is in the list.
TINY_TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"]


class Trainer:
    """One trainer process; each start in the same workdir logs to its own file."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"run-{self.runs}.log"

    def start(self) -> subprocess.Popen[bytes]:
        self.runs += 1
        with self.log_path.open("wb") as out, (self.workdir / f"run-{self.runs}.err").open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--config", str(self.config_path)], env=self.env, stdout=out, stderr=err
            )
        return self.proc

    def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"trainer did not finish in {timeout}s:\n{self.output()}") from None

    def run(self, timeout: float = 120) -> int:
        self.start()
        return self.wait(timeout)

    def stderr(self) -> str:
        return (self.workdir / f"run-{self.runs}.err").read_text(errors="replace")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] + "\n--- stderr ---\n" + self.stderr()[-3000:]

    def records(self, message: str | None = None) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        recs = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in recs if message is None or r["message"] == message]

    def losses(self) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in self.records("progress")}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310
        return json.loads(r.read())


def wait_until(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited {proc.returncode} before: {what}")
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for: {what}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm")


@pytest.fixture(scope="module")
def causal_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Questions and answers with a pattern to learn: the answer repeats the question's subject."""
    rng = random.Random(0)  # noqa: S311 (seeded test data)
    subjects = ["the model", "a server", "the operator", "a cluster", "the queue"]
    verbs = ["reads", "writes", "sends", "opens", "closes"]
    objects = ["the token", "a batch", "the cache", "a request", "the stream"]
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with path.open("w") as f:
        for _ in range(200):
            s, v, o = rng.choice(subjects), rng.choice(verbs), rng.choice(objects)
            f.write(json.dumps({"prompt": f"Question: what does {s} do? Answer:", "completion": f" {s} {v} {o}."}))
            f.write("\n")
    return path


def causal_config(tiny: Path, data: Path, out: Path, steps: int, **extra: Any) -> dict[str, Any]:
    return {
        "task": "causal-lm",
        "baseModel": {"name": "llmops/tiny-lm", "path": str(tiny)},
        "method": "lora",
        "dataset": {"path": str(data), "validationSplit": 0.1},
        "hyperparameters": {
            "maxSteps": steps,
            "learningRate": 0.01,
            "lrSchedule": "constant",
            "batchSize": 8,
            "maxSeqLength": 64,
        },
        "lora": {"r": 8, "alpha": 16, "targetModules": TINY_TARGETS},
        "checkpointEvery": 10,
        "output": {"dir": str(out)},
        "progress": {"logEverySteps": 1, "terminationMessagePath": str(out.parent / "termination-log")},
        "cpuThreads": 1,
        **extra,
    }


def termination(out: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out.parent / "termination-log").read_text())
    return result


def test_causal_lm_lora_learns_reports_progress_and_writes_loadable_outputs(
    tiny: Path, causal_data: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    port = free_port()
    cfg = causal_config(tiny, causal_data, out, 40)
    cfg["progress"]["port"] = port
    trainer = Trainer(cfg, tmp_path)
    proc = trainer.start()
    snapshots, metrics_text = [], ""
    while proc.poll() is None:
        try:
            snapshots.append(get_json(f"http://127.0.0.1:{port}/progress"))
            if not metrics_text:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    metrics_text = r.read().decode()
        except OSError:
            pass
        time.sleep(0.05)
    assert trainer.wait() == 0, trainer.output()

    # The endpoint answered while the trainer ran.
    assert snapshots, "GET /progress never answered during the run"
    states = {s["state"] for s in snapshots}
    assert states <= {"loading", "evaluating", "training", "saving", "succeeded"}
    assert states & {"loading", "evaluating", "training", "saving"}, states
    assert {"step", "totalSteps", "epoch", "loss", "learningRate", "etaSeconds", "evalMetric"} <= set(snapshots[-1])
    assert "llmops_train_step" in metrics_text and "llmops_train_state" in metrics_text
    print(f"/progress answered {len(snapshots)} times; states seen: {sorted({s['state'] for s in snapshots})}")

    losses = trainer.losses()
    assert sorted(losses) == list(range(1, 41))
    first, last = statistics.mean(losses[s] for s in range(1, 6)), statistics.mean(losses[s] for s in range(36, 41))
    card = json.loads((out / "training.json").read_text())
    print(
        f"loss: first 5 steps {first:.3f}, last 5 steps {last:.3f}; "
        f"eval loss {card['baseMetrics']['eval_loss']} -> {card['metrics']['eval_loss']}"
    )
    assert last < first - 1.5
    assert card["metrics"]["eval_loss"] < card["baseMetrics"]["eval_loss"] - 1.5
    assert card["steps"] == 40
    assert card["data"]["sha256"] == hashlib.sha256(causal_data.read_bytes()).hexdigest()
    assert card["hyperparameters"]["learningRate"] == 0.01
    assert card["outputs"] == {"adapter": "adapter", "model": "model"}
    assert "llmops/tiny-lm" in (out / "README.md").read_text()
    assert json.loads((out / "progress.json").read_text())["state"] == "succeeded"
    done = termination(out)
    assert (done["status"], done["exitCode"], done["step"], done["outputs"]["model"]) == ("succeeded", 0, 40, "model")
    assert not (out / "checkpoints").exists()  # cleaned once the output is complete

    # The merged model loads as the generation server loads it; the adapter loads with peft; both agree.
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    ids = tokenizer(["Question: what does the queue do? Answer:"], return_tensors="pt")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), out / "adapter")
    for model in (merged, base, adapted):
        model.train(False)  # dropout off
    with torch.no_grad():
        merged_logits, base_logits = merged(ids).logits, base(ids).logits
        adapted_logits = adapted(input_ids=ids).logits
    assert torch.allclose(merged_logits, adapted_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-2)

    # A restarted pod whose run already finished: nothing to redo.
    assert trainer.run() == 0, trainer.output()
    assert trainer.records("already trained: the output is complete")


def test_kill_9_resumes_from_the_last_checkpoint_and_sigterm_checkpoints(
    tiny: Path, causal_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    port = free_port()
    total = 200
    cfg = causal_config(tiny, causal_data, out, total)
    cfg["progress"]["port"] = port
    cfg["hyperparameters"]["learningRate"] = 0.003
    trainer = Trainer(cfg, tmp_path)
    checkpoints = CheckpointStore(out / "checkpoints", keep=2)

    def progress() -> dict[str, Any] | None:
        try:
            snap: dict[str, Any] = get_json(f"http://127.0.0.1:{port}/progress")
        except OSError:
            return None
        return snap

    # 1. kill -9 a few steps after a checkpoint.
    proc = trainer.start()

    def past_a_checkpoint() -> bool:
        snap = progress()
        return bool(snap and snap["checkpointStep"] and snap["step"] >= snap["checkpointStep"] + 3)

    wait_until("3 steps past a first checkpoint", past_a_checkpoint, proc)
    proc.kill()
    assert trainer.wait() == -signal.SIGKILL, "the trainer finished before it could be killed"
    killed_losses = trainer.losses()
    latest = checkpoints.latest()
    assert latest is not None
    resume_step = latest.step
    assert resume_step % 10 == 0 and resume_step < total

    # 2. Resume; SIGTERM once it has trained a while: it finishes the step, checkpoints, exits 143.
    proc = trainer.start()

    def trained_past_the_checkpoint() -> bool:
        snap = progress()
        return bool(snap and snap["state"] == "training" and snap["step"] >= resume_step + 15)

    wait_until("15 steps after the resume, seen through GET /progress", trained_past_the_checkpoint, proc)
    proc.send_signal(signal.SIGTERM)
    assert trainer.wait(60) == EXIT_PREEMPTED, trainer.output()
    resumed = trainer.records("resumed from checkpoint")
    assert [(r["step"], r["micro_batches"]) for r in resumed] == [(resume_step, resume_step)]
    second = sorted(trainer.losses())
    assert second == list(range(resume_step + 1, second[-1] + 1)), "steps must continue from the checkpoint"
    stopped_at = trainer.records("preempted")[0]["step"]
    assert stopped_at == second[-1]
    latest = checkpoints.latest()
    assert latest is not None and latest.step == stopped_at
    preempted = termination(out)
    assert (preempted["status"], preempted["exitCode"], preempted["checkpointStep"]) == ("preempted", 143, stopped_at)
    # Same data order, same RNG and optimizer state: the redone steps give the very same losses.
    redone = sorted(set(killed_losses) & set(trainer.losses()))
    assert redone, "the killed run logged no step after its checkpoint"
    for step in redone:
        assert trainer.losses()[step] == pytest.approx(killed_losses[step], rel=1e-4), step
    print(
        f"killed at step {max(killed_losses)} (checkpoint {resume_step}); resumed at {resume_step + 1}; "
        f"SIGTERM at step {stopped_at}; {len(redone)} redone steps gave identical losses"
    )

    # 3. The rerun finishes the remaining steps: the total is the target, nothing repeated.
    assert trainer.run() == 0, trainer.output()
    assert trainer.records("resumed from checkpoint")[0]["step"] == stopped_at
    assert sorted(trainer.losses()) == list(range(stopped_at + 1, total + 1))
    card = json.loads((out / "training.json").read_text())
    assert card["steps"] == total
    assert card["stepsThisRun"] == total - stopped_at
    assert card["baseMetrics"]["eval_loss"] > card["metrics"]["eval_loss"]  # the first attempt's baseline kept
    assert termination(out)["status"] == "succeeded"


@pytest.fixture(scope="module")
def scifact_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """(claim, title + abstract it cites) pairs from SciFact's training qrels."""
    assert SCIFACT.exists(), f"the shared data set is missing: {SCIFACT}"
    queries = {}
    for line in (SCIFACT / "queries.jsonl").read_text().splitlines():
        q = json.loads(line)
        queries[q["_id"]] = q["text"]
    qrels = [line.split("\t")[:2] for line in (SCIFACT / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    cited = {doc for _, doc in qrels}
    corpus = {}
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            doc = json.loads(line)
            if doc["_id"] in cited:
                corpus[doc["_id"]] = f"{doc['title']}. {doc['text']}"
    pairs = [{"anchor": queries[q], "positive": corpus[d]} for q, d in qrels if q in queries and d in corpus][:220]
    path = tmp_path_factory.mktemp("scifact") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    result: np.ndarray = (a * b).sum(axis=1)
    return result


def test_embedding_fine_tune_is_served_by_the_embedding_server(scifact_pairs: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "out"
    cfg = {
        "task": "embedding",
        "baseModel": {"name": "sentence-transformers/all-MiniLM-L6-v2", "path": minilm_path()},
        "method": "full",
        "dataset": {"path": str(scifact_pairs), "validationSplit": 0.27},
        "hyperparameters": {
            "maxSteps": 16,
            "learningRate": 5.0e-5,
            "warmupSteps": 2,
            "batchSize": 16,
            "maxSeqLength": 64,
        },
        "checkpointEvery": 1000,
        "output": {"dir": str(out)},
        "progress": {"logEverySteps": 1},
        "cpuThreads": 1,
    }
    trainer = Trainer(cfg, tmp_path / "train")
    assert trainer.run(timeout=240) == 0, trainer.output()
    losses = trainer.losses()
    assert sorted(losses) == list(range(1, 17))
    # 160 training pairs in batches of 16: epoch 1 is steps 1-10, epoch 2 steps 11-16. Single
    # in-batch losses are noisy (0.02 to 0.9), so the epochs' means are compared.
    first, last = statistics.mean(losses[s] for s in range(1, 11)), statistics.mean(losses[s] for s in range(11, 17))
    card = json.loads((out / "training.json").read_text())
    base_mrr, mrr = card["baseMetrics"]["mrr@10"], card["metrics"]["mrr@10"]
    print(
        f"contrastive loss: epoch 1 mean {first:.3f}, epoch 2 mean {last:.3f}; "
        f"validation ({card['data']['validationRows']} pairs) MRR@10 {base_mrr} -> {mrr}, "
        f"recall@1 {card['baseMetrics']['recall@1']} -> {card['metrics']['recall@1']}"
    )
    assert last < first * 0.6
    assert mrr >= base_mrr - 0.02  # 16 steps must not have wrecked the model (it usually improves)

    texts = [json.loads(line)["anchor"] for line in scifact_pairs.read_text().splitlines()[:16]]
    server = ServerProcess(
        "llmops_workloads.embedding", {"model": {"name": "ft", "path": str(out / "model")}}, tmp_path
    )
    server.start()
    try:
        served = np.array(httpx.post(f"{server.url}/embed", json={"inputs": texts}, timeout=60).json())
        info = server.get_json("/info")
    finally:
        server.stop()
    assert info["model_id"] == "ft" and info["pooling"] == "mean" and info["dimension"] == 384
    base = SentenceTransformer(minilm_path(), device="cpu").encode(texts, convert_to_numpy=True)
    tuned = SentenceTransformer(str(out / "model"), device="cpu").encode(texts, convert_to_numpy=True)
    to_base = cosine_rows(served, base)
    print(
        f"cosine of served fine-tuned vectors to the base model's: mean {to_base.mean():.4f}, min {to_base.min():.4f}"
    )
    assert to_base.max() < 0.9999  # every vector moved
    assert cosine_rows(served, tuned).min() >= 0.9999  # sentence-transformers loads the same model


def test_a_hub_id_resolves_through_the_hub_cache_for_full_fine_tuning(
    tiny: Path, causal_data: Path, tmp_path: Path
) -> None:
    """The production path: a Hugging Face id (no local path) found in a hub cache laid out the
    way huggingface_hub writes it, with HF_HUB_OFFLINE=1."""
    from safetensors.torch import load_file

    repo = tmp_path / "hf" / "hub" / "models--llmops--tiny-lm"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "out"
    cfg = causal_config(tiny, causal_data, out, 3, method="full")
    cfg["baseModel"] = {"name": "llmops/tiny-lm", "revision": "main"}
    trainer = Trainer(cfg, tmp_path / "run", env={"HF_HOME": str(tmp_path / "hf")})
    assert trainer.run() == 0, trainer.output()
    card = json.loads((out / "training.json").read_text())
    assert card["outputs"] == {"model": "model"} and card["lora"] is None
    tuned, base = load_file(str(out / "model" / "model.safetensors")), load_file(str(tiny / "model.safetensors"))
    assert tuned.keys() == base.keys()
    assert any(not (tuned[k] == base[k]).all() for k in base)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("bad-data", "train.jsonl:3: invalid JSON"),
        ("bad-config", "lora.rank: Extra inputs are not permitted"),
        ("qlora-on-cpu", "method qlora needs a CUDA GPU"),
        ("model-not-found", "baseModel llmops/no-such-model@main: not in the hub cache"),
    ],
)
def test_permanent_errors_exit_42_with_one_line_naming_the_cause(
    tiny: Path, causal_data: Path, tmp_path: Path, case: str, fragment: str
) -> None:
    out = tmp_path / "out"
    data = tmp_path / "train.jsonl"
    shutil.copy(causal_data, data)
    cfg = causal_config(tiny, data, out, 5)
    env = {"HF_HOME": str(tmp_path / "hf")}
    if case == "bad-data":
        lines = data.read_text().splitlines()
        lines[2] = lines[2][:-5]
        data.write_text("\n".join(lines) + "\n")
    elif case == "bad-config":
        cfg["lora"] = {"rank": 8}
    elif case == "qlora-on-cpu":
        cfg["method"] = "qlora"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        cfg["baseModel"] = {"name": "llmops/no-such-model"}
    trainer = Trainer(cfg, tmp_path / "run", env=env)
    if case == "bad-config":  # the message names the line of the bad key
        lines = trainer.config_path.read_text().splitlines()
        fragment = f"config.yaml:{lines.index('  rank: 8') + 1}: {fragment}"
    assert trainer.run() == EXIT_PERMANENT, trainer.output()
    errors = trainer.stderr().strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), trainer.stderr()
    assert fragment in errors[0]
    if case != "bad-config":  # a config that does not parse has no termination path of its own
        failed = termination(out)
        assert (failed["status"], failed["exitCode"], failed["permanent"]) == ("failed", EXIT_PERMANENT, True)
        assert fragment in failed["message"]
