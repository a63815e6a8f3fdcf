"""Choosing the next token of each sequence in a batch from the model's logits: greedy, or
sampling with temperature, top-k and top-p from a per-sequence seeded generator, with an
optional repetition penalty. Greedy rows cost one vectorised argmax; only sampled or penalised
rows are processed one by one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Below this, a temperature or a repetition penalty divides float32 logits into infinities (and the
# softmax into NaN): a temperature this small is already greedy, a penalty this small is clamped.
MIN_DIVISOR = 1e-4


@dataclass(frozen=True)
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    seed: int | None = None  # sampling: set (a random one when the client gave none)


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """The sequence's own random stream: its samples depend on its seed only, never on which
    other sequences share its batch."""
    if not params.do_sample:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed if params.seed is not None else 0)
    return generator


def _penalise(row: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """CTRL's repetition penalty (as transformers and TGI apply it): tokens already in the
    sequence get their logit divided by the penalty when positive, multiplied when negative."""
    penalty = max(penalty, MIN_DIVISOR)
    scores = row[seen]
    row[seen] = torch.where(scores < 0, scores * penalty, scores / penalty)


def _warp(row: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    row = row / max(params.temperature, MIN_DIVISOR)
    vocab = row.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(row, params.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(row, descending=True)
        probs = ordered.softmax(-1)
        # Drop a token when the tokens before it already reach top_p: the most likely one stays.
        drop = (probs.cumsum(-1) - probs) >= params.top_p
        row = row.clone()
        row[order[drop]] = float("-inf")
    return row


def choose(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    seen: list[torch.Tensor | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [batch] and their log-probabilities [batch] under the distribution each was
    drawn from (after penalty, temperature, top-k and top-p), as TGI reports them."""
    scores = logits.float()
    for i, p in enumerate(params):
        if p.repetition_penalty != 1.0 and seen[i] is not None:
            _penalise(scores[i], seen[i], p.repetition_penalty)  # type: ignore[arg-type]
        if p.do_sample:
            scores[i] = _warp(scores[i], p)
    # A huge penalty or temperature can still overflow a row: infinities become the largest finite
    # value, so that one client's parameters never turn its batch's softmax into NaN.
    big = torch.finfo(scores.dtype).max
    scores = torch.nan_to_num(scores, nan=-big, posinf=big, neginf=float("-inf"))
    logprobs = torch.log_softmax(scores, dim=-1)
    tokens = logprobs.argmax(dim=-1)
    for i, p in enumerate(params):
        if p.do_sample:
            tokens[i] = torch.multinomial(logprobs[i].exp(), 1, generator=generators[i])[0]
    chosen = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return tokens, chosen
