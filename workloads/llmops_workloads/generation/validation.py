"""Checks every API shares before a request reaches the engine: prompt and generation lengths,
stop sequences, sampling parameters. Messages follow TGI's wording (clients and people grep for
them); every failure is a ``ValidationFailed``, answered 422, never a 500."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .config import LimitsConfig
from .sampling import SamplingParams


class ValidationFailed(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class Limits:
    """The configured limits, capped by what the model can hold (its position embeddings)."""

    max_input_tokens: int
    max_total_tokens: int
    max_new_tokens: int
    default_max_new_tokens: int
    max_stop_sequences: int
    max_concurrent_requests: int

    @classmethod
    def of(cls, cfg: LimitsConfig, max_positions: int | None) -> Limits:
        total = min(cfg.max_total_tokens, max_positions) if max_positions else cfg.max_total_tokens
        return cls(
            max_input_tokens=min(cfg.max_input_tokens, total - 1),
            max_total_tokens=total,
            max_new_tokens=min(cfg.max_new_tokens, total - 1),
            default_max_new_tokens=min(cfg.default_max_new_tokens, total - 1),
            max_stop_sequences=cfg.max_stop_sequences,
            max_concurrent_requests=cfg.max_concurrent_requests,
        )


def fit_lengths(
    input_ids: list[int], max_new_tokens: int | None, limits: Limits, truncate: int | None = None
) -> tuple[list[int], int]:
    """The prompt (its last ``truncate`` tokens, if asked: TGI truncates on the left) and the
    number of tokens to generate, or ValidationFailed when they do not fit."""
    if truncate is not None:
        if truncate <= 0 or truncate > limits.max_input_tokens:
            raise ValidationFailed(
                f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {truncate}",
                "truncate",
            )
        input_ids = input_ids[-truncate:]
    length = len(input_ids)
    if max_new_tokens is None:
        max_new_tokens = max(1, min(limits.default_max_new_tokens, limits.max_total_tokens - length))
    elif max_new_tokens <= 0:
        raise ValidationFailed("`max_new_tokens` must be strictly positive", "max_new_tokens")
    elif max_new_tokens > limits.max_new_tokens:
        raise ValidationFailed(
            f"`max_new_tokens` must be <= {limits.max_new_tokens}. Given: {max_new_tokens}", "max_new_tokens"
        )
    if length + max_new_tokens > limits.max_total_tokens:  # TGI checks the total first
        raise ValidationFailed(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {length} `inputs` tokens and {max_new_tokens} `max_new_tokens`",
            "max_new_tokens",
        )
    if length > limits.max_input_tokens:
        raise ValidationFailed(f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {length}")
    return input_ids, max_new_tokens


def check_stops(stop: list[str], limits: Limits) -> tuple[str, ...]:
    if len(stop) > limits.max_stop_sequences:
        raise ValidationFailed(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stop)}", "stop"
        )
    if any(not s for s in stop):
        raise ValidationFailed("`stop` sequences must not be empty", "stop")
    return tuple(stop)


def sampling_params(
    do_sample: bool,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float | None,
    seed: int | None,
) -> SamplingParams:
    """TGI's rules: any of temperature (other than 1), top_k or top_p turns sampling on; a sampled
    request without a seed gets a random one, reported back in its details."""
    if temperature is not None and temperature <= 0:
        raise ValidationFailed("`temperature` must be strictly positive", "temperature")
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise ValidationFailed("`repetition_penalty` must be strictly positive", "repetition_penalty")
    if top_p is not None and not 0 < top_p < 1:
        raise ValidationFailed("`top_p` must be > 0.0 and < 1.0", "top_p")
    if top_k is not None and top_k <= 0:
        raise ValidationFailed("`top_k` must be strictly positive", "top_k")
    if seed is not None and not 0 <= seed < 2**64:
        raise ValidationFailed("`seed` must be >= 0 and < 2^64", "seed")
    temperature = 1.0 if temperature is None else temperature
    sampling = do_sample or temperature != 1.0 or top_k is not None or top_p is not None
    return SamplingParams(
        do_sample=sampling,
        temperature=temperature,
        top_k=top_k or 0,
        top_p=1.0 if top_p is None else top_p,
        repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
        seed=(seed if seed is not None else random.getrandbits(63)) if sampling else None,
    )
