"""Streaming generation through a TGI endpoint (``/generate_stream``) or an OpenAI-compatible chat
endpoint (vLLM, TGI's Messages API), both with ``huggingface_hub``'s ``AsyncInferenceClient``.

Each answer uses its own client, closed when the answer ends or its consumer goes away: the
client keeps streamed responses open until it is closed, and closing the connection is what tells
the generation server to stop generating for a client that left.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import httpx

from ..common.http import read_api_keys
from .config import GeneratorConfig
from .errors import DependencyUnavailable
from .metrics import DEPENDENCY_ERRORS
from .prompt import Prompt

log = logging.getLogger("llmops.rag.generator")


@dataclass
class Delta:
    text: str
    finish_reason: str | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None


def allow_private_endpoints() -> None:
    """huggingface_hub applies HF_HUB_OFFLINE to every request it makes, even to a private TGI or
    vLLM URL; in the RAG server that switch is meant for hub downloads only (the tokenizer, which
    chunking.py loads with ``local_files_only`` itself), so the client's global copy is turned off."""
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = False


class Generator:
    def __init__(self, cfg: GeneratorConfig) -> None:
        allow_private_endpoints()
        self.cfg = cfg
        keys = read_api_keys(cfg.api_key_file, cfg.api_key)
        self.token = keys[0] if keys else None

    @property
    def configured(self) -> bool:
        return bool(self.cfg.url)

    def clamp(self, requested: int | None) -> int:
        return min(requested or self.cfg.default_max_new_tokens, self.cfg.max_new_tokens)

    async def stream(
        self, prompt: Prompt, max_new_tokens: int, temperature: float | None = None
    ) -> AsyncGenerator[Delta]:
        from huggingface_hub import AsyncInferenceClient
        from huggingface_hub.errors import (
            HfHubHTTPError,
            InferenceTimeoutError,
            OverloadedError,
            TextGenerationError,
            ValidationError,
        )

        if not self.cfg.url:
            raise DependencyUnavailable("generator", "no generator is configured (generator.url)")
        temperature = self.cfg.temperature if temperature is None else temperature
        client = AsyncInferenceClient(base_url=self.cfg.url, token=self.token, timeout=self.cfg.timeout_seconds)
        try:
            if self.cfg.kind == "tgi":
                async for delta in self._tgi(client, prompt, max_new_tokens, temperature):
                    yield delta
            else:
                async for delta in self._chat(client, prompt, max_new_tokens, temperature):
                    yield delta
        except InferenceTimeoutError:
            DEPENDENCY_ERRORS.labels(dependency="generator").inc()
            raise DependencyUnavailable("generator", f"no answer within {self.cfg.timeout_seconds}s") from None
        except HfHubHTTPError as exc:
            DEPENDENCY_ERRORS.labels(dependency="generator").inc()
            status = exc.response.status_code if exc.response is not None else 0
            detail = _detail(exc)
            if status in (400, 413, 422):
                raise DependencyUnavailable("generator", f"refused the request: {detail}", status=502) from None
            raise DependencyUnavailable("generator", f"HTTP {status}: {detail}") from None
        except TextGenerationError as exc:
            # An error event in the generator's stream (TGI's error_type): the generator answered,
            # and failed or refused; overload is retryable, the rest are its own failures.
            DEPENDENCY_ERRORS.labels(dependency="generator").inc()
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if isinstance(exc, OverloadedError):
                raise DependencyUnavailable("generator", f"overloaded: {detail}") from None
            what = "refused the request" if isinstance(exc, ValidationError) else "failed"
            raise DependencyUnavailable("generator", f"{what}: {detail}", status=502) from None
        except (OSError, httpx.HTTPError) as exc:
            DEPENDENCY_ERRORS.labels(dependency="generator").inc()
            raise DependencyUnavailable("generator", f"unreachable ({type(exc).__name__})") from None
        except Exception as exc:
            # The hub client raises its HTTP library's own errors (httpx2) for transport failures.
            if type(exc).__module__.split(".")[0] not in ("httpx2", "httpcore", "h11", "anyio"):
                raise
            DEPENDENCY_ERRORS.labels(dependency="generator").inc()
            raise DependencyUnavailable("generator", f"unreachable ({type(exc).__name__})") from None
        finally:
            await client.close()  # type: ignore[no-untyped-call]

    async def _tgi(
        self, client: object, prompt: Prompt, max_new_tokens: int, temperature: float | None
    ) -> AsyncIterator[Delta]:
        from huggingface_hub import AsyncInferenceClient

        assert isinstance(client, AsyncInferenceClient)
        sampling = temperature is not None and temperature > 0
        outputs = await client.text_generation(
            prompt.text,
            max_new_tokens=max_new_tokens,
            stream=True,
            details=True,
            stop=list(self.cfg.stop) or None,
            do_sample=sampling,
            temperature=temperature if sampling else None,
        )
        async for out in outputs:
            text = "" if out.token.special else out.token.text
            if out.details is not None:
                yield Delta(
                    text,
                    finish_reason=str(out.details.finish_reason),
                    completion_tokens=out.details.generated_tokens,
                )
            else:
                yield Delta(text)

    async def _chat(
        self, client: object, prompt: Prompt, max_new_tokens: int, temperature: float | None
    ) -> AsyncIterator[Delta]:
        from huggingface_hub import AsyncInferenceClient, ChatCompletionInputStreamOptions

        assert isinstance(client, AsyncInferenceClient)
        chunks = await client.chat_completion(
            messages=[{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}],
            model=self.cfg.model,
            max_tokens=max_new_tokens,
            stream=True,
            stream_options=ChatCompletionInputStreamOptions(include_usage=True),
            stop=list(self.cfg.stop) or None,
            temperature=temperature,
        )
        finish: str | None = None
        async for chunk in chunks:
            for choice in chunk.choices or []:
                if choice.finish_reason:
                    finish = str(choice.finish_reason)
                if choice.delta and choice.delta.content:
                    yield Delta(choice.delta.content)
            if chunk.usage:
                yield Delta(
                    "",
                    finish_reason=finish,
                    completion_tokens=chunk.usage.completion_tokens,
                    prompt_tokens=chunk.usage.prompt_tokens,
                )
                finish = None
        if finish:
            yield Delta("", finish_reason=finish)

    async def healthy(self) -> bool:
        if not self.cfg.url:
            return False
        url = self.cfg.url.rstrip("/")
        if url.endswith("/v1"):
            url = url[: -len("/v1")]
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(url + "/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def _detail(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    try:
        body = response.json() if response is not None else None
    except Exception:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))[:200]
        if error:
            return str(error)[:200]
    return str(exc).splitlines()[0][:200]
