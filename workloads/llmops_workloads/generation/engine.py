"""The generation engine: continuous batching of token-by-token decoding on one inference thread.

- Requests wait in one bounded queue: when ``maxConcurrentRequests`` are queued or generating,
  ``submit`` raises ``Overloaded`` (answered 429) at once; nothing queues without bound.
- One thread owns the model. An idle engine lets a batch form for up to ``maxWaitMillis``.
  Waiting prompts are prefilled together: the oldest always, then those closest to it in length
  (padding is wasted compute), within ``maxBatchSize`` sequences and ``maxBatchTokens`` padded
  tokens. Prompts are left-padded, so every row's last position is its last real token; the
  attention mask hides the padding and position ids count real tokens only
  (``cumsum(mask) - 1``), so a prompt gets the same positions alone or in a batch.
- Continuous batching: newcomers join a running batch between two decode steps. They are
  prefilled on their own, then their KV cache is merged into the running one (both left-padded
  to the longer of the two, then stacked), so a short request never waits for a long one to
  finish. Models whose cache is not plain per-layer key/value tensors (sliding-window or
  recurrent layers) fall back to static batching: newcomers wait for the running batch to end.
- Each decode step feeds every row its last chosen token with the KV cache
  (``DynamicCache``): one position per row per step.
- Rows whose sequence ended (max_new_tokens, EOS, a stop sequence) or whose client went away are
  removed from the batch and its cache at once (``batch_select_indices``), and padding columns no
  row needs any more are cut off, so they cost nothing more.
- Tokens reach each request through its own asyncio queue (``call_soon_threadsafe``): the event
  loop never waits on the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from . import metrics
from .config import BatchingConfig
from .detokenize import IncrementalDecoder
from .model import GenerationModel
from .sampling import SamplingParams, choose, make_generator

log = logging.getLogger("llmops.generation.engine")
FinishReason = Literal["length", "eos_token", "stop_sequence"]


class Overloaded(Exception):
    """Too many requests in flight: come back later."""


class GenerationFailed(Exception):
    """The model failed while generating this sequence (or the server stopped)."""


@dataclass(frozen=True)
class GenerationRequest:
    input_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    prefill_details: bool = False  # log-probabilities of the prompt tokens (TGI's decoder_input_details)


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    logprob: float
    special: bool


@dataclass(frozen=True)
class PrefillToken:
    id: int
    text: str
    logprob: float | None  # None for the first token: nothing predicts it


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    generated_tokens: int
    input_length: int
    seed: int | None  # the seed sampling used; None for greedy decoding
    text: str  # the generated text: the tokens' texts joined, special tokens left out
    prefill: tuple[PrefillToken, ...] = ()


@dataclass(frozen=True)
class Step:
    """One generated token; the last one of a sequence carries how it finished."""

    token: Token
    finished: Finished | None = None


_END = object()


class Generation(AsyncIterator[Step]):
    """A submitted request: iterate to receive its tokens; ``cancel`` when the client goes away."""

    def __init__(
        self, request: GenerationRequest, loop: asyncio.AbstractEventLoop, on_cancel: Callable[[Generation], None]
    ) -> None:
        self.request = request
        self._loop = loop
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._on_cancel = on_cancel
        self.cancelled = False  # read by the inference thread: a bool store is atomic
        self.done = False
        self.received = 0  # tokens handed to the caller (what a tokens-per-minute limit charges)

    def put(self, item: Step | GenerationFailed) -> None:
        """From the inference thread."""
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)

    def cancel(self) -> None:
        """Stop generating for this request (from the event loop); the iteration ends."""
        if self.done or self.cancelled:
            return
        self.cancelled = True
        self._events.put_nowait(_END)
        self._on_cancel(self)

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Step:
        if self.done or self.cancelled:  # steps already queued behind a cancel are dropped
            self.done = True
            raise StopAsyncIteration
        item = await self._events.get()
        if item is _END:
            self.done = True
            raise StopAsyncIteration
        if isinstance(item, GenerationFailed):
            self.done = True
            raise item
        assert isinstance(item, Step)
        self.received += 1
        if item.finished is not None:
            self.done = True
        return item


@dataclass(eq=False)
class _Seq:
    handle: Generation
    request: GenerationRequest
    enqueued: float
    # Set on the inference thread when the sequence is admitted:
    decoder: IncrementalDecoder | None = None
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    first_token_at: float = 0.0
    prefill: tuple[PrefillToken, ...] = ()
    closed: bool = False  # finished, cancelled or failed: released from the in-flight count


@dataclass(eq=False)
class _Batch:
    seqs: list[_Seq]
    cache: DynamicCache
    mask: torch.Tensor  # [rows, cached positions]: 1 where the cache holds one of the row's tokens
    positions: torch.Tensor  # [rows]: tokens of the row in the cache, i.e. the next token's position
    next_tokens: torch.Tensor  # [rows]: chosen last step, not yet in the cache


def _pad_left(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _kv_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, known to be plain key/value ones (checked once: ``Engine.continuous``)."""
    return cast(list[DynamicLayer], cache.layers)


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    assert layer.keys is not None and layer.values is not None  # every layer has run by now
    return layer.keys, layer.values


