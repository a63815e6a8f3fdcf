"""FineTuneJob (llmops.dev/v1alpha1): fine-tune a causal LM or an embedding model (LoRA, QLoRA or
full) on JSONL data from a PVC or a ConfigMap, as a Kubernetes Job running the llmops trainer
(``python -m llmops_workloads.training``, docs/trainer.md), writing the model into a PVC that an
EmbeddingService (``model.source.fineTuneJobRef``) or a generation server can serve.

The spec is immutable except ``suspend``: a run is defined by its inputs (the trainer refuses to
resume a checkpoint made with other settings), so another run is another FineTuneJob.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .base import ApiModel
from .common import (
    NAME_MAX,
    RESOURCES_RULES,
    CommonStatus,
    PodPlacement,
    ResourcesSpec,
    SecretKeyRef,
    cel,
    quantity_field,
    validations,
)
from .embedding import HuggingFaceSource, PvcSource

GROUP = "llmops.dev"
VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
IMMUTABLE_MESSAGE = "spec is immutable except suspend: create a new FineTuneJob"
RELATIVE_PATH = r"^[^/].*$|^$"

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class BaseModelSource(ApiModel):
    """Where the base weights come from: exactly one of huggingface or pvc."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.huggingface) ? 1 : 0) + (has(self.pvc) ? 1 : 0) == 1",
                "set exactly one of baseModel.source.huggingface or baseModel.source.pvc",
            )
        )
    )

    huggingface: HuggingFaceSource | None = None
    pvc: PvcSource | None = Field(None, description="A PVC holding the model directory (mounted read-only).")


class BaseModelSpec(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=256,
        description="Hugging Face id of the model to fine-tune, e.g. sentence-transformers/all-MiniLM-L6-v2 "
        "(also the name written into the model card).",
    )
    revision: str = Field("main", max_length=128, description="Hub revision (branch, tag or commit).")
    source: BaseModelSource = Field(
        default_factory=lambda: BaseModelSource(huggingface=HuggingFaceSource()),
        json_schema_extra={"default": {"huggingface": {}}},
        description="Where the weights come from (default: the Hugging Face Hub).",
    )


class ConfigMapDataset(ApiModel):
    name: str = Field(min_length=1, max_length=NAME_MAX, description="ConfigMap in this namespace.")
    key: str = Field(
        min_length=1, max_length=NAME_MAX, description="The key holding the JSONL data (a ConfigMap holds 1 MiB)."
    )


class PvcDataset(ApiModel):
    claim_name: str = Field(min_length=1, max_length=NAME_MAX, description="PVC holding the data (mounted read-only).")
    path: str = Field(
        "",
        max_length=1024,
        pattern=RELATIVE_PATH,
        description="A JSONL file, or a directory whose *.jsonl files are read in name order (relative; empty for "
        "the volume's root).",
    )


class HuggingFaceDataset(ApiModel):
    """A dataset repository on the Hugging Face Hub: its JSONL files are the rows (the pod needs
    egress to the hub, or the dataset in its hub cache)."""

    id: str = Field(min_length=1, max_length=256, pattern=r"^[\w.-]+(/[\w.-]+)?$", description="e.g. org/pairs")
    revision: str = Field("main", max_length=128)
    path: str = Field(
        "", max_length=1024, pattern=RELATIVE_PATH, description="A JSONL file or directory inside the repository."
    )
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Hub token for a private or gated dataset (default: the base model's token, if any)."
    )


class DatasetSpec(ApiModel):
    """Training rows, one JSON object per line (docs/trainer.md lists the formats)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.pvc) ? 1 : 0) + (has(self.configMap) ? 1 : 0) + (has(self.huggingface) ? 1 : 0) == 1",
                "set exactly one of dataset.pvc, dataset.configMap or dataset.huggingface",
            ),
        )
    )

    pvc: PvcDataset | None = None
    config_map: ConfigMapDataset | None = None
    huggingface: HuggingFaceDataset | None = None
    format: Literal["auto", "text", "prompt-completion", "chat", "pairs"] = Field(
        "auto",
        description="text, prompt-completion and chat train a causal LM; pairs (anchor, positive[, negative]) an "
        "embedding model; auto: decided by the first row.",
    )
    validation_split: float | None = Field(
        None, ge=0, lt=1, description="Fraction of the rows held out for evaluation (default 0.1)."
    )


class HyperparametersSpec(ApiModel):
    """Unset fields take the trainer's defaults (docs/trainer.md): 1 epoch, learning rate 2e-4,
    linear schedule, batch size 8, sequence length 512, seed 42."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(has(self.epochs) && has(self.maxSteps))",
                "set hyperparameters.epochs or hyperparameters.maxSteps, not both",
            ),
            cel(
                "!(has(self.warmupSteps) && has(self.warmupRatio))",
                "set hyperparameters.warmupSteps or hyperparameters.warmupRatio, not both",
            ),
        )
    )

    epochs: float | None = Field(None, gt=0, le=1000, description="Passes over the training rows (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Optimizer steps (instead of epochs).")
    learning_rate: float | None = Field(None, gt=0, le=1)
    lr_schedule: Literal["constant", "linear", "cosine"] | None = None
    warmup_steps: int | None = Field(None, ge=0, le=10_000_000)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    batch_size: int | None = Field(None, ge=1, le=4096, description="Rows per micro-batch.")
    gradient_accumulation: int | None = Field(None, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_seq_length: int | None = Field(None, ge=8, le=131072, description="Longest row in tokens.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    weight_decay: float | None = Field(None, ge=0, le=1)


class LoraSpec(ApiModel):
    r: int | None = Field(None, ge=1, le=1024, description="Adapter rank (default 8).")
    alpha: float | None = Field(None, gt=0, le=4096, description="Scaling (default 16).")
    dropout: float | None = Field(None, ge=0, lt=1, description="Default 0.05.")
    target_modules: list[str] | None = Field(
        None,
        max_length=64,
        description="Module names to adapt; [all-linear] for every linear layer; unset: peft's default for the "
        "architecture.",
        json_schema_extra={"items": {"type": "string", "minLength": 1, "maxLength": 128}},
    )


class OutputPvc(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!self.create || has(self.size)",
                "output.pvc.create needs output.pvc.size (the size of the claim the operator creates)",
            ),
            cel(
                "self.create || !(has(self.size) || has(self.storageClassName) || has(self.accessMode))",
                "output.pvc.size, storageClassName and accessMode are for create: true; without it the claim "
                "must exist already",
            ),
        )
    )

    claim_name: str = Field(
        min_length=1,
        max_length=NAME_MAX,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PVC the model is written to.",
    )
    path: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^[^/].*$",
        description="Directory inside the volume (relative); default: the FineTuneJob's name. The servers load "
        "<path>/model.",
    )
    create: bool = Field(False, description="Create the claim (size and storageClassName) instead of using one.")
    size: str | None = quantity_field("Size of the created claim.", "20Gi")
    storage_class_name: str | None = Field(None, max_length=NAME_MAX, description="Default: the cluster's default.")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] | None = Field(
        None,
        description="Default ReadWriteOnce; ReadWriteMany lets serving replicas on several nodes mount the output.",
    )
    retain: bool = Field(
        True,
        description="With create: keep the claim (and the model) when the FineTuneJob is deleted (no owner "
        "reference); false: the claim is garbage-collected with the FineTuneJob.",
    )


