"""The fault suite (issue 9): what clusters do to the operator and the servers, each scenario
printing its figures. ``make fault`` runs it at full scale; ``make test`` at CI scale."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from faults import FULL, Figures

_figures: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    fig = Figures(request.node.name)
    yield fig
    if fig.values:
        fig.values["scale"] = "full" if FULL else "ci"
        _figures.append((fig.scenario, fig.values))
        path = os.environ.get("LLMOPS_FAULT_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"scenario": fig.scenario, **fig.values}) + "\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _figures:
        return
    terminalreporter.section("fault suite figures")
    for scenario, values in _figures:
        shown = ", ".join(f"{k}={f'{v:.2f}' if isinstance(v, float) else v}" for k, v in values.items())
        terminalreporter.write_line(f"{scenario}: {shown}")