class Engine:
    def __init__(self, model: GenerationModel, cfg: BatchingConfig, max_concurrent_requests: int) -> None:
        self.model = model
        self.cfg = cfg
        self.max_concurrent_requests = max_concurrent_requests
        self._cond = threading.Condition()
        self._waiting: deque[_Seq] = deque()  # guarded by _cond
        self._in_flight = 0  # waiting + generating; guarded by _cond
        self._stopping = False
        self._running: _Batch | None = None  # the inference thread's own
        self._thread: threading.Thread | None = None
        # Whether newcomers may join a running batch: only when every cache layer is plain keys and
        # values (known from the config, else after the first prefill).
        layers = model.new_cache().layers
        self.continuous: bool | None = all(type(layer) is DynamicLayer for layer in layers) if layers else None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the inference thread (blocking); what is still queued or running fails."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        leftovers = list(self._waiting) + (self._running.seqs if self._running else [])
        self._waiting.clear()
        self._running = None
        for seq in leftovers:
            seq.handle.put(GenerationFailed("the server is shutting down"))

    def submit(self, request: GenerationRequest) -> Generation:
        """Queue a request (from the event loop). Raises Overloaded when too many are in flight."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._stopping or self._in_flight >= self.max_concurrent_requests:
                metrics.REJECTED.inc()
                raise Overloaded(f"{self._in_flight} requests in flight (limit {self.max_concurrent_requests})")
            handle = Generation(request, loop, self._cancel)
            self._waiting.append(_Seq(handle, request, time.monotonic()))
            self._in_flight += 1
            metrics.QUEUE_DEPTH.set(len(self._waiting))
            self._cond.notify()
        return handle

    def _cancel(self, handle: Generation) -> None:
        """A cancelled request still waiting is forgotten now; a running one after the current step."""
        with self._cond:
            for seq in self._waiting:
                if seq.handle is handle:
                    self._waiting.remove(seq)
                    self._in_flight -= 1
                    metrics.CANCELLED.inc()
                    metrics.QUEUE_DEPTH.set(len(self._waiting))
                    return

    # -- the inference thread ----------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and self._running is None:
                        self._cond.wait()
                    if self._stopping:
                        return
                    if self._running is None:
                        self._wait_for_company()
                    newcomers = self._admit()
                if newcomers:
                    try:
                        self._join(self._prefill(newcomers))
                    except Exception as exc:  # the model failed: fail these requests, keep serving
                        log.exception("prefill failed", extra={"batch": len(newcomers)})
                        self._fail(newcomers, exc)
                if self._running is not None:
                    try:
                        self._decode(self._running)
                    except Exception as exc:
                        log.exception("decode step failed", extra={"batch": len(self._running.seqs)})
                        self._fail(self._running.seqs, exc)
                        self._running = None
                metrics.RUNNING.set(len(self._running.seqs) if self._running else 0)

    def _wait_for_company(self) -> None:
        """Idle engine, first request in: give others up to maxWaitMillis to share its prefill."""
        deadline = self._waiting[0].enqueued + self.cfg.max_wait_millis / 1000
        while len(self._waiting) < self.cfg.max_batch_size and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _admit(self) -> list[_Seq]:
        """The waiting sequences to prefill now (called holding the lock)."""
        if not self._waiting or (self._running is not None and not self.continuous):
            return []
        room = self.cfg.max_batch_size - (len(self._running.seqs) if self._running else 0)
        if room <= 0:
            return []
        oldest = self._waiting[0]
        length = len(oldest.request.input_ids)
        chosen, longest = [oldest], length
        # Among the next few in line, those closest in length to the oldest go with it.
        window = sorted(
            itertools.islice(self._waiting, 1, 1 + 4 * room), key=lambda s: abs(len(s.request.input_ids) - length)
        )
        for seq in window:
            if len(chosen) >= room:
                break
            width = max(longest, len(seq.request.input_ids))
            if width * (len(chosen) + 1) > self.cfg.max_batch_tokens:
                continue
            chosen.append(seq)
            longest = width
        for seq in chosen:
            self._waiting.remove(seq)
        metrics.QUEUE_DEPTH.set(len(self._waiting))
        return chosen

    def _prefill(self, seqs: list[_Seq]) -> _Batch | None:
        model, device = self.model, self.model.device
        started = time.monotonic()
        for seq in seqs:
            metrics.QUEUE_WAIT.observe(started - seq.enqueued)
            context = [t for t in seq.request.input_ids if t not in model.special_ids]
            seq.decoder = IncrementalDecoder(model.decode, context)
            seq.generator = make_generator(seq.request.sampling, device)
        rows, width = len(seqs), max(len(s.request.input_ids) for s in seqs)
        input_ids = torch.full((rows, width), model.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            n = len(seq.request.input_ids)
            input_ids[i, width - n :] = torch.tensor(seq.request.input_ids, dtype=torch.long)
            mask[i, width - n :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = model.new_cache()
        details = any(s.request.prefill_details for s in seqs)
        logits = model.forward(input_ids, mask, positions, cache, last_only=not details)
        if details:
            self._prefill_details(seqs, input_ids, logits)
            logits = logits[:, -1]
        metrics.FORWARD.labels(phase="prefill").observe(time.monotonic() - started)
        metrics.BATCH_SIZE.labels(phase="prefill").observe(rows)
        metrics.PREFILL_TOKENS.observe(rows * width)
        metrics.INPUT_TOKENS.inc(sum(len(s.request.input_ids) for s in seqs))
        if self.continuous is None:
            self.continuous = all(type(layer) is DynamicLayer for layer in cache.layers)
            log.info("batching", extra={"continuous": self.continuous})
        batch = _Batch(seqs, cache, mask, mask.sum(dim=1), torch.zeros(rows, dtype=torch.long, device=device))
        return self._step(batch, logits)

    def _prefill_details(self, seqs: list[_Seq], input_ids: torch.Tensor, logits: torch.Tensor) -> None:
        width = input_ids.shape[1]
        for i, seq in enumerate(seqs):
            if not seq.request.prefill_details:
                continue
            start = width - len(seq.request.input_ids)
            ids = input_ids[i, start:]
            logprobs = torch.log_softmax(logits[i, start:-1], dim=-1).gather(1, ids[1:, None]).squeeze(1).tolist()
            seq.prefill = tuple(
                PrefillToken(t, self.model.decode([t]), None if j == 0 else logprobs[j - 1])
                for j, t in enumerate(ids.tolist())
            )

    def _decode(self, batch: _Batch) -> None:
        self._running = running = self._drop_cancelled(batch)
        if running is None:
            return
        batch = running
        started = time.monotonic()
        rows = len(batch.seqs)
        mask = torch.cat([batch.mask, batch.mask.new_ones((rows, 1))], dim=1)
        logits = self.model.forward(batch.next_tokens[:, None], mask, batch.positions[:, None], batch.cache, True)
        metrics.FORWARD.labels(phase="decode").observe(time.monotonic() - started)
        metrics.BATCH_SIZE.labels(phase="decode").observe(rows)
        batch.mask, batch.positions = mask, batch.positions + 1
        self._running = self._step(batch, logits)

    def _step(self, batch: _Batch, logits: torch.Tensor) -> _Batch | None:
        """Choose each row's next token, deliver it, and drop the rows that are done."""
        seqs = batch.seqs
        params = [s.request.sampling for s in seqs]
        seen = [self._seen(s) if s.request.sampling.repetition_penalty != 1.0 else None for s in seqs]
        tokens, logprobs = choose(logits, params, [s.generator for s in seqs], seen)
        batch.next_tokens = tokens
        now = time.monotonic()
        keep = []
        for seq, token, logprob in zip(seqs, tokens.tolist(), logprobs.tolist(), strict=True):
            if seq.handle.cancelled:
                self._close(seq, cancelled=True)
                keep.append(False)
            else:
                metrics.GENERATED_TOKENS.inc()
                keep.append(not self._deliver(seq, token, logprob, now))
        return self._retain(batch, keep)

    def _drop_cancelled(self, batch: _Batch) -> _Batch | None:
        keep = [not s.handle.cancelled for s in batch.seqs]
        for seq, kept in zip(batch.seqs, keep, strict=True):
            if not kept:
                self._close(seq, cancelled=True)
        return self._retain(batch, keep)

    def _close(self, seq: _Seq, cancelled: bool = False) -> None:
        """The sequence leaves the engine: it no longer counts against maxConcurrentRequests."""
        if seq.closed:
            return
        seq.closed = True
        if cancelled:
            metrics.CANCELLED.inc()
        with self._cond:
            self._in_flight -= 1

    def _seen(self, seq: _Seq) -> torch.Tensor:
        seen: torch.Tensor = torch.unique(torch.tensor(seq.request.input_ids + seq.generated, device=self.model.device))
        return seen

    def _deliver(self, seq: _Seq, token: int, logprob: float, now: float) -> bool:
        """Record and send one token; True when the sequence is finished."""
        model, request = self.model, seq.request
        assert seq.decoder is not None
        seq.generated.append(token)
        if len(seq.generated) == 1:
            seq.first_token_at = now
            metrics.TIME_TO_FIRST_TOKEN.observe(now - seq.enqueued)
        special = token in model.special_ids
        before = len(seq.text)
        if special:
            text = model.decode([token])
        else:
            text = seq.decoder.push(token)
            seq.text += text
        reason: FinishReason | None = None
        if token in model.eos_ids:
            reason = "eos_token"
        elif text and not special and self._stopped(seq, before):
            reason = "stop_sequence"
        elif len(seq.generated) >= request.max_new_tokens:
            reason = "length"
        finished = None
        if reason is not None:
            tail = seq.decoder.flush()
            seq.text += tail
            if not special:
                text += tail
            sampling = request.sampling
            finished = Finished(
                reason=reason,
                generated_tokens=len(seq.generated),
                input_length=len(request.input_ids),
                seed=sampling.seed if sampling.do_sample else None,
                text=seq.text,
                prefill=seq.prefill,
            )
            metrics.FINISHED.labels(reason=reason).inc()
            if len(seq.generated) > 1:
                metrics.TIME_PER_OUTPUT_TOKEN.observe((now - seq.first_token_at) / (len(seq.generated) - 1))
            self._close(seq)
        seq.handle.put(Step(Token(token, text, logprob, special), finished))
        return finished is not None

    @staticmethod
    def _stopped(seq: _Seq, before: int) -> bool:
        """Whether a stop sequence ends in the text the last token added."""
        return any(stop in seq.text[max(0, before - len(stop) + 1) :] for stop in seq.request.stop)

    def _retain(self, batch: _Batch, keep: list[bool]) -> _Batch | None:
        if all(keep):
            return batch
        rows = [i for i, k in enumerate(keep) if k]
        if not rows:
            return None
        index = torch.tensor(rows, device=batch.mask.device)
        batch.cache.batch_select_indices(index)
        batch.seqs = [batch.seqs[i] for i in rows]
        batch.mask, batch.positions = batch.mask[index], batch.positions[index]
        batch.next_tokens = batch.next_tokens[index]
        if self.continuous:
            # Cut the padding columns no remaining row uses: rows are left-padded, so they lead.
            first = int(batch.mask.any(dim=0).nonzero()[0])
            if first > 0:
                for layer in _kv_layers(batch.cache):
                    keys, values = _kv(layer)
                    layer.keys, layer.values = keys[:, :, first:], values[:, :, first:]
                batch.mask = batch.mask[:, first:]
        return batch

    def _join(self, newcomers: _Batch | None) -> None:
        """Merge freshly prefilled rows into the running batch (both left-padded to one width)."""
        if newcomers is None:
            return
        running = self._running
        if running is None:
            self._running = newcomers
            return
        width = max(running.mask.shape[1], newcomers.mask.shape[1])
        for mine, theirs in zip(_kv_layers(running.cache), _kv_layers(newcomers.cache), strict=True):
            (my_keys, my_values), (their_keys, their_values) = _kv(mine), _kv(theirs)
            mine.keys = torch.cat([_pad_left(my_keys, width, 2), _pad_left(their_keys, width, 2)])
            mine.values = torch.cat([_pad_left(my_values, width, 2), _pad_left(their_values, width, 2)])
        running.mask = torch.cat([_pad_left(running.mask, width, 1), _pad_left(newcomers.mask, width, 1)])
        running.positions = torch.cat([running.positions, newcomers.positions])
        running.next_tokens = torch.cat([running.next_tokens, newcomers.next_tokens])
        running.seqs = running.seqs + newcomers.seqs

    def _fail(self, seqs: list[_Seq], exc: Exception) -> None:
        for seq in seqs:
            if not seq.closed:
                metrics.FAILED.inc()
                self._close(seq)
                seq.handle.put(GenerationFailed(f"{type(exc).__name__}: {exc}"))
