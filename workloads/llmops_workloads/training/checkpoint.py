"""Atomic checkpoints, and the choice of the one to resume from.

A pod can die at any instruction (SIGKILL after the grace period, a node lost), so a checkpoint is
written into ``checkpoints/.tmp-step-N-<pid>/``, every file is fsynced, a ``COMPLETE`` marker
listing the files and their sizes is written last, and only then is the directory renamed to
``checkpoints/step-N`` (and the parent fsynced). Resuming picks the highest step whose marker is
present, parses, and matches the files on disk: a half-written directory, a leftover temporary one
or a truncated file is never picked. Old checkpoints are renamed away before they are deleted, so
a deletion cut short never leaves something that looks complete.

Layout of ``step-N/``: ``weights.safetensors`` (the trainable parameters: the LoRA adapter, or the
whole model in full fine-tuning), ``training_state.pt`` (optimizer, scheduler, RNG states),
``meta.json`` (step, epoch, data position, config fingerprint), ``COMPLETE``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("llmops.training.checkpoint")

MARKER = "COMPLETE"
WEIGHTS = "weights.safetensors"
STATE = "training_state.pt"
META = "meta.json"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    meta: dict[str, Any]


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``path`` through a temporary sibling and a rename: readers see the old or the new
    content, never a partial one."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)
    if durable:
        fsync_dir(path.parent)


def _valid(path: Path) -> Checkpoint | None:
    """The checkpoint in ``path`` if it is complete: marker parses, names the same step, and every
    file it lists exists with the listed size."""
    try:
        step = int(path.name.removeprefix(PREFIX))
        marker = json.loads((path / MARKER).read_text())
        if marker.get("step") != step:
            return None
        for name, size in marker["files"].items():
            if (path / name).stat().st_size != size:
                return None
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    return Checkpoint(path, step, meta)


class CheckpointStore:
    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep

    def complete(self, warn: bool = False) -> list[Checkpoint]:
        """Every complete checkpoint, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith(PREFIX):
                ckpt = _valid(p)
                if ckpt is not None:
                    found.append(ckpt)
                elif warn:
                    log.warning("ignoring an incomplete checkpoint", extra={"path": str(p)})
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Checkpoint | None:
        done = self.complete(warn=True)
        return done[-1] if done else None

    def remove_leftovers(self) -> None:
        """Temporary directories of writes or deletions a dead process left behind."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    shutil.rmtree(p, ignore_errors=True)

    def save(self, step: int, weights: dict[str, Any], state: dict[str, Any], meta: dict[str, Any]) -> Checkpoint:
        import torch
        from safetensors.torch import save_file

        final = self.root / f"{PREFIX}{step:08d}"
        existing = _valid(final) if final.exists() else None
        if existing is not None:
            return existing
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
            torch.save(state, tmp / STATE)
            (tmp / META).write_text(json.dumps({**meta, "step": step}, indent=2))
            files = {}
            for name in (WEIGHTS, STATE, META):
                fsync_file(tmp / name)
                files[name] = (tmp / name).stat().st_size
            with open(tmp / MARKER, "w") as f:
                f.write(json.dumps({"step": step, "files": files}))
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(tmp)
            if final.exists():  # an incomplete directory of the same step (copied in by hand?)
                self._remove(final)
            tmp.rename(final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune()
        return Checkpoint(final, step, {**meta, "step": step})

    def load(self, ckpt: Checkpoint) -> tuple[dict[str, Any], dict[str, Any]]:
        """(weights, training state) of a checkpoint."""
        import torch
        from safetensors.torch import load_file

        weights = load_file(str(ckpt.path / WEIGHTS), device="cpu")
        state = torch.load(ckpt.path / STATE, map_location="cpu", weights_only=True)
        return weights, state

    def prune(self) -> None:
        """Keep the newest ``keep`` complete checkpoints; incomplete ones older than the newest
        complete one go too."""
        done = self.complete()
        for old in done[: -self.keep]:
            self._remove(old.path)
        if done and self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(PREFIX) and _valid(p) is None:
                    try:
                        older = int(p.name.removeprefix(PREFIX)) < done[-1].step
                    except ValueError:
                        older = False
                    if older:
                        self._remove(p)

    def _remove(self, path: Path) -> None:
        doomed = path.with_name(f"{TMP_PREFIX}delete-{path.name}-{os.getpid()}")
        path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
