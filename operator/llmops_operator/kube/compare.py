"""Decide whether a child needs applying, without asking the API server.

Server-side apply is idempotent, but each apply is still a write request; an operator that
applies on every reconcile never goes quiet. We apply only when

* the live object is missing, or
* what we applied last time differs from what we want now (a hash annotation on the child:
  this catches fields we *stopped* setting, which a comparison of values cannot see), or
* a value we set has been changed by someone else (drift): every field we want must be in
  the live object with an equal value. Fields that the server or other controllers add are
  ignored; quantities compare by value ("1000m" == "1").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .quantity import parse_quantity

APPLIED_HASH = "llmops.dev/applied-hash"


def desired_hash(obj: dict[str, Any]) -> str:
    body = {k: v for k, v in obj.items() if k != "status"}
    meta = dict(body.get("metadata", {}))
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != APPLIED_HASH}
    meta["annotations"] = annotations
    body["metadata"] = meta
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with its own hash in the applied-hash annotation."""
    out = dict(obj)
    meta = dict(out["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), APPLIED_HASH: desired_hash(obj)}
    out["metadata"] = meta
    return out


def _equal_leaf(want: Any, have: Any) -> bool:
    if want == have:
        return True
    if isinstance(want, bool) or isinstance(have, bool):
        return False
    if isinstance(want, str | int | float) and isinstance(have, str | int | float):
        try:
            return parse_quantity(want) == parse_quantity(have)
        except ValueError:
            return False
    return False


def contains(want: Any, have: Any) -> bool:
    """Every field of ``want`` is present in ``have`` with an equal value."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return False
        return all(k in have and contains(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return False
        return all(contains(w, h) for w, h in zip(want, have, strict=True))
    return _equal_leaf(want, have)


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    if live is None:
        return True
    annotations = live.get("metadata", {}).get("annotations") or {}
    if annotations.get(APPLIED_HASH) != desired["metadata"]["annotations"][APPLIED_HASH]:
        return True
    return not contains({k: v for k, v in desired.items() if k != "status"}, live)
