"""The collect endpoint as an ASGI app (Starlette, FastAPI, any ASGI server)::

    app.mount("/collect", engine.web.asgi_app(engine))

The body is read as it arrives and refused past ``max_body`` (413) before it is all in
memory; the endpoint's work (pushes, which may wait for the network or a shared store) runs
in a worker thread, so the event loop never waits for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread

from engine.web.core import CollectCore, CollectRequest, CollectResponse

__all__ = ["CollectASGI"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CollectASGI:
    """An ASGI app over a :class:`~engine.web.core.CollectCore`."""

    def __init__(self, core: CollectCore) -> None:
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # mounted alone under a server: nothing to set up
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = await self._body(receive, self.core.settings.max_body)
        request = CollectRequest(
            method=scope["method"],
            path=self._path(scope),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            body=body or b"",
            client=scope["client"][0] if scope.get("client") else None,
            scheme=scope.get("scheme", "http"),
            too_large=body is None,  # answered by the core: with CORS headers a page can read
        )
        if body is None or self.core.inline(request):  # no wait: cheaper than a thread hop
            response = self.core.handle(request)
        else:
            response = await anyio.to_thread.run_sync(self.core.handle, request)
        await self._send(send, response)

    @staticmethod
    def _path(scope: Scope) -> str:
        """The path below the mount point (Starlette's ``root_path``, or the ASGI spec's)."""
        path: str = scope.get("path", "/")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path or "/"

    @staticmethod
    async def _body(receive: Receive, limit: int) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None  # refused while reading: a huge body costs no memory
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _send(send: Send, response: CollectResponse) -> None:
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
