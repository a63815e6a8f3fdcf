"""Status conditions with apimachinery's semantics: ``lastTransitionTime`` moves only when the
status flips, so writing the same conditions twice changes nothing (and writes nothing)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Cond:
    type: str
    status: Status
    reason: str
    message: str = ""


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    existing: list[dict[str, Any]], wanted: list[Cond], generation: int | None, timestamp: str | None = None
) -> list[dict[str, Any]]:
    """The new condition list: wanted conditions in order, keeping transition times that still hold."""
    old = {c.get("type"): c for c in existing or []}
    stamp = timestamp or now()
    out = []
    for c in wanted:
        prev = old.get(c.type)
        transition = prev["lastTransitionTime"] if prev and prev.get("status") == c.status else stamp
        entry: dict[str, Any] = {
            "type": c.type,
            "status": c.status,
            "reason": c.reason,
            "message": c.message,
            "lastTransitionTime": transition,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out


def get(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    c = get(conditions, type_)
    return bool(c and c.get("status") == "True")
