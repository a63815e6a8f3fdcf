"""The trainer's data readers (every bad-data case names file:line), tokenisation masks, the
deterministic batch order, and atomic checkpoint selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmops_dev.tiny_lm import build_tiny_lm
from llmops_workloads.training.checkpoint import MARKER, WEIGHTS, CheckpointStore
from llmops_workloads.training.data import (
    BatchOrder,
    ChatRecord,
    PairRecord,
    PromptCompletionRecord,
    Record,
    TextRecord,
    data_sha256,
    read_dataset,
    split,
)
from llmops_workloads.training.errors import ConfigError, DatasetError


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# -- readers ---------------------------------------------------------------------------------


def test_each_format_is_read_and_detected(tmp_path: Path) -> None:
    text = write_lines(tmp_path / "t.jsonl", [{"text": "hello"}, "", {"text": "world", "meta": 1}])
    fmt, rows = read_dataset(text)
    assert fmt == "text"
    assert rows == [TextRecord(f"{text}:1", "hello"), TextRecord(f"{text}:3", "world")]  # blank line skipped

    pc = write_lines(tmp_path / "pc.jsonl", [{"prompt": "Q:", "completion": " A."}])
    assert read_dataset(pc) == ("prompt-completion", [PromptCompletionRecord(f"{pc}:1", "Q:", " A.")])

    chat = write_lines(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
    )
    fmt, rows = read_dataset(chat)
    assert fmt == "chat"
    assert rows == [ChatRecord(f"{chat}:1", (("user", "hi"), ("assistant", "hello")))]

    pairs = write_lines(
        tmp_path / "p.jsonl", [{"anchor": "a", "positive": "b"}, {"anchor": "c", "positive": "d", "negative": "e"}]
    )
    fmt, rows = read_dataset(pairs)
    assert fmt == "pairs"
    assert rows == [PairRecord(f"{pairs}:1", "a", "b", None), PairRecord(f"{pairs}:2", "c", "d", "e")]


def test_a_directory_is_read_in_name_order_and_max_rows_stops_early(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    write_lines(d / "b.jsonl", [{"text": "b1"}, {"text": "b2"}])
    write_lines(d / "a.jsonl", [{"text": "a1"}])
    (d / "notes.txt").write_text("not data")
    _, rows = read_dataset(d)
    assert [r.text for r in rows if isinstance(r, TextRecord)] == ["a1", "b1", "b2"]
    _, rows = read_dataset(d, max_rows=2)
    assert len(rows) == 2


BAD_CASES = [
    # (lines, format, line number, fragment)
    ([], "auto", None, "empty file"),
    (["", "   "], "auto", None, "empty file"),
    ([{"text": "ok"}, '{"text": "unterminated'], "auto", 2, "invalid JSON"),
    ([{"text": "ok"}, "[1, 2]"], "auto", 2, "expected a JSON object, got a list"),
    ([{"text": "ok"}, {"txt": "typo"}], "auto", 2, "missing field 'text'"),
    ([{"text": "ok"}, {"text": 7}], "auto", 2, "field 'text' must be a string, got int"),
    ([{"text": "ok"}, {"text": "  "}], "auto", 2, "field 'text' is empty"),
    ([{"foo": "bar"}], "auto", 1, "cannot tell the format"),
    ([{"prompt": "p"}], "auto", 1, "missing field 'completion'"),
    ([{"prompt": "p", "completion": None}], "auto", 1, "'completion' must be a string, got null"),
    ([{"anchor": "a", "positive": "p"}, {"anchor": "a", "positive": ["p"]}], "auto", 2, "got a list"),
    ([{"anchor": "a", "positive": "p", "negative": 3}], "pairs", 1, "'negative' must be a string"),
    ([{"messages": "hi"}], "auto", 1, "'messages' must be a non-empty list"),
    ([{"messages": []}], "auto", 1, "'messages' must be a non-empty list"),
    ([{"messages": [{"role": "robot", "content": "x"}]}], "auto", 1, "messages[0].role must be one of"),
    ([{"messages": [{"role": "user", "content": 1}]}], "auto", 1, "messages[0].content must be a string"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "auto", 1, "no assistant message"),
    ([{"text": "row one"}], "pairs", 1, "missing field 'anchor'"),
    ([{"text": "ok"}, {"text": "ok"}, {"anchor": "a", "positive": "b"}], "auto", 3, "missing field 'text'"),
]


@pytest.mark.parametrize(("lines", "fmt", "line", "fragment"), BAD_CASES)
def test_bad_data_names_file_and_line(
    tmp_path: Path, lines: list[Any], fmt: str, line: int | None, fragment: str
) -> None:
    path = write_lines(tmp_path / "bad.jsonl", lines) if lines else tmp_path / "bad.jsonl"
    if not lines:
        path.write_text("")
    with pytest.raises(DatasetError) as info:
        read_dataset(path, fmt)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: " if line else f"{path}: "), message
    assert fragment in message
    assert "\n" not in message


def test_bytes_that_are_not_utf8_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=rf"^{path}:2: not UTF-8"):
        read_dataset(path)


def test_missing_paths_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or directory"):
        read_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no \*\.jsonl files"):
        read_dataset(tmp_path / "empty")


def test_data_hash_is_sha256_of_the_file(tmp_path: Path) -> None:
    import hashlib

    path = write_lines(tmp_path / "t.jsonl", [{"text": "x"}])
    assert data_sha256([path]) == hashlib.sha256(path.read_bytes()).hexdigest()
    other = write_lines(tmp_path / "u.jsonl", [{"text": "y"}])
    assert data_sha256([path, other]) != data_sha256([other, path])


# -- split and order -------------------------------------------------------------------------


def test_split_is_seeded_and_disjoint() -> None:
    rows: list[Record] = [TextRecord(f"f:{i}", str(i)) for i in range(100)]
    train, val = split(rows, 0.1, seed=7)
    assert len(val) == 10 and len(train) == 90
    assert not {r.where for r in train} & {r.where for r in val}
    assert split(rows, 0.1, seed=7) == (train, val)
    assert split(rows, 0.1, seed=8)[1] != val
    assert split(rows, 0.0, seed=7) == (rows, [])


def test_batch_order_covers_each_epoch_once_and_is_a_pure_function_of_the_seed() -> None:
    order = BatchOrder(n_rows=10, batch_size=3, seed=1, drop_last=False)
    assert order.per_epoch == 4
    epoch0 = [i for k in range(4) for i in order.rows(k)]
    epoch1 = [i for k in range(4, 8) for i in order.rows(k)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1  # reshuffled every epoch
    # A resumed run asks a fresh instance for micro-batch k: the same rows, nothing repeated or skipped.
    fresh = BatchOrder(n_rows=10, batch_size=3, seed=1, drop_last=False)
    assert [fresh.rows(k) for k in (6, 2, 5)] == [order.rows(6), order.rows(2), order.rows(5)]
    dropped = BatchOrder(n_rows=10, batch_size=3, seed=1, drop_last=True)
    assert dropped.per_epoch == 3 and all(len(dropped.rows(k)) == 3 for k in range(9))
    with pytest.raises(DatasetError, match="no full batch"):
        BatchOrder(n_rows=2, batch_size=3, seed=1, drop_last=True)


# -- tokenisation (the tiny local model's tokenizer) -----------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm"))


def test_prompt_tokens_are_not_trained_on(tokenizer: Any) -> None:
    from llmops_workloads.training.causal_lm import IGNORE, Encoder

    ex = Encoder(tokenizer, 64, "error").encode(PromptCompletionRecord("f:1", "Question: why?", " because"))
    assert ex is not None
    prompt = tokenizer("Question: why?")["input_ids"]
    completion = tokenizer(" because", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ex.ids.tolist() == prompt + completion
    # Position t predicts t+1: targets are the completion tokens, from the last prompt position on.
    assert ex.targets.tolist() == [IGNORE] * (len(prompt) - 1) + completion + [IGNORE]
    assert ex.n_targets == len(completion)


def test_only_assistant_turns_are_trained_on(tokenizer: Any) -> None:
    from llmops_workloads.training.causal_lm import IGNORE, Encoder

    record = ChatRecord(
        "f:1",
        (("system", "be brief"), ("user", "hi"), ("assistant", "hello there"), ("user", "bye"), ("assistant", "ok")),
    )
    ex = Encoder(tokenizer, 256, "error").encode(record)
    assert ex is not None
    full = tokenizer.apply_chat_template(record.as_dicts(), tokenize=False)
    assert tokenizer.decode(ex.ids.tolist()) == full
    trained = [t for t in ex.targets.tolist() if t != IGNORE]
    assert tokenizer.decode(trained) == "hello there<|im_end|>\nok<|im_end|>\n"


def test_over_long_rows_name_file_and_line_or_are_truncated(tokenizer: Any) -> None:
    from llmops_workloads.training.causal_lm import Encoder

    long = TextRecord("data.jsonl:12", "the quick brown fox " * 40)
    with pytest.raises(DatasetError, match=r"^data\.jsonl:12: \d+ tokens, over hyperparameters.maxSeqLength 32"):
        Encoder(tokenizer, 32, "error").encode(long)
    ex = Encoder(tokenizer, 32, "truncate").encode(long)
    assert ex is not None and len(ex.ids) == 32
    # A completion cut off entirely leaves nothing to learn: dropped in truncate mode.
    cut = PromptCompletionRecord("data.jsonl:13", "word " * 60, " answer")
    assert Encoder(tokenizer, 32, "truncate").encode(cut) is None
    with pytest.raises(DatasetError, match=r"^data\.jsonl:13: "):
        Encoder(tokenizer, 32, "error").encode(cut)


def test_chat_rows_need_a_chat_template(tokenizer: Any) -> None:
    from llmops_workloads.training.causal_lm import Encoder

    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = None
    record = ChatRecord("c.jsonl:4", (("user", "hi"), ("assistant", "yo")))
    with pytest.raises(ConfigError, match=r"^c\.jsonl:4: chat rows need a tokenizer with a chat template"):
        Encoder(tokenizer, 64, "error").encode(record)


# -- checkpoints -----------------------------------------------------------------------------


def _save(store: CheckpointStore, step: int) -> None:
    import torch

    weights = {"layer.weight": torch.full((2, 2), float(step))}
    store.save(step, weights, {"micro_batches": step * 2}, {"fingerprint": {"x": 1}})


def test_the_latest_complete_checkpoint_is_picked_never_a_half_written_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints", keep=5)
    _save(store, 10)
    _save(store, 20)
    root = store.root
    # A crash before the rename: only a temporary directory.
    (root / ".tmp-step-00000030-123").mkdir()
    (root / ".tmp-step-00000030-123" / WEIGHTS).write_bytes(b"partial")
    # A directory of the right name without its marker (copied in, or a filesystem that reorders).
    (root / "step-00000040").mkdir()
    (root / "step-00000040" / WEIGHTS).write_bytes(b"partial")
    # A marker whose file sizes do not match what is on disk (truncated after the fact).
    _save(store, 50)
    with open(root / "step-00000050" / WEIGHTS, "r+b") as f:
        f.truncate(10)
    # A marker naming another step.
    _save(store, 60)
    marker = json.loads((root / "step-00000060" / MARKER).read_text())
    (root / "step-00000060" / MARKER).write_text(json.dumps({**marker, "step": 61}))

    latest = store.latest()
    assert latest is not None and latest.step == 20
    weights, state = store.load(latest)
    assert weights["layer.weight"].tolist() == [[20.0, 20.0], [20.0, 20.0]]
    assert state["micro_batches"] == 40
    assert latest.meta["fingerprint"] == {"x": 1}

    store.remove_leftovers()
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints", keep=2)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step-00000005").mkdir()  # incomplete and older: removed too
    for step in (10, 20, 30):
        _save(store, step)
    assert sorted(p.name for p in store.root.iterdir()) == ["step-00000020", "step-00000030"]
    assert [c.step for c in store.complete()] == [20, 30]


def test_saving_the_same_step_twice_keeps_the_first(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints", keep=2)
    _save(store, 10)
    weights = store.root / "step-00000010" / WEIGHTS
    before = weights.stat().st_mtime_ns
    _save(store, 10)
    assert weights.stat().st_mtime_ns == before


def test_a_hub_dataset_resolves_through_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real hub path (snapshot_download), offline, from a cache laid out as the hub writes it."""
    import huggingface_hub.constants

    from llmops_workloads.training.config import DatasetConfig
    from llmops_workloads.training.data import read_dataset, resolve_dataset

    repo = tmp_path / "datasets--acme--pairs"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    rows = repo / "snapshots" / "0123abcd" / "data"
    rows.mkdir(parents=True)
    (rows / "train.jsonl").write_text('{"anchor": "a claim", "positive": "its evidence"}\n')
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    path = resolve_dataset(DatasetConfig.model_validate({"hub": {"id": "acme/pairs"}, "path": "data"}))
    assert path == rows
    fmt, records = read_dataset(path)
    assert fmt == "pairs" and len(records) == 1
    with pytest.raises(DatasetError, match=r"dataset.hub acme/missing@main: not in the local hub cache"):
        resolve_dataset(DatasetConfig.model_validate({"hub": {"id": "acme/missing"}}))
    with pytest.raises(ValueError, match=r"set dataset\.path"):
        DatasetConfig.model_validate({})
