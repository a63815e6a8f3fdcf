"""Training data: JSONL readers that validate every row, the train/validation split, the data hash,
and the deterministic order batches are drawn in.

Every problem is a ``DatasetError`` naming ``file:line``: a bad row found after an hour of training
(or silently skipped) costs far more than a clear failure before the model is even loaded. This
module needs no torch, so bad data is reported within a second of the pod starting.

Formats (one JSON object per line; other keys are ignored, blank lines skipped):

- ``text``: ``{"text": str}`` (causal-lm, loss on every token)
- ``prompt-completion``: ``{"prompt": str, "completion": str}`` (causal-lm, loss on the completion)
- ``chat``: ``{"messages": [{"role": str, "content": str}, ...]}`` (causal-lm, loss on assistant turns)
- ``pairs``: ``{"anchor": str, "positive": str, "negative"?: str}`` (embedding)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DatasetConfig
from .errors import DatasetError

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True)
class TextRecord:
    where: str
    text: str


@dataclass(frozen=True)
class PromptCompletionRecord:
    where: str
    prompt: str
    completion: str


@dataclass(frozen=True)
class ChatRecord:
    where: str
    messages: tuple[tuple[str, str], ...]  # (role, content)

    def as_dicts(self, upto: int | None = None) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages[:upto]]


@dataclass(frozen=True)
class PairRecord:
    where: str
    anchor: str
    positive: str
    negative: str | None = None


Record = TextRecord | PromptCompletionRecord | ChatRecord | PairRecord


def resolve_dataset(ds: DatasetConfig) -> Path:
    """The local path of the training rows: ``path`` itself, or inside a hub dataset's snapshot
    (only its JSONL files are fetched; with HF_HUB_OFFLINE, from the cache)."""
    if ds.hub is None:
        return Path(ds.path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = f"dataset.hub {ds.hub.id}@{ds.hub.revision}"
    try:
        local = snapshot_download(
            repo_id=ds.hub.id,
            repo_type="dataset",
            revision=ds.hub.revision,
            allow_patterns=["*.jsonl", "**/*.jsonl"],
            token=os.environ.get("HF_TOKEN") or None,
        )
    except LocalEntryNotFoundError:
        raise DatasetError(f"{where}: not in the local hub cache, and the hub is offline (HF_HUB_OFFLINE)") from None
    except HfHubHTTPError as exc:  # not found, gated, private without a token
        raise DatasetError(f"{where}: {str(exc).splitlines()[0]}") from None
    return Path(local) / ds.path


def dataset_files(path: str | Path) -> list[Path]:
    """A file, or the ``*.jsonl`` files of a directory in name order."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.glob("*.jsonl") if f.is_file())
        if not files:
            raise DatasetError(f"{p}: no *.jsonl files in this directory")
        return files
    if not p.is_file():
        raise DatasetError(f"{p}: no such file or directory")
    return [p]


def detect_format(where: str, row: dict[str, Any]) -> str:
    if "messages" in row:
        return "chat"
    if "anchor" in row or "positive" in row:
        return "pairs"
    if "prompt" in row or "completion" in row:
        return "prompt-completion"
    if "text" in row:
        return "text"
    raise DatasetError(
        f"{where}: cannot tell the format: expected a 'text', 'prompt'/'completion', 'messages' "
        f"or 'anchor'/'positive' field (keys: {', '.join(sorted(row)) or 'none'})"
    )


def _string(where: str, row: dict[str, Any], key: str, fmt: str, optional: bool = False) -> str | None:
    if key not in row or (optional and row[key] is None):
        if optional:
            return None
        raise DatasetError(f"{where}: missing field '{key}' (format {fmt})")
    value = row[key]
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field '{key}' must be a string, got {_type(value)}")
    if not value.strip():
        raise DatasetError(f"{where}: field '{key}' is empty")
    return value


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def parse_row(where: str, row: dict[str, Any], fmt: str) -> Record:
    """One validated record of ``fmt`` (a concrete format, not auto)."""
    if fmt == "text":
        return TextRecord(where, _string(where, row, "text", fmt) or "")
    if fmt == "prompt-completion":
        prompt = _string(where, row, "prompt", fmt) or ""
        return PromptCompletionRecord(where, prompt, _string(where, row, "completion", fmt) or "")
    if fmt == "pairs":
        anchor = _string(where, row, "anchor", fmt) or ""
        positive = _string(where, row, "positive", fmt) or ""
        return PairRecord(where, anchor, positive, _string(where, row, "negative", fmt, optional=True))
    if fmt == "chat":
        return ChatRecord(where, _messages(where, row))
    raise DatasetError(f"{where}: unknown format {fmt}")


