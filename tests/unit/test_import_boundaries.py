"""The operator installs without torch; the workloads run without kopf."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import llmops_operator
import llmops_workloads


def _modules(package: object) -> list[str]:
    return [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]  # type: ignore[attr-defined]


def _imported(modules: list[str]) -> list[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _loaded_after_import(modules: list[str]) -> set[str]:
    return {line.split(".")[0] for line in _imported(modules)}


def test_operator_never_imports_torch_or_transformers() -> None:
    modules = [m for m in _modules(llmops_operator) if not m.endswith("__main__")]
    assert len(modules) > 20
    imported = _imported(modules)
    loaded = {m.split(".")[0] for m in imported}
    assert "kopf" in loaded
    assert not loaded & {"torch", "transformers", "sentence_transformers", "numpy", "fastapi"}
    # Only the light shared layer of the workloads may be used by the operator: logging (stdlib) and
    # the Milvus collection schema (pymilvus, imported lazily).
    shared = {m for m in imported if m.startswith("llmops_workloads.")}
    allowed = {"llmops_workloads.common", "llmops_workloads.common.logs", "llmops_workloads.rag"}
    assert shared <= allowed | {"llmops_workloads.rag.schema"}, shared


def test_workloads_never_import_kopf() -> None:
    modules = [m for m in _modules(llmops_workloads) if not m.endswith("__main__")]
    loaded = _loaded_after_import(modules)
    assert "torch" in loaded
    assert not loaded & {"kopf", "llmops_operator"}
