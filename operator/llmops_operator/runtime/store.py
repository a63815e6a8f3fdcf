"""An in-memory cache of watched objects (an informer's store): the reconcilers read the live
state of children from here, so a converged reconcile sends no request at all."""

from __future__ import annotations

from typing import Any, NamedTuple


class Key(NamedTuple):
    kind: str
    namespace: str
    name: str


def _rv(obj: dict[str, Any]) -> int | None:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion", ""))
    except ValueError:
        return None


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return Key(obj["kind"], meta.get("namespace", ""), meta["name"])


class Store:
    def __init__(self) -> None:
        self._objects: dict[Key, dict[str, Any]] = {}

    def get(self, key: Key) -> dict[str, Any] | None:
        return self._objects.get(key)

    def put(self, obj: dict[str, Any]) -> None:
        """Keep the newest version: an apply response and a watch event may arrive in either order."""
        key = key_of(obj)
        old = self._objects.get(key)
        if old is not None:
            new_rv, old_rv = _rv(obj), _rv(old)
            if new_rv is not None and old_rv is not None and new_rv < old_rv:
                return
        self._objects[key] = obj

    def remove(self, key: Key) -> None:
        self._objects.pop(key, None)

    def items_of(self, kind: str) -> list[dict[str, Any]]:
        return [o for k, o in self._objects.items() if k.kind == kind]

    def __len__(self) -> int:
        return len(self._objects)
