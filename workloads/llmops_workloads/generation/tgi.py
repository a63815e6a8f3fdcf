"""TGI's text-generation wire format: the request bodies of ``POST /``, ``/generate`` and
``/generate_stream``, their validation into engine requests, and the response bodies and
server-sent events, field for field as text-generation-inference writes them (what
``huggingface_hub.InferenceClient.text_generation`` parses).

Parameters TGI accepts and this server does not implement are refused with a 422 that names
them, never silently ignored: ``best_of`` > 1, ``typical_p``, ``frequency_penalty``,
``top_n_tokens`` > 0, ``watermark``, ``grammar``, ``adapter_id``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from .engine import Finished, GenerationRequest, Token
from .model import GenerationModel
from .validation import Limits, ValidationFailed, check_stops, fit_lengths, sampling_params


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: JSON true is no integer

    adapter_id: str | None = None
    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: Any = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = None
    stop: list[str] | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False


class GenerateRequest(BaseModel):
    """``/generate`` and ``/generate_stream``."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: JSON true is no integer

    inputs: str
    parameters: GenerateParameters = GenerateParameters()
    add_special_tokens: bool = True


class CompatGenerateRequest(GenerateRequest):
    """``POST /``: either, by ``stream`` (what InferenceClient.text_generation posts)."""

    stream: bool = False


def _refuse_unsupported(p: GenerateParameters, stream: bool) -> None:
    if p.best_of is not None and p.best_of != 1:
        if p.best_of <= 0:
            raise ValidationFailed(f"`best_of` must be > 0 and <= 1. Given: {p.best_of}", "best_of")
        raise ValidationFailed("`best_of` != 1 is not allowed for this endpoint", "best_of")
    if p.frequency_penalty is not None:
        if not -2.0 <= p.frequency_penalty <= 2.0:
            raise ValidationFailed("`frequency_penalty` must be >= -2.0 and <= 2.0", "frequency_penalty")
        if p.frequency_penalty != 0:
            raise ValidationFailed("`frequency_penalty` is not supported by this server", "frequency_penalty")
    if p.typical_p is not None:
        if not 0 < p.typical_p < 1:
            raise ValidationFailed("`typical_p` must be > 0.0 and < 1.0", "typical_p")
        raise ValidationFailed("`typical_p` is not supported by this server", "typical_p")
    if p.top_n_tokens:
        raise ValidationFailed("`top_n_tokens` != 0 is not allowed for this endpoint", "top_n_tokens")
    if p.watermark:
        raise ValidationFailed("`watermark` is not supported by this server", "watermark")
    if p.grammar is not None:
        raise ValidationFailed("grammar is not supported", "grammar")
    if p.adapter_id is not None:
        raise ValidationFailed("`adapter_id` is not supported by this server (no adapters are loaded)", "adapter_id")
    if stream and p.decoder_input_details:
        raise ValidationFailed(
            "`decoder_input_details` == true is not supported when streaming tokens", "decoder_input_details"
        )


def to_engine(body: GenerateRequest, stream: bool, model: GenerationModel, limits: Limits) -> GenerationRequest:
    """Validate a TGI request (TGI's order of checks and messages) and tokenise its prompt."""
    p = body.parameters
    _refuse_unsupported(p, stream)
    sampling = sampling_params(p.do_sample, p.temperature, p.top_k, p.top_p, p.repetition_penalty, p.seed)
    if p.max_new_tokens is not None and p.max_new_tokens <= 0:
        raise ValidationFailed("`max_new_tokens` must be strictly positive", "max_new_tokens")
    stop = check_stops(p.stop or [], limits)
    if not body.inputs:
        raise ValidationFailed("`inputs` cannot be empty", "inputs")
    ids = model.encode(body.inputs, add_special_tokens=body.add_special_tokens)
    if not ids:
        raise ValidationFailed("`inputs` has no tokens", "inputs")
    ids, max_new_tokens = fit_lengths(ids, p.max_new_tokens, limits, p.truncate)
    return GenerationRequest(
        input_ids=ids,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop=stop,
        prefill_details=p.details and p.decoder_input_details,
    )


def token_json(token: Token) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def full_text(body: GenerateRequest, finished: Finished) -> str:
    """The generated text, after the prompt when ``return_full_text`` (default: false; TGI's ``/``
    defaults to true for models the Hub tags text-generation, a tag this server cannot see)."""
    return body.inputs + finished.text if body.parameters.return_full_text else finished.text


def generate_response(body: GenerateRequest, tokens: list[Token], finished: Finished) -> dict[str, Any]:
    """TGI's GenerateResponse: ``generated_text``, and ``details`` when asked for."""
    out: dict[str, Any] = {"generated_text": full_text(body, finished)}
    if body.parameters.details:
        out["details"] = {
            "finish_reason": finished.reason,
            "generated_tokens": finished.generated_tokens,
            "seed": finished.seed,
            "prefill": [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in finished.prefill],
            "tokens": [token_json(t) for t in tokens],
        }
    return out


def stream_event(body: GenerateRequest, index: int, token: Token, finished: Finished | None) -> dict[str, Any]:
    """TGI's StreamResponse: one token; the last one also carries the text and, when asked for,
    the details (finish reason, counts, seed)."""
    details = None
    if finished is not None and body.parameters.details:
        details = {
            "finish_reason": finished.reason,
            "generated_tokens": finished.generated_tokens,
            "seed": finished.seed,
            "input_length": finished.input_length,
        }
    return {
        "index": index,
        "token": token_json(token),
        "top_tokens": None,
        "generated_text": full_text(body, finished) if finished is not None else None,
        "details": details,
    }
