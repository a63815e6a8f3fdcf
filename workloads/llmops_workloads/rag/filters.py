"""Structured filters → Milvus boolean expressions, built so that no client text is ever parsed
as expression syntax.

Clients never send an expression. They send JSON like
``{"lang": "en", "year": {"$gte": 2020}, "$or": [{"doc_id": "a"}, {"doc_id": "b"}]}``: field
names are checked against a strict pattern (``doc_id``, ``chunk_index``, or a metadata key, with
dots for nesting), operators come from a fixed table, and every value is rendered as a literal
(strings quoted and escaped, numbers finite, booleans as ``true``/``false``). Milvus Lite does not
support server-side filter templates, so this escaping is the safety boundary.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}(\.[A-Za-z_][A-Za-z0-9_\-]{0,63}){0,3}$")
TOP_LEVEL_FIELDS = {"doc_id": str, "chunk_index": int}
COMPARISONS = {"$eq": "==", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
MEMBERSHIP = {"$in": "in", "$nin": "not in"}
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
MAX_LIST = 1024
MAX_STRING = 4096
Scalar = str | int | float | bool


class FilterError(ValueError):
    """A client's filter is malformed; the message names where (``filter.year.$gte``)."""


def quote(value: str) -> str:
    """A Milvus string literal for any text, or FilterError for control characters."""
    if len(value) > MAX_STRING:
        raise FilterError(f"string longer than {MAX_STRING} characters")
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise FilterError("control characters are not allowed in filter values")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def literal(value: Any, where: str) -> str:
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise FilterError(f"{where}: integer out of range")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"{where}: numbers must be finite")
        return repr(value)
    if isinstance(value, str):
        try:
            value.encode()
            return quote(value)
        except UnicodeEncodeError:
            raise FilterError(f"{where}: not valid UTF-8 (a lone surrogate)") from None
        except FilterError as exc:
            raise FilterError(f"{where}: {exc}") from None
    raise FilterError(f"{where}: expected a string, number or boolean, got {type(value).__name__}")


def field_expr(name: str, where: str) -> str:
    """``doc_id`` and ``chunk_index`` are columns; anything else is a key in the metadata JSON."""
    if not FIELD.match(name):
        raise FilterError(f"{where}: invalid field name {name!r} (letters, digits, _ and -; dots for nesting)")
    if name in TOP_LEVEL_FIELDS:
        return name
    path = name.removeprefix("metadata.").split(".")
    return "metadata" + "".join(f"[{json.dumps(p)}]" for p in path)


class _Translator:
    def __init__(self, max_conditions: int) -> None:
        self.max_conditions = max_conditions
        self.conditions = 0

    def count(self, where: str) -> None:
        self.conditions += 1
        if self.conditions > self.max_conditions:
            raise FilterError(f"{where}: more than {self.max_conditions} conditions")

    def node(self, spec: Any, where: str, depth: int) -> str:
        if depth > 8:
            raise FilterError(f"{where}: nested too deeply")
        if not isinstance(spec, dict) or not spec:
            raise FilterError(f"{where}: expected a non-empty object")
        parts = []
        for key, value in spec.items():
            at = f"{where}.{key}"
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise FilterError(f"{at}: expected a non-empty list of filters")
                joined = f" {key[1:]} ".join(self.node(v, f"{at}[{i}]", depth + 1) for i, v in enumerate(value))
                parts.append(f"({joined})")
            elif key == "$not":
                parts.append(f"(not {self.node(value, at, depth + 1)})")
            elif key.startswith("$"):
                raise FilterError(f"{at}: unknown operator (use $and, $or, $not at this level)")
            else:
                parts.append(self.condition(key, value, at))
        return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"

    def condition(self, name: str, value: Any, where: str) -> str:
        column = field_expr(name, where)
        ops = value if isinstance(value, dict) else {"$eq": value}
        if not ops:
            raise FilterError(f"{where}: expected a value or an operator object")
        parts = []
        for op, operand in ops.items():
            at = f"{where}.{op}"
            self.count(at)
            if op in COMPARISONS:
                self.check_type(name, operand, at)
                parts.append(f"{column} {COMPARISONS[op]} {literal(operand, at)}")
            elif op in MEMBERSHIP:
                if not isinstance(operand, list) or not operand or len(operand) > MAX_LIST:
                    raise FilterError(f"{at}: expected a list of 1 to {MAX_LIST} values")
                for i, item in enumerate(operand):
                    self.check_type(name, item, f"{at}[{i}]")
                items = ", ".join(literal(v, f"{at}[{i}]") for i, v in enumerate(operand))
                parts.append(f"{column} {MEMBERSHIP[op]} [{items}]")
            else:
                raise FilterError(f"{at}: unknown operator (one of {', '.join([*COMPARISONS, *MEMBERSHIP])})")
        return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"

    @staticmethod
    def check_type(name: str, value: Any, where: str) -> None:
        expected = TOP_LEVEL_FIELDS.get(name)
        if expected is str and not isinstance(value, str):
            raise FilterError(f"{where}: {name} is a string")
        if expected is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise FilterError(f"{where}: {name} is an integer")


def translate(spec: dict[str, Any] | None, max_conditions: int = 32) -> str:
    """The Milvus expression for a client's filter ('' for none), or FilterError."""
    if not spec:
        return ""
    return _Translator(max_conditions).node(spec, "filter", 0)


def canonical(spec: dict[str, Any] | None) -> str:
    """A stable text form of a filter, for cache keys."""
    return json.dumps(spec or {}, sort_keys=True, separators=(",", ":"))
