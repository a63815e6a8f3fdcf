"""Kubernetes Events, posted on transitions only (an Event is a write)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Literal

from .. import conditions
from ..kube.client import ApiError, Client
from ..kube.resources import EVENT

log = logging.getLogger("llmops.events")
COMPONENT = "llmops-operator"


class EventRecorder:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()

    async def emit(self, obj: dict[str, Any], type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        meta = obj["metadata"]
        stamp = conditions.now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.client.create(EVENT, meta["namespace"], event)
        except (ApiError, OSError) as exc:  # an event lost is not worth failing a reconcile for
            log.warning("could not post event", extra={"reason": reason, "error": str(exc)})
