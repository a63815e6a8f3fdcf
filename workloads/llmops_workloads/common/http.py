"""HTTP plumbing shared by every llmops server: the ``Guard`` ASGI middleware (request ids, the
body-size limit, request metrics and access logs), API-key checks, and client-disconnect watching.

Each server keeps its own error dialect (OpenAI, TEI, TGI): the middleware asks it for the body of
the errors it answers itself through ``error_body(route, status, message)``.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import request_id
from .metrics import REQUEST_DURATION, REQUESTS
from .ratelimit import LIMITED, Usage, usage

if TYPE_CHECKING:
    from .security import Security

log = logging.getLogger("llmops.http")
QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
ErrorBody = Callable[[str, int, str], dict[str, Any]]


class Guard:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware, so streaming and
    disconnect detection keep working): request ids, the body size limit, metrics, access logs."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        routes: Collection[str],
        error_body: ErrorBody,
        security: Security | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.routes = routes
        self.error_body = error_body
        self.security = security

    def route_of(self, path: str) -> str:
        """A bounded label for metrics: known routes as they are, templated ones by prefix."""
        if path in self.routes:
            return path
        for route in self.routes:
            if route.endswith("/*") and path.startswith(route[:-1]):
                return route
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode(errors="replace")[:128] or uuid.uuid4().hex
        token = request_id.set(rid)
        route = self.route_of(scope["path"])
        started = time.monotonic()
        status = 500
        too_big = f"request body over {self.max_bytes} bytes"
        sizes = {"request_bytes": 0, "response_bytes": 0}
        client = (scope.get("client") or ("", 0))[0]
        key_name: str | None = None
        spent = Usage()
        usage_token = usage.set(spent)
        try:
            sec = self.security
            extra_headers: dict[str, str] = {}
            if sec is not None and not sec.is_open(scope["path"]):
                if sec.keys:
                    key_name = sec.keys.identify(_presented(headers))
                    if key_name is None:
                        status = 401
                        reason = "missing or invalid API key (send Authorization: Bearer <key> or X-API-Key)"
                        body401 = self.error_body(route, 401, reason)
                        await send_json(send, 401, body401, rid, {"WWW-Authenticate": "Bearer"})
                        return
                if sec.limiter is not None:
                    decision = await sec.limiter.check(key_name or f"addr:{client}")
                    if decision is not None:
                        extra_headers = decision.headers()
                        if not decision.allowed:
                            LIMITED.labels(client=key_name or "anonymous").inc()
                            status = 429
                            reason = f"rate limit of {decision.limit} {decision.unit} per minute exceeded; retry later"
                            await send_json(send, 429, self.error_body(route, 429, reason), rid, extra_headers)
                            return
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                status = 413
                await send_json(send, 413, self.error_body(route, 413, too_big), rid)
                return
            receive_app = receive
            if scope["method"] in ("POST", "PUT", "PATCH"):
                # Read the body here, bounded, and replay it: the app never sees an oversized body.
                body = b""
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        status = 499
                        return
                    body += message.get("body", b"")
                    sizes["request_bytes"] = len(body)
                    if len(body) > self.max_bytes:
                        status = 413
                        await send_json(send, 413, self.error_body(route, 413, too_big), rid)
                        return
                    if not message.get("more_body", False):
                        break
                replayed = False

                async def replay() -> Message:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                receive_app = replay

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    added = [(k.lower().encode(), v.encode()) for k, v in extra_headers.items()]
                    message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode()), *added]
                elif message["type"] == "http.response.body":
                    sizes["response_bytes"] += len(message.get("body", b""))
                await send(message)

            await self.app(scope, receive_app, send_with_id)
        finally:
            usage.reset(usage_token)
            if spent.tokens and self.security is not None and self.security.limiter is not None:
                await self.security.limiter.charge(key_name or f"addr:{client}", spent.tokens)
            self._observe(route, status, started, scope)
            if self.security is not None and self.security.audit is not None and route not in QUIET_ROUTES:
                self.security.audit.record(
                    request_id=rid,
                    key=key_name,
                    client=client,
                    method=scope["method"],
                    route=route,
                    status=status,
                    ms=round((time.monotonic() - started) * 1000, 2),
                    **sizes,
                )
            request_id.reset(token)

    @staticmethod
    def _observe(route: str, status: int, started: float, scope: Scope) -> None:
        elapsed = time.monotonic() - started
        REQUESTS.labels(route=route, status=str(status)).inc()
        REQUEST_DURATION.labels(route=route).observe(elapsed)
        if route not in QUIET_ROUTES:
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                },
            )


async def send_json(
    send: Send, status: int, body: dict[str, Any], rid: str, headers: dict[str, str] | None = None
) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", rid.encode()),
                *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def read_api_keys(key_file: str | None, key: str | None) -> list[str]:
    """Keys from a mounted file (one per line) and/or one inline key."""
    keys = []
    if key_file:
        keys += [k.strip() for k in Path(key_file).read_text().splitlines() if k.strip()]
    if key:
        keys.append(key)
    return keys


def presented_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")


def _presented(headers: dict[bytes, bytes]) -> str:
    """The key a client sent: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    auth = headers.get(b"authorization", b"").decode(errors="replace")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get(b"x-api-key", b"").decode(errors="replace").strip()


def key_is_valid(given: str, keys: Iterable[str]) -> bool:
    """Constant-time comparison against every key (no early exit that leaks which one is close)."""
    valid = False
    for k in keys:
        valid |= hmac.compare_digest(given.encode(), k.encode())
    return valid


async def watch_disconnect(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so receive() waits for that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
