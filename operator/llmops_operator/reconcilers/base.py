"""What every reconciler shares: results and error classes, applying children, writing status."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .. import conditions
from ..children.common import Owner
from ..conditions import Cond
from ..kube import compare
from ..kube.client import ApiError, Client, ResourceType
from ..kube.resources import CHILDREN
from ..runtime.events import EventRecorder
from ..runtime.store import Key, Store

log = logging.getLogger("llmops.reconcile")


@dataclass
class Result:
    requeue_after: float | None = None


class PermanentError(Exception):
    """Retrying cannot help until the spec (or something a person controls) changes."""

    def __init__(self, reason: str, message: str, conditions: list[Cond] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.conditions = conditions or []  # more conditions to report (e.g. CollectionReady)


class TemporaryError(Exception):
    """Retry with backoff (a dependency is down or not ready yet)."""

    def __init__(
        self, reason: str, message: str, delay: float | None = None, conditions: list[Cond] | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.delay = delay
        self.conditions = conditions or []


@dataclass
class Context:
    client: Client
    owners: Store
    children: Store
    events: EventRecorder
    optional_kinds: set[str] = field(default_factory=set)  # e.g. ServiceMonitor, when its CRD exists
    # Benchmark baseline only: apply every child on every reconcile, as a naive operator does.
    always_apply: bool = False


def readable_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"spec.{where}: {err['msg']}")
    return "; ".join(parts)


def owner_of(obj: dict[str, Any]) -> Owner:
    meta = obj["metadata"]
    return Owner(obj["apiVersion"], obj["kind"], meta["name"], meta["uid"], meta["namespace"])


def _owned_by(obj: dict[str, Any], owner: Owner) -> bool:
    return any(ref.get("uid") == owner.uid for ref in obj["metadata"].get("ownerReferences", []))


async def sync_children(
    ctx: Context, owner: Owner, desired: dict[str, dict[str, Any] | None], name: str
) -> dict[str, dict[str, Any]]:
    """Apply what is wanted and differs from the cache; delete the kinds no longer wanted.

    ``desired`` maps every child kind this owner may have to its object, or None when the
    owner should not have one (e.g. no HPA without autoscaling). Returns the live objects.
    """
    live: dict[str, dict[str, Any]] = {}
    for kind, obj in desired.items():
        rt: ResourceType = CHILDREN[kind]
        key = Key(kind, owner.namespace, obj["metadata"]["name"] if obj else name)
        current = ctx.children.get(key)
        if obj is None:
            if current is not None and _owned_by(current, owner):
                log.info("deleting child no longer wanted", extra={"kind": kind, "child": key.name})
                await ctx.client.delete(rt, key.namespace, key.name)
                ctx.children.remove(key)
            continue
        obj = compare.with_hash(obj)
        if ctx.always_apply or compare.needs_apply(obj, current):
            try:
                applied = await ctx.client.apply(rt, obj)
            except ApiError as exc:
                if exc.not_found and kind in ctx.optional_kinds:
                    ctx.optional_kinds.discard(kind)  # its CRD was removed since discovery
                    continue
                if exc.permanent:
                    raise PermanentError("ApplyRejected", f"{kind} {key.name} was rejected: {exc.message}") from exc
                raise
            ctx.children.put(applied)
            live[kind] = applied
            log.info("applied child", extra={"kind": kind, "child": key.name, "existed": current is not None})
        elif current is not None:
            live[kind] = current
    return live


def status_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch from old to new status, or None when nothing changed."""
    old = old or {}
    if old == new:
        return None
    patch: dict[str, Any] = dict(new)
    for k in old:
        if k not in new:
            patch[k] = None  # merge-patch deletes with null
    return patch


async def write_status(
    ctx: Context, rt: ResourceType, body: dict[str, Any], status: dict[str, Any], wanted: list[Cond]
) -> None:
    """Write status when it changed, and post an Event when Ready or Degraded flips."""
    old = body.get("status") or {}
    new = dict(status)
    new["conditions"] = conditions.merge(old.get("conditions", []), wanted, status.get("observedGeneration"))
    patch = status_patch(old, new)
    if patch is None:
        return
    meta = body["metadata"]
    updated = await ctx.client.patch_status(rt, meta["namespace"], meta["name"], patch)
    ctx.owners.put(updated)
    await _transition_events(ctx, body, old.get("conditions", []), new["conditions"])


async def _transition_events(
    ctx: Context, body: dict[str, Any], old: list[dict[str, Any]], new: list[dict[str, Any]]
) -> None:
    for type_ in ("Ready", "Degraded"):
        before, after = conditions.get(old, type_), conditions.get(new, type_)
        if after is None or (before and before.get("status") == after.get("status")):
            continue
        if before is None and after["status"] == "False":
            # "Not degraded" or "not ready yet" on creation is not news (the conditions say it),
            # and an Event is a write: 1,000 new objects would cost 1,000 of them.
            continue
        warning = (type_ == "Degraded" and after["status"] == "True") or (
            type_ == "Ready" and after["status"] == "False" and before is not None
        )
        await ctx.events.emit(
            body,
            "Warning" if warning else "Normal",
            after["reason"] if after["status"] == "True" or type_ == "Ready" else f"Not{type_}",
            after.get("message") or after["reason"],
        )


async def report_error(ctx: Context, rt: ResourceType, key: Key, exc: PermanentError | TemporaryError) -> None:
    """Put a failed reconcile into status: Degraded for permanent errors, Progressing for temporary."""
    body = ctx.owners.get(key)
    if body is None:
        return
    old = body.get("status") or {}
    status = {k: v for k, v in old.items() if k != "conditions"}
    status["observedGeneration"] = body["metadata"].get("generation")
    kept = [Cond(c["type"], c["status"], c["reason"], c.get("message", "")) for c in old.get("conditions", [])]
    replaced = {"Degraded", "Ready", "Progressing", *(c.type for c in exc.conditions)}
    kept = [c for c in kept if c.type not in replaced]
    if isinstance(exc, PermanentError):
        wanted = [
            Cond("Ready", "False", exc.reason, exc.message),
            Cond("Progressing", "False", exc.reason, "waiting for the spec to be fixed"),
            Cond("Degraded", "True", exc.reason, exc.message),
        ]
    else:
        wanted = [
            Cond("Ready", "False", exc.reason, exc.message),
            Cond("Progressing", "True", exc.reason, f"{exc.message}; retrying"),
            Cond("Degraded", "False", "AsExpected"),
        ]
    await write_status(ctx, rt, body, status, wanted + exc.conditions + kept)
