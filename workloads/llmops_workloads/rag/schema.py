"""The Milvus collection schema of a RAG pipeline: one definition shared by the RAG server (which
writes and reads chunks) and the operator (which creates, checks and drops collections).

This module imports only pymilvus: the operator, which installs without the serving extras, uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_TEXT = 65535
MAX_DOC_ID = 512
PK_LENGTH = 64
VECTOR = "vector"


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    dimension: int
    index_type: str = "HNSW"
    metric: str = "COSINE"
    index_params: dict[str, Any] | None = None
    consistency_level: str = "Bounded"


@dataclass(frozen=True)
class Mismatch:
    """An existing collection that does not fit: never dropped, reported."""

    message: str


def create(client: Any, spec: CollectionSpec) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=PK_LENGTH)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=MAX_DOC_ID)
    schema.add_field("chunk_index", DataType.INT64)
    schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
    schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=spec.dimension)
    index = client.prepare_index_params()
    index.add_index(
        field_name=VECTOR, index_type=spec.index_type, metric_type=spec.metric, params=dict(spec.index_params or {})
    )
    client.create_collection(spec.name, schema=schema, index_params=index, consistency_level=spec.consistency_level)


def check(client: Any, spec: CollectionSpec) -> Mismatch | None:
    """Compare an existing collection with what the pipeline needs: dimension and metric."""
    desc = client.describe_collection(spec.name)
    vector = next((f for f in desc.get("fields", []) if f.get("name") == VECTOR), None)
    if vector is None:
        return Mismatch(
            f"collection {spec.name!r} has no {VECTOR!r} field: it was not created by llmops; "
            "choose another collection name"
        )
    have = int(vector.get("params", {}).get("dim", 0))
    problems = []
    if have != spec.dimension:
        problems.append(f"it holds {have}-dimensional vectors but the embedding model gives {spec.dimension}")
    metric = _index_metric(client, spec.name)
    if metric and metric != spec.metric:
        problems.append(f"its index uses metric {metric} but the pipeline asks for {spec.metric}")
    if not problems:
        return None
    return Mismatch(
        f"collection {spec.name!r} does not fit: {'; '.join(problems)}. Its data is kept: point the pipeline at "
        "another collection (vectorStore.milvus.collection), or drop this one yourself if its data is disposable"
    )


def _index_metric(client: Any, name: str) -> str | None:
    try:
        for index_name in client.list_indexes(name):
            info = client.describe_index(name, index_name)
            if info.get("field_name") == VECTOR:
                return str(info.get("metric_type") or "") or None
    except Exception:
        return None
    return None


def ensure(client: Any, spec: CollectionSpec) -> tuple[bool, Mismatch | None]:
    """(created, mismatch): create the collection if absent, else check it; load it when it fits."""
    created = False
    if client.has_collection(spec.name):
        mismatch = check(client, spec)
        if mismatch is not None:
            return False, mismatch
    else:
        create(client, spec)
        created = True
    client.load_collection(spec.name)
    return created, None
