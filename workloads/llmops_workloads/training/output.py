"""The final output: the model directories the servers load, a model card, and ``training.json``.

Layout of ``output.dir`` once a run has succeeded::

    model/          merged or fully fine-tuned weights + tokenizer (+ sentence-transformers files
                    for embedding): what the generation or embedding server loads as model.path
    adapter/        the LoRA adapter + tokenizer (lora/qlora): peft loads it on the base model
    README.md       model card (also in model/ and adapter/)
    training.json   the same as JSON; written last, atomically: its presence means "done"
    progress.json   the last progress snapshot

The directories are written into a staging directory and renamed into place, so a pod killed
half-way never leaves a ``model/`` that looks whole; a restart retrains from the last checkpoint
and publishes again. A restart after ``training.json`` exists (the same fingerprint) is a no-op.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .checkpoint import TMP_PREFIX, write_atomic

CARD = "training.json"


def read_done(out: Path) -> dict[str, Any] | None:
    try:
        card: dict[str, Any] = json.loads((out / CARD).read_text())
    except (OSError, ValueError):
        return None
    return card


def publish(out: Path, save: Any) -> dict[str, str]:
    """Call ``save(staging_dir)`` and rename what it wrote into ``out``."""
    staging = out / f"{TMP_PREFIX}final-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        written: dict[str, str] = save(staging)
        for name in written.values():
            dest = out / name
            if dest.exists():
                doomed = out / f"{TMP_PREFIX}old-{name}-{os.getpid()}"
                dest.rename(doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            (staging / name).rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def write_card(out: Path, card: dict[str, Any]) -> None:
    """README.md and training.json in every published directory; the root training.json last."""
    readme = render_readme(card)
    body = json.dumps(card, indent=2).encode()
    for name in card.get("outputs", {}).values():
        (out / name / "README.md").write_text(readme)
        (out / name / CARD).write_bytes(body)
    (out / "README.md").write_text(readme)
    write_atomic(out / CARD, body)


def render_readme(card: dict[str, Any]) -> str:
    base = card["baseModel"]["name"]
    library = {"embedding": "sentence-transformers"}.get(card["task"], "transformers")
    tags = ["llmops", card["task"], card["method"]]
    lines = [
        "---",
        f"base_model: {base}",
        f"library_name: {library}",
        "tags:",
        *[f"  - {t}" for t in tags],
        "---",
        "",
        f"# {base}, fine-tuned ({card['task']}, {card['method']})",
        "",
        "Trained by the llmops trainer (`python -m llmops_workloads.training`).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}` (revision `{card['baseModel']['revision']}`) |",
        f"| data sha256 | `{card['data']['sha256']}` |",
        f"| rows | {card['data']['trainRows']} train, {card['data']['validationRows']} validation |",
        f"| steps | {card['steps']} ({card['epochs']:.2f} epochs) |",
    ]
    for name, value in card.get("metrics", {}).items():
        before = card.get("baseMetrics", {}).get(name)
        lines.append(f"| {name} | {value}" + (f" (base model: {before})" if before is not None else "") + " |")
    lines += ["", "## Hyperparameters", "", "```json", json.dumps(card["hyperparameters"], indent=2), "```", ""]
    if card.get("lora"):
        lines += ["## LoRA", "", "```json", json.dumps(card["lora"], indent=2), "```", ""]
    outputs = card.get("outputs", {})
    lines += ["## Files", ""]
    if "model" in outputs:
        lines.append(f"- `{outputs['model']}/`: full weights, load with `{_loader(card['task'])}`")
    if "adapter" in outputs:
        lines.append(
            f"- `{outputs['adapter']}/`: the LoRA adapter, load with `peft.PeftModel.from_pretrained(base, dir)`"
        )
    return "\n".join(lines) + "\n"


def _loader(task: str) -> str:
    return "SentenceTransformer(dir)" if task == "embedding" else "AutoModelForCausalLM.from_pretrained(dir)"
