from __future__ import annotations

import pytest
import torch

from llmops_workloads.common.pooling import pool

# Two sequences of token vectors; the second is padded after two tokens.
HIDDEN = torch.tensor(
    [
        [[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]],
        [[2.0, 2.0], [4.0, 0.0], [9.0, 9.0]],
    ]
)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ("cls", [[1.0, 0.0], [2.0, 2.0]]),
        ("mean", [[3.0, 2.0], [3.0, 1.0]]),  # the padded [9, 9] does not count
        ("lasttoken", [[5.0, 4.0], [4.0, 0.0]]),  # the last real token, not the padding
    ],
)
def test_pooling(pooling: str, expected: list[list[float]]) -> None:
    assert pool(HIDDEN, MASK, pooling).tolist() == expected  # type: ignore[arg-type]
