"""The part of the kubelet's HTTPS API that ``kubectl logs`` needs: the API server proxies
``GET /containerLogs/{namespace}/{pod}/{container}`` to the node's daemon endpoint.

The certificate comes from a CA of the runner's own: the local API server is started without
``--kubelet-certificate-authority`` and so does not verify kubelets, exactly as with kwok's nodes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..cluster.pki import CertificateAuthority

# (namespace, pod, container) -> (log file, still running?)
LogLookup = Callable[[str, str, str], tuple[Path, Callable[[], bool]] | None]


def tail(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines of ``data`` (a trailing newline does not count as a line)."""
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


async def serve(lookup: LogLookup, directory: Path, port: int) -> web.AppRunner:
    async def container_logs(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        found = lookup(info["namespace"], info["pod"], info["container"])
        if found is None:
            raise web.HTTPNotFound(text=f"container {info['container']!r} of pod {info['pod']!r} not found\n")
        path, running = found
        data = path.read_bytes() if path.exists() else b""
        if "tailLines" in request.query:
            data = tail(data, int(request.query["tailLines"]))
        if "limitBytes" in request.query:
            data = data[: int(request.query["limitBytes"])]
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(data)
        if request.query.get("follow") in ("true", "1"):
            offset = path.stat().st_size if path.exists() else 0
            while running():
                await asyncio.sleep(0.5)
                size = path.stat().st_size if path.exists() else 0
                if size > offset:
                    with path.open("rb") as f:
                        f.seek(offset)
                        await response.write(f.read(size - offset))
                    offset = size
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    pki = CertificateAuthority(directory, "llmops-podrunner-ca")
    pair = pki.issue("kubelet", "llmops-podrunner", server_ips=("127.0.0.1",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner
