"""OpenAI's chat completions (``POST /v1/chat/completions``), as TGI's Messages API and vLLM
serve them: the conversation is rendered with the model's chat template, generated like any
other request, and answered in OpenAI's format (streamed as ``chat.completion.chunk`` events
ending in ``data: [DONE]``).

As in OpenAI's API, ``stop`` sequences are not part of the returned text (TGI's /generate keeps
them), and requests sample (temperature 1) unless they ask for ``temperature: 0``, greedy
decoding. ``model`` is not checked: one model is served
(huggingface_hub sends "dummy" when given a URL). Refused with a 422: ``n`` > 1, tools,
non-text content parts, ``response_format`` other than text, ``logit_bias``, non-zero presence
or frequency penalties, ``top_logprobs``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from .engine import Finished, GenerationRequest, Token
from .model import GenerationModel
from .validation import Limits, ValidationFailed, check_stops, fit_lengths, sampling_params

FINISH_REASONS = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
FINGERPRINT = f"llmops-{__version__}"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: JSON true is no integer

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: JSON true is no integer

    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: JSON true is no integer

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(None, max_length=512)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(None, max_length=512)


def _refuse_unsupported(body: ChatRequest) -> None:
    if body.n is not None and body.n != 1:
        raise ValidationFailed("n must be 1: one choice per request", "n")
    if body.tools or body.tool_choice not in (None, "none"):
        raise ValidationFailed("tools are not supported by this server", "tools")
    if body.response_format and body.response_format.get("type") != "text":
        raise ValidationFailed("response_format other than text is not supported by this server", "response_format")
    if body.logit_bias:
        raise ValidationFailed("logit_bias is not supported by this server", "logit_bias")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise ValidationFailed(f"{name} is not supported by this server", name)
    if body.top_logprobs:
        raise ValidationFailed("top_logprobs is not supported by this server", "top_logprobs")


def _text(message: ChatMessage, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise ValidationFailed(f"messages[{index}]: only text content is supported", "messages")
        texts.append(part.text)
    return "".join(texts)


def to_engine(body: ChatRequest, model: GenerationModel, limits: Limits) -> GenerationRequest:
    _refuse_unsupported(body)
    if not model.has_chat_template:
        raise ValidationFailed("this model has no chat template: use /generate", "messages")
    messages = [{"role": m.role, "content": _text(m, i)} for i, m in enumerate(body.messages)]
    try:
        prompt = model.render_chat(messages)
    except Exception as exc:  # the template's own checks (roles must alternate, ...): the client's to fix
        raise ValidationFailed(f"the chat template refused these messages: {exc}", "messages") from exc
    ids = model.encode(prompt, add_special_tokens=False)  # the template writes its own special tokens
    ids, max_new_tokens = fit_lengths(ids, body.max_completion_tokens or body.max_tokens, limits)
    # OpenAI's default temperature is 1: sampling, unless the request asks for 0 (greedy).
    greedy = body.temperature == 0
    sampling = sampling_params(
        do_sample=not greedy,
        temperature=None if greedy else body.temperature,
        top_k=None,
        top_p=None if body.top_p is None or body.top_p >= 1 else body.top_p,
        repetition_penalty=None,
        seed=body.seed if body.seed is None or body.seed >= 0 else body.seed % 2**64,
    )
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    return GenerationRequest(ids, max_new_tokens, sampling, check_stops(stop, limits))


class StopTrimmer:
    """Streams text without the stop sequence that ended it: the last ``longest stop - 1``
    characters are held back until more text shows they do not begin one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.pending = ""

    def feed(self, text: str, finished: Finished | None = None) -> str:
        """The text that can be sent now; everything left, up to the stop sequence, at the end."""
        self.pending += text
        if finished is not None:
            rest, self.pending = self.pending, ""
            if finished.reason == "stop_sequence":
                found = [i for i in (rest.find(s) for s in self.stops) if i >= 0]
                rest = rest[: min(found)] if found else rest
            return rest
        cut = len(self.pending) - self.hold
        if cut <= 0:
            return ""
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out


def strip_stop(text: str, finished: Finished, stops: tuple[str, ...]) -> str:
    return StopTrimmer(stops).feed(text, finished)


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _logprobs(tokens: list[Token]) -> dict[str, Any]:
    return {
        "content": [
            {"token": t.text, "logprob": t.logprob, "bytes": list(t.text.encode()), "top_logprobs": []} for t in tokens
        ]
    }


def usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.input_length,
        "completion_tokens": finished.generated_tokens,
        "total_tokens": finished.input_length + finished.generated_tokens,
    }


def completion(
    body: ChatRequest, request: GenerationRequest, model_name: str, tokens: list[Token], finished: Finished
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": strip_stop(finished.text, finished, request.stop)},
                "logprobs": _logprobs([t for t in tokens if not t.special]) if body.logprobs else None,
                "finish_reason": FINISH_REASONS[finished.reason],
            }
        ],
        "usage": usage(finished),
    }


class ChunkWriter:
    """The ``chat.completion.chunk`` events of one streamed answer."""

    def __init__(self, body: ChatRequest, request: GenerationRequest, model_name: str) -> None:
        self.id, self.created, self.model = new_id(), int(time.time()), model_name
        self.logprobs = bool(body.logprobs)
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.trimmer = StopTrimmer(request.stop)
        self.unreported: list[Token] = []  # tokens whose text is still held back: their logprobs wait too

    def chunk(
        self, content: str | None, finish_reason: str | None = None, tokens: list[Token] | None = None
    ) -> dict[str, Any]:
        delta: dict[str, Any] = {"role": "assistant"}
        if content is not None:
            delta["content"] = content
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": _logprobs(tokens) if self.logprobs and tokens else None,
                    "finish_reason": finish_reason,
                }
            ],
        }
        if self.include_usage:
            out["usage"] = None
        return out

    def first(self) -> dict[str, Any]:
        return self.chunk("")

    def token(self, token: Token, finished: Finished | None) -> list[dict[str, Any]]:
        """The chunks one generated token makes: its text (if any is ready), then at the end
        the finish reason and, when asked for, the usage."""
        out = []
        if not token.special:
            self.unreported.append(token)
        text = self.trimmer.feed("" if token.special else token.text, finished)
        if text:
            out.append(self.chunk(text, tokens=self.unreported))
            self.unreported = []
        if finished is not None:
            out.append(self.chunk(None, FINISH_REASONS[finished.reason]))
            if self.include_usage:
                final = self.chunk(None)
                final["choices"] = []
                final["usage"] = usage(finished)
                out.append(final)
        return out