def _messages(where: str, row: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    messages = row.get("messages")
    if messages is None:
        raise DatasetError(f"{where}: missing field 'messages' (format chat)")
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: field 'messages' must be a non-empty list, got {_type(messages)}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DatasetError(f"{where}: messages[{i}] must be an object, got {_type(m)}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise DatasetError(f"{where}: messages[{i}].role must be one of {', '.join(sorted(CHAT_ROLES))}")
        if not isinstance(content, str):
            raise DatasetError(f"{where}: messages[{i}].content must be a string, got {_type(content)}")
        out.append((role, content))
    if not any(role == "assistant" for role, _ in out):
        raise DatasetError(f"{where}: no assistant message: nothing to train on")
    return tuple(out)


def read_jsonl(path: Path, fmt: str, max_rows: int | None = None) -> tuple[str, list[Record]]:
    """(the format, the records) of one file; ``fmt`` auto is decided by the first row."""
    records: list[Record] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise DatasetError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: expected a JSON object, got {_type(row)}")
            if fmt == "auto":
                fmt = detect_format(where, row)
            records.append(parse_row(where, row, fmt))
            if max_rows is not None and len(records) >= max_rows:
                break
    if not records:
        raise DatasetError(f"{path}: empty file: no rows")
    return fmt, records


def read_dataset(path: str | Path, fmt: str = "auto", max_rows: int | None = None) -> tuple[str, list[Record]]:
    """Every file of ``path`` in order, all in one format (the first row decides ``auto``)."""
    records: list[Record] = []
    for file in dataset_files(path):
        left = None if max_rows is None else max_rows - len(records)
        if left == 0:
            break
        fmt, rows = read_jsonl(file, fmt, left)
        records += rows
    return fmt, records


def split(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, validation): a seeded random ``fraction`` held out, at least one row of each when
    ``fraction`` > 0; the same seed always holds out the same rows."""
    if fraction <= 0:
        return records, []
    if len(records) < 2:
        raise DatasetError(f"{records[0].where.rsplit(':', 1)[0]}: one row cannot be split into train and validation")
    n_val = min(len(records) - 1, max(1, round(len(records) * fraction)))
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)  # noqa: S311 (a reproducible split, not a secret)
    held = set(order[:n_val])
    train = [r for i, r in enumerate(records) if i not in held]
    val = [r for i, r in enumerate(records) if i in held]
    return train, val


def data_sha256(paths: list[Path]) -> str:
    """sha256 of the data: of the file itself when there is one (what ``sha256sum`` prints), else
    of every file's name and bytes in order."""
    if len(paths) == 1:
        return _file_sha256(paths[0])
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.name.encode() + b"\0" + _file_sha256(p).encode() + b"\n")
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class BatchOrder:
    """Which rows micro-batch ``k`` holds: a pure function of (rows, batch size, seed, k).

    Micro-batches are numbered across epochs; epoch ``e`` is a permutation seeded by (seed, e).
    A checkpoint stores only how many micro-batches were consumed, and a resumed run continues
    with exactly the next one: no row is repeated or skipped.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int, drop_last: bool) -> None:
        self.n_rows = n_rows
        self.batch_size = batch_size
        self.seed = seed
        full, rest = divmod(n_rows, batch_size)
        self.per_epoch = full if drop_last or not rest else full + 1
        if self.per_epoch == 0:
            raise DatasetError(f"{n_rows} training rows make no full batch of {batch_size}: lower batchSize")
        self._epoch = -1
        self._perm: list[int] = []

    def epoch_of(self, k: int) -> int:
        return k // self.per_epoch

    def rows(self, k: int) -> list[int]:
        epoch, i = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            perm = list(range(self.n_rows))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(perm)  # noqa: S311
            self._epoch, self._perm = epoch, perm
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]
