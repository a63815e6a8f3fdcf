"""Supervised fine-tuning of a causal language model: LoRA (peft), QLoRA (4-bit base, GPU only)
or full fine-tuning.

Rows are tokenised once, before training: ``text`` trains on every token, ``prompt-completion``
on the completion only, ``chat`` on the assistant turns only (rendered with the tokenizer's chat
template, the way the generation server renders a chat request). An end-of-sequence token closes
text and completions, so the model learns to stop. The loss of a step is the mean over every
target token of all its micro-batches (not a mean of per-batch means), so gradient accumulation
changes nothing but memory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .base import Task, apply_lora, check_qlora, resolve_model_dir
from .config import TrainerConfig
from .data import ChatRecord, PromptCompletionRecord, Record, TextRecord
from .errors import ConfigError, DatasetError

log = logging.getLogger("llmops.training.causal_lm")
IGNORE = -100


@dataclass(frozen=True)
class Example:
    ids: torch.Tensor  # int64 token ids
    targets: torch.Tensor  # the next-token targets (ids shifted left), IGNORE where no loss
    n_targets: int


class Encoder:
    """Rows to token ids and the mask of tokens the loss covers."""

    def __init__(self, tokenizer: Any, max_len: int, overlong: str) -> None:
        self.tok = tokenizer
        self.max_len = max_len
        self.truncate = overlong == "truncate"
        self.eos = tokenizer.eos_token_id
        self._warned_template = False

    def _ids(self, text: str, special: bool) -> list[int]:
        return list(self.tok(text, add_special_tokens=special)["input_ids"])

    def segments(self, record: Record) -> list[tuple[list[int], bool]]:
        """(token ids, trained on) pieces of a row, in order."""
        eos = [self.eos] if self.eos is not None else []
        if isinstance(record, TextRecord):
            return [(self._ids(record.text, True) + eos, True)]
        if isinstance(record, PromptCompletionRecord):
            return [(self._ids(record.prompt, True), False), (self._ids(record.completion, False) + eos, True)]
        if isinstance(record, ChatRecord):
            return self._chat(record)
        raise DatasetError(f"{record.where}: pairs rows are for the embedding task, not causal-lm")

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return str(text)

    def _chat(self, record: ChatRecord) -> list[tuple[list[int], bool]]:
        if not getattr(self.tok, "chat_template", None):
            raise ConfigError(f"{record.where}: chat rows need a tokenizer with a chat template; this one has none")
        full = self._render(record.as_dicts(), False)
        # Assistant turn i spans render(messages[:i], generation prompt) .. render(messages[:i+1]).
        spans = []
        try:
            for i, (role, _) in enumerate(record.messages):
                if role == "assistant":
                    start = len(self._render(record.as_dicts(i), True)) if i else 0
                    end = len(self._render(record.as_dicts(i + 1), False))
                    spans.append((start, end))
            prefix_stable = all(
                full.startswith(self._render(record.as_dicts(i + 1), False)) for i in range(len(record.messages))
            )
        except Exception:  # a template that refuses partial conversations
            prefix_stable = False
        if not prefix_stable:
            if not self._warned_template:
                log.warning("the chat template does not render conversations prefix by prefix: training on all tokens")
                self._warned_template = True
            return [(self._ids(full, False), True)]
        pieces: list[tuple[list[int], bool]] = []
        at = 0
        for start, end in spans:
            if start > at:
                pieces.append((self._ids(full[at:start], False), False))
            pieces.append((self._ids(full[start:end], False), True))
            at = end
        if at < len(full):
            pieces.append((self._ids(full[at:], False), False))
        return pieces

    def encode(self, record: Record) -> Example | None:
        ids: list[int] = []
        trained: list[bool] = []
        for piece, on in self.segments(record):
            ids += piece
            trained += [on] * len(piece)
        if len(ids) > self.max_len:
            if not self.truncate:
                raise DatasetError(
                    f"{record.where}: {len(ids)} tokens, over hyperparameters.maxSeqLength {self.max_len} "
                    "(or set dataset.overlong: truncate)"
                )
            ids, trained = ids[: self.max_len], trained[: self.max_len]
        # Position t predicts token t+1: the target of t is ids[t+1] where token t+1 is trained on.
        targets = [ids[t + 1] if trained[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
        n_targets = sum(1 for t in targets if t != IGNORE)
        if n_targets == 0:
            if self.truncate:
                return None  # the trained part was cut off entirely
            raise DatasetError(f"{record.where}: no tokens to train on")
        return Example(torch.tensor(ids, dtype=torch.long), torch.tensor(targets, dtype=torch.long), n_targets)

    def encode_all(self, records: list[Record]) -> list[Example]:
        out = []
        for r in records:
            ex = self.encode(r)
            if ex is not None:
                out.append(ex)
        if len(out) < len(records):
            log.warning(
                "rows dropped: nothing left to train on after truncation", extra={"rows": len(records) - len(out)}
            )
        return out


class CausalLMTask(Task):
    metric_name = "eval_loss"
    higher_is_better = False
    drop_last = False

    def __init__(
        self, cfg: TrainerConfig, device: torch.device, train_records: list[Record], val_records: list[Record]
    ) -> None:
        super().__init__(cfg, device)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if cfg.method == "qlora":
            check_qlora(device)
        self.model_dir = resolve_model_dir(cfg.base_model)
        trust = cfg.base_model.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=trust)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        overlong = "error" if cfg.dataset.overlong == "auto" else cfg.dataset.overlong
        encoder = Encoder(self.tokenizer, cfg.hyperparameters.max_seq_length, overlong)
        self.train_set = encoder.encode_all(train_records)
        self.val_set = encoder.encode_all(val_records)
        if not self.train_set:
            raise DatasetError(f"{cfg.dataset.path}: no training rows left after truncation")
        self.n_train = len(self.train_set)
        self.has_validation = bool(self.val_set)

        kwargs: dict[str, Any] = {"trust_remote_code": trust}
        if cfg.method == "qlora":
            from peft import prepare_model_for_kbit_training
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            kwargs["device_map"] = {"": device.index or 0}
        elif cfg.method == "lora" and self._autocast_dtype is not None:
            kwargs["dtype"] = self._autocast_dtype  # frozen base in half precision; adapters stay fp32
        else:
            kwargs["dtype"] = torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(self.model_dir, **kwargs)
        kbit = cfg.method == "qlora"
        model = prepare_model_for_kbit_training(model) if kbit else model.to(device)  # type: ignore[no-untyped-call]
        if cfg.method in ("lora", "qlora"):
            model = apply_lora(model, cfg, "CAUSAL_LM")
        model.train()
        self.model = model

    def _collate(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        longest = max(len(e.ids) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        targets = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e.ids)
            ids[i, :n] = e.ids
            targets[i, :n] = e.targets
            mask[i, :n] = 1
        d = self.device
        return ids.to(d, non_blocking=True), mask.to(d, non_blocking=True), targets.to(d, non_blocking=True)

    def _loss_sum(self, examples: list[Example]) -> torch.Tensor:
        ids, mask, targets = self._collate(examples)
        with self.autocast():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        return F.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), targets.view(-1), ignore_index=IGNORE, reduction="sum"
        )

    def step_norm(self, micro_batches: list[list[int]]) -> float:
        return float(sum(self.train_set[i].n_targets for rows in micro_batches for i in rows))

    def loss_sum(self, rows: list[int]) -> torch.Tensor:
        return self._loss_sum([self.train_set[i] for i in rows])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        total, tokens = 0.0, 0
        bs = self.cfg.hyperparameters.batch_size
        try:
            for start in range(0, len(self.val_set), bs):
                batch = self.val_set[start : start + bs]
                total += float(self._loss_sum(batch))
                tokens += sum(e.n_targets for e in batch)
        finally:
            self.model.train()
        loss = total / max(tokens, 1)
        return {"eval_loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4)}

    def save_output(self, out: Path) -> dict[str, str]:
        written: dict[str, str] = {}
        model: Any = self.model
        if self.cfg.method in ("lora", "qlora"):
            adapter = out / "adapter"
            # The vocabulary is never resized: the adapter needs no copy of the base's embeddings.
            model.save_pretrained(adapter, save_embedding_layers=False)
            self.tokenizer.save_pretrained(adapter)
            written["adapter"] = "adapter"
            if not self.cfg.output.merge:
                return written
            model = self._merged(model, adapter)
        model.save_pretrained(out / "model")
        self.tokenizer.save_pretrained(out / "model")
        written["model"] = "model"
        return written

    def _merged(self, peft_model: Any, adapter: Path) -> Any:
        """The adapter folded into the base weights: in place for LoRA; for QLoRA into a fresh
        bf16 copy of the base (merging into 4-bit weights would round the adapter away)."""
        if self.cfg.method == "lora":
            return peft_model.merge_and_unload()
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=torch.bfloat16, trust_remote_code=self.cfg.base_model.trust_remote_code
        )
        return PeftModel.from_pretrained(base, adapter).merge_and_unload()
