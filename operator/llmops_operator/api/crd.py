"""Generate CustomResourceDefinitions from the pydantic API models.

pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references inlined,
``Optional`` unwrapped (absence, not null, means unset), titles dropped, CEL rules kept. Run
``python -m llmops_operator.api.crd`` to rewrite ``crds/`` and the chart's copy; a test fails
when either is stale.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from . import embedding, finetune, rag

REPO = Path(__file__).resolve().parents[3]
CRD_DIRS = (REPO / "crds", REPO / "charts" / "llmops-operator" / "crds")
CATEGORY = "llmops"


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    printer_columns: tuple[dict[str, Any], ...]
    scale: dict[str, str] | None = None
    # Spec fields that may change after creation; every other one is immutable (one CEL
    # transition rule on spec, generated from the schema). None: no such rule.
    mutable_fields: tuple[str, ...] | None = None
    immutable_message: str = ""
    rules: tuple[dict[str, str], ...] = ()  # CEL rules on the whole object (e.g. on metadata.name)
    group: str = "llmops.dev"
    version: str = "v1alpha1"


def _ready_column() -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}


AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

KINDS: tuple[Kind, ...] = (
    Kind(
        kind=embedding.KIND,
        plural=embedding.PLURAL,
        singular="embeddingservice",
        short_names=("emb",),
        spec=embedding.EmbeddingServiceSpec,
        status=embedding.EmbeddingServiceStatus,
        description=(
            "An embedding model served over HTTP (OpenAI- and TEI-compatible) with dynamic batching, "
            "run by the llmops operator as a Deployment with its Service, autoscaler and policies."
        ),
        printer_columns=(
            {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
            _ready_column(),
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
            AGE,
        ),
        scale={
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    ),
    Kind(
        kind=rag.KIND,
        plural=rag.PLURAL,
        singular="ragpipeline",
        short_names=("rag",),
        spec=rag.RAGPipelineSpec,
        status=rag.RAGPipelineStatus,
        description=(
            "A retrieval-augmented generation pipeline: a Milvus collection, declarative ingestion of documents, "
            "and a RAG server (retrieve, then generate through TGI or an OpenAI-compatible endpoint)."
        ),
        printer_columns=(
            {"name": "Embedding", "type": "string", "jsonPath": ".status.embedding"},
            {"name": "Collection", "type": "string", "jsonPath": ".status.collection"},
            {"name": "Documents", "type": "integer", "jsonPath": ".status.documentCount"},
            _ready_column(),
            AGE,
        ),
    ),
    Kind(
        kind=finetune.KIND,
        plural=finetune.PLURAL,
        singular="finetunejob",
        short_names=("ftj",),
        spec=finetune.FineTuneJobSpec,
        status=finetune.FineTuneJobStatus,
        description=(
            "A fine-tuning run (causal LM or embedding model; LoRA, QLoRA or full) as a Job running the llmops "
            "trainer, writing a model into a PVC that an EmbeddingService can serve through fineTuneJobRef."
        ),
        printer_columns=(
            {"name": "Task", "type": "string", "jsonPath": ".spec.task"},
            {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel.name"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress.display"},
            {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
            AGE,
        ),
        mutable_fields=("suspend",),
        immutable_message=finetune.IMMUTABLE_MESSAGE,
        rules=(
            {
                "rule": "self.metadata.name.size() <= 63",
                "message": "a FineTuneJob's name is at most 63 characters: its Job's pods carry it in a label",
            },
        ),
    ),
)


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON Schema node as a structural schema node."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        merged = {**target, **node}  # the field's own description/default/rules win
        rules = target.get("x-kubernetes-validations", []) + node.get("x-kubernetes-validations", [])
        if rules:
            merged["x-kubernetes-validations"] = rules
        node = merged
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        inner = _structural(options[0], defs)
        rules = inner.get("x-kubernetes-validations", []) + node.get("x-kubernetes-validations", [])
        node = {**inner, **node}
        if rules:
            node["x-kubernetes-validations"] = rules
        if node.get("default", 0) is None:
            del node["default"]
    node.pop("title", None)
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        # JSON Schema's numeric exclusive bounds are OpenAPI v3.0 booleans next to the bound.
        if isinstance(node.get(exclusive), int | float) and not isinstance(node.get(exclusive), bool):
            node[bound] = node.pop(exclusive)
            node[exclusive] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        # A pass-through object (e.g. affinity): the schema says nothing about its insides.
        return {
            k: v
            for k, v in node.items()
            if k in ("description", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations")
        } | {"type": "object"}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(v, defs) for name, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if out.get("type") == "object" and "additionalProperties" in out and out["additionalProperties"] is False:
        del out["additionalProperties"]  # structural schemas prune unknown fields anyway
    return out


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.pop("$defs", {})
    result: dict[str, Any] = _structural(raw, defs)
    return result


def immutable_rule(schema: dict[str, Any], mutable: tuple[str, ...], message: str) -> dict[str, str]:
    """One transition rule: every field of ``schema`` but ``mutable`` keeps its value, and one that
    was unset stays unset (a field-level rule would not see it being added or removed)."""
    always = set(schema.get("required", [])) | {k for k, v in schema["properties"].items() if "default" in v}
    parts = []
    for name in schema["properties"]:
        if name in mutable:
            continue
        if name in always:
            parts.append(f"self.{name} == oldSelf.{name}")
        else:
            same = f"self.{name} == oldSelf.{name}"
            parts.append(f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || {same})")
    return {"rule": " && ".join(parts), "message": message, "reason": "FieldValueForbidden"}


def crd(kind: Kind) -> dict[str, Any]:
    spec_schema = schema_of(kind.spec)
    if kind.mutable_fields is not None:
        rule = immutable_rule(spec_schema, kind.mutable_fields, kind.immutable_message)
        spec_schema["x-kubernetes-validations"] = [*spec_schema.get("x-kubernetes-validations", []), rule]
    status_schema = schema_of(kind.status)
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = dict(kind.scale)
    root: dict[str, Any] = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if kind.rules:
        root["x-kubernetes-validations"] = [dict(r) for r in kind.rules]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{kind.group}",
            "labels": {"app.kubernetes.io/part-of": "llmops"},
        },
        "spec": {
            "group": kind.group,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": kind.version,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": [dict(c) for c in kind.printer_columns],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Shared sub-objects are written out in full: anchors confuse people and some tools."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(kind: Kind) -> str:
    header = "# Generated by `python -m llmops_operator.api.crd` from llmops_operator.api: do not edit.\n"
    return header + yaml.dump(crd(kind), Dumper=_NoAliasDumper, sort_keys=False, width=120)


def file_name(kind: Kind) -> str:
    return f"{kind.group}_{kind.plural}.yaml"


def rendered() -> dict[str, str]:
    return {file_name(k): render(k) for k in KINDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for directory in CRD_DIRS:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in rendered().items():
            path = directory / name
            if path.exists() and path.read_text() == text:
                continue
            stale.append(str(path.relative_to(REPO)))
            if not args.check:
                path.write_text(text)
    if args.check and stale:
        print(
            "stale generated CRDs (run python -m llmops_operator.api.crd): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    for s in stale:
        print(f"wrote {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
