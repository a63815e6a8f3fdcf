"""The operator's side of Milvus: create, check, count and drop a pipeline's collection.

pymilvus is synchronous: every call runs in a worker thread under a deadline, so a Milvus that is
down or hangs costs one reconcile a few seconds, never the event loop. The schema is the RAG
server's own (``llmops_workloads.rag.schema``, which needs only pymilvus), so the operator and
the server can never disagree on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from llmops_workloads.rag import schema

T = TypeVar("T")
TIMEOUT = 10.0
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="milvus")


class MilvusUnavailable(Exception):
    """Milvus did not answer, or refused: a temporary condition, retried with backoff."""


@dataclass(frozen=True)
class Connection:
    uri: str
    token: str = ""
    database: str = ""


@dataclass(frozen=True)
class Counts:
    entities: int
    documents: int


async def _run(conn: Connection, fn: Callable[[Any], T], what: str) -> T:
    def call() -> T:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=conn.uri, token=conn.token, db_name=conn.database, timeout=TIMEOUT)
        try:
            return fn(client)
        finally:
            client.close()

    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(_pool, call), TIMEOUT)
    except TimeoutError:
        raise MilvusUnavailable(f"{what}: Milvus at {conn.uri} did not answer within {TIMEOUT:.0f}s") from None
    except schema_errors() as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise MilvusUnavailable(f"{what}: {message}") from None


def schema_errors() -> tuple[type[BaseException], ...]:
    from pymilvus.exceptions import MilvusException

    return (MilvusException, ConnectionError, OSError)


async def ensure(conn: Connection, spec: schema.CollectionSpec) -> tuple[bool, schema.Mismatch | None]:
    return await _run(conn, lambda c: schema.ensure(c, spec), f"create or check collection {spec.name}")


async def counts(conn: Connection, name: str) -> Counts:
    def count(client: Any) -> Counts:
        total = client.query(name, filter="", output_fields=["count(*)"])
        docs = client.query(name, filter="chunk_index == 0", output_fields=["count(*)"])
        return Counts(int(total[0]["count(*)"]), int(docs[0]["count(*)"]))

    return await _run(conn, count, f"count collection {name}")


async def drop(conn: Connection, name: str) -> bool:
    """Drop the collection; False when it was already gone."""

    def drop(client: Any) -> bool:
        if not client.has_collection(name):
            return False
        client.drop_collection(name)
        return True

    return await _run(conn, drop, f"drop collection {name}")
