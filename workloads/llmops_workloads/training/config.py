"""The trainer's configuration (docs/trainer.md is the contract): a YAML file with the operator's
camelCase keys, overlaid by ``LLMOPS_<SECTION>__<KEY>`` environment variables.

``load_config`` turns every way a config can be wrong (missing file, YAML syntax, an unknown key,
a value out of range, two settings that contradict each other) into one ``ConfigError`` line that
names the file and, where the value came from the file, the line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import Field, ValidationError, model_validator

from ..common.settings import FileSettings, Section, snake_keys
from .errors import ConfigError

Task = Literal["causal-lm", "embedding"]
Method = Literal["lora", "qlora", "full"]
DataFormat = Literal["auto", "text", "prompt-completion", "chat", "pairs"]
CAUSAL_FORMATS = ("text", "prompt-completion", "chat")


class BaseModelConfig(Section):
    name: str = Field(
        min_length=1, description="Hugging Face id (resolved through the hub cache) or a local directory."
    )
    revision: str = "main"
    path: str | None = Field(None, description="Local directory with the weights (a PVC); wins over name.")
    trust_remote_code: bool = False


class HubDataset(Section):
    """A dataset repository on the Hugging Face Hub whose JSONL files are the rows (resolved through
    the hub cache: offline, it must be cached already)."""

    id: str = Field(min_length=1, max_length=256, pattern=r"^[\w.-]+(/[\w.-]+)?$")
    revision: str = "main"


class DatasetConfig(Section):
    path: str = Field(
        "",
        description="A JSONL file, or a directory whose *.jsonl files are read in order; with hub, a path inside "
        "the dataset repository ('' for its root).",
    )
    hub: HubDataset | None = None
    format: DataFormat = "auto"
    validation_split: float | None = Field(
        None, ge=0, lt=1, description="Fraction held out for evaluation; unset: 0.1, or 0 with validationPath."
    )
    validation_path: str | None = None
    max_rows: int | None = Field(None, ge=1, description="Read at most this many training rows.")
    overlong: Literal["auto", "error", "truncate"] = Field(
        "auto", description="Rows over maxSeqLength tokens; auto: error for causal-lm, truncate for embedding."
    )

    @model_validator(mode="after")
    def _a_source(self) -> Self:
        if not self.path and self.hub is None:
            raise ValueError("set dataset.path (or dataset.hub)")
        return self

    @property
    def split(self) -> float:
        if self.validation_split is not None:
            return self.validation_split
        return 0.0 if self.validation_path else 0.1


class Hyperparameters(Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training rows (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; wins over epochs.")
    learning_rate: float = Field(2e-4, gt=0, le=1)
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    batch_size: int = Field(8, ge=1, le=4096, description="Rows per micro-batch (one forward pass).")
    gradient_accumulation: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(512, ge=8, le=131072)
    seed: int = Field(42, ge=0)
    weight_decay: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float = Field(1.0, ge=0, description="0: no clipping.")

    @model_validator(mode="after")
    def _one_warmup(self) -> Self:
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("set warmupSteps or warmupRatio, not both")
        return self


class LoraSettings(Section):
    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="Module names; unset: peft's default for the architecture."
    )


class EmbeddingSettings(Section):
    scale: float = Field(20.0, gt=0, description="Cosine similarities are multiplied by this before softmax.")


class OutputConfig(Section):
    dir: str = Field(min_length=1)
    merge: bool = Field(True, description="LoRA: also write the adapter merged into the base weights (model/).")
    clean_checkpoints: bool = Field(True, description="Delete checkpoints/ once the final output is written.")


class ProgressConfig(Section):
    host: str = "0.0.0.0"  # noqa: S104 (in a pod: the operator polls over the pod network)
    port: int = Field(0, ge=0, le=65535, description="GET /progress and /metrics; 0: no endpoint.")
    file: str | None = Field(
        None, description="Progress JSON, rewritten atomically; unset: <output.dir>/progress.json."
    )
    log_every_steps: int = Field(10, ge=1)
    log_every_seconds: float = Field(30.0, gt=0)
    termination_message_path: str = "/dev/termination-log"


class TrainerConfig(FileSettings):
    task: Task
    base_model: BaseModelConfig
    method: Method = "lora"
    dataset: DatasetConfig
    hyperparameters: Hyperparameters = Hyperparameters()
    lora: LoraSettings = LoraSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    checkpoint_every: int = Field(200, ge=1, description="Optimizer steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int = Field(0, ge=0, description="Optimizer steps between evaluations; 0: only at the end.")
    eval_at_start: bool = Field(True, description="Evaluate the base model first (not on resume): the baseline.")
    output: OutputConfig
    progress: ProgressConfig = ProgressConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int | None = Field(
        None, ge=1, le=256, description="torch threads on CPU; set it to the pod's CPU limit (torch sees the node's)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that has it, else fp32."
    )
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        fmt = self.dataset.format
        if self.task == "embedding" and fmt not in ("auto", "pairs"):
            raise ValueError(f"dataset.format {fmt} is for causal-lm; the embedding task reads pairs")
        if self.task == "causal-lm" and fmt == "pairs":
            raise ValueError("dataset.format pairs is for the embedding task")
        if self.task == "embedding" and self.method == "qlora":
            raise ValueError("method qlora is for causal-lm; use lora or full for embedding models")
        if self.dataset.validation_path and self.dataset.validation_split:
            raise ValueError("set dataset.validationSplit or dataset.validationPath, not both")
        return self

    @property
    def progress_file(self) -> Path:
        return Path(self.progress.file) if self.progress.file else Path(self.output.dir) / "progress.json"


def load_config(path: str | Path | None) -> TrainerConfig:
    """The config, or a ``ConfigError`` whose one line names the file, the key and the line."""
    where = str(path) if path else "environment"
    try:
        return TrainerConfig.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and start is not None:
            problem += f" ({context.removeprefix('while parsing ')} started at line {start.line + 1})"
        raise ConfigError(f"{where}{line}: invalid YAML: {problem}") from None
    except ValidationError as e:
        raise ConfigError(_describe(e, path)) from None
    except ValueError as e:  # the top level is not a mapping
        raise ConfigError(str(e).splitlines()[0]) from None


def _describe(error: ValidationError, path: str | Path | None) -> str:
    """The first validation error as ``file:line: key.path: message`` (camelCase, as in the file)."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"] if not isinstance(p, int)]
    message = "required" if first["type"] == "missing" else first["msg"].removeprefix("Value error, ")
    if not loc:  # a rule across sections: its message names the key (dataset.format, ...)
        named = _KEY_PATH.search(message)
        loc = [_CAMEL.sub("_", p).lower() for p in named.group(0).split(".")] if named else []
        prefix = ""
    else:
        prefix = ".".join(camel(p) for p in loc) + ": "
    line = _line_of(Path(path), loc) if path else None
    where = f"{path}:{line}" if line else (str(path) if path else "environment")
    more = len(error.errors()) - 1
    tail = f" (and {more} more)" if more else ""
    return f"{where}: {prefix}{message}{tail}"


_KEY_PATH = re.compile(r"\b[a-z][A-Za-z]*(?:\.[a-z][A-Za-z]*)+\b")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def _line_of(path: Path, loc: list[str]) -> int | None:
    """The line of the deepest key of ``loc`` that the file has (keys compared snake_cased)."""
    try:
        node: Any = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if snake_keys({key.value: None}) == {part: None}:
                line = key.start_mark.line + 1
                node = value
                break
        else:
            break
    return line
