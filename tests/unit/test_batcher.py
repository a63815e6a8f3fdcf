"""The dynamic batcher's logic, with a deterministic stand-in for the forward pass: each
"vector" is (batch number, length, first token id), so tests can see which inputs shared a pass."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from llmops_workloads.embedding.batcher import Batcher, Overloaded
from llmops_workloads.embedding.config import BatchingConfig


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[list[int]]] = []
        self.delay = delay

    def __call__(self, batch: list[list[int]]) -> np.ndarray:
        import time

        if self.delay:
            time.sleep(self.delay)
        self.batches.append(batch)
        n = len(self.batches)
        return np.array([[n, len(ids), ids[0]] for ids in batch], dtype=np.float32)


def run(cfg: BatchingConfig, recorder: Recorder, body: Callable[[Batcher], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        b = Batcher(recorder, cfg)
        b.start()
        try:
            return await body(b)
        finally:
            await b.stop()

    return asyncio.run(main())


def seq(first: int, length: int) -> list[int]:
    return [first] + [0] * (length - 1)


def test_a_large_request_is_split_and_reassembled_in_order() -> None:
    rec = Recorder()
    inputs = [seq(i, 5 + (i * 7) % 11) for i in range(10)]
    out = run(BatchingConfig(max_batch_size=3, max_wait_millis=0), rec, lambda b: b.embed(inputs))
    assert [int(v[2]) for v in out] == list(range(10))  # order kept across batches
    assert all(len(batch) <= 3 for batch in rec.batches)
    assert sum(len(batch) for batch in rec.batches) == 10


def test_concurrent_requests_share_a_batch_within_the_wait() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> list[np.ndarray]:
        return list(await asyncio.gather(*(b.embed([seq(i, 4)]) for i in range(8))))

    outs = run(BatchingConfig(max_batch_size=8, max_wait_millis=50), rec, body)
    assert len(rec.batches) == 1
    assert [int(o[0][2]) for o in outs] == list(range(8))


@pytest.mark.parametrize(("budget", "max_per_batch"), [(64, 4), (160, 10), (1000, 16)])
def test_token_budget_bounds_padded_tokens(budget: int, max_per_batch: int) -> None:
    rec = Recorder()

    async def body(b: Batcher) -> None:
        await asyncio.gather(*(b.embed([seq(i, 16)]) for i in range(32)))

    run(BatchingConfig(max_batch_size=16, max_batch_tokens=budget, max_wait_millis=20), rec, body)
    assert max(len(batch) for batch in rec.batches) == max_per_batch
    assert all(len(batch) * max(map(len, batch)) <= budget for batch in rec.batches)


def test_similar_lengths_are_grouped() -> None:
    rec = Recorder()
    lengths = [4, 200, 5, 180, 6, 190, 4, 210]

    async def body(b: Batcher) -> None:
        await asyncio.gather(*(b.embed([seq(i, n)]) for i, n in enumerate(lengths)))

    run(BatchingConfig(max_batch_size=4, max_batch_tokens=100000, max_wait_millis=50), rec, body)
    widths = sorted(sorted(len(ids) for ids in batch) for batch in rec.batches)
    assert widths == [[4, 4, 5, 6], [180, 190, 200, 210]]


def test_overload_is_refused_before_queueing() -> None:
    rec = Recorder(delay=0.05)

    async def body(b: Batcher) -> tuple[int, int]:
        results = await asyncio.gather(*(b.embed([seq(i, 4)]) for i in range(10)), return_exceptions=True)
        return sum(isinstance(r, Overloaded) for r in results), b.depth

    refused, depth = run(BatchingConfig(max_batch_size=2, max_concurrent_requests=4), rec, body)
    assert refused == 6
    assert depth == 0


def test_cancelled_requests_are_dropped_before_compute() -> None:
    rec = Recorder(delay=0.05)

    async def body(b: Batcher) -> int:
        first = asyncio.ensure_future(b.embed([seq(0, 4)]))
        await asyncio.sleep(0.01)  # the first batch is computing
        doomed = [asyncio.ensure_future(b.embed([seq(i, 4)])) for i in range(1, 6)]
        await asyncio.sleep(0)
        for d in doomed:
            d.cancel()
        kept = await b.embed([seq(9, 4)])
        await first
        return int(kept[0][2])

    assert run(BatchingConfig(max_batch_size=8, max_wait_millis=0), rec, body) == 9
    computed = [ids[0] for batch in rec.batches for ids in batch]
    assert computed == [0, 9]


def test_an_odd_length_input_is_not_overtaken_by_newer_ones() -> None:
    rec = Recorder(delay=0.02)
    lengths = [5, 5, 5, 100] + [5] * 12  # the 4th input is the odd one out

    async def body(b: Batcher) -> None:
        await asyncio.gather(*(b.embed([seq(i, n)]) for i, n in enumerate(lengths)))

    run(BatchingConfig(max_batch_size=2, max_batch_tokens=100000, max_wait_millis=20), rec, body)
    served_in = next(n for n, batch in enumerate(rec.batches) if any(ids[0] == 3 for ids in batch))
    # It belongs to the first window of two batches; newer inputs come after that window.
    assert served_in <= 1
    assert all(len(batch) <= 2 for batch in rec.batches)
