"""FastAPI and Starlette: the collect endpoint mounted, its engine made at startup and
closed (``await engine.aclose()``) at shutdown::

    from fastapi import FastAPI
    from engine import Engine
    from engine.web.starlette import TagEngine

    tagengine = TagEngine(lambda: Engine.from_path("rules/", background=True, outbox="sends.db"))
    app = FastAPI(lifespan=tagengine.lifespan)
    tagengine.mount(app, "/collect")

or, for an app made elsewhere, ``engine.web.starlette.init_app(app, make_engine)``, which
mounts the endpoint and wraps the app's own lifespan. ``mount`` is ``app.mount`` plus a route
for the path itself: a bare ``app.mount("/collect", ...)`` answers ``POST /collect`` (where
``tagengine.js`` posts) with a redirect to ``/collect/``, a second request for every batch. ``tagengine.engine`` is the engine, for
the app's routes. Keyword options are :class:`~engine.web.core.CollectSettings` fields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio.to_thread

from engine.engine import Engine
from engine.web.asgi import Receive, Scope, Send
from engine.web.core import CollectSettings
from engine.web.process import CollectApp, EngineFactory, ProcessEngine, collect_app

__all__ = ["TagEngine", "init_app"]


class TagEngine:
    """The collect endpoint (:attr:`app`, an ASGI app to mount) and its engine's lifespan."""

    def __init__(
        self,
        engine: Engine | EngineFactory | ProcessEngine,
        settings: CollectSettings | None = None,
        **options: Any,
    ) -> None:
        self.app: CollectApp = collect_app(engine, settings, **options)

    @property
    def engine(self) -> Engine:
        return self.app.engine

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Make the engine (loading the rules off the event loop), serve, then close it."""
        await anyio.to_thread.run_sync(self.app.prepare)
        try:
            yield
        finally:
            await self.app.process_engine.aclose()

    def mount(self, app: Any, path: str = "/collect") -> None:
        """Serve the endpoint at ``path`` of a Starlette/FastAPI ``app`` (and below it)."""
        path = path.rstrip("/")
        app.mount(path, self.app)
        app.router.add_route(path, _AtPath(self.app, path), include_in_schema=False)

    def init_app(self, app: Any, path: str = "/collect") -> None:
        """:meth:`mount`, and run the engine's lifespan around the app's own."""
        self.mount(app, path)
        router = app.router
        theirs: Callable[[Any], AbstractAsyncContextManager[Any]] = router.lifespan_context

        @asynccontextmanager
        async def lifespan(target: Any) -> AsyncIterator[Any]:
            async with self.lifespan(target), theirs(target) as state:
                yield state

        router.lifespan_context = lifespan


class _AtPath:
    """The endpoint at the mount path itself (``/collect``, not ``/collect/``)."""

    def __init__(self, app: CollectApp, path: str) -> None:
        self.app, self.path = app, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = dict(scope, root_path=scope.get("root_path", "") + self.path)
        await self.app(scope, receive, send)


def init_app(
    app: Any,
    engine: Engine | EngineFactory | ProcessEngine,
    path: str = "/collect",
    settings: CollectSettings | None = None,
    **options: Any,
) -> TagEngine:
    """``TagEngine(engine, ...).init_app(app, path)``, returned."""
    tagengine = TagEngine(engine, settings, **options)
    tagengine.init_app(app, path)
    return tagengine
