"""One engine per process, for the framework integrations (:mod:`engine.web.starlette`,
:mod:`engine.web.flask`, :mod:`engine.web.django`, :mod:`engine.web.gunicorn`).

An :class:`Engine` holds threads, a journal file and an HTTP client of its process: it must
not be shared across a fork (gunicorn's pre-fork workers). A :class:`ProcessEngine` makes the
engine from a factory in the process that first uses it (a forked child makes its own) and
closes it once; :class:`CollectApp` is the collect endpoint (ASGI and WSGI) over one, so an
app can mount it at import time, before any worker exists.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from engine.engine import Engine
from engine.web.asgi import CollectASGI, Receive, Scope, Send
from engine.web.core import CollectCore, CollectSettings
from engine.web.wsgi import CollectWSGI, StartResponse

__all__ = ["CollectApp", "EngineFactory", "ProcessEngine", "collect_app", "living"]

EngineFactory = Callable[[], Engine]

_living: weakref.WeakSet[ProcessEngine] = weakref.WeakSet()


def living() -> list[ProcessEngine]:
    """The :class:`ProcessEngine` objects of this process (the gunicorn hooks start and close
    them)."""
    return list(_living)


class ProcessEngine:
    """An engine made from ``factory`` in the process that uses it, closed by :meth:`close`.

    Given an :class:`Engine` instead of a factory, that engine is used as it is (and closed)."""

    def __init__(self, factory: Engine | EngineFactory) -> None:
        self._factory: EngineFactory | None = None if isinstance(factory, Engine) else factory
        self._engine: Engine | None = factory if isinstance(factory, Engine) else None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        _living.add(self)

    @property
    def engine(self) -> Engine:
        """This process's engine, made on first use (again in a forked child)."""
        engine = self._engine
        if engine is not None and (self._pid == os.getpid() or self._factory is None):
            return engine
        with self._lock:
            if self._engine is None or (self._factory is not None and self._pid != os.getpid()):
                assert self._factory is not None
                # The parent's engine is left alone: its threads are not in this process.
                self._engine, self._pid = self._factory(), os.getpid()
            return self._engine

    @property
    def started(self) -> bool:
        """Whether this process has its engine."""
        return self._engine is not None and (self._pid == os.getpid() or self._factory is None)

    @property
    def forked(self) -> bool:
        """Whether this is an engine given as it is and made in another process."""
        return self._factory is None and self._pid != os.getpid()

    def start(self) -> Engine:
        """Make the engine now rather than at the first request."""
        return self.engine

    def close(self, timeout: float | None = None) -> None:
        """Close this process's engine, if it made one (what is not delivered within
        ``timeout`` stays in the outbox). A later use makes a new one."""
        with self._lock:
            engine, mine = self._engine, self._pid == os.getpid() or self._factory is None
            if mine:
                self._engine = None if self._factory is not None else engine
        if engine is not None and mine and not engine.closed:
            engine.close(timeout)

    async def aclose(self) -> None:
        """:meth:`close` for a lifespan: the engine's own ``aclose``."""
        with self._lock:
            engine, mine = self._engine, self._pid == os.getpid() or self._factory is None
            if mine and self._factory is not None:
                self._engine = None
        if engine is not None and mine and not engine.closed:
            await engine.aclose()


class CollectApp:
    """The collect endpoint (:func:`engine.web.asgi_app` / :func:`engine.web.wsgi_app`) over
    a :class:`ProcessEngine`: callable as an ASGI app and, through :attr:`wsgi`, as a WSGI
    app; the endpoint is built on the first request of each process."""

    def __init__(self, engine: ProcessEngine, settings: CollectSettings) -> None:
        self.process_engine = engine
        self.settings = settings
        self._built: tuple[Engine, CollectASGI, CollectWSGI] | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self.process_engine.engine

    def prepare(self) -> tuple[CollectASGI, CollectWSGI]:
        """This process's engine and endpoint, made now if not yet (the first request would)."""
        engine = self.process_engine.engine
        built = self._built
        if built is None or built[0] is not engine:
            with self._lock:
                built = self._built
                if built is None or built[0] is not engine:
                    core = CollectCore(engine, self.settings)
                    built = self._built = (engine, CollectASGI(core), CollectWSGI(core))
        return built[1], built[2]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served alone: make the engine, close it at the end
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.prepare()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.process_engine.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await self.prepare()[0](scope, receive, send)

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        return self.prepare()[1](environ, start_response)


def collect_app(
    engine: Engine | EngineFactory | ProcessEngine,
    settings: CollectSettings | None = None,
    **options: Any,
) -> CollectApp:
    """A :class:`CollectApp` over ``engine`` (an engine, a factory, or a
    :class:`ProcessEngine`); ``options`` are :class:`~engine.web.core.CollectSettings`
    fields (or give ``settings``)."""
    if settings is not None and options:
        raise TypeError("give either settings or keyword options, not both")
    holder = engine if isinstance(engine, ProcessEngine) else ProcessEngine(engine)
    return CollectApp(holder, settings if settings is not None else CollectSettings(**options))
