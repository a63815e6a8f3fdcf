"""Contrastive fine-tuning of a sentence-embedding model from (anchor, positive[, negative]) pairs.

The loss is sentence-transformers' MultipleNegativesRankingLoss: for each anchor, its positive
must score highest (cosine similarity times ``embedding.scale``, softmax cross-entropy) among every
positive and every hard negative of the batch, so each batch of B pairs gives B-1 negatives per
anchor for free. Two rows of a batch that share an anchor or a positive would be each other's
false negatives; those scores are masked out. Pooling is the model's own (its sentence-transformers
config, read as the embedding server reads it; a unit test holds the two equal), so what is
trained is what is served.

Evaluation ranks every distinct validation positive (and negative) for each distinct validation
anchor: MRR@10 (the metric), recall@1 and recall@10.

The output is a sentence-transformers directory (weights, tokenizer, ``modules.json`` and the
pooling config) that the embedding server loads through ``model.path`` and that
``SentenceTransformer(dir)`` loads too. LoRA is merged into it (the adapter is also kept).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..common.pooling import Pooling, pool, sentence_transformers_defaults
from .base import Task, apply_lora, resolve_model_dir
from .config import TrainerConfig
from .data import PairRecord, Record
from .errors import DatasetError

log = logging.getLogger("llmops.training.embedding")


@dataclass(frozen=True)
class Pair:
    anchor: int  # index into the task's texts
    positive: int
    negative: int | None


class EmbeddingTask(Task):
    metric_name = "mrr@10"
    higher_is_better = True
    drop_last = True  # in-batch negatives: a batch of one has none

    def __init__(
        self, cfg: TrainerConfig, device: torch.device, train_records: list[Record], val_records: list[Record]
    ) -> None:
        super().__init__(cfg, device)
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = resolve_model_dir(cfg.base_model)
        trust = cfg.base_model.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=trust)
        model = AutoModel.from_pretrained(self.model_dir, dtype=torch.float32, trust_remote_code=trust)
        self.pooling = model_pooling(self.model_dir)
        positions = getattr(model.config, "max_position_embeddings", None) or cfg.hyperparameters.max_seq_length
        self.max_len = min(cfg.hyperparameters.max_seq_length, int(positions))
        self.truncate = cfg.dataset.overlong != "error"
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.token_types = "token_type_ids" in self.tokenizer.model_input_names

        self.texts: list[torch.Tensor] = []
        self._index: dict[str, int] = {}
        self.train_set = self._pairs(train_records)
        self.val_set = self._pairs(val_records)
        self.n_train = len(self.train_set)
        self.has_validation = bool(self.val_set)

        model = model.to(device)
        if cfg.method == "lora":
            model = apply_lora(model, cfg, "FEATURE_EXTRACTION")
        model.train()
        self.model = model

    def _pairs(self, records: list[Record]) -> list[Pair]:
        out = []
        for r in records:
            if not isinstance(r, PairRecord):
                raise DatasetError(f"{r.where}: the embedding task reads anchor/positive pairs")
            neg = self._text(r.negative, r.where) if r.negative is not None else None
            out.append(Pair(self._text(r.anchor, r.where), self._text(r.positive, r.where), neg))
        return out

    def _text(self, text: str, where: str) -> int:
        """Tokenise each distinct text once (a positive shared by several anchors too)."""
        known = self._index.get(text)
        if known is not None:
            return known
        ids = list(self.tokenizer(text, truncation=self.truncate, max_length=self.max_len)["input_ids"])
        if len(ids) > self.max_len:
            raise DatasetError(
                f"{where}: {len(ids)} tokens, over hyperparameters.maxSeqLength {self.max_len} "
                "(or set dataset.overlong: truncate)"
            )
        self._index[text] = len(self.texts)
        self.texts.append(torch.tensor(ids, dtype=torch.long))
        return len(self.texts) - 1

    def _embed(self, text_ids: list[int]) -> torch.Tensor:
        """Unit-length sentence vectors of texts (one padded forward pass)."""
        seqs = [self.texts[i] for i in text_ids]
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self.token_types:
            kwargs["token_type_ids"] = torch.zeros_like(ids)
        with self.autocast():
            hidden = self.model(**kwargs).last_hidden_state
        return F.normalize(pool(hidden.float(), mask, self.pooling), dim=-1)

    def step_norm(self, micro_batches: list[list[int]]) -> float:
        return float(len(micro_batches))  # one mean loss per micro-batch

    def loss_sum(self, rows: list[int]) -> torch.Tensor:
        pairs = [self.train_set[i] for i in rows]
        negatives = [p.negative for p in pairs if p.negative is not None]
        anchors = self._embed([p.anchor for p in pairs])
        candidates = self._embed([p.positive for p in pairs] + negatives)
        scores = anchors @ candidates.T * self.cfg.embedding.scale
        n = len(pairs)
        clash = _clashes([p.anchor for p in pairs]) | _clashes([p.positive for p in pairs])
        if clash:
            mask = torch.zeros(scores.shape, dtype=torch.bool)
            for i, j in clash:
                mask[i, j] = True
            scores = scores.masked_fill(mask.to(scores.device), float("-inf"))
        return F.cross_entropy(scores, torch.arange(n, device=scores.device))

    @torch.no_grad()
    def _embed_all(self, text_ids: list[int]) -> torch.Tensor:
        """Vectors of many texts, in batches of similar length (little padding), in input order."""
        bs = self.cfg.hyperparameters.batch_size * 2
        order = sorted(range(len(text_ids)), key=lambda k: len(self.texts[text_ids[k]]))
        vectors: list[torch.Tensor] = [torch.empty(0)] * len(text_ids)
        for start in range(0, len(order), bs):
            chunk = order[start : start + bs]
            for k, v in zip(chunk, self._embed([text_ids[k] for k in chunk]).cpu(), strict=True):
                vectors[k] = v
        return torch.stack(vectors)

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        try:
            anchors = sorted({p.anchor for p in self.val_set})
            candidates = sorted({p.positive for p in self.val_set} | {p.negative for p in self.val_set if p.negative})
            gold: dict[int, set[int]] = {}
            col = {t: j for j, t in enumerate(candidates)}
            for p in self.val_set:
                gold.setdefault(p.anchor, set()).add(col[p.positive])
            sims = self._embed_all(anchors) @ self._embed_all(candidates).T
        finally:
            self.model.train()
        top = sims.topk(min(10, len(candidates)), dim=1).indices.tolist()
        rr, hit1, hit10 = 0.0, 0, 0
        for a, ranked in zip(anchors, top, strict=True):
            ranks = [r for r, j in enumerate(ranked) if j in gold[a]]
            if ranks:
                rr += 1 / (ranks[0] + 1)
                hit10 += 1
                hit1 += ranks[0] == 0
        n = len(anchors)
        return {"mrr@10": round(rr / n, 6), "recall@1": round(hit1 / n, 6), "recall@10": round(hit10 / n, 6)}

    def save_output(self, out: Path) -> dict[str, str]:
        written: dict[str, str] = {}
        model: Any = self.model
        if self.cfg.method == "lora":
            model.save_pretrained(out / "adapter", save_embedding_layers=False)
            self.tokenizer.save_pretrained(out / "adapter")
            written["adapter"] = "adapter"
            model = model.merge_and_unload()  # the server loads plain weights
        target = out / "model"
        model.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
        self._write_sentence_transformers_files(target, int(model.config.hidden_size))
        written["model"] = "model"
        return written

    def _write_sentence_transformers_files(self, target: Path, dimension: int) -> None:
        """The base model's sentence-transformers modules (pooling, normalisation, max length) if
        it has them; otherwise Transformer + the pooling used here + Normalize (trained for cosine)."""
        modules_file = self.model_dir / "modules.json"
        if modules_file.exists():
            for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
                if (self.model_dir / name).exists():
                    shutil.copy2(self.model_dir / name, target / name)
            for module in json.loads(modules_file.read_text()):
                sub = module.get("path", "")
                if sub and (self.model_dir / sub).is_dir():
                    shutil.copytree(self.model_dir / sub, target / sub, dirs_exist_ok=True)
            return
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (target / "modules.json").write_text(json.dumps(modules, indent=2))
        (target / "1_Pooling").mkdir(exist_ok=True)
        (target / "2_Normalize").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": dimension,
            "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_lasttoken": self.pooling == "lasttoken",
        }
        (target / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        (target / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": self.max_len, "do_lower_case": False})
        )


def model_pooling(model_dir: Path) -> Pooling:
    """The pooling of the model's sentence-transformers config (mean when it has none), as the
    embedding server decides it."""
    return sentence_transformers_defaults(model_dir)[0] or "mean"


def _clashes(keys: list[int]) -> set[tuple[int, int]]:
    """(i, j), i != j, of rows with the same key."""
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return {(i, j) for rows in groups.values() if len(rows) > 1 for i in rows for j in rows if i != j}
