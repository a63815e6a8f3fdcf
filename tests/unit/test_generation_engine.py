"""The generation engine in-process against the tiny Llama: batching (static and continuous)
gives exactly the tokens each prompt gets alone, sequences stop where they should, seeded
sampling repeats itself, a cancelled row leaves the batch, and overload is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import torch
from prometheus_client import REGISTRY

from llmops_dev.tiny_lm import build_tiny_lm
from llmops_workloads.generation.config import BatchingConfig, ModelConfig
from llmops_workloads.generation.detokenize import REPLACEMENT, IncrementalDecoder
from llmops_workloads.generation.engine import (
    Engine,
    Finished,
    FinishReason,
    GenerationFailed,
    GenerationRequest,
    Overloaded,
    Token,
)
from llmops_workloads.generation.model import GenerationModel
from llmops_workloads.generation.sampling import SamplingParams

PROMPTS = [
    "The quick brown fox",
    "a",
    "Kubernetes operator embedding vector search retrieval generation context prompt latency",
    "café 日本語 🙂 stream queue",
    "What is the answer to the question?",
    "first second third",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A tiny model is fastest on one thread (more only wait for each other); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> GenerationModel:
    path = build_tiny_lm(tmp_path_factory.getbasetemp() / "tiny-lm")
    return GenerationModel(ModelConfig(name="llmops/tiny-lm", path=str(path), device="cpu"))


Result = tuple[list[Token], Finished]


def run(
    model: GenerationModel, body: Callable[[Engine], Awaitable[Any]], max_concurrent: int = 64, **batching: Any
) -> Any:
    async def main() -> Any:
        engine = Engine(model, BatchingConfig(**{"max_wait_millis": 20, **batching}), max_concurrent)
        engine.start()
        try:
            return await body(engine)
        finally:
            await asyncio.to_thread(engine.stop)

    return asyncio.run(main())


async def generate(engine: Engine, request: GenerationRequest, delay: float = 0.0) -> Result:
    await asyncio.sleep(delay)
    tokens: list[Token] = []
    async for step in engine.submit(request):
        tokens.append(step.token)
        if step.finished is not None:
            return tokens, step.finished
    raise AssertionError("the generation ended without finishing")


def greedy(model: GenerationModel, prompt: str, n: int = 24, **kw: Any) -> GenerationRequest:
    return GenerationRequest(model.encode(prompt), n, **kw)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_batched_prompts_get_the_tokens_they_get_alone(model: GenerationModel) -> None:
    alone = [run(model, lambda e, p=p: generate(e, greedy(model, p)), max_batch_size=1) for p in PROMPTS]  # type: ignore[misc]

    def together(delays: list[float]) -> Callable[[Engine], Awaitable[list[Result]]]:
        async def body(engine: Engine) -> list[Result]:
            pairs = zip(PROMPTS, delays, strict=True)
            return await asyncio.gather(*(generate(engine, greedy(model, p), d) for p, d in pairs))

        return body

    decode_passes = metric("llmops_generation_batch_size_count", phase="decode")
    decode_rows = metric("llmops_generation_batch_size_sum", phase="decode")
    # All at once: one left-padded prefill of prompts of different lengths.
    batched = run(model, together([0.0] * len(PROMPTS)), max_batch_size=8)
    # Staggered: each newcomer is prefilled alone and joins the running batch (continuous batching).
    staggered = run(model, together([0.02 * i for i in range(len(PROMPTS))]), max_batch_size=8)
    prefill_only_two = run(model, together([0.0] * len(PROMPTS)), max_batch_size=2)
    for i, prompt in enumerate(PROMPTS):
        want = [t.id for t in alone[i][0]]
        assert [t.id for t in batched[i][0]] == want, prompt
        assert [t.id for t in staggered[i][0]] == want, prompt
        assert [t.id for t in prefill_only_two[i][0]] == want, prompt
        assert batched[i][1].text == alone[i][1].text
        assert batched[i][1].input_length == len(model.encode(prompt))
    rows = metric("llmops_generation_batch_size_sum", phase="decode") - decode_rows
    passes = metric("llmops_generation_batch_size_count", phase="decode") - decode_passes
    assert rows / passes > 2, "sequences must share decode steps"


def test_max_new_tokens_and_the_text_adds_up(model: GenerationModel) -> None:
    tokens, finished = run(model, lambda e: generate(e, greedy(model, PROMPTS[3], 17)))
    assert finished.reason == "length"
    assert finished.generated_tokens == len(tokens) == 17
    assert finished.seed is None
    assert "".join(t.text for t in tokens) == finished.text
    assert not any(t.special for t in tokens)
    assert all(t.logprob <= 0 for t in tokens)


def test_stop_sequences(model: GenerationModel) -> None:
    tokens, _ = run(model, lambda e: generate(e, greedy(model, PROMPTS[0], 30)))
    # A stop sequence made of the text of tokens 8 and 9: generation ends at the first token that
    # completes it (which may be earlier, should those characters occur earlier).
    stop = (tokens[8].text + tokens[9].text)[-3:]
    text, ends_at = "", 0
    for i, token in enumerate(tokens):
        text += token.text
        if stop in text:
            ends_at = i + 1
            break
    got, finished = run(model, lambda e: generate(e, greedy(model, PROMPTS[0], 30, stop=("never there", stop))))
    assert finished.reason == "stop_sequence"
    assert finished.generated_tokens == len(got) == ends_at
    assert finished.text.endswith(stop) or stop in finished.text[-(len(stop) + len(got[-1].text)) :]


def test_seeded_sampling_is_reproducible(model: GenerationModel) -> None:
    def sampled(seed: int, **kw: Any) -> GenerationRequest:
        params = SamplingParams(do_sample=True, temperature=0.9, top_p=0.95, seed=seed, **kw)
        return greedy(model, PROMPTS[4], 20, sampling=params)

    async def body(engine: Engine) -> list[Result]:
        # The same seed alone and in company: each sequence has its own random stream.
        requests = [sampled(7), sampled(7), sampled(8), greedy(model, PROMPTS[0])]
        return list(await asyncio.gather(*(generate(engine, r) for r in requests)))

    first, second, other, _ = run(model, body)
    alone = run(model, lambda e: generate(e, sampled(7)))
    ids = [t.id for t in first[0]]
    assert ids == [t.id for t in second[0]] == [t.id for t in alone[0]]
    assert ids != [t.id for t in other[0]]
    assert first[1].seed == 7 and other[1].seed == 8
    plain = run(model, lambda e: generate(e, greedy(model, PROMPTS[4], 20)))
    assert ids != [t.id for t in plain[0]]
    # top_k=1 leaves one candidate: sampling then is greedy decoding.
    top1 = run(model, lambda e: generate(e, sampled(3, top_k=1)))
    assert [t.id for t in top1[0]] == [t.id for t in plain[0]]


def test_repetition_penalty(model: GenerationModel) -> None:
    prompt = model.encode(PROMPTS[0])
    params = SamplingParams(repetition_penalty=100.0)
    tokens, _ = run(model, lambda e: generate(e, GenerationRequest(prompt, 40, sampling=params)))
    ids = [t.id for t in tokens]
    # Every logit of a token already seen shrinks toward 0 (or far below): fresh tokens win.
    assert len(set(ids)) == len(ids)
    assert not set(ids) & set(prompt)


def test_prefill_details(model: GenerationModel) -> None:
    request = GenerationRequest(model.encode(PROMPTS[0]), 3, prefill_details=True)
    _, finished = run(model, lambda e: generate(e, request))
    assert [t.id for t in finished.prefill] == request.input_ids
    assert finished.prefill[0].logprob is None
    assert all(t.logprob is not None and t.logprob < 0 for t in finished.prefill[1:])


def test_eos_ends_a_sequence(tmp_path_factory: pytest.TempPathFactory) -> None:
    # A model of its own whose EOS logit always wins (the shared one never picks EOS).
    path = build_tiny_lm(tmp_path_factory.getbasetemp() / "tiny-lm")
    model = GenerationModel(ModelConfig(name="eos", path=str(path), device="cpu"))
    eos = model.tokenizer.eos_token_id
    with torch.no_grad():
        model.model.lm_head.weight[eos] = model.model.lm_head.weight.abs().sum(dim=0) * 100
    tokens, finished = run(model, lambda e: generate(e, greedy(model, PROMPTS[0], 10)))
    assert finished.reason == "eos_token"
    assert finished.generated_tokens == len(tokens) == 1
    assert tokens[0].id == eos and tokens[0].special
    assert tokens[0].text == model.tokenizer.eos_token
    assert finished.text == ""


def test_a_cancelled_sequence_leaves_the_batch(model: GenerationModel) -> None:
    cancelled_before = metric("llmops_generation_cancelled_total")

    async def body(engine: Engine) -> tuple[int, Result, int]:
        long = engine.submit(greedy(model, PROMPTS[2], 1000))
        other = asyncio.create_task(generate(engine, greedy(model, PROMPTS[1], 60)))
        received = 0
        async for _ in long:
            received += 1
            if received == 5:
                long.cancel()
        result = await other
        return received, result, engine.in_flight

    received, (tokens, finished), in_flight = run(model, body)
    assert received == 5  # the iteration ends at once
    assert in_flight == 0  # the cancelled row left while the other one kept going
    assert finished.reason == "length" and len(tokens) == 60
    alone = run(model, lambda e: generate(e, greedy(model, PROMPTS[1], 60)))
    assert [t.id for t in tokens] == [t.id for t in alone[0]]
    assert metric("llmops_generation_cancelled_total") == cancelled_before + 1


def test_a_cancelled_waiting_request_is_forgotten(model: GenerationModel) -> None:
    async def body(engine: Engine) -> int:
        # Not started: requests stay queued.
        handles = [engine.submit(greedy(model, p)) for p in PROMPTS[:3]]
        handles[1].cancel()
        return engine.in_flight

    async def main() -> int:
        engine = Engine(model, BatchingConfig(), 8)
        return await body(engine)

    assert asyncio.run(main()) == 2


def test_overload_is_refused_at_the_door(model: GenerationModel) -> None:
    rejected_before = metric("llmops_generation_overload_rejections_total")

    async def main() -> None:
        engine = Engine(model, BatchingConfig(), 2)  # not started: nothing leaves the queue
        engine.submit(greedy(model, PROMPTS[0]))
        engine.submit(greedy(model, PROMPTS[1]))
        with pytest.raises(Overloaded):
            engine.submit(greedy(model, PROMPTS[2]))

    asyncio.run(main())
    assert metric("llmops_generation_overload_rejections_total") == rejected_before + 1


def test_incremental_decoding_never_splits_a_character(model: GenerationModel) -> None:
    # Characters the tokenizer never saw in training: byte tokens, two to four per character.
    text = "snow ☃ snake 🐍 sum ∑ kanji 漢字 Ωμέγα!"
    ids = model.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(model.decode, [])
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in p for p in pieces)
    assert "" in pieces  # held back at least once, mid-character


def test_a_model_error_fails_its_batch_and_the_engine_keeps_serving(
    model: GenerationModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = model.forward, []

    def flaky(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:  # the first decode step
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)

    async def body(engine: Engine) -> tuple[Result, int]:
        with pytest.raises(GenerationFailed, match="boom"):
            await generate(engine, greedy(model, PROMPTS[0], 5))
        result = await generate(engine, greedy(model, PROMPTS[0], 5))
        return result, engine.in_flight

    (tokens, finished), in_flight = run(model, body)
    assert finished.generated_tokens == len(tokens) == 5
    assert in_flight == 0


@pytest.mark.parametrize(
    ("pieces", "reason", "want"),
    [
        (["Hel", "lo wo", "rld"], "length", "Hello world"),
        (["Hel", "lo ST", "OP and more"], "stop_sequence", "Hello "),  # the stop ends inside a token
        (["ST", "OP"], "stop_sequence", ""),
        (["a", "S", "T", "O", "P"], "stop_sequence", "a"),
        (["Hello ", "END"], "stop_sequence", "Hello "),
    ],
)
def test_chat_streams_leave_the_stop_sequence_out(pieces: list[str], reason: FinishReason, want: str) -> None:
    from llmops_workloads.generation.openai_chat import StopTrimmer

    trimmer = StopTrimmer(("STOP", "END"))
    finished = Finished(reason, generated_tokens=len(pieces), input_length=1, seed=None, text="".join(pieces))
    out = [trimmer.feed(p, finished if i == len(pieces) - 1 else None) for i, p in enumerate(pieces)]
    assert "".join(out) == want
