"""Scenario 8 (a): property-based EmbeddingServices, RAGPipelines and FineTuneJobs applied to the
real API server, with the operator running.

Random JSON is almost always refused by the CRD schemas, which would test nothing past admission,
so each object starts from one of the valid examples (``examples/*.yaml``) and hypothesis mutates
it: one to three spec fields are set to values drawn from the field's own schema in the CRD
(``hypothesis-jsonschema``), deleted, or set to a value of the wrong shape. The API server admits
some and refuses others (both are counted); for every admitted object the operator must reconcile
without an unhandled exception (its log is read for tracebacks and handler failures that name the
test's namespace) and publish a status: ``observedGeneration`` or a condition saying why not.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from faults import FULL, Figures, scale
from llmops_dev.operator_process import OperatorProcess

from kube import Kube

pytestmark = [pytest.mark.fault, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = scale(30, 200)  # objects per kind
KINDS = {
    "EmbeddingService": ("embeddingservices", "llmops.dev_embeddingservices.yaml", "emb"),
    "RAGPipeline": ("ragpipelines", "llmops.dev_ragpipelines.yaml", "rag"),
    "FineTuneJob": ("finetunejobs", "llmops.dev_finetunejobs.yaml", "ftj"),
}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def examples(kind: str) -> list[dict[str, Any]]:
    """The valid specs of ``kind`` from examples/ (the starting points of every mutation). A
    pipeline's Milvus is a closed port: no Milvus on this machine gets the fuzzer's collections."""
    specs = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                milvus = doc["spec"].get("vectorStore", {}).get("milvus")
                if milvus is not None:
                    milvus["uri"] = "http://127.0.0.1:9"
                specs.append(doc["spec"])
    assert specs, f"no example of {kind}"
    return specs


def _clean(schema: Any) -> Any:
    """A Kubernetes structural schema as plain JSON Schema: the x-kubernetes-* extensions (CEL
    rules, int-or-string, preserve-unknown-fields) are the API server's business, not a generator's,
    and objects get no fields beyond their properties (the API server would prune them)."""
    if isinstance(schema, dict):
        out = {k: _clean(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False  # the API server prunes unknown fields anyway
        return out
    if isinstance(schema, list):
        return [_clean(v) for v in schema]
    return schema


def spec_schema(crd_file: str) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / crd_file).read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def fields(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every field under spec (objects walked, arrays taken whole) with its schema; leaves three
    times over, since a whole new sub-object usually breaks a one-of rule and is refused."""
    out = []
    for name, sub in schema.get("properties", {}).items():
        path = (*prefix, name)
        if sub.get("type") == "object" and "properties" in sub:
            out.append((path, sub))
            out += fields(sub, path)
        else:
            out += [(path, sub)] * 3
    return out


def printable(value: Any) -> Any:
    """Control characters become spaces: kubectl's apply path refuses them before any schema does."""
    if isinstance(value, str):
        return "".join(c if c.isprintable() else " " for c in value)
    if isinstance(value, list):
        return [printable(v) for v in value]
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    return value


@st.composite
def mutated_spec(draw: st.DrawFn, kind: str) -> tuple[dict[str, Any], list[str]]:
    base = copy.deepcopy(draw(st.sampled_from(examples(kind))))
    candidates = fields(spec_schema(KINDS[kind][1]))
    done = []
    for _ in range(draw(st.integers(1, 3))):
        path, sub = draw(st.sampled_from(candidates))
        op = draw(st.sampled_from(["schema", "schema", "schema", "delete", "wrong"]))
        node = base
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if op == "delete":
            node.pop(path[-1], None)
        else:
            node[path[-1]] = printable(draw(from_schema(_clean(sub)) if op == "schema" else JSON))
        done.append(f"{op}:{'.'.join(path)}")
    return base, done


def _reconciled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    observed = status.get("observedGeneration") == obj["metadata"].get("generation")
    return observed or bool(status.get("conditions"))


def operator_log(log: str, namespace: str) -> tuple[list[str], list[str], int]:
    """(unhandled, handled, unattributed) from the operator's log since the test began.

    Unhandled: a record naming one of this test's objects (the controller logs its key, with the
    namespace) that carries a traceback, is an error, or says the reconcile failed unexpectedly.
    Handled: "reconcile error; retrying" (the API server refused a child, a timeout), reported.
    Unattributed: traceback lines that name no object (a library's own logging), counted."""
    unhandled, handled, unattributed = [], [], 0
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            unattributed += "Traceback" in line
            continue
        text = json.dumps(record)
        if namespace not in text:
            unattributed += "Traceback" in text
            continue
        if "Traceback" in text or "unexpected" in text or record.get("level") in ("error", "critical"):
            unhandled.append(text[:3000])
        elif "error" in str(record.get("message", "")):
            handled.append(text[:1000])
    return unhandled, handled, unattributed


@pytest.mark.parametrize("kind", list(KINDS))
def test_generated_objects_are_refused_or_reconciled(
    kind: str, kube: Kube, operator: OperatorProcess, namespace: str, figures: Figures
) -> None:
    plural, _, short = KINDS[kind]
    log_start = operator.log_path.stat().st_size
    admitted: dict[str, list[str]] = {}
    rejected: list[str] = []
    counter = iter(range(10**6))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not FULL,  # CI replays the same objects; the full run explores
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every example is an object in the cluster
    )
    @given(mutated_spec(kind))
    def apply(generated: tuple[dict[str, Any], list[str]]) -> None:
        spec, ops = generated
        name = f"{short}-{next(counter)}"
        manifest = {"apiVersion": "llmops.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        ok, message = kube.try_apply(manifest, namespace)
        if ok:
            admitted[name] = ops
        else:
            assert "Error from server" in message or "is invalid" in message, message  # refused, not broken
            rejected.append(" ".join(ops))

    started = time.monotonic()
    apply()
    figures["kind"] = kind
    figures["generated"] = len(admitted) + len(rejected)
    figures["admitted"] = len(admitted)
    figures["rejected"] = len(rejected)
    figures["apply_seconds"] = round(time.monotonic() - started, 1)
    assert admitted, "every generated object was refused: the generator tests nothing past admission"

    deadline = time.monotonic() + 180
    pending = set(admitted)
    while pending and time.monotonic() < deadline:
        items = kube.get(plural, namespace=namespace)["items"]
        pending = set(admitted) - {o["metadata"]["name"] for o in items if _reconciled(o)}
        if pending:
            time.sleep(1)
    figures["reconcile_seconds"] = round(time.monotonic() - started - figures.values["apply_seconds"], 1)
    figures["never_reconciled"] = len(pending)

    with operator.log_path.open("rb") as f:
        f.seek(log_start)
        log = f.read().decode(errors="replace")
    unhandled, handled, unattributed = operator_log(log, namespace)
    figures["operator_unhandled"] = len(unhandled)
    figures["operator_handled_errors"] = len(handled)
    figures["operator_unattributed_tracebacks"] = unattributed
    assert not unhandled, "\n".join(unhandled[:5])
    assert operator.proc is not None and operator.proc.poll() is None, "the operator died"
    # Admitted yet never given a status: say what the operator logged about those objects.
    why = {n: [h for h in handled if f"name='{n}'" in h][:1] for n in sorted(pending)[:5]}
    assert not pending, f"admitted but never given a status: {[(n, admitted[n], why[n]) for n in why]}"