class OutputSpec(ApiModel):
    pvc: OutputPvc


class FineTuneJobSpec(PodPlacement):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.method != 'qlora' || self.resources.gpu > 0",
                "method qlora needs a GPU (4-bit kernels): set resources.gpu to 1, or use method lora",
            ),
            cel(
                "self.method != 'qlora' || self.task == 'causal-lm'",
                "method qlora is for causal-lm; use lora or full for embedding models",
            ),
            cel(
                "self.task != 'embedding' || self.dataset.format in ['auto', 'pairs']",
                "the embedding task reads anchor/positive pairs: set dataset.format to pairs (or auto)",
            ),
            cel(
                "self.task != 'causal-lm' || self.dataset.format != 'pairs'",
                "dataset.format pairs is for the embedding task; causal-lm reads text, prompt-completion or chat",
            ),
            cel(
                "!has(self.lora) || self.method != 'full'",
                "lora settings apply to method lora or qlora, not full",
            ),
            cel(
                "self.resources.gpu <= 1",
                "the trainer uses one GPU: set resources.gpu to 0 or 1",
            ),
        )
    )

    task: Literal["causal-lm", "embedding"] = Field(
        description="causal-lm: supervised fine-tuning of a language model; embedding: contrastive fine-tuning "
        "of a sentence-embedding model."
    )
    base_model: BaseModelSpec
    method: Literal["lora", "qlora", "full"] = Field(
        "lora",
        description="lora: a low-rank adapter (merged into model/ too); qlora: on a 4-bit base (GPU, causal-lm).",
    )
    dataset: DatasetSpec
    hyperparameters: HyperparametersSpec = Field(default_factory=HyperparametersSpec, json_schema_extra={"default": {}})
    lora: LoraSpec | None = Field(None, description="LoRA settings (method lora or qlora).")
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec,
        json_schema_extra={"default": {}, **RESOURCES_RULES},
        description="Compute of the trainer pod (default 2 CPUs and 8Gi without a GPU; 8 CPUs and 32Gi with one).",
    )
    output: OutputSpec
    checkpoint_every: int | None = Field(
        None, ge=1, le=10_000_000, description="Optimizer steps between checkpoints (default 200)."
    )
    backoff_limit: int = Field(
        2, ge=0, le=20, description="Retries after a crash (each resumes from the last checkpoint); preemption and "
        "node drains do not count, bad data or config fails at once.",
    )  # fmt: skip
    active_deadline_seconds: int | None = Field(
        None, ge=60, le=30 * 86400, description="Fail the run when it takes longer (retries included)."
    )
    suspend: bool = Field(
        False,
        description="true stops the trainer (it checkpoints on SIGTERM); false again resumes from the checkpoint. "
        "The one field that may change.",
    )


class EvalMetric(ApiModel):
    name: str | None = Field(None, description="e.g. mrr@10 (embedding) or eval_loss (causal-lm).")
    value: float | None = Field(None, description="On the validation rows, after training (latest evaluation).")
    base_value: float | None = Field(None, description="The base model's, before training: the baseline.")


class TrainingProgress(ApiModel):
    model_config = ConfigDict(extra="allow")

    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = Field(None, description="Mean training loss over the last logging interval.")
    learning_rate: float | None = None
    eval_metric: EvalMetric | None = None
    eta_seconds: float | None = None
    display: str | None = Field(None, description="step/totalSteps (percent), for kubectl get.")


class FineTuneJobStatus(CommonStatus):
    phase: Phase | None = None
    job_name: str | None = Field(None, description="The batch/v1 Job running the trainer.")
    progress: TrainingProgress | None = None
    start_time: str | None = None
    completion_time: str | None = None
    output: str | None = Field(
        None, description="pvc://<claim>/<path>/model once succeeded: what an EmbeddingService's fineTuneJobRef serves."
    )
    adapter: str | None = Field(None, description="pvc://<claim>/<path>/adapter (lora, qlora).")
    message: str | None = Field(None, description="The trainer's last word (its termination message).")


class FineTuneJob(ApiModel):
    model_config = ConfigDict(extra="ignore")

    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
