"""Helpers shared by the fault suite (tests/fault): the run's scale and the figures each
scenario prints.

``LLMOPS_FAULT_SCALE=full`` selects the sizes issue 9 asks for (``make fault``); CI runs the
same scenarios scaled down to fit its time budget.
"""

from __future__ import annotations

import os
from typing import Any

FULL = os.environ.get("LLMOPS_FAULT_SCALE", "ci") == "full"


def scale(ci: int, full: int) -> int:
    """The size of a scenario at this run's scale."""
    return full if FULL else ci


class Figures:
    """What a scenario measured; printed in the terminal summary (pytest hides a passing test's
    stdout) and appended as a JSON line to ``$LLMOPS_FAULT_REPORT`` when that is set."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.values: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value
