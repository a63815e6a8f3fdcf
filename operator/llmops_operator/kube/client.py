"""A small async Kubernetes client for what the operator does: server-side apply, get, delete,
status merge-patch and events. Every request is counted by verb (Prometheus), which is how
"zero writes when idle" is measured.

kopf does the watching; this client shares its credentials (see ``credentials.py``).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from .. import __version__
from ..metrics import API_REQUESTS
from .credentials import Credentials

FIELD_MANAGER = "llmops-operator"
USER_AGENT = f"llmops-operator/{__version__}"
WRITE_VERBS = frozenset({"create", "update", "patch", "apply", "delete"})


class ApiError(Exception):
    """A non-2xx answer. ``permanent`` is True for answers that retrying cannot change."""

    def __init__(self, status: int, reason: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @property
    def permanent(self) -> bool:
        # 400 Bad Request, 403 Forbidden, 404 on a write path, 422 Invalid: the request itself is wrong.
        # Server-side apply answers an object that does not fit the kind's schema with a 500
        # ("failed to create typed patch object ...: field not declared in schema"): retrying the
        # same object cannot help either.
        return self.status in (400, 403, 422) or (self.status == 500 and "not declared in schema" in self.message)

    @property
    def not_found(self) -> bool:
        return self.status == 404


@dataclass(frozen=True)
class ResourceType:
    """Where a kind lives in the REST API."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


class Client:
    def __init__(self, credentials: Credentials, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def _get_session(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None or self._session.closed:
                ctx: ssl.SSLContext = self.credentials.ssl_context()
                self._session = aiohttp.ClientSession(
                    base_url=self.credentials.server,
                    connector=aiohttp.TCPConnector(ssl=ctx, limit=32),
                    timeout=self.timeout,
                )
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        session = await self._get_session()
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if body is not None:
            headers["Content-Type"] = content_type
        token = self.credentials.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        status_label = "error"
        try:
            async with session.request(
                method,
                path,
                params=params,
                data=json.dumps(body) if body is not None else None,
                headers=headers,
            ) as resp:
                status_label = str(resp.status)
                text = await resp.text()
                try:
                    data: dict[str, Any] = json.loads(text) if text else {}
                except ValueError:  # e.g. "404 page not found" for an API group that is not served
                    data = {"message": text[:500]}
                if resp.status >= 400:
                    raise ApiError(
                        resp.status,
                        str(data.get("reason") or resp.reason),
                        str(data.get("message") or text[:500]),
                        data,
                    )
                return data
        except aiohttp.ClientError as exc:
            # Some of aiohttp's connection errors are not OSErrors (ServerDisconnectedError: a
            # pooled keep-alive connection to an API server that has restarted). Callers treat
            # OSError as "temporary, retry": an API server that went away must be no different.
            raise ConnectionError(f"{method} {path}: {exc!r}") from exc
        finally:
            API_REQUESTS.labels(verb=verb, code=status_label).inc()

    # -- verbs -----------------------------------------------------------------------------

    async def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("get", "GET", rt.path(namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def apply(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's one field manager (force: we own these fields)."""
        meta = obj["metadata"]
        return await self.request(
            "apply",
            "PATCH",
            rt.path(meta.get("namespace"), meta["name"]),
            body=obj,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    async def delete(self, rt: ResourceType, namespace: str | None, name: str) -> None:
        try:
            await self.request(
                "delete",
                "DELETE",
                rt.path(namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if not exc.not_found:
                raise

    async def patch_status(self, rt: ResourceType, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource (never the spec: that is the user's)."""
        return await self.request(
            "patch",
            "PATCH",
            rt.path(namespace, name, "status"),
            body={"status": status},
            params={"fieldManager": FIELD_MANAGER},
            content_type="application/merge-patch+json",
        )

    async def create(self, rt: ResourceType, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        return await self.request(
            "create", "POST", rt.path(namespace), body=obj, params={"fieldManager": FIELD_MANAGER}
        )

    async def discover(self, group_version: str) -> set[str]:
        """Resource plurals served under a group/version ("" when it is not installed)."""
        path = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        try:
            data = await self.request("discovery", "GET", path)
        except ApiError as exc:
            if exc.not_found:
                return set()
            raise
        return {r["name"] for r in data.get("resources", [])}
